"""A denoiser run over a long clip in overlapping temporal windows, blended every step (no seam in time).

A DiT attends over every token of every frame at once: a plate of 200 frames as one clip costs
activations (and attention) for all of them. Here each step's model output is computed window by
window — ``window`` latent frames at a time, neighbours sharing ``overlap`` frames — and the outputs
are averaged with linear ramps across each overlap, normalised by the summed weights (the feathering
of ``tiled_vae``, along time):

    out(f) = Σ_windows w_window(f) · model(x[window])(f) / Σ_windows w_window(f)

The scheduler then takes one step on the whole clip. Because the windows are blended *every step*
(MultiDiffusion along time), neighbouring windows converge to one result in their overlap instead of
two that would need a cut; a clip no longer than the window is one model call, unchanged.
Memory: one window's activations, plus the float32 accumulator of one model output.
Pure torch.
"""
from __future__ import annotations

from typing import Callable

import torch

from .tiled_vae import _ramp, tile_starts

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_overlap(window: int) -> int:
    """A quarter of the window (at least one frame when the window has two or more)."""
    return max(1, window // 4) if window > 1 else 0


def temporal_windows(length: int, window: int, overlap: int) -> list[int]:
    """Start frames of windows of ``window`` frames covering ``length``; the last flush with the end."""
    return tile_starts(length, window, overlap)


def predict_in_temporal_windows(predict: Predict, x: torch.Tensor, t: torch.Tensor, window: int, overlap: int,
                                dim: int = 2) -> torch.Tensor:
    """``predict(x, t)`` computed on overlapping windows of ``window`` frames along ``dim`` and blended."""
    length = x.shape[dim]
    if length <= window:
        return predict(x, t)
    starts = temporal_windows(length, window, overlap)
    total: torch.Tensor | None = None
    out_dtype = x.dtype
    weight = torch.zeros(length, dtype=torch.float32, device=x.device)
    shape = [1] * x.dim()
    shape[dim] = window
    for index, start in enumerate(starts):
        ramp = _ramp(window, overlap, index > 0, index < len(starts) - 1).to(x.device)
        out = predict(x.narrow(dim, start, window), t)
        out_dtype, out = out.dtype, out.float()
        if total is None:
            total = torch.zeros((*out.shape[:dim], length, *out.shape[dim + 1:]), dtype=torch.float32, device=x.device)
        total.narrow(dim, start, window).add_(out * ramp.view(shape))
        weight[start:start + window] += ramp
    assert total is not None
    shape[dim] = length
    return (total / weight.view(shape)).to(out_dtype)


class ClipBlend:
    """Frames of clips processed one after another (windows of ``window`` frames from
    ``temporal_windows``) cross-faded across each overlap with the same linear ramps: a frame is
    handed out, blended, once no later clip covers it. Memory: the overlapped frames only.

    For models that cannot be blended every step (a UNet cascade per clip), this replaces the hard cut
    between independent clips by a fade over ``overlap`` frames."""

    def __init__(self, length: int, window: int, overlap: int):
        self.length, self.window, self.overlap = length, min(window, length), overlap
        self.starts = temporal_windows(length, self.window, overlap)
        self._held: dict[int, tuple[torch.Tensor, float]] = {}

    def add(self, index: int, frames: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Clip ``index``'s frames (F, ...) → the (frame, blended image) pairs that are now final."""
        start = self.starts[index]
        later = self.starts[index + 1] if index + 1 < len(self.starts) else self.length
        ramp = _ramp(self.window, self.overlap, index > 0, index < len(self.starts) - 1)
        ready = []
        for offset, frame in enumerate(frames):
            number = start + offset
            total, weight = self._held.pop(number, (torch.zeros_like(frame, dtype=torch.float32), 0.0))
            total, weight = total + frame.float() * float(ramp[offset]), weight + float(ramp[offset])
            if number < later:
                ready.append((number, (total / weight).to(frame.dtype)))
            else:
                self._held[number] = (total, weight)
        return ready


__all__ = ["ClipBlend", "default_overlap", "predict_in_temporal_windows", "temporal_windows"]
