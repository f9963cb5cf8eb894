"""FreeTraj's training-free building blocks: box plan, trajectory noise, masked attention for the first steps."""
from __future__ import annotations

import math

import pytest
import torch

from cinegen.server.diffusion.freetraj import (AttentionNames, BoxPlan, ButterworthParams, FreeTrajAttention,
                                               FreeTrajAttnProcessor, FreeTrajConfig, FreeTrajGuide,
                                               butterworth_lowpass, lowpass_mix, paste_shared_patches, plan_boxes,
                                               subject_token_indices, swapped_processors, trajectory_noise)
from cinegen.server.diffusion.sampler import DenoiseLoop, LoopCallbacks
from cinegen.server.errors import JobCancelled


def _moving_track(frames: int, x0: float, x1: float, y: float) -> torch.Tensor:
    return torch.stack([torch.linspace(x0, x1, frames), torch.full((frames,), y)], -1)[None]


# ---- boxes ------------------------------------------------------------------------------------
def test_box_plan_centres_a_box_of_the_requested_size_on_the_track():
    plan = plan_boxes(_moving_track(3, 16, 48, 32), width=64, height=32, sizes=[16.0])
    x0, y0, x1, y1 = plan.boxes[0].unbind(-1)
    torch.testing.assert_close((x0 + x1) / 2 * 64, torch.tensor([16.0, 32.0, 48.0], dtype=torch.float64))
    torch.testing.assert_close((y0 + y1) / 2 * 32, torch.full((3,), 32.0, dtype=torch.float64))
    torch.testing.assert_close((x1 - x0) * 64, torch.full((3,), 16.0, dtype=torch.float64))
    torch.testing.assert_close((y1 - y0) * 32, torch.full((3,), 16.0, dtype=torch.float64))


def test_a_track_without_size_gets_the_default_fraction_of_the_shorter_side():
    plan = plan_boxes(_moving_track(2, 32, 32, 16), width=64, height=32, sizes=[None])
    assert float((plan.boxes[0, 0, 3] - plan.boxes[0, 0, 1]) * 32) == pytest.approx(0.35 * 32)


def test_labels_mark_cells_whose_centres_are_in_the_box_and_later_tracks_win():
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5]], [[0.25, 0.25, 0.75, 0.75]]], dtype=torch.float64)
    labels = BoxPlan(boxes).labels(4, 4).view(4, 4)
    expected = torch.tensor([[1, 1, 0, 0], [1, 2, 2, 0], [0, 2, 2, 0], [0, 0, 0, 0]])
    assert torch.equal(labels, expected)


def test_a_box_smaller_than_a_cell_still_claims_the_cell_under_its_centre():
    boxes = torch.tensor([[[0.60, 0.10, 0.62, 0.12]]], dtype=torch.float64)  # far smaller than a 1/4 cell
    labels = BoxPlan(boxes).labels(4, 4).view(4, 4)
    assert labels.sum() == 1 and labels[0, 2] == 1


# ---- noise --------------------------------------------------------------------------------------
def test_butterworth_gain_is_one_at_dc_and_one_half_at_each_cutoff():
    gain = butterworth_lowpass(20, 8, 8, ButterworthParams(order=4, spatial_cutoff=0.25, temporal_cutoff=0.1))
    assert gain[0, 0, 0] == 1.0
    assert float(gain[0, 1, 0]) == pytest.approx(0.5)  # f_h = 2·1/8 = 0.25 = spatial cut-off
    assert float(gain[0, 0, 1]) == pytest.approx(0.5)
    assert float(gain[1, 0, 0]) == pytest.approx(0.5)  # f_t = 2·1/20 = 0.1 = temporal cut-off


def test_butterworth_mix_passes_a_slow_wave_and_removes_a_fast_one():
    frames, size = 16, 32
    x = torch.arange(size, dtype=torch.float64)
    t = torch.arange(frames, dtype=torch.float64)
    slow = torch.cos(2 * math.pi * x / size).expand(frames, size, size)  # one cycle across, still in time
    fast = torch.cos(math.pi * x).expand(frames, size, size)  # Nyquist checkerboard columns
    flicker = torch.cos(math.pi * t)[:, None, None].expand(frames, size, size)  # alternates every frame
    out = lowpass_mix((slow + fast + flicker)[None], torch.zeros(1, frames, size, size, dtype=torch.float64))[0]

    def gain(component):
        return float((out * component).sum() / (component * component).sum())

    assert gain(slow) > 0.999
    assert abs(gain(fast)) < 1e-4
    assert abs(gain(flicker)) < 1e-4


