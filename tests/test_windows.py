"""Window planner of the Offset Shifting Denoiser: coverage, shifting, wrap-aware read/write."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cinegen.server.diffusion.windows import (
    AxisSpan,
    Boundary,
    Window,
    overlap_for_step,
    plan_axis,
    plan_windows,
    read_window,
    shift_delta_for,
    step_offset,
    window_mask,
    write_window,
)

FAST = settings(max_examples=60, deadline=None)

sizes = st.tuples(st.integers(1, 20), st.integers(1, 64), st.integers(1, 128))
# Windows at least ~1/8 of the largest latent per axis keep plans small (fast tests).
window_sizes = st.tuples(st.integers(1, 16), st.integers(6, 40), st.integers(12, 64))
MAX_WINDOWS = 400
boundaries = st.sampled_from([Boundary.RING, Boundary.DOCK])
overlaps = st.sampled_from([0.0, 0.25, 0.5, 0.75])


def coverage_counts(latent_size: tuple[int, int, int], windows: list[Window]) -> torch.Tensor:
    """How many windows cover each position, from each span's modular indices (not its segments)."""
    counts = torch.zeros(latent_size, dtype=torch.int64)
    for window in windows:
        f, h, w = torch.meshgrid(*(span.indices() for span in window.spans), indexing="ij")
        ones = torch.ones(f.numel(), dtype=torch.int64)
        counts.index_put_((f.reshape(-1), h.reshape(-1), w.reshape(-1)), ones, accumulate=True)
    return counts


@FAST
@given(latent=sizes, window=window_sizes, step=st.integers(0, 200))
def test_ring_windows_cover_every_latent_once_per_step(latent, window, step):
    offset = step_offset(step, shift_delta_for(window))
    windows = plan_windows(latent, window, offset, Boundary.RING, Boundary.RING, Boundary.RING)
    assert torch.equal(coverage_counts(latent, windows), torch.ones(latent, dtype=torch.int64))
    for w in windows:
        assert all(span.size <= min(n, extent) for span, n, extent in zip(w.spans, window, latent))


@FAST
@given(latent=sizes, window=window_sizes, step=st.integers(0, 200))
def test_temporal_ring_with_docked_space_covers_frames_exactly_once(latent, window, step):
    offset = step_offset(step, (3, 5, 7))
    windows = plan_windows(latent, window, offset, Boundary.DOCK, Boundary.DOCK, Boundary.RING)
    counts = coverage_counts(latent, windows)
    assert bool((counts >= 1).all())
    # Along frames each (h, w) column of windows must tile the frame ring exactly once.
    per_hw = {}
    for w in windows:
        per_hw.setdefault((w.height, w.width), []).append(w.frames)
    for frame_spans in per_hw.values():
        frames = torch.cat([span.indices() for span in frame_spans])
        assert torch.equal(torch.sort(frames).values, torch.arange(latent[0]))


@FAST
@given(
    latent=sizes, window=window_sizes, step=st.integers(0, 200),
    bh=boundaries, bw=boundaries, bt=boundaries, overlap=overlaps,
)  # fmt: skip
def test_every_plan_covers_every_latent_at_least_once(latent, window, step, bh, bw, bt, overlap):
    windows = plan_windows(latent, window, step_offset(step, (1, 3, 5)), bh, bw, bt, overlap)
    assume(len(windows) <= MAX_WINDOWS)
    assert bool((coverage_counts(latent, windows) >= 1).all())


@FAST
@given(extent=st.integers(1, 128), size=st.integers(1, 64), offset=st.integers(0, 500), overlap=overlaps)
def test_docked_windows_never_wrap_are_native_size_and_pinned_at_both_ends(extent, size, offset, overlap):
    spans = plan_axis(extent, size, offset, "dock", overlap)
    native = min(size, extent)
    assert all(not s.wraps and s.size == native for s in spans)
    starts = [s.start for s in spans]
    assert starts[0] == 0 and starts[-1] == extent - native
    assert starts == sorted(set(starts))
    if size < extent:
        stride = max(1, round(size * (1 - overlap)))
        # Apart from the two pinned windows, every start sits on the shifted grid.
        assert all((s - offset) % stride == 0 for s in starts[1:-1])


@FAST
@given(multiple=st.integers(2, 8), size=st.integers(1, 32), offset=st.integers(0, 500))
def test_ring_windows_are_native_size_when_the_axis_is_a_multiple_of_the_window(multiple, size, offset):
    spans = plan_axis(multiple * size, size, offset, Boundary.RING)
    assert len(spans) == multiple and all(s.size == size for s in spans)
    assert spans[0].start == offset % (multiple * size)


@FAST
@given(
    extent=st.integers(2, 128), size=st.integers(1, 64), offset=st.integers(0, 500),
    overlap=st.sampled_from([0.25, 0.5, 0.75]),
)  # fmt: skip
def test_ring_windows_with_overlap_are_native_size_and_overlap(extent, size, offset, overlap):
    spans = plan_axis(extent, size, offset, Boundary.RING, overlap)
    counts = torch.zeros(extent, dtype=torch.int64)
    for s in spans:
        counts[s.indices()] += 1
    assert bool((counts >= 1).all())
    assert all(s.size == min(size, extent) for s in spans)
    if 2 <= size < extent:
        assert int(counts.sum()) > extent  # overlap > 0 really overlaps


