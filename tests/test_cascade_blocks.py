"""Tailored self-cascade building blocks (ALGORITHMS.md §1a): stage plans, re-noising, cosine mix."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from cinegen.server.diffusion.cascade import (
    CascadeHooks,
    cascade_hooks,
    cosine_mix,
    cosine_mix_weight,
    cosine_mix_weight_map,
    noised_references,
    plan_stages,
    renoise_start_index,
    resize_latent,
    resize_pixels,
)

# ---------------------------------------------------------------------------------------------
# stage plans
# ---------------------------------------------------------------------------------------------


def test_sdxl_plan_doubles_to_4k_square():
    assert plan_stages((1024, 1024), (4096, 4096)) == [(1024, 1024), (2048, 2048), (4096, 4096)]


def test_target_not_above_native_area_is_a_single_stage():
    assert plan_stages((512, 512), (512, 512)) == [(512, 512)]
    assert plan_stages((1024, 1024), (768, 512)) == [(768, 512)]


def test_explicit_stage_count_overrides_the_doubling():
    plan = plan_stages((1024, 1024), (8192, 8192), stages=3)
    assert len(plan) == 3 and plan[-1] == (8192, 8192)
    assert plan_stages((1024, 1024), (4096, 4096), stages=1) == [(4096, 4096)]


def test_wide_target_first_stage_keeps_aspect_at_native_pixel_count():
    first = plan_stages((1024, 1024), (3840, 2160), multiple=32)[0]
    assert first[0] % 32 == 0 and first[1] % 32 == 0
    assert first[0] / first[1] == pytest.approx(3840 / 2160, rel=0.05)
    assert first[0] * first[1] == pytest.approx(1024 * 1024, rel=0.05)


@settings(max_examples=200, deadline=None)
@given(
    native_side=st.sampled_from([512, 768, 1024]),
    target_w=st.integers(1, 128),
    target_h=st.integers(1, 128),
    multiple=st.sampled_from([8, 32, 64]),
    factor=st.sampled_from([1.5, 2.0, 3.0]),
)
def test_stage_plan_properties_for_any_aspect(native_side, target_w, target_h, multiple, factor):
    native = (native_side, native_side)
    target = (target_w * 64, target_h * 64)
    plan = plan_stages(native, target, factor=factor, multiple=multiple)

    assert plan[-1] == target
    for width, height in plan[:-1]:
        assert width % multiple == 0 and height % multiple == 0
    for (w0, h0), (w1, h1) in zip(plan, plan[1:]):
        assert w1 >= w0 and h1 >= h0 and (w1, h1) != (w0, h0)
        # at most ×factor per side and stage, up to rounding to the multiple
        slack = (1 + multiple / min(w0, h0)) * (1 + multiple / max(min(w1, h1), multiple))
        assert w1 / w0 <= factor * slack and h1 / h0 <= factor * slack
    if len(plan) > 1:
        first_w, first_h = plan[0]
        aspect_error = abs(math.log((first_w / first_h) / (target[0] / target[1])))
        assert aspect_error <= math.log((1 + multiple / first_w) * (1 + multiple / first_h)) + 1e-9
        # the first stage is not above the native pixel budget by more than rounding
        assert first_w * first_h <= native[0] * native[1] * (1 + multiple / first_w) * (1 + multiple / first_h)


def test_power_of_factor_gives_exact_doubling_chain():
    plan = plan_stages((1024, 1024), (8192, 8192), multiple=32)
    assert plan == [(1024, 1024), (2048, 2048), (4096, 4096), (8192, 8192)]
    assert plan_stages((512, 512), (1536, 1536), factor=3.0) == [(512, 512), (1536, 1536)]


def test_uneven_growth_is_spread_evenly_over_stages():
    # 768 → 2160 lines is ×2.81: two stages of ×1.68 rather than ×2 then ×1.41
    plan = plan_stages((1024, 1024), (3840, 2160), multiple=32)
    assert len(plan) == 3
    ratios = [h1 / h0 for (_, h0), (_, h1) in zip(plan, plan[1:])]
    assert max(ratios) <= 2.0 and max(ratios) / min(ratios) < 1.1


# ---------------------------------------------------------------------------------------------
# re-noising index and cosine weights
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps, expected", [(50, 15), (10, 3), (4, 1), (1, 0), (33, 9)])
def test_renoise_start_index_is_floor_of_thirty_percent(steps, expected):
    assert renoise_start_index(steps) == expected


def test_cosine_weight_is_one_at_T_and_zero_at_zero():
    assert cosine_mix_weight(1000) == pytest.approx(1.0)
    assert cosine_mix_weight(0) == pytest.approx(0.0, abs=1e-12)
    assert cosine_mix_weight(500, cosine_scale=1.0) == pytest.approx(0.5)


def test_cosine_weight_increases_with_t():
    weights = [cosine_mix_weight(t) for t in range(0, 1001, 10)]
    assert all(a < b for a, b in zip(weights, weights[1:]))


def test_cosine_weight_exponent_raises_the_base_and_pushes_toward_zero():
    for t in (100, 400, 800, 999):
        base = cosine_mix_weight(t, cosine_scale=1.0)
        assert cosine_mix_weight(t, cosine_scale=2.0) == pytest.approx(base**2)
        assert cosine_mix_weight(t, cosine_scale=3.0) < cosine_mix_weight(t, cosine_scale=0.5)


def test_tensor_timestep_matches_float_formula():
    t = torch.tensor([0.0, 250.0, 999.0])
    expected = [(0.5 * (1 + math.cos(math.pi * (1000 - v) / 1000))) ** 2.0 for v in t.tolist()]
    assert torch.allclose(cosine_mix_weight(t), torch.tensor(expected, dtype=torch.float64))


def test_weight_map_applies_per_pixel_exponent():
    scale_map = torch.tensor([[0.5, 1.0], [2.0, 3.0]])
    weights = cosine_mix_weight_map(321.0, scale_map)
    assert weights.shape == scale_map.shape and weights.dtype == scale_map.dtype
    for exponent, weight in zip(scale_map.flatten().tolist(), weights.flatten().tolist()):
        assert weight == pytest.approx(cosine_mix_weight(321.0, cosine_scale=exponent), rel=1e-6)


def test_cosine_mix_is_the_convex_combination():
    x, z = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(cosine_mix(x, z, 0.0), x)
    assert torch.equal(cosine_mix(x, z, 1.0), z)
    assert torch.allclose(cosine_mix(x, z, 0.25), 0.75 * x + 0.25 * z)
    per_pixel = torch.rand(8, 8)
    assert torch.allclose(cosine_mix(x, z, per_pixel), (1 - per_pixel) * x + per_pixel * z)


# ---------------------------------------------------------------------------------------------
# noised references and hooks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler])
def test_references_equal_scheduler_add_noise_with_one_noise_draw(scheduler_class):
    scheduler = scheduler_class(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 8, 8, generator=generator)
    noise = torch.randn(1, 4, 8, 8, generator=generator)
    references = noised_references(x0, noise, scheduler.timesteps, scheduler)
    assert len(references) == 10
    for index, t in enumerate(scheduler.timesteps):
        expected = scheduler_class(num_train_timesteps=1000)
        expected.set_timesteps(10)
        assert torch.equal(references[index], expected.add_noise(x0, noise, t.reshape(1)))


def test_references_ignore_a_stepped_euler_scheduler_position():
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(8)
    sample = torch.randn(1, 4, 8, 8)
    scheduler.step(torch.zeros_like(sample), scheduler.timesteps[0], sample)  # sets its step index
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    references = noised_references(x0, noise, scheduler.timesteps, scheduler)
    # Euler's add_noise is x0 + σ_i·ε: the noise amount must follow the step asked for
    for index in (0, 5):
        assert torch.allclose(references[index], x0 + scheduler.sigmas[index] * noise)


def test_hooks_leave_early_steps_and_mix_later_ones():
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    hooks = cascade_hooks(x0, noise, scheduler, steps=10, cosine_scale=2.0)
    assert hooks.start_index == 3 and hooks.train_timesteps == 1000
    assert torch.equal(hooks.initial_latent(), hooks.references[3])

    x = torch.randn(1, 4, 8, 8)
    assert hooks.before_step(2, scheduler.timesteps[2], x) is x
    t = scheduler.timesteps[6]
    c = cosine_mix_weight(float(t), cosine_scale=2.0)
    assert torch.allclose(hooks.before_step(6, t, x), (1 - c) * x + c * hooks.references[6])
    # at the start step the latent is z_K itself, and mixing z_K with z_K leaves it
    z_k = hooks.initial_latent()
    assert torch.allclose(hooks.before_step(3, scheduler.timesteps[3], z_k), z_k)


def test_hooks_with_per_pixel_exponent_mix_each_pixel_by_its_own_weight():
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    scale_map = torch.full((8, 8), 0.5)
    scale_map[:, 4:] = 3.0  # foreground on the right keeps closer to the reference
    hooks = CascadeHooks(noised_references(x0, noise, scheduler.timesteps, scheduler), 3, scale_map)
    x = torch.randn(1, 4, 8, 8)
    t = scheduler.timesteps[5]
    mixed = hooks.before_step(5, t, x)
    z = hooks.references[5]
    for column, exponent in ((0, 0.5), (7, 3.0)):
        c = cosine_mix_weight(float(t), cosine_scale=exponent)
        assert torch.allclose(mixed[..., column], (1 - c) * x[..., column] + c * z[..., column], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# resizing
# ---------------------------------------------------------------------------------------------


def test_resize_latent_gives_the_asked_grid_and_keeps_constants():
    latent = torch.full((1, 4, 8, 12), 0.7)
    resized = resize_latent(latent, (24, 16))
    assert resized.shape == (1, 4, 16, 24)
    assert torch.allclose(resized, latent.mean().expand_as(resized))


def test_video_resize_is_per_frame_resize():
    video = torch.randn(1, 4, 3, 8, 8)
    resized = resize_latent(video, (16, 16))
    assert resized.shape == (1, 4, 3, 16, 16)
    for frame in range(3):
        expected = F.interpolate(video[:, :, frame], size=(16, 16), mode="bicubic", align_corners=False)
        assert torch.allclose(resized[:, :, frame], expected)


def test_pixel_resize_antialiases_downscales_and_clamps_overshoot():
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 2.0 - 1.0
    images = checker.expand(1, 3, 64, 64)
    down = resize_pixels(images, (16, 16))
    assert down.abs().max() < 0.05  # a one-pixel checkerboard averages out, no aliasing
    edge = torch.cat([torch.full((1, 3, 8, 4), -1.0), torch.full((1, 3, 8, 4), 1.0)], dim=-1)
    up = resize_pixels(edge, (32, 32))
    assert up.max() > 1.0  # bicubic overshoots a hard edge...
    assert resize_pixels(edge, (32, 32), clamp=(-1.0, 1.0)).max() <= 1.0  # ...unless clamped
