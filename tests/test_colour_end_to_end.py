"""Colour end to end: plates converted from the space the host names, generated frames made scene-linear
through the inverse of the config's SDR view (highlights above 1), the plain sRGB path kept, each round
trip within a stated error. Config: OCIO's built-in `ocio://default` (ACES 2.0 CG config)."""
from __future__ import annotations

import numpy as np
import pytest

from cinegen.common import color
from cinegen.common.client import RequestRejected
from cinegen.common.exr import ExrMetadata, read_exr_frame, write_exr_frame
from cinegen.common.params import UpscaleParams
from cinegen.common.proto import generator_pb2 as pb
from cinegen.common.sequence import SequencePattern
from cinegen.server.output.frames import FrameSink, display_transform_for
from cinegen.server.plate_colour import converted_params

VIEW_ROUND_TRIP = 2e-4  # measured 1.0e-4 over 100 000 pixels: the lossless CPU path of the ACES 2.0 view
SRGB_ROUND_TRIP = 1e-5  # sRGB curve and a 3x3 matrix in float32
HALF = 2.0 ** -10  # relative precision of a half-float EXR copy (11-bit mantissa, rounding included)


@pytest.fixture(autouse=True)
def builtin_config(monkeypatch):
    monkeypatch.delenv("OCIO", raising=False)


def _display_pixels(count: int = 20_000) -> np.ndarray:
    return np.random.default_rng(7).uniform(0.0, 1.0, (count, 3)).astype(np.float32)


@pytest.mark.parametrize("transform, tolerance", [("view", VIEW_ROUND_TRIP), ("srgb", SRGB_ROUND_TRIP)])
def test_display_to_scene_linear_round_trips(transform, tolerance):
    display = _display_pixels()
    back = color.scene_linear_to_display(color.display_to_scene_linear(display, transform), transform)
    assert np.abs(back - display).max() < tolerance


def test_a_generated_bright_sky_exceeds_1_after_the_inverse_view_and_not_after_srgb():
    rows = np.linspace(0.0, 1.0, 32, dtype=np.float32)[:, None, None]
    sky = (1 - rows) * np.array([0.55, 0.72, 0.97], np.float32) + rows * np.array([0.92, 0.94, 0.98], np.float32)
    sky = np.broadcast_to(sky, (32, 64, 3)).copy()  # a display-referred sky, bright near the horizon
    through_view = color.display_to_scene_linear(sky, "view")
    through_srgb = color.display_to_scene_linear(sky, "srgb")
    assert through_view.max() > 4.0  # HDR light: the view's highlight roll-off undone
    assert through_srgb.max() <= 1.0 + 1e-5  # the plain curve never leaves [0, 1]
    mid = color.display_to_scene_linear(np.full((1, 3), 0.5, np.float32), "view")
    assert 0.2 < float(mid.mean()) < 0.5  # mid-grey stays in the comp's usual range (measured 0.369)


@pytest.mark.parametrize("space", ["ACES2065-1", "ACEScct", "Linear Rec.709 (sRGB)", "sRGB Encoded Rec.709 (sRGB)"])
def test_plate_spaces_round_trip_through_the_working_space(space):
    stored = np.random.default_rng(3).uniform(0.0, 0.9, (5000, 3)).astype(np.float32)
    working = color.to_working_space(stored, space)
    back = color.convert(working, color.working_space_name(), space)
    np.testing.assert_allclose(back, stored, atol=2e-5, rtol=0)  # float32 OCIO, lossless processors


def test_an_unknown_plate_space_names_the_config_and_examples():
    with pytest.raises(color.ColorConfigError, match="no colour space 'LogC5'.*ACES2065-1|no colour space 'LogC5'"):
        color.to_working_space(np.zeros((1, 3), np.float32), "LogC5")


