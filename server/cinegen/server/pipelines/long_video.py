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
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..models.family import FamilyAdapter

FREE_NOISE_STRIDE = 4  # diffusers' and FreeNoise's default context stride (windows overlap by length − 4)


def needs_free_noise(adapter: FamilyAdapter, frames: int) -> bool:
    """Whether a clip of `frames` is longer than the (AnimateDiff) model's native window."""
    return adapter.family == "animatediff" and frames > adapter.native_frames


@contextlib.contextmanager
def free_noise(adapter: FamilyAdapter, frames: int, stride: int = FREE_NOISE_STRIDE,
               also: Sequence[nn.Module] = ()) -> Iterator[bool]:
    """FreeNoise windows in the motion modules while a long clip is denoised; the plain blocks come back
    after (also on error or cancel). Yields whether it is on. `also`: other models with motion modules
    that see the same clip (a SparseCtrl encoder), windowed alike."""
    if not needs_free_noise(adapter, frames):
        yield False
        return
    pipe = adapter.pipe
    pipe.enable_free_noise(context_length=adapter.native_frames, context_stride=stride)
    extra = [block for model in also for block in motion_blocks(model)]
    try:
        for block in extra:
            pipe._enable_free_noise_in_block(block)  # the pipe's context length and stride, set just above
            _single_attention_fix(block)
        yield True
    finally:
        for block in extra:
            pipe._disable_free_noise_in_block(block)
        _disable_free_noise(pipe)


def _single_attention_fix(block: nn.Module) -> None:
    """diffusers' FreeNoiseTransformerBlock never sets `attn2` when a block has one attention (SparseCtrl's
    motion modules: no double self-attention), then reads it; None is what BasicTransformerBlock holds."""
    for module in block.modules():
        if type(module).__name__ == "FreeNoiseTransformerBlock" and "attn2" not in module._modules \
                and not hasattr(module, "attn2"):
            module.attn2 = None


def motion_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of a UNet-like model that hold motion modules."""
    blocks = [*getattr(model, "down_blocks", []), getattr(model, "mid_block", None), *getattr(model, "up_blocks", [])]
    return [b for b in blocks if b is not None and getattr(b, "motion_modules", None) is not None]


def free_noise_spans(frames: int, length: int, stride: int = FREE_NOISE_STRIDE) -> list[tuple[int, int]]:
    """[start, stop) of the frames each FreeNoise window covers, in the order diffusers'
    `FreeNoiseTransformerBlock` runs them: every `stride` from 0, plus one ending at the last frame
    when they do not reach it."""
    if frames <= length:
        return [(0, frames)]
    spans = [(s, min(frames, s + length)) for s in range(0, frames - length + 1, stride)]
    if spans[-1][1] != frames:
        spans.append((frames - length, frames))
    return spans


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


__all__ = ["FREE_NOISE_STRIDE", "free_noise", "free_noise_latents", "free_noise_spans", "motion_blocks",
           "needs_free_noise"]
