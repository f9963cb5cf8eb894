"""The panorama pipeline (DynamicScaler OSD/PPD/GMG): the method's properties through the real path.

Tiny random-weight models draw noise-like pictures with no spatial or temporal coherence, so a
seam cannot show on them. Where continuity is measured, `SmoothWorld` stands in for the denoiser:
it has the one property real models have — its clean-image prediction is smooth across what it
sees together (one window) — and everything else (plan, OSD, scheduler, decoding) is the pipeline's.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler, UniPCMultistepScheduler

from cinegen.common.client import RequestRejected, build_request
from cinegen.common.exr import ExrMetadata, read_exr_frame, write_exr_frame
from cinegen.common.params import CommonParams, PanoramaParams
from cinegen.server.cli import main
from cinegen.server.diffusion.osd import BlendSchedule
from cinegen.server.diffusion.equirect import PITCH_ROWS
from cinegen.server.diffusion.panorama_denoise import (
    BandRouter, LatentLayout, NoiseLevels, PanoramaPlan, WindowRegion, band_of_elevation, denoise_panorama,
    projecting_denoise_step, region_band, sphere_view_regions, step_windows, upsample_latent)
from cinegen.server.diffusion.sampler import DenoiseLoop
from cinegen.server.diffusion.windows import Boundary, shift_delta_for, step_offset
from cinegen.server.errors import InvalidArgument, JobCancelled
from cinegen.server.models.animatediff import AnimateDiffAdapter
from cinegen.server.pipelines.base import Resolved
from cinegen.server.pipelines import panorama as panorama_module
from cinegen.server.pipelines.image import generate_images
from cinegen.server.pipelines.panorama import (
    PanoramaSettings, decode_panorama_frames, encode_input, generate_panorama, place_input)


PLAIN = dict(scale_down=None, early_overlap=False)  # offset shifting alone: no GMG pass, no early overlap


def _resolved(**kw) -> Resolved:
    base = dict(prompt="a red disc", negative_prompt="blue", model="tiny-sd", seed=7, steps=3, guidance=7.5,
                width=256, height=64, frames=1, fps=24.0, first_frame=1001)
    base.update(kw)
    return Resolved(**base)


class SmoothWorld:
    """A stand-in denoiser (VP, ε-prediction) whose x̂0 is its input box-blurred along `dims` of the
    model's layout, with edges replicated: smooth within a window, blind beyond it."""

    def __init__(self, adapter, dims: tuple[int, ...], passes: int = 4):
        self.adapter, self.dims, self.passes = adapter, dims, passes
        self.kind = adapter.kind

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    def predict(self, x, t, cond):
        alpha = float(self.adapter.scheduler.alphas_cumprod[int(t)])
        x0 = x
        for _ in range(self.passes):
            for d in self.dims:
                n = x0.shape[d]
                padded = torch.cat([x0.narrow(d, 0, 1), x0, x0.narrow(d, n - 1, 1)], dim=d)
                x0 = (padded.narrow(d, 0, n) + padded.narrow(d, 1, n) + padded.narrow(d, 2, n)) / 3
        return (x - alpha**0.5 * x0) / (1 - alpha) ** 0.5


class ShortClip(AnimateDiffAdapter):
    """tiny-animatediff told that its native clip is 4 frames: several temporal windows in ≤ 16 frames."""

    @property
    def native_frames(self) -> int:
        return 4


