"""Tiled VAE encode/decode with feathered overlaps for 4K/8K frames (ALGORITHMS.md §1a).

A frame is cut into overlapping tiles (the last tile of a row/column is snapped to the frame's
edge so all tiles have one size), each tile goes through the VAE alone, and the results are
blended with linear ramps across the overlaps, normalised by the summed weights:

    out(p) = Σ_tiles w_tile(p) · tile(p) / Σ_tiles w_tile(p)

where ``w`` rises linearly over the ``overlap`` cells on every side that has a neighbour and is 1
elsewhere (frame edges are not feathered). A frame that fits one tile goes through the VAE
untouched (bit-identical to a plain call).

Works on raw latents of diffusers' ``AutoencoderKL``: multiplying by ``vae.config.scaling_factor``
(and ``shift_factor``) is the caller's business. Video latents ``(B, C, F, H, W)`` are treated as
``B·F`` images. Seams: the VAE's GroupNorms see tile statistics, not frame statistics, so tiles
differ slightly from a whole-frame pass; overlap blending hides the steps.

Memory: the peak is one tile's activations (set by ``tile_latent``/``tile_px``, independent of
the frame size) plus float32 accumulators of the output (decode: ``4 × H × W × 4`` bytes per
image, ~1 GiB at 8192²; encode: two latent-sized maps). A plain 8K decode would instead hold
full-resolution decoder activations of hundreds of channels (tens of GiB).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

TileFn = Callable[[torch.Tensor], torch.Tensor]


def vae_spatial_factor(vae: nn.Module) -> int:
    """Pixels per latent cell: ``2 ** (levels − 1)`` (8 for SD/SDXL)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis: stride ``tile − overlap``, last tile flush with the edge."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile={tile})")
    stride = tile - overlap
    last = length - tile
    return list(range(0, last, stride)) + [last]


def _ramp(size: int, overlap: int, feather_start: bool, feather_end: bool) -> torch.Tensor:
    weights = torch.ones(size, dtype=torch.float32)
    if overlap <= 0:
        return weights
    # (i + 1) / (overlap + 1): never zero, so every pixel keeps a positive total weight
    rise = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
    if feather_start:
        weights[:overlap] = rise
    if feather_end:
        weights[size - overlap :] = torch.minimum(weights[size - overlap :], rise.flip(0))
    return weights


def blend_tiles(
    frames: torch.Tensor, tile: int, overlap: int, factor_out: float, run_tile: TileFn, out_channels: int
) -> torch.Tensor:
    """Run ``run_tile`` on overlapping ``tile × tile`` crops of ``frames`` (B, C, H, W) and blend.

    ``factor_out`` is output cells per input cell (8 for decode, 1/8 for encode).
    """
    batch, _, height, width = frames.shape
    out_h, out_w = round(height * factor_out), round(width * factor_out)
    out_overlap = round(overlap * factor_out)
    out_tile = round(tile * factor_out)
    starts_h, starts_w = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    total = torch.zeros(batch, out_channels, out_h, out_w, dtype=torch.float32, device=frames.device)
    weight = torch.zeros(1, 1, out_h, out_w, dtype=torch.float32, device=frames.device)
    for row, top in enumerate(starts_h):
        ramp_h = _ramp(min(out_tile, out_h), out_overlap, row > 0, row < len(starts_h) - 1)
        for column, left in enumerate(starts_w):
            ramp_w = _ramp(min(out_tile, out_w), out_overlap, column > 0, column < len(starts_w) - 1)
            result = run_tile(frames[:, :, top : top + tile, left : left + tile])
            mask = (ramp_h[:, None] * ramp_w[None, :]).to(frames.device)
            out_top, out_left = round(top * factor_out), round(left * factor_out)
            rows = slice(out_top, out_top + result.shape[-2])
            columns = slice(out_left, out_left + result.shape[-1])
            total[:, :, rows, columns] += result.float() * mask
            weight[:, :, rows, columns] += mask
    return total / weight


def _as_image_batch(tensor: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Fold video ``(B, C, F, H, W)`` into ``(B·F, C, H, W)``; returns the unfold for the result."""
    if tensor.ndim == 4:
        return tensor, lambda result: result
    if tensor.ndim != 5:
        raise ValueError(f"expected (B, C, H, W) or (B, C, F, H, W), got shape {tuple(tensor.shape)}")
    batch, channels, frames, height, width = tensor.shape
    folded = tensor.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)

    def unfold(result: torch.Tensor) -> torch.Tensor:
        return result.reshape(batch, frames, *result.shape[1:]).permute(0, 2, 1, 3, 4)

    return folded, unfold


def tiled_decode(
    vae: nn.Module, latents: torch.Tensor, tile_latent: int = 64, overlap_latent: int = 16
) -> torch.Tensor:
    """Raw latents → images in ``[-1, 1]`` (unclamped), decoded in ``tile_latent``² tiles.

    ``tile_latent`` 64 = 512 px tiles for SD/SDXL; ``overlap_latent`` cells are feather-blended.
    """
    images, unfold = _as_image_batch(latents)
    _, _, height, width = images.shape
    if height <= tile_latent and width <= tile_latent:
        return unfold(vae.decode(images).sample)
    factor = vae_spatial_factor(vae)
    out_channels = vae.config.out_channels
    decoded = blend_tiles(
        images, tile_latent, overlap_latent, factor, lambda tile: vae.decode(tile).sample, out_channels
    )
    return unfold(decoded.to(latents.dtype))


def tiled_encode(
    vae: nn.Module,
    images: torch.Tensor,
    tile_px: int = 512,
    overlap_px: int = 128,
    mode: Literal["mean", "sample"] = "mean",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images in ``[-1, 1]`` → raw latents, encoded in ``tile_px``² tiles.

    ``mode="mean"`` returns the posterior mean; ``"sample"`` draws ``mean + std · ε`` with
    ``generator`` once over the blended mean and std (so overlaps keep unit noise variance).
    ``tile_px`` and ``overlap_px`` must be multiples of the VAE factor (8).
    """
    if mode not in ("mean", "sample"):
        raise ValueError(f"mode must be 'mean' or 'sample', got {mode!r}")
    frames, unfold = _as_image_batch(images)
    _, _, height, width = frames.shape
    if height <= tile_px and width <= tile_px:
        posterior = vae.encode(frames).latent_dist
        return unfold(posterior.mean if mode == "mean" else posterior.sample(generator))

    factor = vae_spatial_factor(vae)
    if tile_px % factor or overlap_px % factor:
        raise ValueError(f"tile_px {tile_px} and overlap_px {overlap_px} must be multiples of {factor}")
    latent_channels = vae.config.latent_channels

    def mean_and_std(tile: torch.Tensor) -> torch.Tensor:
        posterior = vae.encode(tile).latent_dist
        return torch.cat([posterior.mean, posterior.std], dim=1)

    blended = blend_tiles(frames, tile_px, overlap_px, 1.0 / factor, mean_and_std, 2 * latent_channels)
    mean, std = blended.to(images.dtype).split(latent_channels, dim=1)
    if mode == "mean":
        return unfold(mean)
    # the same draw as DiagonalGaussianDistribution.sample for a given generator
    noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return unfold(mean + std * noise)


__all__ = ["blend_tiles", "tile_starts", "tiled_decode", "tiled_encode", "vae_spatial_factor"]
