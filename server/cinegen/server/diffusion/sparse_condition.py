"""Sparse keyframe conditions (SparseCtrl's input): a clip-long latent and a frame mask, pure torch.

SparseCtrl (Guo et al., 2023) conditions a clip on a few frames: the condition holds each given
frame's latent at its index and zeros elsewhere; the mask is 1 on exactly those frames, so the
encoder can tell "black frame" from "no condition". As `AnimateDiffSparseControlNetPipeline.
prepare_sparse_control_conditioning` builds them.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sparse_condition"]


def sparse_condition(keyframes: dict[int, Tensor], frames: int) -> tuple[Tensor, Tensor]:
    """(1, C, F, h, w) condition and (1, 1, F, h, w) mask from frame index → (1, C, h, w) latent."""
    if not keyframes:
        raise ValueError("a sparse condition needs at least one keyframe")
    bad = [f for f in keyframes if not 0 <= f < frames]
    if bad:
        raise ValueError(f"keyframe indices {bad} lie outside a clip of {frames} frames")
    first = next(iter(keyframes.values()))
    _, channels, height, width = first.shape
    condition = first.new_zeros((1, channels, frames, height, width))
    mask = first.new_zeros((1, 1, frames, height, width))
    for f, latent in keyframes.items():
        condition[:, :, f] = latent.to(condition)
        mask[:, :, f] = 1
    return condition, mask
