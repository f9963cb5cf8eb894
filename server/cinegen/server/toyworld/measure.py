"""Measurements on toy-world images: which pixels are a named colour, and the objects they form.

A pixel "is" a colour when it is closer (Euclidean RGB) to that colour than `tolerance` and closer to
it than to any other palette colour; objects are 4-connected components of such pixels with at
least `min_pixels` pixels (specks of a few pixels are sampling noise, not objects).
"""
from __future__ import annotations

from collections import deque

import numpy as np

from .world import COLOURS


def colour_mask(image: np.ndarray, colour: str, tolerance: float = 0.3) -> np.ndarray:
    """Boolean (H, W) mask of pixels of `colour` in an (H, W, 3) image in [0, 1]."""
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], np.float32)
    dist = np.linalg.norm(image[..., None, :].astype(np.float32) - palette, axis=-1)
    k = names.index(colour)
    return (dist[..., k] < tolerance) & (dist.argmin(-1) == k)


def component_sizes(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected components of `mask`, largest first."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    sizes = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, size = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        sizes.append(size)
    return sorted(sizes, reverse=True)


def count_objects(image: np.ndarray, colour: str, min_pixels: int = 12) -> int:
    return sum(1 for s in component_sizes(colour_mask(image, colour)) if s >= min_pixels)