def test_low_and_high_bands_of_the_mix_are_complementary():
    a, b = torch.randn(2, 1, 3, 8, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(lowpass_mix(a, b) + lowpass_mix(b, a), a + b)


def test_one_shared_patch_is_pasted_at_every_box_position_and_clipped_at_the_edge():
    plan = plan_boxes(_moving_track(4, 1, 31.5, 16), width=32, height=32, sizes=[8.0])
    patch = torch.randn(1, 2, 2, 2)
    out = paste_shared_patches(torch.zeros(1, 2, 4, 8, 8), plan, [patch])
    boxes = plan.cell_boxes(8, 8)[0]
    for f, (r0, c0, rows, cols) in enumerate(boxes):
        visible = out[:, :, f, max(r0, 0):r0 + rows, max(c0, 0):c0 + cols]
        expected = patch[:, :, max(-r0, 0):, max(-c0, 0):][:, :, :visible.shape[2], :visible.shape[3]]
        assert torch.equal(visible, expected)
    assert boxes[0][1] < 0 and boxes[-1][1] + boxes[-1][3] > 8, "the first and last boxes run off the edges"
    visible_cells = sum((min(r0 + rows, 8) - max(r0, 0)) * (min(c0 + cols, 8) - max(c0, 0))
                        for r0, c0, rows, cols in boxes)
    assert int((out != 0).sum()) == 2 * visible_cells, "nothing is written outside the boxes"


def test_trajectory_noise_shares_low_frequencies_along_the_track():
    """Low-passed x_T in the box at the first frame correlates with the box at the last frame, moved
    along the track, far more than the same two places do in noise drawn without boxes (100 draws)."""
    frames, grid = 16, 16
    plan = plan_boxes(_moving_track(frames, 32, 32 + 4 * (frames - 1), 64), width=128, height=128, sizes=[32.0])
    no_boxes = BoxPlan(torch.zeros(0, frames, 4, dtype=torch.float64))
    first, last = plan.cell_boxes(grid, grid)[0][0], plan.cell_boxes(grid, grid)[0][-1]

    def correlation(p: BoxPlan) -> float:
        x = trajectory_noise((100, 4, frames, grid, grid), p, torch.Generator().manual_seed(0))
        low = lowpass_mix(x, torch.zeros_like(x))
        a = low[:, :, 0, first[0]:first[0] + first[2], first[1]:first[1] + first[3]].flatten()
        b = low[:, :, -1, last[0]:last[0] + last[2], last[1]:last[1] + last[3]].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    along_track, without = correlation(plan), correlation(no_boxes)
    assert along_track > 0.1 and along_track > without + 0.2  # measured over 8 seeds: ≥ 0.11, margin ≥ 0.28


def test_trajectory_noise_is_seeded_centred_and_close_to_unit_variance():
    plan = plan_boxes(_moving_track(8, 8, 56, 32), width=64, height=64, sizes=[24.0])
    a = trajectory_noise((1, 4, 8, 16, 16), plan, torch.Generator().manual_seed(5))
    b = trajectory_noise((1, 4, 8, 16, 16), plan, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert abs(float(a.mean())) < 0.05 and 0.85 < float(a.std()) < 1.1


# ---- attention edits on logits ------------------------------------------------------------------
def _guide(frames: int = 2, subject: list[int] | None = None, max_logits: int = 1 << 20) -> FreeTrajGuide:
    # track 0's box covers the left half of a 2×2 grid in frame 0 and the right half in frame 1
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]]], dtype=torch.float64)[:, :frames]
    return FreeTrajGuide(BoxPlan(boxes), latent_size=(2, 2), subject_tokens=[subject or []], batch=1,
                         config=FreeTrajConfig(max_logits=max_logits))


def _qkv(rows: int, queries: int, keys: int, seed: int, heads: int = 2, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, heads, queries, dim, generator=g), torch.randn(rows, heads, keys, dim, generator=g),
            torch.randn(rows, heads, keys, dim, generator=g))


