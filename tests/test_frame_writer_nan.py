"""Frames out never hold NaN: pixels a model left NaN or infinite are written black, and the job's log says so."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cinegen.common.exr import ExrMetadata, read_exr_frame
from cinegen.common.sequence import SequencePattern
from cinegen.server.output.frames import FrameSink


@pytest.fixture(autouse=True)
def builtin_config(monkeypatch) -> None:
    monkeypatch.delenv("OCIO", raising=False)


@pytest.mark.parametrize("transform, on_device", [("view", False), ("srgb", False), ("srgb", True)],
                         ids=["view", "srgb", "srgb-device-path"])
def test_nan_or_infinite_model_pixels_are_written_black_and_logged_never_as_nan(tmp_path, transform, on_device):
    picture = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3))
    picture[:, 2, 5] = float("nan")  # a half-precision overflow in the model or its VAE
    picture[0, 7, 1] = float("inf")
    logged: list[str] = []
    sink = FrameSink(SequencePattern.parse(str(tmp_path / "f.####.exr")), 1001, ExrMetadata(pipeline="test"),
                     display_transform=transform, device_colour=on_device, on_log=logged.append)
    sink.write(0, picture)
    pixels, _ = read_exr_frame(sink.written[0])
    assert np.isfinite(pixels).all()
    np.testing.assert_array_equal(pixels[2, 5, :3], 0.0)
    np.testing.assert_array_equal(pixels[7, 1, :3], 0.0)
    assert pixels[2, 6, :3].min() > 0  # the neighbours are the picture's
    assert len(logged) == 1 and logged[0].startswith("frame 1001: 2 of 256 pixels came out of the model as NaN")
