"""CineScale image-to-video on Wan I2V models (pipelines/upscale_dit_i2v.py).

One stage at identity is the stock `WanImageToVideoPipeline`; every refinement stage is conditioned
on the first frame at *its own* size; long clips give each temporal window its own frames of the
condition.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline

from cinegen.common.color import srgb_display_to_scene_linear
from cinegen.common.exr import ExrMetadata, write_exr_frame
from cinegen.common.params import CommonParams, UpscaleParams
from cinegen.server.errors import InvalidArgument
from cinegen.server.models.wan import as_pil_image
from cinegen.server.pipelines.base import JobSpec
from cinegen.server.pipelines.upscale_dit import read_plate_clip, run_dit_upscale, validate_dit_upscale
from cinegen.server.pipelines.upscale_dit_i2v import condition_windows_predict
from test_upscale_dit import IDENTITY, TestContext, _Upscale
from tiny_wan_i2v import tiny_wan_i2v_with_clip


@pytest.fixture(scope="module")
def plain_i2v(registry):
    return registry.get("tiny-wan-i2v")  # no CLIP image encoder


@pytest.fixture(scope="module")
def clip_i2v(registry):
    return tiny_wan_i2v_with_clip(registry.get("tiny-wan-i2v"))


def _sequence(folder, frames: int, seed: int) -> tuple[str, torch.Tensor]:
    """An EXR sequence of 32×32 frames (scene-linear) and its display-referred pixels (F, H, W, 3)."""
    display = torch.rand(frames, 32, 32, 3, generator=torch.Generator().manual_seed(seed)).numpy()
    for i, rgb in enumerate(display):
        linear = srgb_display_to_scene_linear(rgb.astype(np.float32))
        write_exr_frame(folder / f"in.{1001 + i:04d}.exr", np.concatenate([linear, np.ones_like(linear[..., :1])], -1),
                        metadata=ExrMetadata(), compression="zip")
    return str(folder / "in.####.exr"), torch.from_numpy(display)


@pytest.fixture(scope="module")
def still(tmp_path_factory) -> str:
    return _sequence(tmp_path_factory.mktemp("still"), 1, seed=4)[0]


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> str:
    return _sequence(tmp_path_factory.mktemp("plate"), 5, seed=6)[0]


def _job(params: UpscaleParams, model: str, **common) -> JobSpec:
    base = dict(prompt="a red disc", negative_prompt="blue", model=model, seed=7, steps=3, guidance=5.0,
                out="/tmp/unused/x.####.exr")
    base.update(common)
    return JobSpec("job-1", "upscale", CommonParams(**base), params)


class Recording:
    """The adapter, with the condition, CLIP tokens and latent shape of every model call kept."""

    def __init__(self, adapter):
        self.adapter, self.calls = adapter, []

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    def predict(self, x, t, cond):
        self.calls.append((tuple(x.shape), cond.extra.get("condition"), cond.extra.get("image_embeds")))
        return self.adapter.predict(x, t, cond)


def _run(registry, adapter, params, options=None, **common):
    job = _job(params, adapter.entry.id, **common)
    ctx = TestContext(job, registry)
    run_dit_upscale(ctx, adapter, _Upscale().resolve(job, adapter), params, options)
    return ctx


@pytest.mark.parametrize("model", ["plain", "clip"])
def test_one_stage_at_identity_equals_the_stock_i2v_pipeline_bit_for_bit(registry, model, plain_i2v, clip_i2v,
                                                                        still):
    adapter = plain_i2v if model == "plain" else clip_i2v
    ctx = _run(registry, adapter, UpscaleParams(mode="generate", input=still, scale=1.0), IDENTITY)
    stock_pipe = WanImageToVideoPipeline(**{**adapter.pipe.components, "scheduler": UniPCMultistepScheduler.from_config(
        adapter.scheduler.config, flow_shift=1.0)})
    stock_pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():  # the I2V module's prompt cleaning needs ftfy; WanPipeline's encoding is the same
        positive, negative = (WanPipeline._get_t5_prompt_embeds(adapter.pipe, text, max_sequence_length=512)
                              for text in ("a red disc", "blue"))
    first = as_pil_image(read_plate_clip(still, 1)[0, :, 0])  # the first frame as the artist sees it
    stock = stock_pipe(image=first, prompt_embeds=positive, negative_prompt_embeds=negative, height=32, width=32,
                       num_frames=5, num_inference_steps=3, guidance_scale=5.0,
                       generator=torch.Generator().manual_seed(7), output_type="pt").frames
    assert torch.equal(ctx.sink.video(), stock.permute(0, 2, 1, 3, 4))


def test_every_refinement_stage_sees_the_first_frame_at_its_own_size(registry, clip_i2v, still):
    recording = Recording(clip_i2v)
    ctx = _run(registry, recording, UpscaleParams(mode="generate", input=still, scale=2.0, stages=3), IDENTITY)
    assert ctx.sink.video().shape == (1, 3, 5, 64, 64)
    first = as_pil_image(read_plate_clip(still, 1)[0, :, 0])
    tokens = clip_i2v.clip_image_embeds(first)
    sizes = []
    for shape, condition, embeds in recording.calls:
        h, w = shape[-2] * 8, shape[-1] * 8
        expected = clip_i2v.image_condition_latent(first, torch.zeros(shape), 5, w, h)
        assert torch.equal(condition, expected), f"stage {w}x{h}: the first frame encoded at that size"
        assert torch.equal(embeds, tokens)
        sizes.append((w, h))
    assert sorted(set(sizes)) == [(32, 32), (48, 48), (64, 64)]  # base, then two refinements


def test_plate_mode_refines_the_plate_conditioned_on_its_own_first_frame(registry, plain_i2v, plate):
    recording = Recording(plain_i2v)
    _run(registry, recording, UpscaleParams(mode="plate", input=plate, scale=2.0, strength=0.7), IDENTITY)
    first = as_pil_image(read_plate_clip(plate, 1)[0, :, 0])
    assert recording.calls and all(shape[-2:] == (8, 8) for shape, _, _ in recording.calls)  # 64×64: one stage
    for shape, condition, embeds in recording.calls:
        assert embeds is None  # no CLIP image projection on this model
        assert torch.equal(condition, plain_i2v.image_condition_latent(first, torch.zeros(shape), 5, 64, 64))


def test_each_temporal_window_takes_its_own_frames_of_the_condition(plain_i2v):
    recording = Recording(plain_i2v)
    cond = plain_i2v.encode_prompt("a red disc", "", 1.0)
    condition = torch.randn(1, 8, 6, 4, 4, generator=torch.Generator().manual_seed(0))  # 6 latent frames
    cond = dataclasses.replace(cond, extra={"condition": condition})
    predict = condition_windows_predict(recording, cond, window=2, overlap=1)
    x = torch.randn(1, 4, 6, 4, 4, generator=torch.Generator().manual_seed(1))
    predict(x, torch.tensor(500.0))
    starts = []
    for shape, seen, _ in recording.calls:
        assert shape[2] == seen.shape[2] == 2
        start = next(s for s in range(5) if torch.equal(seen, condition[:, :, s:s + 2]))
        starts.append(start)
    assert starts == sorted(set(starts)) and starts[0] == 0 and starts[-1] == 4, starts
    recording.calls.clear()
    short = dataclasses.replace(cond, extra={"condition": condition[:, :, :2]})
    condition_windows_predict(recording, short, window=2, overlap=1)(x[:, :, :2], torch.tensor(500.0))
    assert len(recording.calls) == 1 and recording.calls[0][1] is short.extra["condition"]  # the stock call


def test_an_i2v_model_in_generate_mode_needs_its_first_frame(registry, tmp_path):
    job = _job(UpscaleParams(mode="generate", scale=2.0), "tiny-wan-i2v")
    with pytest.raises(InvalidArgument, match="image-to-video model: give the video's first frame"):
        validate_dit_upscale(job, registry)
    validate_dit_upscale(_job(UpscaleParams(mode="generate", scale=2.0), "tiny-wan"), registry)  # t2v: no image


def test_cli_upscales_a_video_from_its_first_frame(still, tmp_path):
    from cinegen.common.exr import read_exr_frame
    from cinegen.server.cli import main

    out = tmp_path / "up" / "v.####.exr"
    code = main(["generate", "upscale", "--model", "tiny-wan-i2v", "--input", still, "--scale", "2", "--frames", "5",
                 "--steps", "2", "--out", str(out), "--no-hf-cache"])
    assert code == 0
    pixels, meta = read_exr_frame(tmp_path / "up" / "v.1005.exr")
    assert pixels.shape == (64, 64, 4) and meta["cinegen:model"] == "tiny-wan-i2v"
