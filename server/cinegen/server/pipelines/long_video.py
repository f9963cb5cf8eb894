"""Clips longer than a video model's native length as one clip: FreeNoise on AnimateDiff (ALGORITHMS.md §5).

FreeNoise (diffusers' `AnimateDiffFreeNoiseMixin`, `enable_free_noise(context_length=16,
context_stride=4)`): every motion-module transformer block runs over windows of `context_length`
frames that start every `context_stride` frames, and the overlapping windows' outputs are averaged
with pyramid weights, so each window sees the frames it shares with its neighbours; spatial layers
still see every frame. The initial noise is re-used: frames past the first window take shuffled
copies of the noise `context_length` frames earlier ("shuffle_context"), which keeps the content of
distant windows related. Used only when a clip is longer than the motion module's native length, so
a native-length clip stays the stock computation.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..models.family import FamilyAdapter

FREE_NOISE_STRIDE = 4  # diffusers' and FreeNoise's default context stride (windows overlap by length − 4)


def needs_free_noise(adapter: FamilyAdapter, frames: int) -> bool:
    """Whether a clip of `frames` is longer than the (AnimateDiff) model's native window."""
    return adapter.family == "animatediff" and frames > adapter.native_frames


@contextlib.contextmanager
def free_noise(adapter: FamilyAdapter, frames: int, stride: int = FREE_NOISE_STRIDE) -> Iterator[bool]:
    """FreeNoise windows in the motion modules while a long clip is denoised; the plain blocks come back
    after (also on error or cancel). Yields whether it is on."""
    if not needs_free_noise(adapter, frames):
        yield False
        return
    adapter.pipe.enable_free_noise(context_length=adapter.native_frames, context_stride=stride)
    try:
        yield True
    finally:
        _disable_free_noise(adapter.pipe)


def _disable_free_noise(pipe) -> None:
    """`disable_free_noise` for the blocks `enable_free_noise` changed: diffusers' own also visits a mid
    block without motion modules (`use_motion_mid_block=False`) and fails there."""
    pipe._free_noise_context_length = None
    unet = pipe.unet
    middle = [unet.mid_block] if hasattr(unet.mid_block, "motion_modules") else []
    for block in [*unet.down_blocks, *middle, *unet.up_blocks]:
        pipe._disable_free_noise_in_block(block)


def free_noise_latents(adapter: FamilyAdapter, width: int, height: int, frames: int,
                       generator: torch.Generator) -> torch.Tensor:
    """x_T (1, C, F, h, w) as FreeNoise draws it (call inside `free_noise`): the first window's noise,
    then shuffled re-use of it window by window."""
    return adapter.pipe._prepare_latents_free_noise(1, adapter.latent_channels, frames, height, width, adapter.dtype,
                                                    adapter.device, generator)


__all__ = ["FREE_NOISE_STRIDE", "free_noise", "free_noise_latents", "needs_free_noise"]
