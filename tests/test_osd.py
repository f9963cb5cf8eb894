"""Offset Shifting Denoiser step: each latent advanced once per step, push-back, blend, batching."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cinegen.server.diffusion.osd import (
    BlendSchedule,
    DenoiseCounts,
    alpha_bar_at,
    denoise_windows_batched,
    offset_shift_denoise_step,
    plan_waves,
    renoise_to,
)
from cinegen.server.diffusion.windows import Boundary, order_for_batching, plan_windows, step_offset, windows_overlap

FAST = settings(max_examples=40, deadline=None)
MAX_WINDOWS = 150

sizes = st.tuples(st.integers(1, 12), st.integers(1, 32), st.integers(1, 64))
window_sizes = st.tuples(st.integers(1, 8), st.integers(4, 24), st.integers(8, 40))
boundaries = st.sampled_from([Boundary.RING, Boundary.DOCK])
overlaps = st.sampled_from([0.0, 0.25, 0.5, 0.75])


def ddpm_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, steps, dtype=torch.float64) ** 2  # SD's scaled-linear
    return torch.cumprod(1.0 - betas, dim=0)


ALPHAS = ddpm_alphas_cumprod()


def level_tracking_step(latent, windows, step_index, counts=None):
    """OSD with a fake model that adds one "level" and a push-back that removes one."""
    return offset_shift_denoise_step(
        latent, 500, 480, windows, lambda x, k: x + 1.0, ALPHAS, step_index,
        counts=counts, renoise=lambda x, noise: x - 1.0,
    )  # fmt: skip


@FAST
@given(
    latent=sizes, window=window_sizes, step=st.integers(0, 40),
    bh=boundaries, bw=boundaries, bt=boundaries, overlap=overlaps,
)  # fmt: skip
def test_osd_advances_every_position_exactly_once_per_step(latent, window, step, bh, bw, bt, overlap):
    windows = plan_windows(latent, window, step_offset(step, (1, 2, 3)), bh, bw, bt, overlap)
    assume(len(windows) <= MAX_WINDOWS)
    counts = DenoiseCounts.zeros(latent)
    out = level_tracking_step(torch.zeros(1, 1, *latent), windows, step, counts)
    # The latent's value is the number of net advances: 1 everywhere, whatever the overlap and blend.
    assert torch.allclose(out, torch.ones_like(out), atol=1e-5)
    assert torch.equal(counts.net_advances, torch.ones(latent, dtype=torch.int32))
    assert bool((counts.denoised >= 1).all())


@FAST
@given(latent=sizes, window=window_sizes, step=st.integers(0, 40))
def test_osd_on_ring_windows_calls_the_model_once_per_position_and_never_renoises(latent, window, step):
    windows = plan_windows(latent, window, step_offset(step, (1, 2, 3)), "ring", "ring", "ring")
    seen = torch.zeros(latent, dtype=torch.int32)

    def counting_model(x, k):
        f, h, w = torch.meshgrid(*(span.indices() for span in windows[k].spans), indexing="ij")
        seen.index_put_((f, h, w), torch.ones_like(f, dtype=torch.int32), accumulate=True)
        return x + 1.0

    counts = DenoiseCounts.zeros(latent)
    offset_shift_denoise_step(torch.zeros(1, *latent), 500, 480, windows, counting_model, ALPHAS, step, counts=counts)
    assert torch.equal(seen, torch.ones(latent, dtype=torch.int32))
    assert torch.equal(counts.denoised, seen)
    assert int(counts.renoised.sum()) == 0


def test_osd_with_one_window_equals_calling_the_model_on_the_whole_latent():
    latent = torch.randn(2, 4, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    windows = plan_windows((3, 16, 24), (3, 16, 24), (1, 5, 7), "ring", "ring", "ring")
    assert len(windows) == 1

    def model(x, k):
        return 0.9 * x + 0.1 * torch.sin(3.0 * x)

    for step_index in (0, 5, 30):
        out = offset_shift_denoise_step(latent, 500, 480, windows, model, ALPHAS, step_index)
        assert torch.equal(out, model(latent, 0))
    assert torch.equal(latent, torch.randn(2, 4, 3, 16, 24, generator=torch.Generator().manual_seed(0)))


def test_renoise_moves_a_less_noisy_latent_to_the_noisier_level():
    alpha_t, alpha_prev = alpha_bar_at(ALPHAS, 600), alpha_bar_at(ALPHAS, 580)
    assert alpha_t < alpha_prev
    generator = torch.Generator().manual_seed(1)
    x0 = torch.full((200_000,), 0.7, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    x_prev = alpha_prev**0.5 * x0 + (1 - alpha_prev) ** 0.5 * noise
    x_t = renoise_to(x_prev, alpha_prev, alpha_t, torch.randn(x0.shape, generator=generator, dtype=torch.float64))
    # q(x_t | x0) = N(√ᾱ_t · x0, 1 − ᾱ_t): the push-back lands exactly on the level t marginal.
    assert x_t.mean().item() == pytest.approx(alpha_t**0.5 * 0.7, abs=0.01)
    assert x_t.var().item() == pytest.approx(1 - alpha_t, rel=0.02)
    with pytest.raises(ValueError):
        renoise_to(x_prev, alpha_t, alpha_prev, x_prev)  # the wrong direction would remove noise
    assert alpha_bar_at(ALPHAS, -1) == 1.0  # past the last step is the clean level


def test_osd_pushes_back_only_the_already_advanced_part_with_forward_process_noise():
    latent_size = (1, 16, 64)
    windows = plan_windows(latent_size, (1, 16, 24), (0, 0, 5), "dock", "dock", "dock")
    counts = DenoiseCounts.zeros(latent_size)
    # Identity model on a zero latent: only push-back noise can make a position non-zero.
    out = offset_shift_denoise_step(
        torch.zeros(2, 4, *latent_size), 500, 480, windows, lambda x, k: x, ALPHAS, step_index=20,
        blend=BlendSchedule(r_max=0.5, steps=20), generator=torch.Generator().manual_seed(3), counts=counts,
    )  # fmt: skip
    once, twice = counts.denoised == 1, counts.denoised == 2
    assert bool(once.any()) and bool(twice.any()) and int(counts.denoised.max()) == 2
    assert torch.equal(out[:, :, once], torch.zeros_like(out[:, :, once]))
    expected_std = (1 - alpha_bar_at(ALPHAS, 500) / alpha_bar_at(ALPHAS, 480)) ** 0.5
    assert out[:, :, twice].std().item() == pytest.approx(expected_std, rel=0.1)


def test_blend_schedule_values():
    blend = BlendSchedule()
    assert (blend.r_max, blend.steps) == (0.5, 20)
    assert blend.ratio(0) == 0.5
    assert blend.ratio(10) == pytest.approx(0.25)
    assert blend.ratio(19) == pytest.approx(0.025)
    assert blend.ratio(20) == 0.0 and blend.ratio(47) == 0.0
    assert BlendSchedule(r_max=0.5, steps=15).ratio(5) == pytest.approx(0.5 * (1 - 5 / 15))


@pytest.mark.parametrize("step_index", [0, 7, 19, 20])
def test_osd_blends_the_re_denoised_part_with_its_earlier_value(step_index):
    latent_size = (1, 8, 24)
    windows = plan_windows(latent_size, (1, 8, 16), (0, 0, 0), "dock", "dock", "dock")
    assert [w.width.start for w in windows] == [0, 8]  # columns 8..15 are denoised twice
    # Window k writes the value k + 1; the push-back is the identity so only the blend shows.
    out = offset_shift_denoise_step(
        torch.zeros(1, *latent_size), 500, 480, windows, lambda x, k: torch.full_like(x, k + 1.0),
        ALPHAS, step_index, renoise=lambda x, noise: x,
    )  # fmt: skip
    ratio = BlendSchedule().ratio(step_index)
    assert torch.allclose(out[..., :8], torch.full_like(out[..., :8], 1.0))
    assert torch.allclose(out[..., 8:16], torch.full_like(out[..., 8:16], (1 - ratio) * 2.0 + ratio * 1.0))
    assert torch.allclose(out[..., 16:], torch.full_like(out[..., 16:], 2.0))


def window_model(x: torch.Tensor, k: int) -> torch.Tensor:
    return 0.8 * x + 0.1 * torch.tanh(x) + 0.01 * k


@FAST
@given(
    latent=sizes, window=window_sizes, step=st.integers(0, 40),
    bh=boundaries, bw=boundaries, bt=boundaries, overlap=overlaps, max_batch=st.sampled_from([None, 1, 3]),
    reorder=st.booleans(),
)  # fmt: skip
def test_batched_osd_equals_sequential_osd(latent, window, step, bh, bw, bt, overlap, max_batch, reorder):
    windows = plan_windows(latent, window, step_offset(step, (1, 2, 3)), bh, bw, bt, overlap)
    assume(len(windows) <= MAX_WINDOWS)
    if reorder:
        windows = order_for_batching(windows)
    x = torch.randn(2, 3, *latent, generator=torch.Generator().manual_seed(step))
    calls = []

    def batch_model(batch, indices):
        calls.append(list(indices))
        assert all(not windows_overlap(windows[a], windows[b]) for a in indices for b in indices if a < b)
        assert max_batch is None or len(indices) <= max_batch
        return torch.cat([window_model(piece, k) for piece, k in zip(batch.chunk(len(indices)), indices)])

    kwargs = dict(alphas_cumprod=ALPHAS, step_index=step)
    sequential = offset_shift_denoise_step(
        x, 500, 480, windows, window_model, generator=torch.Generator().manual_seed(9), **kwargs
    )
    counts = DenoiseCounts.zeros(latent)
    batched = denoise_windows_batched(
        x, 500, 480, windows, batch_model, generator=torch.Generator().manual_seed(9),
        max_batch=max_batch, counts=counts, **kwargs,
    )  # fmt: skip
    assert torch.allclose(batched, sequential, atol=1e-6)
    assert sorted(k for call in calls for k in call) == list(range(len(windows)))
    assert torch.equal(counts.net_advances, torch.ones(latent, dtype=torch.int32))


def test_batched_osd_denoises_a_ring_of_equal_windows_in_one_call():
    windows = plan_windows((4, 16, 64), (4, 16, 16), (0, 0, 6), "ring", "ring", "ring")
    calls = []

    def batch_model(batch, indices):
        calls.append(len(indices))
        return batch + 1.0

    out = denoise_windows_batched(torch.zeros(1, 2, 4, 16, 64), 500, 480, windows, batch_model, ALPHAS, 0)
    assert calls == [4] and torch.equal(out, torch.ones_like(out))


def test_waves_hold_disjoint_windows_and_keep_the_order_of_overlapping_ones():
    windows = plan_windows((1, 16, 64), (1, 8, 24), (0, 3, 5), "dock", "ring", "dock", overlap=0.5)
    waves = plan_waves(windows)
    wave_of = {k: i for i, wave in enumerate(waves) for k in wave}
    assert sorted(wave_of) == list(range(len(windows)))
    for a in range(len(windows)):
        for b in range(a + 1, len(windows)):
            if windows_overlap(windows[a], windows[b]):
                assert wave_of[a] < wave_of[b]


def _span(draw, extent: int):
    from cinegen.server.diffusion.windows import AxisSpan

    size = draw(st.integers(1, extent))
    return AxisSpan(draw(st.integers(0, extent - 1)) if size < extent else 0, size, extent)


@st.composite
def _window_sets(draw):
    from cinegen.server.diffusion.windows import Window

    extents = (draw(st.integers(1, 6)), draw(st.integers(1, 12)), draw(st.integers(1, 24)))
    count = draw(st.integers(1, 12))
    return [Window(*(_span(draw, e) for e in extents)) for _ in range(count)]


@settings(max_examples=200, deadline=None)
@given(_window_sets())
def test_the_overlap_matrix_is_windows_overlap_for_every_pair_including_wrapping_spans(windows):
    from cinegen.server.diffusion.osd import overlap_matrix

    matrix = overlap_matrix(windows)
    for j, a in enumerate(windows):
        for k, b in enumerate(windows):
            assert matrix[j, k] == windows_overlap(a, b), (a, b)


def test_order_for_batching_lets_overlapping_plans_batch_in_few_waves():
    windows = plan_windows((1, 32, 64), (1, 8, 16), (0, 0, 0), "dock", "ring", "dock", overlap=0.5)
    assert len(plan_waves(windows)) == len(windows) == 56  # raster order chains every window to the previous
    reordered = order_for_batching(windows)
    assert sorted(reordered, key=repr) == sorted(windows, key=repr)
    # Half-overlapping windows in 2-D fall into 2 x 2 parity classes of disjoint windows.
    assert [len(wave) for wave in plan_waves(reordered)] == [16, 16, 12, 12]


def test_osd_rejects_windows_that_leave_positions_uncovered():
    windows = plan_windows((1, 8, 32), (1, 8, 16), (0, 0, 0), "dock", "dock", "dock")[:1]
    with pytest.raises(ValueError, match="uncovered"):
        offset_shift_denoise_step(torch.zeros(1, 1, 8, 32), 500, 480, windows, lambda x, k: x, ALPHAS, 0)
