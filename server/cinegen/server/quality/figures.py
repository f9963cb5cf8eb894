"""Side-by-side pictures of the quality experiments: labelled rows of images, saved as PNG.

Images are (H, W, 3) in [0, 1]; each row is scaled (nearest neighbour, whole multiples) to a common
height so small native pictures stay sharp next to 4× ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

GAP = 4  # px between pictures
LABEL_HEIGHT = 14  # px strip above each picture for its label
BACKGROUND = 0.12


@dataclass
class Tile:
    image: np.ndarray  # (H, W, 3) in [0, 1]
    label: str = ""


def _scaled(image: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour enlargement by the whole factor that comes closest to `height` from below."""
    factor = max(1, height // image.shape[0])
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def grid(rows: list[list[Tile]], row_height: int | None = None) -> Image.Image:
    """One picture of labelled rows; `row_height` defaults to the tallest picture."""
    height = row_height or max(t.image.shape[0] for row in rows for t in row)
    scaled = [[Tile(_scaled(np.clip(t.image, 0, 1), height), t.label) for t in row] for row in rows]
    width = max(sum(t.image.shape[1] for t in row) + GAP * (len(row) + 1) for row in scaled)
    cell = LABEL_HEIGHT + height + GAP
    canvas = Image.new("RGB", (width, GAP + cell * len(scaled)), tuple([round(BACKGROUND * 255)] * 3))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(scaled):
        x, y = GAP, GAP + r * cell
        for tile in row:
            draw.text((x, y), tile.label, fill=(230, 230, 230))
            canvas.paste(Image.fromarray((tile.image * 255 + 0.5).astype(np.uint8)), (x, y + LABEL_HEIGHT))
            x += tile.image.shape[1] + GAP
    return canvas


def save_grid(path: Path, rows: list[list[Tile]], row_height: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(rows, row_height).save(path, format="PNG")
    return path


def mark_point(image: np.ndarray, x: float, y: float, colour: tuple[float, float, float] = (1.0, 1.0, 1.0),
               arm: int = 2) -> np.ndarray:
    """A copy with a small cross at top-left pixel position (x, y): the requested track point."""
    out = image.copy()
    h, w = out.shape[:2]
    cx, cy = int(x), int(y)
    for d in range(-arm, arm + 1):
        if 0 <= cy < h and 0 <= cx + d < w:
            out[cy, cx + d] = colour
        if 0 <= cy + d < h and 0 <= cx < w:
            out[cy + d, cx] = colour
    return out


def rolled_half(image: np.ndarray) -> np.ndarray:
    """The panorama turned by half its width: its left/right seam now runs down the middle."""
    return np.roll(image, image.shape[1] // 2, axis=1)
