"""Image-conditioned panoramas on AnimateDiff: the input image is a SparseCtrl RGB condition at frame 0.

Instead of pasting the input into the latent and keeping it, the DynamicScaler windows are
conditioned through a SparseCtrl RGB encoder (models/sparsectrl.py), as an image-to-video model
would be (the AnimateDiff counterpart of panorama_i2v.py):

1. The input is resized to the panorama's size: that is the panorama's first frame. Its VAE latent
   is the condition at frame 0; the other frames hold zeros, and the mask is 1 on frame 0 only
   (`diffusion/sparse_condition.py`). Built once per size (global motion guidance's low-resolution
   pass has its own, of the input at its size).
2. Every OSD window and sphere view reads its part of the condition and mask with its own ``read``
   (wrapped across the 360° seam, `diffusion/region_condition.py`): each window is conditioned on the
   crop of the image under it, and the SparseCtrl residuals of that crop go into the UNet.
3. ``keep_first_frame`` also pins latent frame 0 to the input's latent (re-noised before each step,
   clean after the last), as on Wan I2V.

With one window covering the panorama this is the story's SparseCtrl clip with a frame-0 condition.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..diffusion.panorama_denoise import LatentLayout, NoiseLevels, region_band
from ..diffusion.region_condition import region_condition
from ..diffusion.sparse_condition import sparse_condition
from ..models.family import Conditioning, FamilyAdapter
from ..models.sparsectrl import SparseControl
from .panorama_i2v import KeepFirstFrame

__all__ = ["RegionSparseControl", "SparseCtrlPanorama", "input_sparsectrl"]


@dataclass
class RegionSparseControl:
    """``(x, t, regions) → output`` at one panorama size: each region's crop of the frame-0 condition."""

    adapter: Any  # AnimateDiffAdapter
    controlnet: nn.Module
    condition: Tensor  # (1, C, F, h, w): the input's latent at frame 0, zeros after
    mask: Tensor  # (1, 1, F, h, w): 1 on frame 0
    prompt_for_band: Callable[[int], Conditioning]
    banded: bool
    layout: LatentLayout = field(default_factory=lambda: LatentLayout(video=True))

    def control(self, regions: Sequence[Any], rows: Sequence[int] | None = None) -> SparseControl:
        picked = regions if rows is None else [regions[k] for k in rows]
        return SparseControl(self.controlnet, region_condition(self.condition, picked, self.layout),
                             region_condition(self.mask, picked, self.layout))

    def __call__(self, x: Tensor, t: Tensor, regions: Sequence[Any]) -> Tensor:
        height = self.condition.shape[-2]
        bands = [region_band(r, height) for r in regions] if self.banded else [-1] * len(regions)
        out: Tensor | None = None
        for band in sorted(set(bands)):
            rows = [k for k, b in enumerate(bands) if b == band]
            whole = len(rows) == len(regions)
            cond = self.prompt_for_band(band)
            control = self.control(regions, None if whole else rows)
            part = self.adapter.predict(x if whole else x[rows], t,
                                        dataclasses.replace(cond, extra={**cond.extra, "control": control}))
            if whole:
                return part
            out = torch.empty((x.shape[0], *part.shape[1:]), dtype=part.dtype, device=part.device) if out is None else out
            out[rows] = part
        return out  # type: ignore[return-value]


@dataclass
class SparseCtrlPanorama:
    """The input of an AnimateDiff panorama as a SparseCtrl frame-0 condition, at every size it runs at."""

    adapter: FamilyAdapter
    controlnet: nn.Module
    image: Tensor  # (3, h, w) input in [0, 1]
    frames: int
    prompt_for_band: Callable[[int], Conditioning]
    banded: bool = False
    _sizes: dict[tuple[int, int], RegionSparseControl] = field(default_factory=dict)

    def latent(self, width: int, height: int) -> Tensor:
        """(1, C, h, w): the VAE latent of the input resized to width × height (the first frame)."""
        image = self.image
        if tuple(image.shape[-2:]) != (height, width):
            image = F.interpolate(image[None].float(), size=(height, width), mode="bicubic", antialias=True,
                                  align_corners=False)[0].clamp(0, 1)
        encoded = self.adapter.encode(image[None, :, None].to(self.adapter.device, self.adapter.dtype))
        return encoded[:, :, 0]

    def at(self, width: int, height: int) -> RegionSparseControl:
        if (width, height) not in self._sizes:
            condition, mask = sparse_condition({0: self.latent(width, height)}, self.frames)
            self._sizes[(width, height)] = RegionSparseControl(self.adapter, self.controlnet, condition, mask,
                                                               self.prompt_for_band, self.banded)
        return self._sizes[(width, height)]

    def keep_first_frame(self, width: int, height: int, noise: Tensor, levels: NoiseLevels) -> KeepFirstFrame:
        clean = self.at(width, height).condition[:, :, :1]
        return KeepFirstFrame(clean, noise[:, :, :1], levels)


def input_sparsectrl(ctx: Any, adapter: FamilyAdapter) -> nn.Module | None:
    """The SparseCtrl model an AnimateDiff panorama's input conditions (the first installed), or None: then
    the input is pasted and kept, and the log says why."""
    from ..models.sparsectrl import pick_sparsectrl, sparsectrl_for
    from ..errors import FailedPrecondition

    if adapter.family != "animatediff":
        return None
    addon = pick_sparsectrl(ctx.registry.addons(), "auto", "", adapter.family)
    if addon is None:
        ctx.log("panorama: no SparseCtrl model is installed; the input image is pasted and kept")
        return None
    try:
        return sparsectrl_for(adapter, addon.id, addon.path)
    except FailedPrecondition as exc:
        ctx.log(f"panorama: {exc} The input image is pasted and kept.")
        return None
