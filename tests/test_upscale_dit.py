"""The DiT path of the upscale pipeline (CineScale on Wan): stock equivalence at identity, then what each part adds."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline, WanVideoToVideoPipeline

from cinegen.common.color import srgb_display_to_scene_linear
from cinegen.common.exr import ExrMetadata, read_exr_frame, write_exr_frame
from cinegen.common.params import CommonParams, UpscaleParams
from cinegen.server.errors import InvalidArgument, JobCancelled
from cinegen.server.models.registry import ModelRegistry
from cinegen.server.models.wan import (TINY_PROFILE, tiny_wan_transformer, tiny_wan_vae,
                                       wan_flow_scheduler)
from cinegen.server.pipelines.base import JobSpec, Pipeline, RunContext
from cinegen.server.pipelines.upscale_dit import (CineScaleOptions, dit_target_size, plan_dit_stages, read_plate_clip,
                                                  refine_settings, run_dit_upscale, stage_sizes, validate_dit_upscale)

IDENTITY = CineScaleOptions(base_shift=1.0, refine_shift=1.0, ntk_alpha=1.0, attention_coef=1.0, tile=(2, 2))


@pytest.fixture(scope="module")
def wan_registry(tiny_model_cache):
    registry = ModelRegistry(use_hf_cache=False, cache_dir=tiny_model_cache)
    return registry


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> tuple[str, torch.Tensor]:
    """A 5-frame 32×32 scene-linear EXR plate; returns its pattern and its display-referred pixels."""
    folder = tmp_path_factory.mktemp("plate")
    display = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(11)).numpy()
    for i, rgb in enumerate(display):
        linear = srgb_display_to_scene_linear(rgb.astype(np.float32))
        rgba = np.concatenate([linear, np.ones_like(linear[..., :1])], axis=-1)
        write_exr_frame(folder / f"plate.{1001 + i:04d}.exr", rgba, metadata=ExrMetadata(), compression="zip")
    return str(folder / "plate.####.exr"), torch.from_numpy(display)


class CapturingSink:
    def __init__(self) -> None:
        self.frames: dict[int, torch.Tensor] = {}
        self.alphas: dict[int, np.ndarray | None] = {}
        self.written: list[str] = []

    def write(self, index: int, display_rgb: torch.Tensor, alpha=None) -> str:
        self.frames[index] = display_rgb.clone()
        self.alphas[index] = alpha
        self.written.append(f"frame{index}")
        return self.written[-1]

    def video(self) -> torch.Tensor:
        return torch.stack([self.frames[i] for i in sorted(self.frames)], dim=1).unsqueeze(0)  # 1, 3, F, H, W


class TestContext(RunContext):
    """A run context that keeps frames as tensors and records progress; optionally cancels after some steps."""
    __test__ = False

    def __init__(self, job: JobSpec, registry, cancel_after: int | None = None, capture: bool = True):
        self.events: list[tuple[str, int, int, float]] = []
        self.sink = CapturingSink()
        self._capture = capture
        super().__init__(job=job, registry=registry, report_progress=lambda *e: self.events.append(e),
                         report_preview=lambda *a: None, report_frame=lambda *a: None, report_log=lambda m: None,
                         is_cancelled=lambda: cancel_after is not None and len(self.events) >= cancel_after)

    def frame_sink(self, pattern, resolved, **kwargs):
        return self.sink if self._capture else super().frame_sink(pattern, resolved, **kwargs)


class _Upscale(Pipeline):  # only to use the shared `resolve`
    name, description, params_type, families = "upscale", "", UpscaleParams, ("wan",)

    def run(self, ctx):
        raise NotImplementedError


def _job(out: str, params: UpscaleParams, **common) -> JobSpec:
    base = dict(prompt="a red disc", negative_prompt="blue", model="tiny-wan", seed=7, steps=3, guidance=5.0, out=out)
    base.update(common)
    return JobSpec("job-1", "upscale", CommonParams(**base), params)


def _run(registry, params: UpscaleParams, options=None, out="/tmp/unused/x.####.exr", capture=True,
         cancel_after=None, **common):
    job = _job(out, params, **common)
    adapter = registry.get(job.common.model)
    ctx = TestContext(job, registry, cancel_after=cancel_after, capture=capture)
    paths = run_dit_upscale(ctx, adapter, _Upscale().resolve(job, adapter), params, options)
    return ctx, paths


def _stock_scheduler(adapter, shift: float):
    return UniPCMultistepScheduler.from_config(adapter.scheduler.config, flow_shift=shift)


def test_generate_at_native_size_with_identity_settings_equals_stock_wan_pipeline(wan_registry):
    ctx, _ = _run(wan_registry, UpscaleParams(mode="generate", scale=1.0), IDENTITY)
    adapter = wan_registry.get("tiny-wan")
    stock_pipe = WanPipeline(**{**adapter.pipe.components, "scheduler": _stock_scheduler(adapter, 1.0)})
    stock = stock_pipe("a red disc", negative_prompt="blue", height=32, width=32, num_frames=5, num_inference_steps=3,
                       guidance_scale=5.0, generator=torch.Generator().manual_seed(7), output_type="pt").frames
    assert torch.equal(ctx.sink.video(), stock.permute(0, 2, 1, 3, 4))


@pytest.mark.parametrize("tile", [(2, 2), (1, 1)], ids=["one-tile", "tiled-queries"])
def test_plate_refinement_with_identity_cinescale_equals_stock_video_to_video(wan_registry, plate, tile):
    pattern, _ = plate
    options = CineScaleOptions(refine_shift=1.0, ntk_alpha=1.0, attention_coef=1.0, tile=tile)
    ctx, _ = _run(wan_registry, UpscaleParams(mode="plate", input=pattern, scale=1.0, strength=0.7), options)
    adapter = wan_registry.get("tiny-wan")
    stock_pipe = WanVideoToVideoPipeline(tokenizer=adapter.pipe.tokenizer, text_encoder=adapter.pipe.text_encoder,
                                         transformer=adapter.pipe.transformer, vae=adapter.pipe.vae,
                                         scheduler=_stock_scheduler(adapter, 1.0))
    with torch.no_grad():  # the V2V module's own prompt cleaning needs ftfy; WanPipeline's encoding is the same
        positive, negative = (WanPipeline._get_t5_prompt_embeds(adapter.pipe, text, max_sequence_length=512)
                              for text in ("a red disc", "blue"))
    clip = read_plate_clip(pattern)  # the plate in display sRGB, as the artist sees it
    stock = stock_pipe(video=clip.permute(0, 2, 1, 3, 4), prompt_embeds=positive, negative_prompt_embeds=negative,
                       height=32, width=32, num_inference_steps=3, guidance_scale=5.0, strength=0.7,
                       generator=torch.Generator().manual_seed(7), output_type="pt").frames
    if tile == (2, 2):  # one tile holding every query: the stock attention call, same shapes, bit for bit
        assert torch.equal(ctx.sink.video(), stock.permute(0, 2, 1, 3, 4))
    else:  # 1×1 query tiles: SDPA on 2 of 8 queries at a time rounds differently (max 1.2e-6 after 3 steps + VAE)
        torch.testing.assert_close(ctx.sink.video(), stock.permute(0, 2, 1, 3, 4), atol=1e-5, rtol=0)


def test_plate_is_read_as_display_referred_srgb(plate):
    pattern, display = plate
    clip = read_plate_clip(pattern, transform="srgb")  # the fixture's plate was made from sRGB display values
    assert clip.shape == (1, 3, 5, 32, 32)
    # EXR frames are half float: the round trip through scene-linear keeps about 2-3 decimals.
    torch.testing.assert_close(clip[0].permute(1, 2, 3, 0), display, atol=5e-3, rtol=0)


def test_two_stage_generate_writes_target_size_frames_with_stage_progress(wan_registry):
    ctx, paths = _run(wan_registry, UpscaleParams(mode="generate", scale=2.0), guidance=1.0)
    assert len(paths) == 5 and ctx.sink.video().shape == (1, 3, 5, 64, 64)
    stages = [e[0] for e in ctx.events]
    assert stages.index("base 32x32") < stages.index("refine 64x64") < stages.index("write frames")
    fractions = [e[3] for e in ctx.events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    refine_steps = [e for e in ctx.events if e[0] == "refine 64x64"]
    assert [e[1] for e in refine_steps] == [1, 2] and refine_steps[0][2] == 2  # steps 1…2 of 3 (re-noised at 1)


def test_cinescale_blocks_change_the_refinement_and_are_removed_after(wan_registry):
    adapter = wan_registry.get("tiny-wan")
    rope, processors = adapter.denoiser.rope, dict(adapter.denoiser.attn_processors)
    plain = CineScaleOptions(ntk_alpha=1.0, attention_coef=1.0, tile=(4, 4), compress_positions=False)
    ctx_plain, _ = _run(wan_registry, UpscaleParams(mode="generate", scale=2.0), plain, guidance=1.0)
    ctx_cinescale, _ = _run(wan_registry, UpscaleParams(mode="generate", scale=2.0), guidance=1.0)
    assert not torch.allclose(ctx_plain.sink.video(), ctx_cinescale.sink.video())
    assert adapter.denoiser.rope is rope
    assert dict(adapter.denoiser.attn_processors) == processors


def test_blocks_are_removed_even_when_the_job_is_cancelled(wan_registry):
    adapter = wan_registry.get("tiny-wan")
    rope, processors = adapter.denoiser.rope, dict(adapter.denoiser.attn_processors)
    with pytest.raises(JobCancelled):
        _run(wan_registry, UpscaleParams(mode="generate", scale=2.0), cancel_after=4, guidance=1.0)  # inside the refinement
    assert adapter.denoiser.rope is rope and dict(adapter.denoiser.attn_processors) == processors


def test_cancel_between_steps_writes_no_frame(wan_registry):
    job = _job("/tmp/unused/x.####.exr", UpscaleParams(mode="generate", scale=2.0))
    adapter = wan_registry.get("tiny-wan")
    ctx = TestContext(job, wan_registry, cancel_after=1)
    with pytest.raises(JobCancelled):
        run_dit_upscale(ctx, adapter, _Upscale().resolve(job, adapter), job.params)
    assert ctx.sink.written == [] and len(ctx.events) == 1


def test_plate_mode_end_to_end_writes_exr_frames_at_the_target_size(wan_registry, plate, tmp_path):
    pattern, _ = plate
    out = str(tmp_path / "up" / "up.####.exr")
    _, paths = _run(wan_registry, UpscaleParams(mode="plate", input=pattern, scale=2.0), out=out, capture=False,
                    guidance=1.0)
    assert [Path(p).name for p in paths] == [f"up.{1001 + i}.exr" for i in range(5)]
    pixels, header = read_exr_frame(paths[-1])
    assert pixels.shape == (64, 64, 4) and header["cinegen:pipeline"] == "upscale"


def test_a_plate_s_alpha_reaches_the_dit_output_frames_resized(wan_registry, tmp_path):
    from cinegen.server.output import resize_alpha

    y, x = np.mgrid[0:32, 0:32].astype(np.float32)
    mattes = []
    for i in range(5):  # a matte that moves, so each frame's own alpha must arrive
        alpha = np.clip(10 - np.hypot(x + 0.5 - 10 - 3 * i, y + 0.5 - 16), 0, 1)
        rgba = np.concatenate([np.full((32, 32, 3), 0.2, np.float32) * alpha[..., None], alpha[..., None]], axis=-1)
        write_exr_frame(tmp_path / f"matte.{1001 + i:04d}.exr", rgba, metadata=ExrMetadata())
        mattes.append(alpha)
    params = UpscaleParams(mode="plate", input=str(tmp_path / "matte.####.exr"), scale=2.0)
    ctx, _ = _run(wan_registry, params, guidance=1.0)
    for i, alpha in enumerate(mattes):
        np.testing.assert_allclose(ctx.sink.alphas[i], resize_alpha(alpha, 64, 64), atol=1e-3)  # half-float plate


def test_an_anamorphic_plate_s_pixel_aspect_reaches_the_dit_output_frames(wan_registry, tmp_path):
    import OpenImageIO as oiio

    for i in range(5):
        spec = oiio.ImageSpec(32, 32, 4, "half")
        spec.attribute("PixelAspectRatio", 2.0)
        out = oiio.ImageOutput.create(str(tmp_path / f"ana.{1001 + i}.exr"))
        assert out.open(str(tmp_path / f"ana.{1001 + i}.exr"), spec)
        assert out.write_image(np.full((32, 32, 4), 0.2, np.float32)) and out.close()
    params = UpscaleParams(mode="plate", input=str(tmp_path / "ana.####.exr"), scale=2.0)
    _, paths = _run(wan_registry, params, out=str(tmp_path / "up" / "up.####.exr"), capture=False, guidance=1.0)
    assert read_exr_frame(paths[0])[1]["PixelAspectRatio"] == 2.0


def test_a_plate_given_without_a_mode_is_refined_fast_from_a_frame_subset(wan_registry, plate):
    pattern, _ = plate
    ctx, paths = _run(wan_registry, UpscaleParams(input=pattern, scale=2.0, fast=True), frames=1, guidance=1.0)
    assert len(paths) == 1 and ctx.sink.video().shape == (1, 3, 1, 64, 64)


def test_lora_is_applied_for_the_job_only(wan_registry, tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = tiny_wan_transformer(seed=0)
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    WanPipeline.save_lora_weights(str(tmp_path), transformer_lora_layers=get_peft_model_state_dict(transformer),
                                  weight_name="style.safetensors")
    params = UpscaleParams(mode="generate", scale=1.0)
    lora = UpscaleParams(mode="generate", scale=1.0, lora=str(tmp_path / "style.safetensors"))
    without, _ = _run(wan_registry, params, guidance=1.0)
    with_lora, _ = _run(wan_registry, lora, guidance=1.0)
    after, _ = _run(wan_registry, params, guidance=1.0)
    assert not torch.allclose(without.sink.video(), with_lora.sink.video())
    assert torch.equal(without.sink.video(), after.sink.video())


def test_stage_sizes_grow_to_exactly_the_target_in_valid_multiples():
    sizes = stage_sizes((832, 480), (3840, 2160), 3, 16)
    assert sizes[-1] == (3840, 2160) and len(sizes) == 3
    assert all(w % 16 == 0 and h % 16 == 0 for w, h in sizes)
    assert sizes == sorted(sizes) and sizes[0][0] > 832


def test_default_refinement_settings_follow_cinescale_scaled_to_the_training_grid(wan_registry):
    adapter = wan_registry.get("tiny-wan")
    first = refine_settings(adapter, 64, 64, 1, CineScaleOptions())
    assert first.alphas == (1.0, 20.0, 20.0) and first.shift == 9.0
    assert first.train_grid == (2, 2) and first.tile[0] <= 2 and first.tile[1] <= 2
    assert first.attention_scale > 1.0  # 4× the training tokens: sharper attention
    assert refine_settings(adapter, 128, 128, 2, CineScaleOptions()).alphas == (1.0, 25.0, 25.0)
    at_native = refine_settings(adapter, 32, 32, 1, CineScaleOptions())
    assert at_native.alphas == (1.0, 1.0, 1.0) and at_native.train_grid is None and at_native.attention_scale == 1.0
    plan = plan_dit_stages(adapter, "generate", (32, 32), (32, 32), 2, 1, CineScaleOptions())
    assert [s.refine for s in plan] == [None]  # nothing to refine at the native size


@pytest.mark.parametrize("common, params, hint", [
    ({"frames": 10}, UpscaleParams(), "9 or 13"),
    ({"frames": 0}, UpscaleParams(), "Use 1 frames"),
    ({"width": 40}, UpscaleParams(), "--width 32 or 48"),
    ({"height": 72, "width": 64}, UpscaleParams(), "--height 64 or 80"),
    ({}, UpscaleParams(mode="plate"), "--input"),
    ({}, UpscaleParams(lora="/nowhere/style.safetensors"), "LoRA"),
    ({"steps": 4}, UpscaleParams(strength=0.1), "at least 0.25"),
    ({}, UpscaleParams(stages=1, scale=2.0), "at least 2 stages"),
    # FreeScale's UNet knobs used to be accepted and silently ignored on the DiT path
    ({}, UpscaleParams(cosine_scale=3.0), "--cosine-scale tunes FreeScale"),
    ({}, UpscaleParams(mode="plate", input="/tmp/p.####.exr", matte_cosine_scale=2.0, dilate_tau=3),
     "--dilate-tau and --matte-cosine-scale tune"),
    ({}, UpscaleParams(fast=True), "--fast tunes FreeScale"),  # generate mode: nothing reads it
])
def test_bad_requests_are_rejected_with_the_nearest_valid_value(wan_registry, common, params, hint):
    with pytest.raises(InvalidArgument, match=hint):
        validate_dit_upscale(_job("/tmp/x.####.exr", params, **common), wan_registry)


def test_a_plate_with_a_missing_frame_or_a_target_below_it_is_refused_at_submit(wan_registry, tmp_path):
    for frame, width in ((1001, 48), (1002, 48), (1004, 48), (1005, 48)):  # 1003 missing (it used to fail mid-job)
        write_exr_frame(tmp_path / f"p.{frame}.exr", np.ones((48, width, 4), np.float32), metadata=ExrMetadata())
    pattern = str(tmp_path / "p.####.exr")
    with pytest.raises(InvalidArgument, match="missing 1 of its 5 frames"):
        validate_dit_upscale(_job("/tmp/x.####.exr", UpscaleParams(mode="plate", input=pattern)), wan_registry)
    write_exr_frame(tmp_path / "p.1003.exr", np.ones((48, 48, 4), np.float32), metadata=ExrMetadata())
    with pytest.raises(InvalidArgument, match="smaller than the input's 48x48"):  # it was made 32×32
        validate_dit_upscale(_job("/tmp/x.####.exr", UpscaleParams(mode="plate", input=pattern), width=32, height=32),
                             wan_registry)
    common = CommonParams(width=None, height=None)
    # a scale rounds to whole 16 px, never below the plate (a 40 px plate at scale 1 was made 32 px)
    assert dit_target_size(16, common, UpscaleParams(scale=1.0), (40, 24), plate=True) == (48, 32)
    assert dit_target_size(16, common, UpscaleParams(scale=2.0), (40, 24), plate=True) == (80, 48)
    # --width alone: the height follows the plate's aspect, rounded up where the nearest 16 px is below the
    # plate (a 1000x562 plate at --width 1008 got 560 and was refused as smaller than its input)
    assert dit_target_size(16, CommonParams(width=1008), UpscaleParams(), (1000, 562), plate=True) == (1008, 576)
    assert dit_target_size(16, CommonParams(height=576), UpscaleParams(), (1000, 562), plate=True) == (1024, 576)
    assert dit_target_size(16, CommonParams(width=2000), UpscaleParams(), (1000, 562), plate=True) == (2000, 1120)


def test_a_plate_that_is_not_4k_plus_1_frames_long_suggests_a_frame_count(wan_registry, plate, tmp_path):
    pattern, _ = plate
    validate_dit_upscale(_job("/tmp/x.####.exr", UpscaleParams(mode="plate", input=pattern)), wan_registry)
    six = tmp_path / "six"
    six.mkdir()
    for i in range(6):
        write_exr_frame(six / f"p.{1001 + i:04d}.exr", np.ones((16, 16, 4), np.float32), metadata=ExrMetadata())
    with pytest.raises(InvalidArgument, match="5 or 9"):
        validate_dit_upscale(_job("/tmp/x.####.exr", UpscaleParams(mode="plate", input=str(six / "p.####.exr"))),
                             wan_registry)


def test_benchmark_reports_every_stage_of_the_tiny_model_and_skips_real_size_without_cuda(tiny_model_cache):
    from cinegen.server.benchmarks import upscale_dit as bench

    report = bench.run(argparse.Namespace(device="cpu", real_size=True))
    stages = [row["stage"] for row in report["tiny"]]
    assert "generate: refine 64x64" in stages and "plate: decode" in stages
    assert all(row["seconds"] >= 0 for row in report["tiny"])
    assert "needs a CUDA GPU" in report["real_size"]


def test_real_size_benchmark_path_runs_on_a_tiny_architecture(tmp_path):
    from cinegen.server.benchmarks.upscale_dit import plate_upscale_rows, random_weight_wan

    parts = {"transformer": tiny_wan_transformer().config, "vae": tiny_wan_vae().config,
             "scheduler": wan_flow_scheduler().config, "profile": dataclasses.asdict(TINY_PROFILE)}
    for name, config in parts.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(dict(config)))
    adapter = random_weight_wan(tmp_path, torch.device("cpu"), torch.float32)
    row = plate_upscale_rows(adapter, (32, 32), (64, 48), frames=5, steps=4, measured_steps=1, vae_tile=None)
    assert row["frames_per_minute"] > 0 and row["stages"][1]["steps_measured"] == 1
    assert row["stages"][1]["steps_in_schedule"] == 2  # ⌊0.7·4⌋ = 2 steps denoised: re-noised at step 2


def test_real_size_configs_describe_the_wan_1_3b_architecture():
    from diffusers import WanTransformer3DModel

    from cinegen.server.benchmarks.upscale_dit import REAL_SIZE_CONFIGS

    config = json.loads((REAL_SIZE_CONFIGS / "transformer.json").read_text())
    with torch.device("meta"):  # the shapes only: no memory, no time
        transformer = WanTransformer3DModel.from_config(config)
    assert 1.3e9 < sum(p.numel() for p in transformer.parameters()) < 1.5e9
    assert json.loads((REAL_SIZE_CONFIGS / "profile.json").read_text())["native_width"] == 832


def test_random_weight_models_keep_the_float32_modules_diffusers_keeps_when_loading():
    from cinegen.server.benchmarks.upscale_dit import cast_like_from_pretrained

    transformer = cast_like_from_pretrained(tiny_wan_transformer(), torch.bfloat16)
    assert transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert transformer.rope.freqs_cos.dtype == transformer.scale_shift_table.dtype == torch.float32
    assert transformer.blocks[0].norm2.weight.dtype == torch.float32


def test_the_base_stage_samples_with_cinescale_s_shift_of_7(wan_registry):
    from cinegen.server.pipelines.upscale_dit import _with_shift

    adapter = wan_registry.get("tiny-wan")
    assert CineScaleOptions().base_shift == 7.0
    shifted, plain = _with_shift(adapter, CineScaleOptions().base_shift), _with_shift(adapter, 1.0)
    shifted.set_timesteps(6)
    plain.set_timesteps(6)
    sigma = plain.sigmas[:-1].double()
    torch.testing.assert_close(shifted.sigmas[:-1].double(), 7 * sigma / (1 + 6 * sigma), atol=1e-6, rtol=0)


def test_wan_2_2_re_noises_at_steps_minus_30_and_wan_2_1_at_step_15(wan_registry):
    from cinegen.server.pipelines.upscale_dit import default_strength, is_wan_2_2, start_index_for

    adapter = wan_registry.get("tiny-wan")
    assert not is_wan_2_2(adapter)
    assert start_index_for(50, default_strength(adapter, "generate")) == 15
    class Wan22Pipe:
        config = {"expand_timesteps": False, "boundary_ratio": 0.875}
        transformer_2 = object()

    class Wan22:
        pipe = Wan22Pipe()

    assert is_wan_2_2(Wan22())
    assert start_index_for(50, default_strength(Wan22(), "generate")) == 50 - 30
    assert start_index_for(50, default_strength(Wan22(), "plate")) == 50 - 30
