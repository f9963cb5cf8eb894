"""The `upscale` pipeline on UNet models: stock equivalence, where the method's patches live, plates, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cinegen.common.client import RequestRejected, build_request
from cinegen.common.color import scene_linear_to_display
from cinegen.common.exr import ExrMetadata, read_exr_frame, write_exr_frame
from cinegen.common.params import CommonParams, UpscaleParams
from cinegen.server.diffusion import cascade
from cinegen.server.diffusion.cascade import cosine_mix_weight, resize_pixels
from cinegen.server.diffusion.dilation import dilation_targets
from cinegen.server.diffusion.scale_fusion import ScaleFusionAttnProcessor
from cinegen.server.errors import InvalidArgument, JobCancelled, ResourceExhausted
from cinegen.server.pipelines.base import JobSpec, RunContext
from cinegen.server.pipelines.upscale import UpscalePipeline, resolve_target, run_with_memory_retry
from cinegen.server.output import resize_alpha
from cinegen.server.pipelines.upscale_unet import CascadeSettings, generate_clip, upscaled_reference


# ---- a run context that keeps the written frames as tensors ----------------------------------------
class RecordingSink:
    def __init__(self, first_frame: int):
        self.first_frame = first_frame
        self.frames: dict[int, torch.Tensor] = {}
        self.written: list[str] = []

    def write(self, index: int, image: torch.Tensor, alpha=None) -> str:
        frame = self.first_frame + index
        self.frames[frame] = image.detach().clone()
        self.written.append(f"frame-{frame}")
        return self.written[-1]


class RecordingContext(RunContext):
    def __init__(self, registry, common: CommonParams, params: UpscaleParams, cancel_when=None):
        self.progress_events: list[tuple] = []
        self.logs: list[str] = []
        self.sink: RecordingSink | None = None
        super().__init__(job=JobSpec("test", "upscale", common, params), registry=registry,
                         report_progress=lambda *event: self.progress_events.append(event),
                         report_preview=lambda frame, image: None, report_frame=lambda *a: None,
                         report_log=self.logs.append,
                         is_cancelled=lambda: bool(cancel_when and cancel_when(self.progress_events)))

    def frame_sink(self, pattern, resolved, **kwargs):
        self.sink = RecordingSink(resolved.first_frame)
        return self.sink


def run_upscale(registry, cancel_when=None, params=None, **common) -> RecordingContext:
    c = dict(prompt="a red disc", negative_prompt="blue", model="tiny-sd", seed=7, steps=4, guidance=7.5,
             out="unused.####.exr")
    c.update(common)
    ctx = RecordingContext(registry, CommonParams(**c), params or UpscaleParams(), cancel_when)
    UpscalePipeline().validate(ctx.job, registry)
    UpscalePipeline().run(ctx)
    return ctx


def unet_state(unet: nn.Module) -> tuple[dict, dict]:
    processors = {name: attn.processor for name, attn in unet.named_modules() if hasattr(attn, "set_processor")}
    convs = {name: (m.dilation, m.padding) for name, m in unet.named_modules() if isinstance(m, nn.Conv2d)}
    return processors, convs


def spy_predict(monkeypatch, adapter, calls: list, on_call=None):
    """Record (latent size, t, scale fusion on?, dilation of the first target) for every UNet call."""
    original = adapter.predict
    unet = adapter.denoiser
    first_target = dilation_targets(unet)[0][1]

    def predict(x, t, cond):
        fused = any(isinstance(a.processor, ScaleFusionAttnProcessor)
                    for name, a in unet.named_modules() if name.endswith("attn1"))
        calls.append(("predict", tuple(x.shape[-2:]), int(t), fused, first_target.dilation))
        if on_call:
            on_call(len([c for c in calls if c[0] == "predict"]))
        return original(x, t, cond)

    monkeypatch.setattr(adapter, "predict", predict)


# ---- stage 1 is the stock computation --------------------------------------------------------------
def test_one_stage_cascade_equals_stock_stable_diffusion_bit_for_bit(registry):
    ctx = run_upscale(registry, params=UpscaleParams(scale=1.0))
    adapter = registry.get("tiny-sd")
    stock = adapter.pipe("a red disc", negative_prompt="blue", num_inference_steps=4, guidance_scale=7.5,
                         generator=torch.Generator().manual_seed(7), height=64, width=64, output_type="pt").images
    assert list(ctx.sink.frames) == [1001]
    assert torch.equal(ctx.sink.frames[1001], stock[0])


def test_video_stage_one_equals_stock_animatediff_bit_for_bit(registry):
    from cinegen.server.pipelines.base import Resolved

    adapter = registry.get("tiny-animatediff")
    r = Resolved("a red disc", "blue", "tiny-animatediff", 3, 2, 7.5, 64, 64, 8, 24.0, 1001)
    ours = generate_clip(adapter, r)
    stock = adapter.pipe("a red disc", negative_prompt="blue", num_frames=8, num_inference_steps=2,
                         guidance_scale=7.5, generator=torch.Generator().manual_seed(3), height=64, width=64,
                         output_type="latent").frames
    assert torch.equal(ours, stock)


# ---- the method's patches: where and when ---------------------------------------------------------
def test_dilation_and_scale_fusion_only_in_upscaled_stages_at_their_steps(registry, monkeypatch):
    adapter = registry.get("tiny-sd")
    before = unet_state(adapter.denoiser)
    calls: list = []
    spy_predict(monkeypatch, adapter, calls)
    ctx = run_upscale(registry, params=UpscaleParams(scale=2.0, dilate_tau=2))
    timesteps = [751, 501, 251, 1]  # DDIM, 4 steps; stage 2 starts at K = int(0.3 * 4) = 1
    stage1 = [c for c in calls if c[1] == (8, 8)]
    stage2 = [c for c in calls if c[1] == (16, 16)]
    assert [c[2] for c in stage1] == timesteps and not any(c[3] for c in stage1)
    assert all(c[4] == (1, 1) for c in stage1)
    assert [c[2] for c in stage2] == timesteps[1:]
    assert all(c[3] for c in stage2), "scale fusion on every step of the upscaled stage"
    assert [c[4] for c in stage2] == [(2, 2), (1, 1), (1, 1)], "dilated exactly for step indices < dilate_tau"
    assert unet_state(adapter.denoiser) == before, "the same processors and conv settings afterwards"
    assert ctx.sink.frames[1001].shape == (3, 128, 128)
    assert any("stage 2/2, 128×128" in event[0] for event in ctx.progress_events)


@pytest.mark.parametrize("how", ["cancel", "error inside a dilated step"])
def test_cancel_or_error_mid_stage_restores_processors_and_convs(registry, monkeypatch, how):
    adapter = registry.get("tiny-sd")
    before = unet_state(adapter.denoiser)
    calls: list = []
    if how == "cancel":
        def cancel_when(events):  # after the first step of stage 2
            return any(e[0].startswith("stage 2") and e[1] >= 1 for e in events)
        spy_predict(monkeypatch, adapter, calls)
        with pytest.raises(JobCancelled):
            run_upscale(registry, cancel_when=cancel_when, params=UpscaleParams(scale=2.0))
    else:
        def fail(count):
            if count == 5:  # stage 1 made 4 calls: the first upscaled step, dilated and fused
                raise RuntimeError("boom")
        spy_predict(monkeypatch, adapter, calls, on_call=fail)
        with pytest.raises(RuntimeError, match="boom"):
            run_upscale(registry, params=UpscaleParams(scale=2.0))
        assert calls[-1][3] and calls[-1][4] == (2, 2), "the failure happened with both patches in place"
    assert any(c[1] == (16, 16) for c in calls), "the job did reach the upscaled stage"
    assert unet_state(adapter.denoiser) == before


def test_cosine_mix_before_every_step_from_k_and_never_before(registry, monkeypatch):
    adapter = registry.get("tiny-sd")
    calls: list = []
    spy_predict(monkeypatch, adapter, calls)
    original_mix = cascade.cosine_mix

    def mix(x, z, c):
        calls.append(("mix", c))
        return original_mix(x, z, c)

    monkeypatch.setattr(cascade, "cosine_mix", mix)
    run_upscale(registry, params=UpscaleParams(scale=2.0, strength=0.5, cosine_scale=1.5))
    stage2_start = next(i for i, c in enumerate(calls) if c[0] == "mix" or c[1] == (16, 16))
    assert all(c[0] == "predict" for c in calls[:stage2_start]), "stage 1 is never mixed"
    upscaled = calls[stage2_start:]
    # strength 0.5 of 4 steps: K = 4 - int(2.0) = 2, so steps 2 and 3 run, each right after one mix
    assert [c[0] for c in upscaled] == ["mix", "predict", "mix", "predict"]
    assert [c[2] for c in upscaled[1::2]] == [251, 1]
    for mixed, step in zip(upscaled[0::2], upscaled[1::2]):
        assert mixed[1] == pytest.approx(cosine_mix_weight(step[2], cosine_scale=1.5))


def test_latent_resize_skips_the_vae_between_stages(registry, monkeypatch):
    adapter = registry.get("tiny-sd")
    encodes: list = []
    original = adapter.pipe.vae.encode
    monkeypatch.setattr(adapter.pipe.vae, "encode", lambda *a, **k: encodes.append(1) or original(*a, **k))
    run_upscale(registry, steps=2, params=UpscaleParams(scale=2.0))
    assert len(encodes) == 1, "pixel path: decode, resize, encode once per upscaled stage"
    encodes.clear()
    ctx = run_upscale(registry, steps=2, params=UpscaleParams(scale=2.0, latent_resize=True))
    assert encodes == [] and ctx.sink.frames[1001].shape == (3, 128, 128)


def test_video_generate_upscales_every_frame_of_the_clip(registry):
    ctx = run_upscale(registry, model="tiny-animatediff", steps=2, frames=8, params=UpscaleParams(scale=2.0))
    assert sorted(ctx.sink.frames) == list(range(1001, 1009))
    assert all(f.shape == (3, 128, 128) for f in ctx.sink.frames.values())
    assert len({round(float(f.mean()), 6) for f in ctx.sink.frames.values()}) > 1, "frames differ"


# ---- plates --------------------------------------------------------------------------------------
def write_plate(folder, frames=range(1005, 1008), size=(64, 64), name="plate"):
    height, width = size[1], size[0]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for n, frame in enumerate(frames):
        rgb = np.stack([x / width, y / height, np.full_like(x, 0.2 + 0.1 * n)], axis=-1) * 0.8
        rgb[:4, :4] = 3.0  # a highlight above display white
        path = folder / f"{name}.{frame:04d}.exr"
        write_exr_frame(path, rgb, metadata=ExrMetadata())
        paths.append(path)
    return str(folder / f"{name}.####.exr"), paths


def display_of(path) -> torch.Tensor:
    linear, _ = read_exr_frame(path)
    # the job's default display transform, the SDR view, forward: the plate as the model sees it
    display = np.clip(scene_linear_to_display(np.ascontiguousarray(linear[..., :3]), "view"), 0, 1)
    return torch.from_numpy(display).permute(2, 0, 1).unsqueeze(0).float()


def test_plate_at_strength_zero_is_the_resized_plate_through_the_vae(registry, tmp_path):
    pattern, paths = write_plate(tmp_path, frames=(1005, 1006))
    ctx = run_upscale(registry, prompt="", params=UpscaleParams(input=pattern, scale=2.0, strength=0.0))
    adapter = registry.get("tiny-sd")
    assert sorted(ctx.sink.frames) == [1005, 1006], "frames keep the plate's numbers"
    for frame, path in zip((1005, 1006), paths):
        resized = resize_pixels(display_of(path), (128, 128), clamp=(0.0, 1.0))
        reference = adapter.decode(adapter.encode(resized))[0]
        torch.testing.assert_close(ctx.sink.frames[frame], reference, atol=1e-5, rtol=0)
    # 3.0 is inside the view's range (display 0.87): nothing beyond the model to report (test_plate_highlights.py)
    assert not any("brighter than the model" in line for line in ctx.logs)


def test_plate_refinement_honours_vae_tiles(registry, tmp_path, monkeypatch):
    pattern, _ = write_plate(tmp_path, frames=[1005])
    adapter = registry.get("tiny-sd")
    decodes: list = []
    original = adapter.pipe.vae.decode
    monkeypatch.setattr(adapter.pipe.vae, "decode", lambda *a, **k: decodes.append(1) or original(*a, **k))
    run_upscale(registry, steps=2, params=UpscaleParams(input=pattern, strength=0.0, vae_tile=64))
    assert len(decodes) == 9, "a 128 px frame in 64 px tiles with 16 px overlap is 3 x 3 tiles"


def test_plate_refinement_starts_from_the_noised_plate(registry, tmp_path, monkeypatch):
    pattern, paths = write_plate(tmp_path, frames=[1005])
    adapter = registry.get("tiny-sd")
    inputs: list = []
    original_predict = adapter.predict
    monkeypatch.setattr(adapter, "predict", lambda x, t, cond: inputs.append((x.clone(), int(t)))
                        or original_predict(x, t, cond))
    run_upscale(registry, steps=4, params=UpscaleParams(input=pattern, strength=0.5, vae_tile=64))
    # strength 0.5 of 4 steps: K = 2, so the UNet first sees the plate noised to t_2 (SDEdit's z_K) and
    # nothing earlier: the refinement is anchored to the plate, not drawn from noise.
    settings = CascadeSettings(steps=4, strength=0.5, vae_tile=64)
    x0_up = upscaled_reference(adapter, display_of(paths[0]), (128, 128), settings, x0_is_pixels=True)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(4)
    noise = torch.randn(x0_up.shape, generator=torch.Generator().manual_seed(7 + 1))
    z_k = scheduler.add_noise(x0_up, noise, scheduler.timesteps[2:3])
    assert [t for _, t in inputs] == [int(t) for t in scheduler.timesteps[2:]]
    torch.testing.assert_close(inputs[0][0], z_k, atol=1e-5, rtol=1e-5)  # same ops, VAE tiles summed in order


def test_a_plates_matte_picks_the_cosine_exponent_per_pixel(registry, tmp_path, monkeypatch):
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    alpha = (x < 32).astype(np.float32)  # the left half is the foreground
    rgba = np.stack([x / 64, y / 64, np.full_like(x, 0.3), alpha], axis=-1)
    write_exr_frame(tmp_path / "fg.1001.exr", rgba, metadata=ExrMetadata())
    weights: list = []
    original_mix = cascade.cosine_mix
    monkeypatch.setattr(cascade, "cosine_mix", lambda x, z, c: weights.append(c) or original_mix(x, z, c))
    adapter = registry.get("tiny-sd")
    steps: list = []
    original_predict = adapter.predict
    monkeypatch.setattr(adapter, "predict", lambda x, t, cond: steps.append(int(t)) or original_predict(x, t, cond))
    run_upscale(registry, steps=4, params=UpscaleParams(input=str(tmp_path / "fg.####.exr"), strength=0.5,
                                                       cosine_scale=0.5, matte_cosine_scale=3.0))
    assert len(weights) == len(steps) == 2
    for c, t in zip(weights, steps):
        assert tuple(c.shape) == (1, 1, 16, 16)  # one exponent per latent cell of the 128 px stage
        torch.testing.assert_close(c[..., :8], torch.full_like(c[..., :8], cosine_mix_weight(t, cosine_scale=3.0)))
        torch.testing.assert_close(c[..., 8:], torch.full_like(c[..., 8:], cosine_mix_weight(t, cosine_scale=0.5)))
        assert float(c[..., :8].max()) < float(c[..., 8:].min())  # the foreground lets go of the plate sooner


def test_refine_at_the_reference_size_is_plain_sdedit(registry, tmp_path, monkeypatch):
    pattern, _ = write_plate(tmp_path, frames=[1], size=(32, 32))
    adapter = registry.get("tiny-sd")
    calls: list = []
    spy_predict(monkeypatch, adapter, calls)
    monkeypatch.setattr(cascade, "cosine_mix", lambda *a: pytest.fail("refine mode does not mix"))
    run_upscale(registry, steps=3, params=UpscaleParams(mode="refine", input=pattern, scale=2.0))
    # 32 → 64 px is tiny-sd's native size: no scale fusion and no dilated conv at any step
    assert calls and all(not fused and dilation == (1, 1) for _, _, _, fused, dilation in calls)


def test_video_refine_denoises_each_clip_without_cosine_mix(registry, tmp_path, monkeypatch):
    pattern, _ = write_plate(tmp_path, frames=range(1, 9), size=(32, 32))
    adapter = registry.get("tiny-animatediff")
    calls: list = []
    spy_predict(monkeypatch, adapter, calls)
    monkeypatch.setattr(cascade, "cosine_mix", lambda *a: pytest.fail("refine mode does not mix"))
    ctx = run_upscale(registry, model="tiny-animatediff", steps=3, first_frame=101,
                      params=UpscaleParams(mode="refine", input=pattern, scale=2.0))
    # strength 0.6 of 3 steps: K = 3 - int(1.8) = 2, one step on the whole 8-frame clip at 64 px
    assert [c[1] for c in calls] == [(8, 8)]
    assert sorted(ctx.sink.frames) == list(range(101, 109))
    assert ctx.sink.frames[101].shape == (3, 64, 64)


def test_plate_frames_keep_their_numbers_through_the_server(client, tmp_path):
    pattern, _ = write_plate(tmp_path / "in", frames=[1005, 1006])
    out = tmp_path / "out" / "up.####.exr"
    common = CommonParams(seed=1, steps=2, out=str(out))
    result = client.run(build_request("upscale", common, UpscaleParams(input=pattern, strength=0.3)))
    assert result.state == "completed", result.message
    assert sorted(p.rsplit("/", 1)[1] for p in result.outputs) == ["up.1005.exr", "up.1006.exr"]
    pixels, meta = read_exr_frame(tmp_path / "out" / "up.1005.exr")
    assert pixels.shape == (128, 128, 4) and meta["cinegen:pipeline"] == "upscale"
    common = CommonParams(seed=1, steps=2, first_frame=1, out=str(out))
    result = client.run(build_request("upscale", common, UpscaleParams(input=pattern, strength=0.3)))
    assert sorted(p.rsplit("/", 1)[1] for p in result.outputs) == ["up.0001.exr", "up.0002.exr"]


def test_a_plate_frame_cut_short_on_disk_fails_the_job_with_its_name_not_as_a_server_bug(client, tmp_path):
    pattern, paths = write_plate(tmp_path / "in", frames=[1001, 1002])
    whole = paths[1].read_bytes()
    paths[1].write_bytes(whole[:len(whole) // 2])  # a copy or render still under way: the header reads, the pixels not
    common = CommonParams(seed=1, steps=2, out=str(tmp_path / "out" / "up.####.exr"))
    result = client.run(build_request("upscale", common, UpscaleParams(input=pattern, strength=0.3)))
    assert (result.state, result.code) == ("failed", "INVALID_ARGUMENT"), result.message
    assert result.message.startswith("Frame 1002 of the plate") and "report it" not in result.message


def test_an_anamorphic_plate_s_pixel_aspect_is_kept_in_the_upscaled_frames(client, tmp_path):
    import OpenImageIO as oiio

    (tmp_path / "in").mkdir()
    spec = oiio.ImageSpec(64, 32, 4, "half")
    spec.attribute("PixelAspectRatio", 2.0)  # a 2x anamorphic plate: Nuke shows it 256 wide at 2x
    out = oiio.ImageOutput.create(str(tmp_path / "in" / "ana.1001.exr"))
    assert out.open(str(tmp_path / "in" / "ana.1001.exr"), spec)
    assert out.write_image(np.full((32, 64, 4), 0.3, np.float32)) and out.close()
    params = UpscaleParams(input=str(tmp_path / "in" / "ana.####.exr"), scale=2.0, strength=0.3)
    result = client.run(build_request("upscale", CommonParams(seed=1, steps=2, out=str(tmp_path / "up.####.exr")),
                                      params))
    assert result.state == "completed", result.message
    pixels, header = read_exr_frame(result.outputs[0])
    assert pixels.shape[:2] == (64, 128) and header["PixelAspectRatio"] == 2.0


def test_a_plate_s_alpha_is_carried_to_the_upscaled_frames(client, tmp_path):
    # a compositor's plate with a matte: a soft-edged disc, alpha 0 outside
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    alpha = np.clip(20 - np.hypot(x + 0.5 - 32, y + 0.5 - 32), 0, 1)
    rgba = np.concatenate([np.full((64, 64, 3), 0.3, np.float32) * alpha[..., None], alpha[..., None]], axis=-1)
    (tmp_path / "in").mkdir()
    write_exr_frame(tmp_path / "in" / "matte.1001.exr", rgba, metadata=ExrMetadata())
    out = tmp_path / "out" / "up.####.exr"
    params = UpscaleParams(input=str(tmp_path / "in" / "matte.####.exr"), scale=2.0, strength=0.3)
    result = client.run(build_request("upscale", CommonParams(seed=1, steps=2, out=str(out)), params))
    assert result.state == "completed", result.message
    pixels, _ = read_exr_frame(tmp_path / "out" / "up.1001.exr")
    assert pixels.shape == (128, 128, 4)
    expected = resize_alpha(alpha, 128, 128)
    assert np.abs(pixels[..., 3] - expected).max() < 2e-3  # half float
    assert pixels[0, 0, 3] == 0 and pixels[64, 64, 3] == 1, "outside stays cut out, the centre stays solid"


def test_resizing_a_matte_keeps_its_range_and_a_constant_matte_constant():
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (16, 1))
    up = resize_alpha(ramp, 64, 32)
    assert up.shape == (32, 64) and up.min() >= 0 and up.max() <= 1
    assert np.allclose(resize_alpha(np.full((16, 16), 0.5, np.float32), 40, 24), 0.5)
    assert np.allclose(resize_alpha(np.ones((64, 64), np.float32), 16, 16), 1.0)  # shrinking too


@pytest.mark.parametrize("case, code, words", [
    ("missing frame", "INVALID_ARGUMENT", "missing"),
    ("no frame number", "INVALID_ARGUMENT", "frame number"),
    ("no frames", "NOT_FOUND", "No frames"),
    ("sizes differ", "INVALID_ARGUMENT", "same size"),
    ("strength", "INVALID_ARGUMENT", "between 0 and 1"),
    ("strength 0 in generate", "INVALID_ARGUMENT", "leave the picture"),
    ("target below the plate", "INVALID_ARGUMENT", "smaller than the input"),
    ("scale off the grid", "INVALID_ARGUMENT", "multiple of 8"),
    ("smaller than native", "INVALID_ARGUMENT", "smaller than"),
    ("no input", "INVALID_ARGUMENT", "--input"),
    ("frame range outside the plate", "INVALID_ARGUMENT", "outside the sequence 1-3"),  # was a failed job
])
def test_bad_requests_are_refused_at_submit_with_a_sentence(client, tmp_path, case, code, words):
    pattern, paths = write_plate(tmp_path, frames=range(1, 4))
    params, common = UpscaleParams(input=pattern), dict(steps=2, out=str(tmp_path / "out" / "up.####.exr"))
    if case == "missing frame":
        paths[1].unlink()
    elif case == "no frame number":
        params.input = str(tmp_path / "plate.exr")
    elif case == "no frames":
        params.input = str(tmp_path / "other.####.exr")
    elif case == "sizes differ":
        write_exr_frame(paths[2], np.zeros((32, 32, 3), np.float32), metadata=ExrMetadata())
    elif case == "strength":
        params.strength = 1.5
    elif case == "strength 0 in generate":
        params = UpscaleParams(mode="generate", strength=0.0)
    elif case == "target below the plate":
        common.update(width=64, height=32)
    elif case == "scale off the grid":
        params.scale = 1.3
    elif case == "smaller than native":
        params, common = UpscaleParams(), dict(common, width=32, height=32)
    elif case == "no input":
        params = UpscaleParams(mode="plate")
    elif case == "frame range outside the plate":
        common.update(frame_range="5-6")
    with pytest.raises(RequestRejected) as err:
        client.submit(build_request("upscale", CommonParams(**common), params))
    assert err.value.code == code and words in err.value.message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_stages_that_cannot_run_as_asked_are_said_in_the_job_log(registry, tmp_path):
    # 64 -> 80 px on tiny-sd: stages are whole 16 px, so stages in between merge (it used to pass unsaid)
    ctx = run_upscale(registry, params=UpscaleParams(scale=1.25, stages=4), steps=1)
    assert any("--stages 4 gives 2 stage(s) (64x64 -> 80x80)" in line for line in ctx.logs), ctx.logs
    pattern, _ = write_plate(tmp_path, frames=range(1, 2))
    ctx = run_upscale(registry, params=UpscaleParams(input=pattern, mode="refine", stages=2), steps=1)
    assert any("--stages 2 is not used: refine mode is one pass" in line for line in ctx.logs), ctx.logs
    ctx = run_upscale(registry, params=UpscaleParams(scale=2.0, stages=3), steps=1)  # 64 -> 96 -> 128
    assert not any("--stages" in line for line in ctx.logs)


# ---- small pieces ---------------------------------------------------------------------------------
def test_target_from_scale_or_one_side_keeps_the_aspect():
    assert resolve_target((64, 32), 2.0, None, None) == (128, 64)
    assert resolve_target((64, 32), None, 256, None) == (256, 128)
    assert resolve_target((64, 32), None, None, 64) == (128, 64)
    assert resolve_target((64, 64), None, None, None) == (128, 128), "unset: twice the base"
    with pytest.raises(InvalidArgument, match="not both"):
        resolve_target((64, 64), 2.0, 128, None)


def test_out_of_memory_is_retried_once_with_smaller_tiles_then_resource_exhausted():
    seen: list[CascadeSettings] = []

    def flaky(settings):
        seen.append(settings)
        if len(seen) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return "done"

    start = CascadeSettings(steps=4, vae_tile=1024)
    assert run_with_memory_retry(flaky, start, lambda m: None) == "done"
    assert [s.vae_tile for s in seen] == [1024, 512] and seen[1].windows_per_batch < seen[0].windows_per_batch

    def always(settings):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(ResourceExhausted, match="vae-tile"):
        run_with_memory_retry(always, start, lambda m: None)


def test_cli_generate_upscale_writes_the_target_size(tmp_path, capsys):
    from cinegen.server.cli import main

    out = tmp_path / "up.####.exr"
    code = main(["generate", "upscale", "--prompt", "a red disc", "--scale", "2", "--steps", "3", "--seed", "5",
                 "--out", str(out), "--no-hf-cache"])
    assert code == 0
    pixels, meta = read_exr_frame(tmp_path / "up.1001.exr")
    assert pixels.shape == (128, 128, 4) and meta["cinegen:pipeline"] == "upscale"
    assert "stage 2/2" in capsys.readouterr().err