def _logits(q, k):
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


# The chunked SDPA path and the explicit softmax reference differ by float rounding only.
@pytest.mark.parametrize("max_logits", [1 << 20, 8])  # one chunk, and one query per SDPA call
def test_spatial_logits_between_box_and_background_tokens_are_scaled_by_one_hundredth(max_logits):
    q, k, v = _qkv(2, 4, 4, seed=1)  # rows = frames
    out = FreeTrajAttnProcessor("spatial", _guide(max_logits=max_logits)).attend(q, k, v)
    inside = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)  # cells in the box, row-major
    scale = torch.where(inside[:, :, None] == inside[:, None, :], 1.0, 0.01)
    torch.testing.assert_close(out, (_logits(q, k) * scale[:, None]).softmax(-1) @ v, atol=1e-5, rtol=1e-5)


def test_an_additive_attention_mask_still_applies_with_the_label_scaling():
    q, k, v = _qkv(2, 4, 4, seed=4)
    mask = torch.zeros(2, 2, 1, 4)
    mask[..., 3] = float("-inf")  # nobody may look at token 3
    out = FreeTrajAttnProcessor("spatial", _guide(max_logits=16)).attend(q, k, v, mask)
    inside = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    scale = torch.where(inside[:, :, None] == inside[:, None, :], 1.0, 0.01)
    expected = ((_logits(q, k) * scale[:, None]) + mask).softmax(-1) @ v
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_temporal_logits_between_frames_inside_and_outside_the_box_are_scaled():
    q, k, v = _qkv(4, 2, 2, seed=2)  # rows = locations, tokens = frames
    out = FreeTrajAttnProcessor("temporal", _guide(max_logits=8)).attend(q, k, v)
    # every location is inside the box in exactly one of the two frames: off-diagonal pairs differ
    scale = torch.tensor([[1.0, 0.01], [0.01, 1.0]])
    torch.testing.assert_close(out, (_logits(q, k) * scale).softmax(-1) @ v, atol=1e-5, rtol=1e-5)


def test_cross_attention_keeps_the_subject_out_of_the_background_and_bumps_it_in_the_box():
    guide = _guide(frames=1, subject=[2], max_logits=5)
    q, k, _ = _qkv(1, 4, 5, seed=3, heads=1)
    eye = torch.eye(5)[None, None]  # values = one-hot tokens: the output row *is* the probability row
    probs = FreeTrajAttnProcessor("cross", guide).attend(q, k, eye)
    inside = torch.tensor([True, False, True, False])
    assert torch.all(probs[0, 0, ~inside, 2].abs() < 1e-7), "no subject attention outside the box"
    plain = _logits(q, k).softmax(-1)[0, 0]
    bump = probs[0, 0, inside, 2] - plain[inside, 2]
    assert torch.all(bump > 0)
    torch.testing.assert_close(probs[0, 0, inside][:, [0, 1, 3, 4]], plain[inside][:, [0, 1, 3, 4]])
    # bump height 0.25 / (box area ½) / 1 token, times the Gaussian at the cells (σ = side / 3)
    expected = 0.5 * math.exp(-((0.25 / (1 / 3)) ** 2) / 2)  # cells sit on the box's vertical centre line
    torch.testing.assert_close(bump, torch.full((2,), expected), rtol=1e-5, atol=1e-6)


def test_subject_tokens_are_found_as_a_run_inside_the_prompt():
    assert subject_token_indices([9, 4, 7, 8, 1], [7, 8]) == [2, 3]
    assert subject_token_indices([9, 4, 7, 8, 1], [8, 7]) == []


# ---- installation on the tiny AnimateDiff UNet --------------------------------------------------
FRAMES = 4


