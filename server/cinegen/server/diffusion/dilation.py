"""Restrained dilated convolution (FreeScale, ALGORITHMS.md §1a; after ScaleCrafter).

In upscaled stages, for step indices ``i < dilate_tau`` (default 35 of 50), the 3×3 convolutions
of the *down and mid blocks* run with ``dilation = padding = s`` (``s = target_w // native_w``) so
their receptive field matches the native-size one; never in up blocks (chaotic texture there),
never ``conv_in``/``conv_out``. Reset to the original after the step.

Which convs. FreeScale's SDXL list is ``down_blocks.1.downsamplers.0.conv``,
``down_blocks.2.resnets.{0,1}.conv{1,2}``, ``mid_block.resnets.{0,1}.conv{1,2}``: the 3×3 convs
that produce or process the *deepest* feature map. ``dilation_targets`` generalises exactly that
rule (``from_level`` = last down block, downsampler feeding it included), which reproduces the
SDXL list; ``from_level=0`` takes every down/mid 3×3 conv. A stride-2 downsampler with
``dilation = padding = s`` keeps its output size (``⌊(H − 1) / 2⌋ + 1`` for any ``s``), so
including it is shape-safe; ``include_downsamplers=False`` leaves it out.

Video UNets: ``UNetMotionModel`` (AnimateDiff) motion modules hold only linear layers and its
spatial resnets are per-frame ``Conv2d``; ``UNet3DConditionModel`` temporal convs are ``Conv3d``.
Only ``nn.Conv2d`` with a 3×3 kernel is selected, so temporal layers are never touched.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch.nn as nn

_DOWN_BLOCK = re.compile(r"^down_blocks\.(\d+)\.")


def _is_3x3_conv2d(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (3, 3)


def dilation_targets(
    unet: nn.Module, from_level: int | None = None, include_downsamplers: bool = True
) -> list[tuple[str, nn.Conv2d]]:
    """The ``(name, conv)`` pairs that restrained dilation changes, in module order.

    Selected: 3×3 ``Conv2d`` of ``down_blocks.{j}`` for ``j ≥ from_level`` (default: the last,
    deepest down block), the downsamplers of ``down_blocks.{j}`` for ``j ≥ from_level − 1`` (they
    write a selected feature map; only if ``include_downsamplers``), and of ``mid_block``.
    Never up blocks, ``conv_in`` or ``conv_out``.
    """
    down_blocks = getattr(unet, "down_blocks", None)
    if down_blocks is None:
        raise TypeError(f"{type(unet).__name__} has no down_blocks: not a diffusers UNet")
    level = len(down_blocks) - 1 if from_level is None else from_level
    if not 0 <= level < len(down_blocks):
        raise ValueError(f"from_level {level} outside 0..{len(down_blocks) - 1}")

    targets: list[tuple[str, nn.Conv2d]] = []
    for name, module in unet.named_modules():
        if not _is_3x3_conv2d(module):
            continue
        if name.startswith("mid_block."):
            targets.append((name, module))
            continue
        match = _DOWN_BLOCK.match(name)
        if match is None:
            continue
        block = int(match.group(1))
        is_downsampler = ".downsamplers." in name
        if is_downsampler:
            # a downsampler in block j writes the feature map of level j + 1
            if include_downsamplers and block + 1 >= level:
                targets.append((name, module))
        elif block >= level:
            targets.append((name, module))
    return targets


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _set_dilation(conv: nn.Conv2d, dilation: tuple[int, int], padding: tuple[int, int] | str) -> None:
    conv.dilation = dilation
    conv.padding = padding
    if isinstance(padding, tuple):
        # non-"zeros" padding modes pad through this cached tuple instead of `padding`
        conv._reversed_padding_repeated_twice = [p for p in reversed(padding) for _ in range(2)]


@contextmanager
def restrained_dilation(
    unet: nn.Module,
    scale: int | tuple[int, int],
    targets: list[tuple[str, nn.Conv2d]] | None = None,
) -> Iterator[list[tuple[str, nn.Conv2d]]]:
    """Within the block, ``dilation = padding = scale`` on ``targets`` (default ``dilation_targets``).

    ``scale`` is an int or ``(s_h, s_w)``. The original settings come back on exit, also when
    the block raises. Yields the changed ``(name, conv)`` pairs.
    """
    chosen = dilation_targets(unet) if targets is None else targets
    dilation = _pair(scale)
    if min(dilation) < 1:
        raise ValueError(f"dilation scale must be >= 1, got {scale}")
    saved = [
        (conv, conv.dilation, conv.padding, list(conv._reversed_padding_repeated_twice)) for _, conv in chosen
    ]
    try:
        for _, conv in chosen:
            _set_dilation(conv, dilation, dilation)
        yield chosen
    finally:
        for conv, old_dilation, old_padding, old_reversed in saved:
            conv.dilation = old_dilation
            conv.padding = old_padding
            conv._reversed_padding_repeated_twice = old_reversed


@dataclass(frozen=True)
class DilationSchedule:
    """When restrained dilation is on: step indices ``i < dilate_tau`` of an upscaled stage."""

    dilate_tau: int = 35
    scale: int | tuple[int, int] = 2

    @classmethod
    def for_stage(cls, native_width: int, stage_width: int, dilate_tau: int = 35) -> "DilationSchedule":
        """``scale = stage_width // native_width`` (FreeScale's rule; 1 means no dilation)."""
        return cls(dilate_tau=dilate_tau, scale=max(1, stage_width // native_width))

    def uses_dilation(self, step_index: int) -> bool:
        return step_index < self.dilate_tau and max(_pair(self.scale)) > 1

    @contextmanager
    def for_step(
        self, unet: nn.Module, step_index: int, targets: list[tuple[str, nn.Conv2d]] | None = None
    ) -> Iterator[bool]:
        """Context for one UNet call at ``step_index``: dilated when scheduled; yields whether."""
        if not self.uses_dilation(step_index):
            yield False
            return
        with restrained_dilation(unet, self.scale, targets):
            yield True


__all__ = ["DilationSchedule", "dilation_targets", "restrained_dilation"]
