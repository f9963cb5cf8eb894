"""The background frame writer: bounded, ordered, atomic, and a write error fails the job."""
from __future__ import annotations

import os
import threading
import uuid

import numpy as np
import pytest
import torch

from cinegen.common import exr
from cinegen.common.client import build_request
from cinegen.common.exr import ExrMetadata, read_exr_frame, write_exr_frame
from cinegen.common.params import CommonParams
from cinegen.common.sequence import SequencePattern
from cinegen.server.errors import ResourceExhausted
from cinegen.server.output import device_colour, frames
from cinegen.server.output.frames import FrameSink


def _sink(tmp_path, **kwargs) -> FrameSink:
    return FrameSink(SequencePattern.parse(str(tmp_path / "f.####.exr")), 1001, ExrMetadata(pipeline="test"),
                     **kwargs)


def _picture(seed: int, size: int = 16) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def test_a_write_error_fails_the_sequence_and_leaves_no_partial_frame(tmp_path, monkeypatch):
    real_fsync, calls = exr._fsync, []

    def fsync_failing_on_second_frame(path):
        calls.append(path)
        if len(calls) == 3:  # frame 1: file + folder; frame 2's file fails
            raise OSError(28, "No space left on device")
        real_fsync(path)

    monkeypatch.setattr(exr, "_fsync", fsync_failing_on_second_frame)
    sink = _sink(tmp_path)
    sink.write(0, _picture(0))
    sink.write(1, _picture(1))
    with pytest.raises(ResourceExhausted, match="disk holding .* is full: frame f.1002.exr"):
        sink.flush()
    with pytest.raises(ResourceExhausted, match="is full"):
        sink.write(2, _picture(2))  # later frames fail at once
    assert sorted(os.listdir(tmp_path)) == ["f.1001.exr"], "no temporary file and no frame after the error"


def test_write_returns_before_the_frame_is_on_disk_and_the_queue_is_bounded(tmp_path, monkeypatch):
    release, started = threading.Event(), threading.Event()
    real_write = frames.write_exr_frame

    def slow_disk(*args, **kwargs):
        started.set()
        assert release.wait(10), "test released the writer"
        real_write(*args, **kwargs)

    monkeypatch.setattr(frames, "write_exr_frame", slow_disk)
    sink = _sink(tmp_path, max_pending=2)
    sink.write(0, _picture(0))  # returns although the disk is stuck: the caller goes on computing
    assert started.wait(10) and os.listdir(tmp_path) == []
    sink.write(1, _picture(1))
    sink.write(2, _picture(2))  # writer holds frame 0; frames 1 and 2 fill the queue
    fourth = threading.Thread(target=sink.write, args=(3, _picture(3)))
    fourth.start()
    fourth.join(0.3)
    assert fourth.is_alive(), "a full queue makes the caller wait: memory stays bounded"
    release.set()
    fourth.join(10)
    assert [os.path.basename(p) for p in sink.written] == [f"f.{1001 + i}.exr" for i in range(4)]


def test_a_failed_image_job_reports_the_write_error(client, tmp_path, monkeypatch):
    real_write = frames.write_exr_frame

    def failing_second_frame(path, *args, **kwargs):
        if path.endswith("1002.exr"):
            raise exr.ExrWriteError(f"Could not write the EXR frame '{path}': disk gone")
        real_write(path, *args, **kwargs)

    monkeypatch.setattr(frames, "write_exr_frame", failing_second_frame)
    common = CommonParams(prompt="x", seed=1, steps=2, width=64, height=64, frames=3, out=str(tmp_path / "i.####.exr"))
    result = client.run(build_request("image", common, job_id=f"w-{uuid.uuid4().hex[:8]}"))
    assert result.state == "failed" and "disk gone" in result.message
    assert sorted(os.listdir(tmp_path)) == ["i.1001.exr"]


def test_colour_on_the_device_matches_opencolorio_on_the_host(tmp_path):
    picture = _picture(4, 32)
    alpha = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    host, device = _sink(tmp_path / "host", device_colour=False), _sink(tmp_path / "dev", device_colour=True)
    host.write(0, picture, alpha=alpha)
    device.write(0, picture, alpha=alpha)
    a, _ = read_exr_frame(host.written[0])
    b, _ = read_exr_frame(device.written[0])
    # both are half; float32 torch vs OCIO's lossless CPU path differ by at most one half step
    np.testing.assert_allclose(b, a, rtol=2e-3, atol=1e-4)
    np.testing.assert_array_equal(a[..., 3], alpha.astype(np.float16).astype(np.float32))


def test_the_device_path_is_refused_for_a_transform_that_is_not_curve_and_matrix(monkeypatch):
    real = device_colour.srgb_display_to_scene_linear
    monkeypatch.setattr(device_colour, "srgb_display_to_scene_linear", lambda rgb: real(rgb) + 0.01 * np.square(rgb))
    device_colour._primaries_matrix_for.cache_clear()
    try:
        assert device_colour._primaries_matrix_for("probe-config") is None
    finally:
        device_colour._primaries_matrix_for.cache_clear()
    monkeypatch.undo()
    assert device_colour.primaries_matrix() is not None, "the built-in config is curve then matrix"


def test_half_pixels_are_stored_as_given(tmp_path):
    pixels = np.random.default_rng(0).uniform(0, 4, (8, 8, 4)).astype(np.float16)
    write_exr_frame(tmp_path / "h.exr", pixels, metadata=ExrMetadata(pipeline="test"))
    back, header = read_exr_frame(tmp_path / "h.exr")
    assert header["pixel_type"] == "half"
    np.testing.assert_array_equal(back, pixels.astype(np.float32))