def test_a_plate_in_aces2065_is_converted_before_the_job_reads_it(tmp_path):
    stored = np.random.default_rng(1).uniform(0.0, 2.0, (8, 8, 3)).astype(np.float32)
    alpha = np.random.default_rng(2).uniform(0.0, 1.0, (8, 8, 1)).astype(np.float32)
    for frame in (1001, 1002):
        write_exr_frame(tmp_path / f"plate.{frame}.exr", np.concatenate([stored * (frame - 1000), alpha], axis=2),
                        metadata=ExrMetadata(colorspace="ACES2065-1"))
    params = UpscaleParams(mode="plate", input=str(tmp_path / "plate.####.exr"), input_colorspace="ACES2065-1")
    converted = converted_params(params, tmp_path / "job")
    assert converted.input_colorspace == "" and converted.input == str(tmp_path / "job" / "plate.####.exr")
    assert sorted(SequencePattern.parse(converted.input).glob_existing()) == [1001, 1002]
    pixels, _ = read_exr_frame(tmp_path / "job" / "plate.1002.exr")
    half_stored = read_exr_frame(tmp_path / "plate.1002.exr")[0][..., :3]  # what the plate really holds
    expected = color.to_working_space(half_stored, "ACES2065-1")
    np.testing.assert_allclose(pixels[..., :3], expected, rtol=HALF, atol=1e-6)  # one more half rounding
    np.testing.assert_allclose(pixels[..., 3:], alpha, rtol=HALF, atol=1e-3)  # the matte comes through
    assert not np.allclose(pixels[..., :3], half_stored, rtol=0.01)  # AP0 -> AP1 really changed the values
    same = UpscaleParams(mode="plate", input=params.input, input_colorspace="ACEScg")  # already the working space
    assert converted_params(same, tmp_path / "none") is same and not (tmp_path / "none").exists()


def test_frame_sink_writes_generated_frames_through_the_inverse_view(tmp_path):
    display = np.full((8, 8, 3), 0.97, np.float32)
    for transform in ("view", "srgb"):
        sink = FrameSink(SequencePattern.parse(str(tmp_path / transform / "f.####.exr")), 1001, ExrMetadata(),
                         display_transform=transform)
        sink.write(0, display)
        pixels, _ = read_exr_frame(sink.written[0])
        expected = color.display_to_scene_linear(display, transform)
        np.testing.assert_allclose(pixels[..., :3], expected, rtol=HALF, atol=1e-4)
    assert display_transform_for("", has_input=False) == "view"
    assert display_transform_for("srgb", has_input=False) == "srgb"
    # a plate goes in through the same transform forward (plate_highlights), so it round-trips either way
    assert display_transform_for("", has_input=True) == "view" and display_transform_for("srgb", has_input=True) == "srgb"


def test_the_server_refuses_an_unknown_plate_space_and_records_the_transform(client, tmp_path):
    out = str(tmp_path / "img" / "i.####.exr")
    request = pb.JobRequest(job_id="colour-1", pipeline="image",
                            common=pb.CommonParams(model="tiny-sd", width=64, height=64, steps=2, out=out))
    events = list(client.watch(client.submit(request).job_id))
    assert events[-1].WhichOneof("kind") == "completed", events[-1]
    pixels, header = read_exr_frame(events[-1].completed.outputs[0])
    assert header["cinegen:display_transform"] == "view" and header["cinegen:colorspace"] == "ACEScg"
    assert pixels[..., :3].max() > 1.0  # the tiny model's brightest pixels come out as light above 1
    plate = pb.JobRequest(job_id="colour-2", pipeline="upscale", common=pb.CommonParams(out=out.replace("img", "up")),
                          upscale=pb.UpscaleParams(mode="plate", input=out, input_colorspace="LogC5"))
    with pytest.raises(RequestRejected, match="no colour space 'LogC5'"):
        client.submit(plate)


def test_a_job_on_a_plate_in_another_space_reads_the_converted_copy(client, tmp_path):
    plate = np.concatenate([np.full((64, 64, 3), 0.18, np.float32), np.ones((64, 64, 1), np.float32)], axis=2)
    write_exr_frame(tmp_path / "bg.1001.exr", plate, metadata=ExrMetadata(colorspace="ACES2065-1"))
    request = pb.JobRequest(job_id="colour-3", pipeline="upscale",
                            common=pb.CommonParams(model="tiny-sd", steps=2, prompt="",
                                                   out=str(tmp_path / "up" / "u.####.exr")),
                            upscale=pb.UpscaleParams(mode="plate", input=str(tmp_path / "bg.####.exr"), scale=1.0,
                                                     strength=0.0, input_colorspace="ACES2065-1"))
    events = list(client.watch(client.submit(request).job_id))
    assert events[-1].WhichOneof("kind") == "completed", events[-1]
    logs = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
    assert any("plate converted from ACES2065-1 to ACEScg (1 frame(s))" in line for line in logs), logs
    # the frames record the artist's plate and its colour space, not the server's temporary working copy (a
    # farm retry on another server, whose state folder differs, then matches its own frames)
    header = read_exr_frame(events[-1].completed.outputs[0])[1]
    recorded = __import__("json").loads(header["cinegen:params"])
    assert recorded["input"] == str(tmp_path / "bg.####.exr") and recorded["input_colorspace"] == "ACES2065-1"
