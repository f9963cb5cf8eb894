"""Window planner for the Offset Shifting Denoiser (DynamicScaler, seed 003; ALGORITHMS.md §2).

A latent of shape ``(..., F, H, W)`` (``F = 1`` for images) is covered by native-size windows.
At step ``i`` the whole grid is shifted by ``offset_i = (i mod L) · Δ`` (``L = 16``), so seams
never stay in one place. Each axis has a boundary rule:

* ``ring``  — windows crossing the far edge continue at index 0 (360° cylinder, loopable video).
  With overlap 0 the windows tile the axis exactly: every index is covered once. When the axis
  length ``N`` is not a multiple of the window size ``n`` the ``ceil(N/n)`` windows get sizes
  that differ by at most one (all ``<= n``) — or by one ``multiple`` when the model needs window
  sizes in whole patches (a DiT with 2×2 patches cannot take an odd window).
* ``dock``  — no wrap; the shifted grid keeps only the windows that fit, plus windows pinned at 0
  and at ``N − n`` ("padding/docking"; pinned ends → arbitrarily long video). Covers every
  index at least once; the OSD's already-advanced mask makes the doubly covered part harmless.
  ``plane`` is the same rule seen from the other side (crossing windows clamped into the
  latent give exactly the pinned windows), so it is accepted as an alias.

When the latent is not larger than the window along an axis, the window is the whole axis.

Explicit overlap for early steps decays 0.75 → 0.5 → 0.25 → 0 over four equal parts of the
schedule (``overlap_for_step``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

__all__ = [
    "AxisSpan",
    "Boundary",
    "Window",
    "order_for_batching",
    "overlap_for_step",
    "plan_axis",
    "plan_windows",
    "read_window",
    "shift_delta_for",
    "step_offset",
    "window_mask",
    "windows_overlap",
    "write_window",
]

SHIFT_PERIOD = 16  # L in offset_i = (i mod L)·Δ
OVERLAP_SCHEDULE = (0.75, 0.5, 0.25, 0.0)


class Boundary(str, Enum):
    """How windows treat the ends of one latent axis."""

    RING = "ring"
    DOCK = "dock"

    @classmethod
    def _missing_(cls, value: object) -> Boundary | None:
        # "plane", "padding" and "pinned" are the names the paper and the CLI use for docking.
        if isinstance(value, str) and value.lower() in ("plane", "padding", "pinned", "pad"):
            return cls.DOCK
        return None


@dataclass(frozen=True)
class AxisSpan:
    """``size`` consecutive indices from ``start`` on an axis of length ``extent`` (mod extent)."""

    start: int
    size: int
    extent: int

    def __post_init__(self) -> None:
        if not (0 < self.size <= self.extent) or not (0 <= self.start < self.extent):
            raise ValueError(f"invalid span {self}")

    @property
    def wraps(self) -> bool:
        return self.start + self.size > self.extent

    @property
    def is_whole_axis(self) -> bool:
        return self.size == self.extent

    def indices(self, device: torch.device | str | None = None) -> Tensor:
        """Latent indices of the span, in window order (modular for a wrapping span)."""
        return torch.arange(self.start, self.start + self.size, device=device) % self.extent

    def segments(self) -> tuple[tuple[int, int, int], ...]:
        """Contiguous pieces as ``(latent_start, window_start, length)``; two when wrapping."""
        first = min(self.size, self.extent - self.start)
        if first == self.size:
            return ((self.start, 0, self.size),)
        return ((self.start, 0, first), (0, first, self.size - first))

    def overlaps(self, other: AxisSpan) -> bool:
        for a0, _, alen in self.segments():
            for b0, _, blen in other.segments():
                if a0 < b0 + blen and b0 < a0 + alen:
                    return True
        return False


@dataclass(frozen=True)
class Window:
    """One window over the last three latent axes (frames, height, width)."""

    frames: AxisSpan
    height: AxisSpan
    width: AxisSpan

    @property
    def spans(self) -> tuple[AxisSpan, AxisSpan, AxisSpan]:
        return (self.frames, self.height, self.width)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.frames.size, self.height.size, self.width.size)

    @property
    def wraps(self) -> bool:
        return any(span.wraps for span in self.spans)


def windows_overlap(a: Window, b: Window) -> bool:
    """True when the two windows share at least one latent position."""
    return all(sa.overlaps(sb) for sa, sb in zip(a.spans, b.spans))


def step_offset(
    step: int, delta: tuple[int, int, int], period: int = SHIFT_PERIOD
) -> tuple[int, int, int]:
    """Grid shift at denoising step ``step``: ``(step mod L) · Δ`` per axis (frames, h, w)."""
    phase = step % period
    return (phase * delta[0], phase * delta[1], phase * delta[2])


def shift_delta_for(window: tuple[int, int, int], period: int = SHIFT_PERIOD) -> tuple[int, int, int]:
    """A Δ that sweeps the grid by about one window over one period (at least 1 per axis)."""
    return tuple(max(1, size // period) for size in window)  # type: ignore[return-value]


def overlap_for_step(step: int, steps: int, schedule: tuple[float, ...] = OVERLAP_SCHEDULE) -> float:
    """Explicit window overlap at ``step`` of ``steps``: 0.75 → 0.5 → 0.25 → 0 in equal parts."""
    if steps <= 0 or not 0 <= step < steps:
        raise ValueError(f"step {step} outside a schedule of {steps} steps")
    return schedule[step * len(schedule) // steps]


def _stride(size: int, overlap: float) -> int:
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    stride = max(1, round(size * (1.0 - overlap)))
    # an overlap asked for is an overlap had: a 2-cell window at 0.25 would otherwise round to stride 2
    return min(stride, size - 1) if overlap > 0.0 and size > 1 else stride


def plan_axis(extent: int, size: int, offset: int, boundary: Boundary | str, overlap: float = 0.0,
              multiple: int = 1) -> list[AxisSpan]:
    """Spans along one axis of length ``extent`` for windows of ``size`` shifted by ``offset``.

    ``multiple``: every span size is a multiple of it (a DiT's patch, in latent cells); ``extent``
    and ``size`` must then be multiples too."""
    boundary = Boundary(boundary)
    if extent <= 0 or size <= 0:
        raise ValueError(f"extent and window size must be positive, got {extent}, {size}")
    if multiple < 1 or extent % multiple or size % multiple:
        raise ValueError(f"axis of {extent} and window of {size} cells must be multiples of {multiple}")
    if size >= extent:
        return [AxisSpan(0, extent, extent)]
    stride = _stride(size, overlap)
    if boundary is Boundary.RING:
        units = extent // multiple
        count = min(math.ceil(extent / stride), units)  # never two windows at one start
        # Evenly spread starts in whole multiples; gaps are at most ceil(units/count)·multiple <= size.
        units = extent // multiple
        bounds = [(k * units) // count * multiple for k in range(count + 1)]
        spans = []
        for k in range(count):
            # Without overlap the gaps themselves are the sizes, so the ring is tiled exactly once.
            span_size = bounds[k + 1] - bounds[k] if overlap == 0.0 else size
            spans.append(AxisSpan((offset + bounds[k]) % extent, span_size, extent))
        return spans
    phase = offset % stride
    starts = {0, extent - size}  # the pinned (docked) windows
    starts.update(range(phase, extent - size + 1, stride))  # shifted grid, crossing windows skipped
    return [AxisSpan(start, size, extent) for start in sorted(starts)]


def plan_windows(
    latent_size: tuple[int, int, int],
    window: tuple[int, int, int],
    offset: tuple[int, int, int] = (0, 0, 0),
    boundary_h: Boundary | str = Boundary.DOCK,
    boundary_w: Boundary | str = Boundary.RING,
    boundary_t: Boundary | str = Boundary.DOCK,
    overlap: float = 0.0,
    multiple: tuple[int, int, int] = (1, 1, 1),
) -> list[Window]:
    """All windows (frames-major, then rows, then columns) covering a ``(F, H, W)`` latent; the
    sizes along each axis are multiples of ``multiple`` (the denoiser's patch, in latent cells)."""
    frames = plan_axis(latent_size[0], window[0], offset[0], boundary_t, overlap, multiple[0])
    rows = plan_axis(latent_size[1], window[1], offset[1], boundary_h, overlap, multiple[1])
    cols = plan_axis(latent_size[2], window[2], offset[2], boundary_w, overlap, multiple[2])
    return [Window(f, h, w) for f in frames for h in rows for w in cols]


def order_for_batching(windows: list[Window]) -> list[Window]:
    """The same windows, pairwise-disjoint groups first (greedy colouring, plan order kept inside).

    Any order denoises each latent once per step; this one lets ``denoise_windows_batched`` put
    many windows in one call even when neighbours overlap (raster order chains every neighbour).
    """
    remaining = list(windows)
    ordered: list[Window] = []
    while remaining:
        group: list[Window] = []
        for window in remaining:
            if not any(windows_overlap(window, other) for other in group):
                group.append(window)
        ordered.extend(group)
        remaining = [w for w in remaining if w not in group]
    return ordered


def _check_latent(latent: Tensor, window: Window) -> None:
    extents = tuple(span.extent for span in window.spans)
    if latent.dim() < 3 or tuple(latent.shape[-3:]) != extents:
        raise ValueError(f"window planned for (F, H, W) = {extents}, latent has shape {tuple(latent.shape)}")


def read_window(latent: Tensor, window: Window) -> Tensor:
    """A copy of the window's part of ``latent`` (``(..., f, h, w)``), wrap-aware."""
    _check_latent(latent, window)
    out = latent
    gathered = False
    for axis, span in zip((-3, -2, -1), window.spans):
        if span.wraps:
            out = out.index_select(axis, span.indices(latent.device))
            gathered = True
        elif not span.is_whole_axis:
            out = out.narrow(axis, span.start, span.size)
    # narrow() gives a view; a window must not change when the latent is written later.
    return out if gathered else out.clone()


def write_window(latent: Tensor, window: Window, values: Tensor) -> Tensor:
    """Write ``values`` (``(..., f, h, w)``) into the window's part of ``latent`` in place."""
    _check_latent(latent, window)
    if tuple(values.shape[-3:]) != window.shape:
        raise ValueError(f"values of shape {tuple(values.shape)} do not fit window {window.shape}")
    values = values.to(dtype=latent.dtype)
    for lf, vf, nf in window.frames.segments():
        for lh, vh, nh in window.height.segments():
            for lw, vw, nw in window.width.segments():
                latent[..., lf : lf + nf, lh : lh + nh, lw : lw + nw] = values[
                    ..., vf : vf + nf, vh : vh + nh, vw : vw + nw
                ]
    return latent


def window_mask(latent_size: tuple[int, int, int], window: Window, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``(F, H, W)`` mask of the positions the window covers."""
    mask = torch.zeros(latent_size, dtype=torch.bool, device=device)
    return write_window(mask, window, torch.ones(window.shape, dtype=torch.bool, device=device))
