"""A condition laid over a whole panorama, cut per denoising region (windows, sphere views).

An image-to-video model takes, beside its noisy latent, a condition on the same latent grid (Wan:
the VAE latent of ``[first frame, 0, …, 0]`` and the frame mask, channel-concatenated). A panorama
denoises in regions, so each region must see the part of the condition under it: the condition is
read with the region's own ``read`` (wrap-aware windows, nearest-sampled sphere views), exactly as
the latent is. Image-space conditions (a CLIP embedding of what the region shows) take the
region's pixels: the pixel cells under the latent cells the region reads (``region_pixels``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

__all__ = ["region_condition", "region_pixels"]


def region_condition(full: Tensor, regions: Sequence[Any], layout: Any) -> Tensor:
    """The condition ``(1, C, F, H, W)`` read by each region, in the model batch's layout."""
    return layout.to_model([region.read(full) for region in regions])


def region_pixels(image: Tensor, region: Any, cell: int, frames: int) -> Tensor:
    """The pixels ``(3, h·cell, w·cell)`` of one frame ``image`` (3, H, W) under the latent cells that
    ``region`` reads from a ``frames``-frame latent: each latent cell's ``cell × cell`` block, in
    the region's own order (a window's crop, wrapped across a seam; a sphere view's nearest cells)."""
    cells = F.pixel_unshuffle(image[None], cell)  # (1, 3·cell², H/cell, W/cell): one latent cell per position
    # the same pixels under every latent frame, so a region's frame span reads them whatever it is
    read = region.read(cells.unsqueeze(2).expand(-1, -1, frames, -1, -1))[:, :, 0]
    return F.pixel_shuffle(read, cell)[0]
