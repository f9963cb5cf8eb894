"""Plates through a model without losing their highlights (output/plate_highlights.py): in through the job's
display transform forward, out through its inverse, the plate's own values kept beyond what the transform
encodes. Config: OCIO's built-in `ocio://default` (ACES 2.0 SDR view)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cinegen.common import color
from cinegen.common.exr import ExrMetadata, read_exr_frame, write_exr_frame
from cinegen.common.params import CommonParams, UpscaleParams
from cinegen.server.output import plate_highlights
from cinegen.server.output.plate_highlights import SHOULDER, HighlightCount, highlight_weight, plate_to_model
from cinegen.server.pipelines import upscale
from cinegen.server.pipelines.base import JobSpec, RunContext
from cinegen.server.pipelines.upscale import UpscalePipeline

VIEW_ROUND_TRIP = 1e-4  # relative, neutral 0..8 through the view and back: measured 2.1e-5 (lossless OCIO CPU path)
HALF = 2.0 ** -10  # relative precision of the half-float EXR the job writes (rounding included)
BEYOND = "brighter than the model"  # the job's log line


@pytest.fixture(autouse=True)
def builtin_config(monkeypatch):
    monkeypatch.delenv("OCIO", raising=False)


def highlight_plate(size: int = 64) -> np.ndarray:
    """ACEScg (H, W, 3): a neutral ramp 0..8 on top, a sun of 200 and an orange practical (8, 2, 1) below,
    0.18 around."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    rgb = np.full((size, size, 3), 0.18, np.float32)
    rgb[: size // 2] = (x[: size // 2] / (size - 1) * 8.0)[..., None]
    rgb[np.hypot(x - 16, y - 48) < 6] = 200.0
    rgb[44:52, 40:48] = (8.0, 2.0, 1.0)
    return rgb


def run_plate_job(registry, tmp_path, rgb: np.ndarray, *, name: str = "up", **common) -> tuple[list[str], list[str]]:
    """A tiny-sd plate job at strength 0 and scale 1 through the real frame writer; (paths, log lines)."""
    for frame in (1001, 1002):
        write_exr_frame(tmp_path / f"plate.{frame}.exr", rgb, metadata=ExrMetadata())
    logs: list[str] = []
    out = str(tmp_path / name / "o.####.exr")
    job = JobSpec("hl", "upscale", CommonParams(model="tiny-sd", steps=2, seed=3, out=out, **common),
                  UpscaleParams(input=str(tmp_path / "plate.####.exr"), scale=1.0, strength=0.0))
    ctx = RunContext(job=job, registry=registry, report_progress=lambda *e: None, report_preview=lambda *a: None,
                     report_frame=lambda *a: None, report_log=logs.append, is_cancelled=lambda: False)
    UpscalePipeline().validate(job, registry)
    return UpscalePipeline().run(ctx), logs


@pytest.fixture()
def identity_model(monkeypatch):
    """A stand-in model that changes nothing: the cascade hands back the plate's model pixels as they came."""
    monkeypatch.setattr(upscale, "run_cascade", lambda adapter, cond, x0, *a, **k: x0)
    monkeypatch.setattr(upscale, "decode_latents", lambda adapter, images, settings: images)


# ---- in: the same transform as out ---------------------------------------------------------------------
def test_a_neutral_plate_up_to_8_round_trips_through_the_view_where_srgb_clipped_it_at_1():
    ramp = np.repeat(np.linspace(0.0, 8.0, 4001, dtype=np.float32)[:, None], 3, axis=1)
    seen = plate_to_model(ramp[None], "view")
    back = color.display_to_scene_linear(seen.display, "view")[0]
    np.testing.assert_allclose(back, ramp, rtol=VIEW_ROUND_TRIP, atol=1e-6)
    old = color.display_to_scene_linear(np.clip(color.scene_linear_to_srgb_display(ramp), 0, 1), "srgb")
    assert old.max() <= 1.0 + 1e-5  # the path before: the plate went in by the sRGB curve, clipped at 1


def test_an_identity_model_gives_back_a_plate_with_highlights_up_to_200(registry, tmp_path, identity_model):
    rgb = highlight_plate()
    paths, logs = run_plate_job(registry, tmp_path, rgb)
    out = read_exr_frame(paths[0])[0][..., :3]
    # neutrals to 8 through the view and back, the sun and the orange light (beyond the view) from the plate
    np.testing.assert_allclose(out, rgb, rtol=VIEW_ROUND_TRIP + HALF, atol=1e-4)
    assert out.max() == pytest.approx(200.0, rel=HALF)  # before: 1.0 (the plate clipped on the way in)


def test_through_srgb_a_plate_keeps_0_to_1_and_its_values_from_one_stop_over_white(registry, tmp_path, identity_model):
    rgb = highlight_plate()
    paths, _ = run_plate_job(registry, tmp_path, rgb, display_transform="srgb")
    out = read_exr_frame(paths[0])[0][..., :3]
    peak = rgb.max(axis=-1)
    inside, over = peak <= 1.0, peak >= 2.0
    np.testing.assert_allclose(out[inside], rgb[inside], rtol=HALF, atol=2e-5)  # the sRGB curve round-trips
    np.testing.assert_allclose(out[over], rgb[over], rtol=HALF, atol=0)  # weight 1: the plate's own values
    between = ~inside & ~over  # blended: above the model's 1, at most the plate
    assert (out[between] >= 1.0 - 1e-3).all() and (out[between] <= rgb[between] * (1 + HALF)).all()


# ---- out: the rule ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", ["view", "srgb"])
def test_the_weight_is_exactly_0_inside_0_1_and_rises_smoothly_to_1_over_the_shoulder(transform):
    saturated = np.eye(3, dtype=np.float32) * 0.999  # ACEScg primaries: sRGB display far above 1, still a [0, 1) plate
    inside = np.concatenate([np.random.default_rng(5).uniform(0, 0.999, (5000, 3)).astype(np.float32), saturated])
    assert not highlight_weight(inside, color.scene_linear_to_display(inside, transform), transform).any()
    assert plate_to_model(inside[None], transform).highlights is None
    neutral = np.repeat(np.geomspace(1.0, 1000.0, 3000, dtype=np.float32)[:, None], 3, axis=1)
    display = color.scene_linear_to_display(neutral, transform)
    w = highlight_weight(neutral, display, transform)
    k0, k1 = SHOULDER[transform]
    assert (np.diff(w) >= -1e-6).all() and w[-1] == 1.0  # monotone in the plate's brightness, 1 at the top
    assert (w[display.max(-1) <= k0] == 0).all() and (w[display.max(-1) >= k1] == 1).all()
    assert np.abs(np.diff(w)).max() < 0.02  # no step: 3000 samples over three decades, smoothstep slope <= 1.5


def test_a_plate_inside_0_1_is_written_bit_for_bit_as_without_the_rule(registry, tmp_path, monkeypatch):
    rgb = np.random.default_rng(2).uniform(0.0, 0.99, (64, 64, 3)).astype(np.float32)
    rgb[:8, :8] = 200.0  # one hot corner: the rest must not move by a bit
    with_rule, _ = run_plate_job(registry, tmp_path, rgb, name="rule")
    monkeypatch.setattr(plate_highlights.PlateHighlights, "apply", lambda self, output: output)
    without, _ = run_plate_job(registry, tmp_path, rgb, name="plain")
    kept, plain = (read_exr_frame(p[0])[0] for p in (with_rule, without))
    cold = np.ones((64, 64), bool)
    cold[:8, :8] = False  # scale 1: the weight is not resized, so it is 0 everywhere else
    assert np.array_equal(kept[cold].view(np.uint32), plain[cold].view(np.uint32))
    np.testing.assert_allclose(kept[:8, :8, :3], 200.0, rtol=HALF)  # the real tiny VAE cannot give 200; the plate can
    assert plain[:8, :8, :3].max() < 130.0  # the view's top (display 1 -> 128) is all a model could give


def test_highlights_are_resized_with_the_output_and_only_their_pixels_change():
    rgb = np.full((16, 16, 3), 0.5, np.float32)
    rgb[4:8, 4:8] = 50.0
    seen = plate_to_model(rgb, "view")
    model = np.full((32, 32, 3), 0.5, np.float32)  # a model output at 2x, 0.5 everywhere
    merged = seen.highlights.apply(model)
    assert merged.shape == (32, 32, 3)
    np.testing.assert_allclose(merged[10:14, 10:14], 50.0, rtol=1e-3)  # the core of the light: the plate (half copy)
    far = np.ones((32, 32), bool)
    far[6:18, 6:18] = False  # beyond the bilinear footprint of the light
    assert np.array_equal(merged[far], model[far])


# ---- the artist is told ------------------------------------------------------------------------------------
def test_the_job_says_once_how_many_plate_pixels_were_beyond_the_model(registry, tmp_path, identity_model):
    rgb = highlight_plate()
    _, logs = run_plate_job(registry, tmp_path, rgb)
    lines = [line for line in logs if BEYOND in line]
    seen = plate_to_model(rgb, "view")
    expected = 2 * seen.hot_pixels  # two frames
    assert len(lines) == 1 and lines[0].startswith(f"{expected} of {2 * 64 * 64} plate pixels")
    assert seen.hot_pixels >= 100 + 64  # at least the sun's core and the orange light
    _, quiet = run_plate_job(registry, tmp_path, np.full((64, 64, 3), 0.5, np.float32), name="quiet")
    assert not any(BEYOND in line for line in quiet)


def test_frames_read_twice_by_overlapping_clips_are_counted_once():
    count = HighlightCount("view")
    seen = plate_to_model(np.full((4, 4, 3), 50.0, np.float32), "view")
    for frame in (0, 1, 1, 2):
        count.add(frame, seen)
    assert count.message().startswith("48 of 48 plate pixels")


def test_a_dit_plate_is_read_through_the_view_and_keeps_its_sun_aside(tmp_path):
    from cinegen.server.pipelines.upscale_dit import read_plate_clip

    rgb = np.full((32, 32, 3), 0.2, np.float32)
    rgb[12:20, 12:20] = 500.0
    for frame in range(1001, 1006):
        write_exr_frame(tmp_path / f"p.{frame}.exr", rgb, metadata=ExrMetadata())
    plates: list = []
    clip = read_plate_clip(str(tmp_path / "p.####.exr"), None, None, "view", plates)
    assert clip.shape == (1, 3, 5, 32, 32) and float(clip.max()) <= 1.0
    assert len(plates) == 5 and all(p.hot_pixels == 64 for p in plates)
    out = plates[0].highlights.apply(np.zeros((64, 64, 3), np.float32))  # at the 2x output
    np.testing.assert_allclose(out[28:36, 28:36], 500.0, rtol=HALF)


def _context(registry, job: JobSpec, logs: list[str]) -> RunContext:
    return RunContext(job=job, registry=registry, report_progress=lambda *e: None, report_preview=lambda *a: None,
                      report_frame=lambda *a: None, report_log=logs.append, is_cancelled=lambda: False)


def test_a_dit_plate_job_writes_its_sun_from_the_plate(registry, tmp_path):
    rgb = np.full((32, 32, 3), 0.2, np.float32)
    rgb[8:24, 8:24] = 500.0
    for frame in range(1001, 1006):
        write_exr_frame(tmp_path / f"w.{frame}.exr", rgb, metadata=ExrMetadata())
    logs: list[str] = []
    job = JobSpec("wan", "upscale", CommonParams(model="tiny-wan", steps=2, seed=1, guidance=1.0,
                                                out=str(tmp_path / "o" / "o.####.exr")),
                  UpscaleParams(mode="plate", input=str(tmp_path / "w.####.exr"), scale=2.0))
    UpscalePipeline().validate(job, registry)
    paths = UpscalePipeline().run(_context(registry, job, logs))
    assert len(paths) == 5
    out = read_exr_frame(paths[2])[0][..., :3]
    np.testing.assert_allclose(out[20:44, 20:44], 500.0, rtol=HALF)  # the sun's core at 2x: weight 1
    assert out.max() > 128.0  # the most the view could give back from a model pixel
    assert sum(BEYOND in line for line in logs) == 1


def test_a_panorama_keeps_the_highlights_of_its_pasted_input(registry, tmp_path):
    from cinegen.common.params import PanoramaParams
    from cinegen.server.pipelines.panorama import PanoramaPipeline

    rgb = np.full((32, 32, 3), 0.18, np.float32)
    rgb[8:24, 8:24] = 300.0
    write_exr_frame(tmp_path / "in.exr", rgb, metadata=ExrMetadata())
    logs: list[str] = []
    job = JobSpec("pano", "panorama", CommonParams(model="tiny-sd", steps=2, seed=2, width=128, height=64,
                                                   out=str(tmp_path / "p" / "p.####.exr")),
                  PanoramaParams(projection="ring", input=str(tmp_path / "in.exr")))
    PanoramaPipeline().validate(job, registry)
    paths = PanoramaPipeline().run(_context(registry, job, logs))
    out = read_exr_frame(paths[0])[0][..., :3]
    top, left = 16, 48  # centred, as place_input puts it
    np.testing.assert_allclose(out[top + 8:top + 24, left + 8:left + 24], 300.0, rtol=HALF)
    # elsewhere the model's own values, never the plate's 300 (the inverse view alone can reach ~170 on the tiny
    # model's saturated near-white, e.g. display (1, 0.998, 1) -> (125, 52, 173), so no fixed bound below it)
    assert not np.isclose(out[:, :left], 300.0, rtol=0.05).any() and sum(BEYOND in line for line in logs) == 1


def test_the_device_colour_path_keeps_the_highlights_too(tmp_path):
    from cinegen.common.sequence import SequencePattern
    from cinegen.server.output.frames import FrameSink

    rgb = np.full((8, 8, 3), 0.5, np.float32)
    rgb[:4] = 40.0
    seen = plate_to_model(rgb, "srgb")
    sink = FrameSink(SequencePattern.parse(str(tmp_path / "d.####.exr")), 1001, ExrMetadata(), device_colour=True,
                     display_transform="srgb")  # curve + matrix in torch, half RGBA handed to the writer
    sink.write(0, torch.from_numpy(seen.display).permute(2, 0, 1), highlights=seen.highlights)
    out = read_exr_frame(sink.written[0])[0]
    np.testing.assert_allclose(out[:4, :, :3], 40.0, rtol=HALF)
    np.testing.assert_allclose(out[4:, :, :3], 0.5, rtol=HALF, atol=1e-5)
    assert (out[..., 3] == 1.0).all()