@pytest.fixture(scope="module")
def animatediff(registry):
    adapter = registry.get("tiny-animatediff")
    cond = adapter.encode_prompt("a red disc", "", 7.5)
    x = torch.randn(1, 4, FRAMES, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    return adapter, cond, x, t, adapter.predict(x, t, cond)


def _hook(adapter, plan: BoxPlan, subject: list[list[int]], steps: int = 6) -> FreeTrajAttention:
    guide = FreeTrajGuide(plan, (8, 8), subject, FreeTrajConfig(attention_steps=steps))
    names = AttentionNames(adapter.self_attention_names(), adapter.temporal_attention_names(),
                           adapter.cross_attention_names())
    return FreeTrajAttention(adapter.denoiser, guide, names)


def _plan() -> BoxPlan:
    return plan_boxes(_moving_track(FRAMES, 12, 52, 32), width=64, height=64, sizes=[24.0])


def test_masked_processors_without_boxes_compute_diffusers_attention(animatediff):
    adapter, cond, x, t, reference = animatediff
    hook = _hook(adapter, BoxPlan(torch.zeros(0, FRAMES, 4, dtype=torch.float64)), [])
    with hook.step_context(0, t):
        assert all(isinstance(p, FreeTrajAttnProcessor) for p in adapter.denoiser.attn_processors.values())
        ours = adapter.predict(x, t, cond)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_masks_change_the_prediction_and_are_gone_after_the_step(animatediff):
    adapter, cond, x, t, reference = animatediff
    with _hook(adapter, _plan(), [[5, 6, 7, 8]]).step_context(0, t):
        guided = adapter.predict(x, t, cond)
    assert (guided - reference).abs().max() > 1e-2
    assert torch.equal(adapter.predict(x, t, cond), reference)


class _Scheduler:
    """A two-line scheduler: enough for the loop, no model maths."""
    timesteps = torch.tensor([900, 700, 500, 300, 100])

    def scale_model_input(self, x, t):
        return x

    def step(self, out, t, x, return_dict=False):
        return (x,)


def _recording_predict(adapter, cond, seen: list[bool], fail_at: int | None = None):
    """Records whether every processor is FreeTraj's at each step (the model itself need not run)."""
    def predict(x, t):
        seen.append(all(isinstance(p, FreeTrajAttnProcessor) for p in adapter.denoiser.attn_processors.values()))
        if fail_at is not None and len(seen) - 1 == fail_at:
            raise RuntimeError("out of memory")
        return torch.zeros_like(x)
    return predict


def test_masks_apply_in_the_first_steps_only_and_the_original_processors_come_back(animatediff):
    adapter, cond, x, _, _ = animatediff
    original = dict(adapter.denoiser.attn_processors)
    seen: list[bool] = []
    loop = DenoiseLoop(_Scheduler(), _recording_predict(adapter, cond, seen), hooks=(_hook(adapter, _plan(), [[5]], 2),))
    loop.run(x)
    assert seen == [True, True, False, False, False]
    after = adapter.denoiser.attn_processors
    assert all(after[k] is original[k] for k in original)


def test_original_processors_come_back_when_a_masked_step_fails(animatediff):
    adapter, cond, x, _, _ = animatediff
    original = dict(adapter.denoiser.attn_processors)
    seen: list[bool] = []
    loop = DenoiseLoop(_Scheduler(), _recording_predict(adapter, cond, seen, fail_at=1),
                       hooks=(_hook(adapter, _plan(), [[5]], 3),))
    with pytest.raises(RuntimeError):
        loop.run(x)
    assert seen == [True, True]
    assert all(adapter.denoiser.attn_processors[k] is original[k] for k in original)
    assert not adapter.denoiser._forward_pre_hooks, "the batch-reading pre-hook is removed too"


def test_original_processors_come_back_when_the_job_is_cancelled(animatediff):
    adapter, cond, x, _, _ = animatediff
    original = dict(adapter.denoiser.attn_processors)
    seen: list[bool] = []

    def cancel_after_two_steps():
        if len(seen) == 2:
            raise JobCancelled()

    loop = DenoiseLoop(_Scheduler(), _recording_predict(adapter, cond, seen),
                       hooks=(_hook(adapter, _plan(), [[5]], 6),),
                       callbacks=LoopCallbacks(should_stop=cancel_after_two_steps))
    with pytest.raises(JobCancelled):
        loop.run(x)
    assert seen == [True, True]
    assert all(adapter.denoiser.attn_processors[k] is original[k] for k in original)


def test_swapping_refuses_unknown_processor_names(animatediff):
    adapter = animatediff[0]
    original = dict(adapter.denoiser.attn_processors)
    with pytest.raises(KeyError):
        with swapped_processors(adapter.denoiser, {"no.such.attn.processor": object()}):
            pass
    assert all(adapter.denoiser.attn_processors[k] is original[k] for k in original)