class PixelWorld:
    """tiny-sd with a local stand-in VAE (a latent cell is the mean colour of its 8×8 pixels): the
    tiny random VAE neither reconstructs (round trip error ~0.26) nor decodes locally (GroupNorm and
    attention span the frame), so "the input is back after decoding" needs a VAE that can say so."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.kind = adapter.kind

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    def encode(self, images, generator=None):
        pooled = torch.nn.functional.avg_pool2d(images * 2 - 1, 8)
        return torch.cat([pooled, torch.zeros_like(pooled[:, :1])], dim=1)

    def decode(self, latents):
        return (torch.nn.functional.interpolate(latents[:, :3], scale_factor=8, mode="nearest") / 2 + 0.5).clamp(0, 1)


def seam_ratio(values: torch.Tensor) -> tuple[float, float]:
    """(|last − first| / mean |adjacent|, share of adjacent pairs less different than the seam), the
    pairs taken along dim 0 (columns or frames) and averaged over everything else."""
    adjacent = (values[1:] - values[:-1]).abs().flatten(1).mean(1)
    seam = (values[-1] - values[0]).abs().mean()
    return float(seam / adjacent.mean()), float((adjacent < seam).float().mean())


# ---- equivalence and once-per-step ----------------------------------------------------------------
def test_one_window_panorama_equals_the_stock_image_pipeline_bit_for_bit(registry):
    adapter = registry.get("tiny-sd")
    r = _resolved(width=64, height=64)
    panorama = generate_panorama(adapter, r, PanoramaSettings(projection="plane", **PLAIN))
    assert torch.equal(panorama[:, :, 0], generate_images(adapter, r))


@pytest.mark.parametrize("model, size, frames, settings", [
    ("tiny-sd", (256, 64), 1, PanoramaSettings(projection="plane", **PLAIN)),
    ("tiny-sd", (200, 72), 1, PanoramaSettings(projection="plane", **PLAIN)),
    ("tiny-sd", (256, 64), 1, PanoramaSettings(projection="ring", **PLAIN)),
    ("tiny-sd", (200, 72), 1, PanoramaSettings(projection="ring", **PLAIN)),
    ("short-clip", (64, 64), 10, PanoramaSettings(projection="plane", **PLAIN)),  # pinned temporal windows
    ("short-clip", (96, 64), 10, PanoramaSettings(projection="ring", loop=True, **PLAIN)),  # frame ring
])
def test_every_latent_is_advanced_exactly_once_per_step(registry, model, size, frames, settings):
    if model == "short-clip":
        base = registry.get("tiny-animatediff")
        adapter = ShortClip(base.pipe, base.entry, base.device, base.dtype)
    else:
        adapter = registry.get(model)
    tallies = {}
    generate_panorama(adapter, _resolved(width=size[0], height=size[1], frames=frames, steps=3), settings,
                      record_counts=lambda step, counts: tallies.setdefault(step, counts))
    assert sorted(tallies) == [0, 1, 2]
    for counts in tallies.values():
        assert torch.equal(counts.net_advances, torch.ones_like(counts.net_advances))
        # Rings tile their axes exactly: with one row, nothing is denoised twice. Pinned ends overlap.
        if settings.wraps and size[1] == 64 and (settings.loop or frames == 1):
            assert int(counts.denoised.max()) == 1
    if not settings.wraps:
        assert any(int(c.renoised.max()) > 0 for c in tallies.values()), "pinned windows overlapped somewhere"


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler,
                                             PNDMScheduler])
def test_multistep_history_follows_each_latent_when_the_windows_shift(scheduler_class):
    # A per-position model: windowing must change nothing, even for schedulers that keep history.
    def predict(x, t):
        return torch.tanh(0.7 * x + 1e-3 * t.float())

    latent = torch.randn(1, 4, 1, 8, 24, generator=torch.Generator().manual_seed(0))
    whole = scheduler_class()
    whole.set_timesteps(6)
    expected = DenoiseLoop(whole, predict).run(latent[:, :, 0].clone())
    windowed = scheduler_class()
    windowed.set_timesteps(6)
    plan = PanoramaPlan((1, 8, 24), (1, 8, 8), boundary_w=Boundary.RING, max_batch=2)
    out = denoise_panorama(latent.clone(), windowed, predict, LatentLayout(video=False), plan, None)
    torch.testing.assert_close(out[:, :, 0], expected, rtol=0, atol=1e-5)


def test_projecting_step_advances_every_sphere_latent_once():
    class CountingLevels:  # a "noise level" that is just the number of advances
        def push_back(self, x, noise, index):
            return x - 1.0

    plan = PanoramaPlan((1, 8, 16), (1, 8, 8), projecting_steps=1)
    regions = sphere_view_regions(plan, step=3, offset_t=0, device=torch.device("cpu"))
    out = projecting_denoise_step(torch.zeros(1, 1, 1, 8, 16), regions, lambda x, k: x + 1.0, CountingLevels(),
                                  step_index=3, blend=BlendSchedule(r_max=0.0), generator=None)
    assert torch.allclose(out, torch.ones_like(out))


# ---- the paper's defaults: early overlap, global motion guidance, a prompt per latitude band ----------
def test_defaults_are_the_papers_and_each_can_be_turned_off():
    default = PanoramaSettings.from_params(PanoramaParams())
    assert default.scale_down == 2.0 and default.early_overlap and default.band_prompts == ()
    plain = PanoramaSettings.from_params(PanoramaParams(guidance_scale_down=1.0, early_overlap=False))
    assert plain.scale_down is None and not plain.early_overlap
    with pytest.raises(InvalidArgument, match="sphere"):
        PanoramaSettings.from_params(PanoramaParams(projection="ring", band_prompts=["sky", "sea"]))


def test_windows_overlap_in_the_early_steps_and_not_in_the_last_quarter(registry):
    adapter = registry.get("tiny-sd")  # 8×8-cell windows on a 8×16-cell ring: it tiles exactly without overlap
    tallies = {}
    generate_panorama(adapter, _resolved(steps=4, width=128), PanoramaSettings(projection="ring", scale_down=None),
                      record_counts=lambda step, counts: tallies.setdefault(step, counts))
    assert sorted(tallies) == list(range(4))
    mean_denoised = [float(tallies[i].denoised.float().mean()) for i in range(4)]
    for counts in tallies.values():  # overlapping or not, every latent is advanced once per step
        assert torch.equal(counts.net_advances, torch.ones_like(counts.net_advances))
    assert mean_denoised[0] >= 3.5 and mean_denoised[1] >= 1.9, mean_denoised  # overlap 0.75: ×4, 0.5: ×2
    assert mean_denoised[1] > mean_denoised[2] > 1.0, mean_denoised  # 0.25
    assert int(tallies[3].denoised.max()) == 1, mean_denoised  # overlap 0 in the last quarter
    off = {}
    generate_panorama(adapter, _resolved(steps=2, width=128), PanoramaSettings(projection="ring", **PLAIN),
                      record_counts=lambda step, counts: off.setdefault(step, counts))
    assert all(int(c.denoised.max()) == 1 for c in off.values())


def test_a_window_or_view_takes_the_band_of_its_latitude():
    assert [band_of_elevation(p) for p in PITCH_ROWS] == list(range(len(PITCH_ROWS)))
    plan = PanoramaPlan((1, 16, 32), (1, 8, 8))
    bands = {region_band(WindowRegion(w), 16) for w in step_windows(plan, (0, 0, 0)) if w.height.start == 0}
    assert bands == {band_of_elevation(90 - 180 * 3.5 / 15)} == {3}  # the upper row of windows: 48° → 45°
    views = sphere_view_regions(plan, step=0, offset_t=0, device=torch.device("cpu"))
    assert [region_band(v, 16) for v in views] == [b for b, p in enumerate(PITCH_ROWS) for _ in
                                                   range(1 if abs(p) == 90 else 6)]


def test_the_band_router_gives_each_band_exactly_its_regions_rows():
    plan = PanoramaPlan((2, 16, 32), (2, 8, 8))
    regions = [WindowRegion(w) for w in step_windows(plan, (0, 0, 0))]
    latent = torch.arange(2 * 16 * 32, dtype=torch.float32).reshape(1, 1, 2, 16, 32)
    layout = LatentLayout(video=False)  # image layout: each region is two batch items (its frames)
    x = layout.to_model([r.read(latent) for r in regions])
    calls = []

    def predict(part, t, band):
        calls.append((band, part.clone()))
        return part * 10 + band

    out = BandRouter(predict, latent_height=16)(x, torch.tensor(1), regions)
    for band, part in calls:
        mine = [r.read(latent) for r in regions if region_band(r, 16) == band]
        assert torch.equal(part, layout.to_model(mine))
    expected = [r.read(latent) * 10 + region_band(r, 16) for r in regions]
    assert torch.equal(out, layout.to_model(expected)) and sorted(b for b, _ in calls) == [3, 5]


def test_each_band_prompt_reaches_only_the_views_and_windows_of_its_band(registry):
    class PromptSpy:
        def __init__(self, adapter):
            self.adapter, self.kind, self.prompts, self.calls, self.step = adapter, adapter.kind, {}, [], -1

        def __getattr__(self, name):
            return getattr(self.adapter, name)

        def encode_prompt(self, prompt, negative, guidance, batch=1):
            cond = self.adapter.encode_prompt(prompt, negative, guidance, batch)
            self.prompts[id(cond)] = prompt
            return cond

        def predict(self, x, t, cond):
            self.calls.append((self.step, self.prompts[id(cond)], x.shape[0]))
            return self.adapter.predict(x, t, cond)

        def before_step(self, index, t, x):
            self.step = index
            return x

    spy = PromptSpy(registry.get("tiny-sd"))
    r = _resolved(prompt="horizon", width=256, height=128, steps=2)  # 16×32 cells: two rows of windows
    nine = PanoramaSettings(projection="sphere", scale_down=None, early_overlap=False,
                            band_prompts=tuple(f"band {b}" for b in range(9)))
    generate_panorama(spy, r, nine, hooks=(spy,))
    per_step = {}
    for step, prompt, items in spy.calls:
        per_step.setdefault(step, {}).setdefault(prompt, 0)
        per_step[step][prompt] += items
    # Step 0 is Panoramic Projecting Denoise: one view at each pole, six on every other pitch row.
    assert per_step[0] == {f"band {b}": 1 if abs(p) == 90 else 6 for b, p in enumerate(PITCH_ROWS)}
    plan = panorama_module.panorama_plan(spy, r, nine)
    windows = step_windows(plan, step_offset(1, shift_delta_for(plan.window)))
    expected = {f"band {region_band(WindowRegion(w), 16)}" for w in windows}
    assert set(per_step[1]) == expected and expected <= {"band 3", "band 4", "band 5"}  # ±48°: mid latitudes


def test_band_prompts_split_the_bands_evenly_from_the_zenith():
    three = PanoramaSettings(projection="sphere", band_prompts=("sky", "-", "ground"))
    assert [three.band_prompt(b, "horizon") for b in range(9)] == ["sky"] * 3 + ["horizon"] * 3 + ["ground"] * 3
    assert PanoramaSettings(projection="sphere").band_prompt(0, "horizon") == "horizon"


# ---- seams and loops ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2])
def test_ring_seam_is_as_continuous_as_the_interior_and_plane_seam_is_not(registry, seed):
    world = SmoothWorld(registry.get("tiny-sd"), dims=(-2, -1))
    ratios = {}
    for projection in ("plane", "ring"):
        latent = generate_panorama(world, _resolved(seed=seed), PanoramaSettings(projection=projection, **PLAIN))
        columns = latent[0, :, 0].permute(2, 0, 1)  # (W, C, H)
        ratios[projection] = seam_ratio(columns)
    ring_ratio, ring_rank = ratios["ring"]
    assert ring_ratio < 1.5 and ring_rank < 1.0, f"ring seam vs interior: {ratios['ring']}"
    assert ratios["plane"][0] > 2.0, f"plane edges never meet, so they differ: {ratios['plane']}"


def test_ring_decoding_sees_across_the_seam(registry):
    adapter = registry.get("tiny-sd")
    latent = generate_panorama(adapter, _resolved(seed=1), PanoramaSettings(projection="ring", **PLAIN))
    ring = next(decode_panorama_frames(adapter, latent, wrap=True))
    plane = next(decode_panorama_frames(adapter, latent, wrap=False))
    # Decoding the latent rolled by half a turn puts the seam in the middle, where it is interior.
    seam_inside = adapter.decode(torch.roll(latent[:, :, 0], 16, dims=-1))[0]
    band = slice(128 - 16, 128 + 16)
    ring_error = (torch.roll(ring, 128, dims=-1)[..., band] - seam_inside[..., band]).abs().mean()
    plane_error = (torch.roll(plane, 128, dims=-1)[..., band] - seam_inside[..., band]).abs().mean()
    assert ring_error < 0.01 < plane_error
    ring_seam, _ = seam_ratio(ring.permute(2, 0, 1))
    adjacent = (ring[..., 1:] - ring[..., :-1]).abs().mean(dim=(0, 1))
    assert float((ring[..., -1] - ring[..., 0]).abs().mean()) <= float(adjacent.max()), ring_seam


def test_loop_joins_the_last_frame_to_the_first(registry):
    world = SmoothWorld(registry.get("tiny-animatediff"), dims=(-3,))
    r = _resolved(model="tiny-animatediff", width=64, height=64, frames=16, steps=4, seed=1)
    ratios = {}
    for loop in (False, True):
        latent = generate_panorama(world, r, PanoramaSettings(loop=loop, **PLAIN))
        frames = torch.stack(list(decode_panorama_frames(world.adapter, latent, wrap=False)))
        ratios[loop] = seam_ratio(frames)
    assert ratios[True][0] < 1.5 and ratios[True][1] < 1.0, f"loop: frame 15 → 0 vs interior: {ratios[True]}"
    assert ratios[False][0] > 2.0, f"without --loop the ends never meet: {ratios[False]}"


# ---- conditioning and guidance ------------------------------------------------------------------------
def test_input_image_is_kept_in_its_place(registry):
    adapter = PixelWorld(registry.get("tiny-sd"))
    image = torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(0)).repeat_interleave(8, 1)
    image = image.repeat_interleave(8, 2)  # 48×32 px of distinct 8×8 blocks: a misplacement shows
    r = _resolved(seed=3)
    latent = generate_panorama(adapter, r, PanoramaSettings(projection="ring", **PLAIN), input_image=image)
    placed, top, left = place_input(image, r.width, r.height)
    assert (top, left) == (16, 104) and torch.equal(placed, image)
    region = (..., slice(top // 8, top // 8 + 4), slice(left // 8, left // 8 + 6))
    assert torch.equal(latent[region], encode_input(adapter, placed))
    decoded = next(decode_panorama_frames(adapter, latent, wrap=True))
    torch.testing.assert_close(decoded[:, top:top + 32, left:left + 48], image, rtol=0, atol=1e-5)
    free_latent = generate_panorama(adapter, r, PanoramaSettings(projection="ring", **PLAIN))
    free = next(decode_panorama_frames(adapter, free_latent, wrap=True))
    assert float((free[:, top:top + 32, left:left + 48] - image).abs().mean()) > 0.1


def test_an_input_on_wan_is_kept_as_the_latent_of_the_image_held_still(registry):
    # Wan's causal VAE: latent frame 0 stands for one frame, the others for four each — so the kept latent
    # is the held clip's, frame by frame, not one frame's latent pasted into every latent frame.
    adapter = registry.get("tiny-wan")
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    r = _resolved(model="tiny-wan", width=64, height=32, frames=5, steps=2)
    latent = generate_panorama(adapter, r, PanoramaSettings(projection="ring", **PLAIN), input_image=image)
    placed, top, left = place_input(image, r.width, r.height, adapter.vae_scale_factor)
    held = encode_input(adapter, placed, r.frames)
    cell = adapter.vae_scale_factor
    assert held.shape[2] == latent.shape[2] == 2 and not torch.equal(held[:, :, 0], held[:, :, 1])
    region = (..., slice(top // cell, top // cell + 2), slice(left // cell, left // cell + 2))
    assert torch.equal(latent[region], held.to(latent.dtype))


# 3 steps: the full-size run starts at step ⌊15/48·3⌋ = 0, where the upsampled result was taken for x_T as it was
@pytest.mark.parametrize("steps", [4, 3])
def test_global_motion_guidance_refines_the_upsampled_low_resolution_result(registry, steps):
    adapter = registry.get("tiny-sd")
    seen = []

    class Spy:
        def before_step(self, index, t, x):
            seen.append(("before", index, x.clone()))
            return x

        def after_step(self, index, t, x):
            seen.append(("after", index, x.clone()))
            return x

    r = _resolved(steps=steps)
    start = steps * 15 // 48
    generate_panorama(adapter, r, PanoramaSettings(projection="ring", scale_down=2.0, early_overlap=False), hooks=(Spy(),))
    shapes = [(kind, index, tuple(x.shape[-2:])) for kind, index, x in seen if kind == "before"]
    assert shapes == ([("before", i, (8, 16)) for i in range(steps)]
                      + [("before", i, (8, 32)) for i in range(start, steps)])
    low_result = seen[2 * steps - 1][2]
    full_start = seen[2 * steps][2]
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(steps)
    levels = NoiseLevels.for_scheduler(scheduler)
    noise = torch.randn(1, 4, 8, 32, generator=torch.Generator().manual_seed(r.seed)).unsqueeze(2)
    expected = levels.noised(upsample_latent(low_result, (8, 32), wrap_width=True), noise, start)
    torch.testing.assert_close(full_start, expected)


def test_wrapped_upsampling_commutes_with_turning_the_ring():
    low = torch.randn(1, 4, 2, 6, 10, generator=torch.Generator().manual_seed(0))
    turned_then_up = upsample_latent(torch.roll(low, 3, dims=-1), (12, 20), wrap_width=True)
    up_then_turned = torch.roll(upsample_latent(low, (12, 20), wrap_width=True), 6, dims=-1)
    torch.testing.assert_close(turned_then_up, up_then_turned)


def test_cancel_is_checked_between_windows(registry, monkeypatch):
    adapter = registry.get("tiny-sd")
    monkeypatch.setitem(panorama_module.CELLS_PER_CALL, "cpu", 8 * 8 * 8)  # batches of 8 tiny windows
    calls = []

    def stop_after_two():
        calls.append(1)
        if len(calls) > 2:
            raise JobCancelled()

    with pytest.raises(JobCancelled):  # 16 windows in two batches of 8
        generate_panorama(adapter, _resolved(width=1024), PanoramaSettings(projection="ring", **PLAIN),
                          should_stop=stop_after_two)
    assert len(calls) == 3  # before step 0, before its first batch of windows, before its second


# ---- through the server and the command line -----------------------------------------------------
def test_cli_writes_a_ring_panorama(tmp_path, capsys):
    out = tmp_path / "pano" / "ring.####.exr"
    code = main(["generate", "panorama", "--projection", "ring", "--width", "256", "--height", "64", "--steps", "3",
                 "--seed", "5", "--out", str(out), "--no-hf-cache"])
    assert code == 0
    pixels, meta = read_exr_frame(tmp_path / "pano" / "ring.1001.exr")
    assert pixels.shape == (64, 256, 4) and meta["cinegen:pipeline"] == "panorama"
    assert "envmap" not in meta
    assert "denoise" in capsys.readouterr().err


def test_sphere_frames_are_2_to_1_and_tagged_latlong(client, tmp_path):
    common = CommonParams(prompt="sky", seed=2, steps=3, width=128, height=64, out=str(tmp_path / "sky.####.exr"))
    result = client.run(build_request("panorama", common, PanoramaParams(projection="sphere")))
    assert result.state == "completed", result.message
    pixels, meta = read_exr_frame(result.outputs[0])
    assert pixels.shape[:2] == (64, 128) and meta["envmap"] == "latlong"


def test_input_image_file_through_the_server(client, tmp_path):
    plate = tmp_path / "plate.exr"
    rgb = np.full((32, 32, 4), 0.18, np.float32)
    write_exr_frame(plate, rgb, metadata=ExrMetadata(pipeline="test", model="", seed=0, prompt="", job="", params={},
                                                     fps=24.0))
    common = CommonParams(seed=2, steps=2, width=128, height=64, out=str(tmp_path / "in.####.exr"))
    result = client.run(build_request("panorama", common, PanoramaParams(projection="ring", input=str(plate))))
    assert result.state == "completed", result.message


@pytest.mark.parametrize("common, params, words", [
    (dict(width=192, height=64), dict(projection="sphere"), "twice its height"),
    (dict(width=256, height=32), dict(projection="ring"), "smaller than one window"),
    (dict(width=128, height=64), dict(loop=True), "image model"),
    (dict(model="tiny-animatediff", width=128, height=64, frames=8), dict(loop=True), "at least one window of 16"),
    (dict(width=128, height=64), dict(projection="cube"), "not one of"),
    (dict(width=128, height=64), dict(input="/no/such/image.exr"), "no input image"),
    # Wan's causal VAE decodes 4k + 1 frames: 7 used to complete with 5 frames written and no word said
    (dict(model="tiny-wan", width=64, height=32, frames=7), dict(projection="ring"), "Use 5 or 9 frames"),
    # sphere-only options on a ring used to be accepted and ignored
    (dict(width=128, height=64), dict(projection="ring", view_batch=3), "use --projection sphere"),
    (dict(width=128, height=64), dict(view_order="plan"), "use --projection sphere"),
])
def test_bad_panorama_requests_are_invalid_arguments(client, tmp_path, common, params, words):
    request = build_request("panorama", CommonParams(steps=2, out=str(tmp_path / "x.####.exr"), **common),
                            PanoramaParams(**params))
    with pytest.raises(RequestRejected) as err:
        client.submit(request)
    assert err.value.code == "INVALID_ARGUMENT" and words in err.value.message


def test_an_input_image_the_server_cannot_read_is_refused_at_submit_not_mid_job(client, tmp_path):
    (tmp_path / "broken.exr").write_bytes(b"not an image at all")
    request = build_request("panorama", CommonParams(steps=2, width=128, height=64, out=str(tmp_path / "x.####.exr")),
                            PanoramaParams(input=str(tmp_path / "broken.exr")))
    with pytest.raises(RequestRejected) as err:
        client.submit(request)
    assert err.value.code == "INVALID_ARGUMENT" and "Could not read" in err.value.message


def test_an_input_image_cut_short_on_disk_fails_the_job_with_its_name_not_as_a_server_bug(client, tmp_path):
    write_exr_frame(tmp_path / "cut.exr", np.random.default_rng(0).uniform(0, 1, (64, 64, 4)).astype(np.float32),
                    metadata=ExrMetadata())
    whole = (tmp_path / "cut.exr").read_bytes()
    (tmp_path / "cut.exr").write_bytes(whole[:len(whole) * 3 // 4])  # the header reads (Submit), the pixels not
    common = CommonParams(seed=2, steps=2, width=128, height=64, out=str(tmp_path / "x.####.exr"))
    result = client.run(build_request("panorama", common, PanoramaParams(input=str(tmp_path / "cut.exr"))))
    assert (result.state, result.code) == ("failed", "INVALID_ARGUMENT"), result.message
    assert "cut.exr" in result.message and "report it" not in result.message
