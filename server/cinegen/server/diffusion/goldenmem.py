"""GoldenMem: earlier keyframes as context, each older one smaller by the golden ratio.

ALGORITHMS.md §4, after Captain Cinema (Xiao et al., 2025): the k-th most recent earlier keyframe is
kept with short side s_k ≈ s0 / φ^k (φ = (1+√5)/2), by repeated s_{k+1} = ⌊s_k / φ⌋
(25 → 15 → 9 → 5 → 3 → 1). Its token count is ∝ s_k², so the whole memory costs

    Σ_k (s_k / s0)² ≤ Σ_k φ^(−2k) = 1 / (1 − φ^(−2)) = φ ≈ 1.618   full frames,

however many shots came before.

Choices (the paper publishes no code):
- k = 0, the most recent earlier keyframe, is kept at full size s0 (that is the series whose sum is
  φ, the paper's "≈1.62× one frame"); the keyframe being generated is not part of the memory.
- The long side follows with integer arithmetic, long_k = ⌊long0 · s_k / s0⌋, which keeps the
  aspect ratio (to within a pixel) and never rounds a side up, so every term stays ≤ φ^(−2k) and the
  bound above holds exactly, not just approximately.
- Sizes below ``min_short_side`` (default 1 latent pixel) are dropped: the oldest keyframes fall out
  of memory rather than being kept as single pixels of nothing.
- ⌊s/φ⌋ is computed exactly in integers: s/φ = s(√5 − 1)/2, so ⌊s/φ⌋ = (⌊√(5s²)⌋ − s) // 2.
- Downsampling is bilinear with antialiasing (a triangle filter over the footprint), which keeps
  the low frequencies a small memory frame is for without aliasing.

Memory tokens are what a keyframe's self-attention appends to its keys and values
(StoryDiffusion-style consistent self-attention; the memory is noised to the current step first so
attention compares like with like).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

PHI = (1 + math.sqrt(5)) / 2
GOLDEN_MEMORY_BOUND = PHI  # Σ φ^(−2k), the most memory can cost in full frames


def floor_div_phi(size: int) -> int:
    """⌊size / φ⌋ exactly: size/φ = size(√5 − 1)/2 and √(5·size²) is never a whole number."""
    if size < 0:
        raise ValueError(f"a size cannot be negative, got {size}")
    return (math.isqrt(5 * size * size) - size) // 2


def golden_memory_sizes(full_short_side: int, count: int, min_short_side: int = 1) -> list[int]:
    """Short sides of the ``count`` most recent earlier keyframes, newest first: s_0 = full_short_side,
    s_{k+1} = ⌊s_k / φ⌋. Sizes below ``min_short_side`` are dropped, so the list may be shorter."""
    if full_short_side < 1:
        raise ValueError(f"the full short side must be at least 1, got {full_short_side}")
    if count < 0:
        raise ValueError(f"count cannot be negative, got {count}")
    sizes: list[int] = []
    size = full_short_side
    while len(sizes) < count and size >= max(1, min_short_side):
        sizes.append(size)
        size = floor_div_phi(size)
    return sizes


def golden_memory_shapes(full_shape: tuple[int, int], count: int,
                         min_short_side: int = 1) -> list[tuple[int, int]]:
    """(height, width) of each memory keyframe, newest first, for keyframes of ``full_shape``;
    the long side is ⌊long0 · s_k / s0⌋ (never rounded up, so the cost bound holds)."""
    height, width = full_shape
    short, long = min(height, width), max(height, width)
    shapes = []
    for size in golden_memory_sizes(short, count, min_short_side):
        other = long * size // short
        shapes.append((size, other) if height <= width else (other, size))
    return shapes


def memory_cost(sizes: Sequence[int], aspect: float = 1.0, full_short_side: int | None = None) -> float:
    """Pixels (= tokens) of memory frames with these short sides, in units of one full frame whose
    short side is ``full_short_side`` (default ``sizes[0]``) and long/short ratio ``aspect``."""
    if not sizes:
        return 0.0
    aspect = max(aspect, 1.0 / aspect)  # a ratio either way round
    short = full_short_side if full_short_side is not None else sizes[0]
    long = max(short, round(short * aspect))
    return sum(size * (long * size // short) for size in sizes) / (short * long)


def build_memory_latents(keyframe_latents: Sequence[torch.Tensor], min_short_side: int = 1,
                         mode: str = "bilinear", antialias: bool = True) -> list[torch.Tensor]:
    """Downsample earlier keyframes (oldest → newest, each (C, h, w) or (…, h, w), all the same size)
    to their golden-memory sizes; returns them oldest → newest, without the ones too old to keep."""
    if not keyframe_latents:
        return []
    full_shape = tuple(keyframe_latents[-1].shape[-2:])
    for latent in keyframe_latents:
        if tuple(latent.shape[-2:]) != full_shape:
            raise ValueError(f"all keyframe latents must share one size; got {tuple(latent.shape[-2:])} "
                             f"and {full_shape}")
    shapes = golden_memory_shapes(full_shape, len(keyframe_latents), min_short_side)  # newest first
    newest_first = list(reversed(keyframe_latents))[: len(shapes)]
    memory = [_resize(latent, shape, mode, antialias) for latent, shape in zip(newest_first, shapes)]
    return memory[::-1]


def _resize(latent: torch.Tensor, shape: tuple[int, int], mode: str, antialias: bool) -> torch.Tensor:
    if tuple(latent.shape[-2:]) == shape:
        return latent
    planes = latent.reshape(1, -1, *latent.shape[-2:])
    extra = {"antialias": antialias, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
    # in float32: antialiased resize has no bfloat16 kernel on the CPU, and half latents lose the small values
    resized = F.interpolate(planes.float(), size=shape, mode=mode, **extra).to(latent.dtype)
    return resized.reshape(*latent.shape[:-2], *shape)


def patch_tokens(latent: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(C, h, w) → (⌈h/p⌉·⌈w/p⌉, C·p·p) tokens, row-major over patches, each flattened as (C, p, p)
    — the layout of a stride-p patch-embedding conv's weight, so ``tokens @ W.view(D, -1).T`` equals
    that conv. Edges that do not fill a patch are padded by repeating the border."""
    channels, height, width = latent.shape
    pad_h, pad_w = -height % patch_size, -width % patch_size
    if pad_h or pad_w:
        latent = F.pad(latent.unsqueeze(0), (0, pad_w, 0, pad_h), mode="replicate").squeeze(0)
    rows, cols = latent.shape[1] // patch_size, latent.shape[2] // patch_size
    patches = latent.reshape(channels, rows, patch_size, cols, patch_size)
    return patches.permute(1, 3, 0, 2, 4).reshape(rows * cols, channels * patch_size * patch_size)


def memory_tokens(memory_latents: Sequence[torch.Tensor],
                  to_tokens: Callable[[torch.Tensor], torch.Tensor] | int = 1,
                  add_noise: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The tokens a keyframe's attention appends to its keys/values at one step: every memory latent
    (oldest → newest), first noised by ``add_noise`` (e.g. ``lambda z: scheduler.add_noise(z,
    torch.randn_like(z), t)`` — the memory should be at the current step's noise level; None keeps it
    clean), then turned into (n, D) tokens by ``to_tokens`` (a callable, or a patch size for
    ``patch_tokens``; 1 = one token per latent pixel, D = C); concatenated to (N, D)."""
    tokens = []
    for latent in memory_latents:
        z = add_noise(latent) if add_noise is not None else latent
        t = patch_tokens(z, to_tokens) if isinstance(to_tokens, int) else to_tokens(z)
        if t.ndim != 2:
            raise ValueError(f"to_tokens must return (tokens, features), got shape {tuple(t.shape)}")
        tokens.append(t)
    if not tokens:
        raise ValueError("no memory latents: there is nothing to attend to (skip the memory instead)")
    return torch.cat(tokens, dim=0)