def test_ring_window_crossing_the_right_edge_continues_at_column_zero():
    (window,) = [w for w in plan_windows((1, 8, 32), (1, 8, 16), (0, 0, 24), "dock", "ring", "dock") if w.wraps]
    assert window.width.start == 24
    assert window.width.indices().tolist() == list(range(24, 32)) + list(range(0, 8))


def test_step_offset_cycles_with_period_16_and_moves_the_seams():
    delta = (1, 2, 4)
    assert step_offset(0, delta) == (0, 0, 0)
    assert step_offset(3, delta) == (3, 6, 12)
    assert step_offset(16, delta) == (0, 0, 0)
    assert step_offset(19, delta) == step_offset(3, delta)
    seams = [
        {w.width.start for w in plan_windows((1, 8, 64), (1, 8, 16), step_offset(i, delta), "dock", "ring", "dock")}
        for i in range(2)
    ]
    assert seams[0] == {0, 16, 32, 48} and seams[1] == {4, 20, 36, 52}


def test_overlap_schedule_decays_over_four_equal_parts():
    steps = 48
    values = [overlap_for_step(i, steps) for i in range(steps)]
    assert values == [0.75] * 12 + [0.5] * 12 + [0.25] * 12 + [0.0] * 12
    assert overlap_for_step(0, 1) == 0.75
    with pytest.raises(ValueError):
        overlap_for_step(48, 48)


def test_plane_padding_and_pinned_mean_docking():
    assert Boundary("plane") is Boundary.DOCK
    assert Boundary("pinned") is Boundary.DOCK
    assert Boundary("ring") is Boundary.RING
    with pytest.raises(ValueError):
        Boundary("sphere")


def test_window_larger_than_latent_is_the_whole_axis():
    windows = plan_windows((1, 10, 12), (16, 64, 64), (5, 5, 5), "ring", "ring", "ring")
    assert windows == [Window(AxisSpan(0, 1, 1), AxisSpan(0, 10, 10), AxisSpan(0, 12, 12))]
    latent = torch.randn(2, 4, 1, 10, 12)
    assert torch.equal(read_window(latent, windows[0]), latent)


@settings(max_examples=30, deadline=None)
@given(latent=sizes, window=window_sizes, step=st.integers(0, 100), bh=boundaries, bw=boundaries, bt=boundaries)
def test_read_window_gathers_modular_indices_and_write_window_puts_them_back(latent, window, step, bh, bw, bt):
    generator = torch.Generator().manual_seed(step)
    x = torch.randn((2, *latent), generator=generator)
    windows = plan_windows(latent, window, step_offset(step, (1, 3, 5)), bh, bw, bt)
    for w in windows[:: max(1, len(windows) // 12)]:  # a spread-out sample keeps this fast
        fi, hi, wi = (span.indices() for span in w.spans)
        expected = x[:, fi][:, :, hi][:, :, :, wi]
        got = read_window(x, w)
        assert torch.equal(got, expected)
        canvas = torch.zeros_like(x)
        write_window(canvas, w, got)
        mask = window_mask(latent, w)
        assert int(mask.sum()) == w.frames.size * w.height.size * w.width.size
        assert torch.equal(canvas, torch.where(mask, x, torch.zeros_like(x)))


def test_read_window_is_a_copy_not_a_view():
    latent = torch.zeros(1, 1, 4, 8)
    window = plan_windows((1, 4, 8), (1, 4, 4), (0, 0, 0), "dock", "dock", "dock")[0]
    part = read_window(latent, window)
    latent.fill_(1.0)
    assert torch.equal(part, torch.zeros(1, 1, 4, 4))


def test_read_and_write_reject_a_latent_of_another_size():
    window = plan_windows((1, 4, 8), (1, 4, 4), (0, 0, 0), "dock", "dock", "dock")[0]
    with pytest.raises(ValueError):
        read_window(torch.zeros(1, 1, 4, 9), window)
    with pytest.raises(ValueError):
        write_window(torch.zeros(1, 1, 4, 8), window, torch.zeros(1, 1, 4, 5))


@FAST
@given(units=st.integers(1, 40), window_units=st.integers(1, 12), multiple=st.integers(2, 4),
       offset=st.integers(0, 500), boundary=boundaries, overlap=overlaps)
def test_windows_come_in_whole_patches_and_still_cover_the_axis(units, window_units, multiple, offset, boundary,
                                                               overlap):
    """A DiT with 2×2 patches takes only even windows: every span is a multiple of the patch, the ring
    without overlap still tiles the axis exactly once (80 px of tiny-wan = 10 cells: 4 + 2 + 4 crashed)."""
    extent, size = units * multiple, window_units * multiple
    spans = plan_axis(extent, size, offset, boundary, overlap, multiple=multiple)
    assert all(span.size % multiple == 0 and span.size <= max(size, extent) for span in spans)
    counts = torch.zeros(extent, dtype=torch.int64)
    for span in spans:
        counts[span.indices()] += 1
    assert bool((counts >= 1).all())
    if boundary is Boundary.RING and overlap == 0.0:
        assert torch.equal(counts, torch.ones(extent, dtype=torch.int64))


def test_an_odd_ring_of_a_patched_model_gets_even_windows():
    assert [s.size for s in plan_axis(10, 4, 0, Boundary.RING)] == [3, 3, 4]  # what crashed Wan at 80 px
    assert [s.size for s in plan_axis(10, 4, 0, Boundary.RING, multiple=2)] == [2, 4, 4]
    with pytest.raises(ValueError, match="multiples of 2"):
        plan_axis(9, 4, 0, Boundary.RING, multiple=2)
