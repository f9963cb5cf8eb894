"""Flow-matching noise shift and two-stage re-noising (cinegen.server.diffusion.noise_shift) against diffusers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from cinegen.server.diffusion.noise_shift import latent_upsample, refinement_timesteps, renoise_flow, shift_sigmas


def wan_unipc(flow_shift: float = 3.0) -> UniPCMultistepScheduler:
    # The scheduler config Wan 2.1 ships: UniPC over flow sigmas.
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift)


@pytest.mark.parametrize("shift", [1.0, 3.0, 7.0, 9.0, 11.0])
def test_shift_formula_equals_unipc_flow_shift_sigmas(shift: float) -> None:
    scheduler = wan_unipc(shift)
    scheduler.set_timesteps(50)
    base = np.linspace(1, 1 / scheduler.config.num_train_timesteps, 51)[:-1]
    ours = torch.from_numpy(np.asarray(shift_sigmas(base, shift)))
    # UniPC pulls σ = 1 down by 1e-6 to keep log(α) finite: hence the tolerance.
    torch.testing.assert_close(ours.float(), scheduler.sigmas[:-1], rtol=0, atol=2e-6)


@pytest.mark.parametrize("shift", [1.0, 5.0, 9.0])
def test_shift_formula_equals_flow_match_euler_shifted_sigmas(shift: float) -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(30)
    base = torch.linspace(scheduler.sigma_max, scheduler.sigma_min, 30, dtype=torch.float64)
    torch.testing.assert_close(shift_sigmas(base, shift).float(), scheduler.sigmas[:-1], rtol=0, atol=1e-6)


def test_shift_of_one_is_the_identity() -> None:
    sigmas = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.equal(shift_sigmas(sigmas, 1.0), sigmas)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.05, 50.0),
)
def test_shift_is_monotone_and_fixes_the_ends(a: float, b: float, shift: float) -> None:
    low, high = min(a, b), max(a, b)
    assert shift_sigmas(low, shift) <= shift_sigmas(high, shift) + 1e-12
    assert shift_sigmas(0.0, shift) == 0.0 and shift_sigmas(1.0, shift) == pytest.approx(1.0)
    if shift > 1:  # a shift above one only ever adds noise
        assert shift_sigmas(low, shift) >= low - 1e-12


def test_renoise_equals_flow_match_scale_noise_and_broadcasts_per_item() -> None:
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 6, 8, generator=generator), torch.randn(2, 4, 3, 6, 8, generator=generator)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=9.0)
    scheduler.set_timesteps(50)
    timestep = scheduler.timesteps[15]
    expected = scheduler.scale_noise(x0, timestep[None], noise)
    torch.testing.assert_close(renoise_flow(x0, noise, float(scheduler.sigmas[15])), expected)
    per_item = renoise_flow(x0, noise, torch.tensor([0.0, 1.0]))
    assert torch.equal(per_item[0], x0[0]) and torch.equal(per_item[1], noise[1])


def test_refinement_schedule_is_the_tail_of_a_fresh_shifted_unipc_schedule() -> None:
    base_stage = wan_unipc(flow_shift=7.0)
    schedule = refinement_timesteps(base_stage, steps=50, start_index=15, shift=9.0)
    assert base_stage.config.flow_shift == 7.0  # the caller's scheduler is left alone
    assert schedule.scheduler.config.flow_shift == 9.0 and schedule.scheduler.begin_index == 15
    fresh = wan_unipc(9.0)
    fresh.set_timesteps(50)
    assert torch.equal(schedule.timesteps, fresh.timesteps[15:]) and torch.equal(schedule.sigmas, fresh.sigmas[15:])
    assert len(schedule.timesteps) == 35 and schedule.sigmas[-1] == 0
    base_sigma = np.linspace(1, 1 / 1000, 51)[15]
    assert schedule.start_sigma == pytest.approx(shift_sigmas(base_sigma, 9.0), abs=1e-6)


def test_renoising_at_the_start_sigma_matches_the_schedulers_add_noise() -> None:
    schedule = refinement_timesteps(UniPCMultistepScheduler, shift=9.0, config=wan_unipc().config)
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(1, 4, 2, 4, 4, generator=generator), torch.randn(1, 4, 2, 4, 4, generator=generator)
    expected = schedule.scheduler.add_noise(x0, noise, schedule.timesteps[:1])
    torch.testing.assert_close(renoise_flow(x0, noise, schedule.start_sigma), expected)


def test_refinement_schedule_works_for_flow_match_euler_and_rejects_non_flow_unipc() -> None:
    schedule = refinement_timesteps(FlowMatchEulerDiscreteScheduler(shift=3.0), steps=20, start_index=6, shift=11.0)
    fresh = FlowMatchEulerDiscreteScheduler(shift=11.0)
    fresh.set_timesteps(20)
    assert torch.equal(schedule.sigmas, fresh.sigmas[6:]) and schedule.start_sigma == float(fresh.sigmas[6])
    with pytest.raises(ValueError, match="use_flow_sigmas"):
        refinement_timesteps(UniPCMultistepScheduler())
    with pytest.raises(ValueError, match="start_index"):
        refinement_timesteps(wan_unipc(), steps=10, start_index=10)


def test_latent_upsample_sizes_frames_and_preserves_constants() -> None:
    latents = torch.full((1, 4, 3, 5, 7), 0.25, dtype=torch.bfloat16)
    upsampled = latent_upsample(latents, (10, 14))
    assert upsampled.shape == (1, 4, 3, 10, 14) and upsampled.dtype == torch.bfloat16
    assert torch.equal(upsampled, torch.full_like(upsampled, 0.25))
    assert latent_upsample(latents.float(), (6, 10, 14)).shape == (1, 4, 6, 10, 14)


def test_latent_upsample_to_the_same_size_is_the_identity_and_keeps_a_linear_ramp() -> None:
    ramp = torch.arange(8, dtype=torch.float32).view(1, 1, 1, 1, 8).expand(1, 2, 2, 4, 8).contiguous()
    assert torch.equal(latent_upsample(ramp, (4, 8)), ramp)
    doubled = latent_upsample(ramp, (8, 16))
    # Away from the borders trilinear interpolation of a ramp is the ramp at the half-pixel-aligned coordinates.
    expected = (torch.arange(16, dtype=torch.float32) + 0.5) / 2 - 0.5
    torch.testing.assert_close(doubled[0, 0, 0, 0, 1:-1], expected[1:-1])
