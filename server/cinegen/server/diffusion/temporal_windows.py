"""Latent-chunked temporal windows: one model prediction for a clip longer than the model's own length.

For DiT video models (Wan, CogVideoX) whose attention spans every frame of a clip, a longer clip is
denoised as one latent: at every step the latent frames are covered by windows of the model's
native latent length that start every ``stride`` frames (the last one pinned to the end), each
window is predicted alone, and the predictions are averaged frame by frame with pyramid weights
(FreeNoise's weighting: a window counts least at its ends, where it knows least), so every window
sees the frames it shares with its neighbours and the seams move nothing. The scheduler then steps
the whole latent once. With one window over the whole clip it is the plain prediction, bit for bit.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Span = tuple[int, int]  # [start, stop) latent frames
WindowPredict = Callable[[Tensor, Tensor, Span], Tensor]  # (window of x, t, its span) → prediction

__all__ = ["Span", "WindowPredict", "predict_in_windows", "pyramid_weights", "window_spans"]


def window_spans(frames: int, length: int, stride: int) -> list[Span]:
    """Windows of ``length`` frames every ``stride`` frames over ``frames``, the last one ending at the end."""
    if length <= 0 or stride <= 0:
        raise ValueError(f"window length and stride must be positive, got {length}, {stride}")
    if frames <= length:
        return [(0, frames)]
    starts = list(range(0, frames - length + 1, stride))
    if starts[-1] != frames - length:
        starts.append(frames - length)
    return [(s, s + length) for s in starts]


def pyramid_weights(length: int) -> Tensor:
    """1, 2, …, peak, …, 2, 1 over ``length`` frames (float64)."""
    k = torch.arange(length, dtype=torch.float64)
    return torch.minimum(k + 1, length - k)


def predict_in_windows(x: Tensor, t: Tensor, predict: WindowPredict, spans: Sequence[Span],
                       frame_dim: int) -> Tensor:
    """The prediction for ``x`` from windows of its frames (dimension ``frame_dim``), pyramid-averaged."""
    if len(spans) == 1 and spans[0] == (0, x.shape[frame_dim]):
        return predict(x, t, spans[0])
    total: Tensor | None = None
    weight_sum = torch.zeros(x.shape[frame_dim], dtype=torch.float64, device=x.device)
    for start, stop in spans:
        part = predict(x.narrow(frame_dim, start, stop - start), t, (start, stop))
        shape = [1] * part.dim()
        shape[frame_dim] = stop - start
        weights = pyramid_weights(stop - start).to(x.device)
        weighted = part.double() * weights.view(shape)
        if total is None:
            size = list(part.shape)
            size[frame_dim] = x.shape[frame_dim]
            total = torch.zeros(size, dtype=torch.float64, device=x.device)
        total.narrow(frame_dim, start, stop - start).add_(weighted)
        weight_sum[start:stop] += weights
    if total is None or bool((weight_sum == 0).any()):
        raise ValueError("the windows leave some frames without a prediction")
    shape = [1] * total.dim()
    shape[frame_dim] = x.shape[frame_dim]
    return (total / weight_sum.view(shape)).to(x.dtype)
