"""Which pixels of a toy-world picture are a named palette colour.

A pixel "is" a colour when it is closer (Euclidean RGB) to that colour than `tolerance` and closer to
it than to any other palette colour. Objects made of such pixels are counted by the one object
finder, `quality.metrics.find_objects` with `SalientParams(colours=(...))`.
"""
from __future__ import annotations

import numpy as np

from .world import COLOURS


def colour_mask(image: np.ndarray, colour: str, tolerance: float = 0.3) -> np.ndarray:
    """Boolean (H, W) mask of pixels of `colour` in an (H, W, 3) image in [0, 1]."""
    names = list(COLOURS)
    if colour not in names:
        raise ValueError(f"'{colour}' is not a toy-world colour; use one of {', '.join(names)}")
    palette = np.array([COLOURS[n] for n in names], np.float32)
    dist = np.linalg.norm(image[..., None, :3].astype(np.float32) - palette, axis=-1)
    k = names.index(colour)
    return (dist[..., k] < tolerance) & (dist.argmin(-1) == k)
