"""A keyframe contact sheet: one tile per shot, the keyframe with its shot id and prompt underneath.

What a previz supervisor looks at first (issue 7): the keyframes of the whole story on one image,
in story order, left to right then top to bottom. A shot with no keyframe gets a grey tile marked
"missing". PNG or JPEG by the file's suffix; written atomically. Pillow only (no torch).
"""
from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .temporary import temporary_beside

BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
DIM_TEXT = (170, 170, 170)
MISSING = (70, 70, 70)


@dataclass
class ContactTile:
    shot: str
    prompt: str
    image: np.ndarray | None  # (H, W, 3) display-referred, uint8 or float in [0, 1]; None = missing


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _as_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        image = np.clip(np.nan_to_num(image.astype(np.float32)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


def _wrap(text: str, font: ImageFont.ImageFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; the last kept line ends in '…' when text was cut."""
    average = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz") / 26)
    lines: list[str] = []
    for line in textwrap.wrap(text, width=max(4, int(width / average))):
        while font.getlength(line) > width and len(line) > 1:  # a long word wider than the estimate
            line = line[:-1]
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
    return lines


def render_contact_sheet(tiles: Sequence[ContactTile], *, tile_width: int = 256, columns: int | None = None,
                         prompt_lines: int = 4, margin: int = 12) -> Image.Image:
    """The sheet as a Pillow image; tiles keep their keyframe's aspect ratio (of the first keyframe)."""
    if not tiles:
        raise ValueError("a contact sheet needs at least one shot")
    columns = columns or min(len(tiles), 4)
    rows = math.ceil(len(tiles) / columns)
    first = next((t.image for t in tiles if t.image is not None), None)
    aspect = first.shape[0] / first.shape[1] if first is not None else 9 / 16
    tile_height = max(1, round(tile_width * aspect))
    title_font, prompt_font = _font(16), _font(12)
    line_height = int(prompt_font.size * 1.35) if hasattr(prompt_font, "size") else 14
    text_height = 22 + line_height * prompt_lines
    cell_w, cell_h = tile_width + margin, tile_height + text_height + margin
    sheet = Image.new("RGB", (columns * cell_w + margin, rows * cell_h + margin), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, tile in enumerate(tiles):
        x = margin + (index % columns) * cell_w
        y = margin + (index // columns) * cell_h
        if tile.image is None:
            draw.rectangle([x, y, x + tile_width - 1, y + tile_height - 1], fill=MISSING)
            draw.text((x + tile_width / 2, y + tile_height / 2), "missing", fill=TEXT, font=title_font, anchor="mm")
        else:
            picture = Image.fromarray(_as_uint8(tile.image))
            small = picture.width <= tile_width // 2  # tiny keyframes: keep their pixels crisp
            resample = Image.Resampling.NEAREST if small else Image.Resampling.LANCZOS
            sheet.paste(picture.resize((tile_width, tile_height), resample), (x, y))
        draw.text((x, y + tile_height + 4), tile.shot, fill=TEXT, font=title_font)
        for k, line in enumerate(_wrap(tile.prompt, prompt_font, tile_width, prompt_lines)):
            draw.text((x, y + tile_height + 24 + k * line_height), line, fill=DIM_TEXT, font=prompt_font)
    return sheet


def write_contact_sheet(path: Path, tiles: Sequence[ContactTile], **layout) -> Path:
    """Render and save atomically; PNG or JPEG from the suffix (.png, .jpg, .jpeg)."""
    path = Path(path)
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
    if path.suffix.lower() not in formats:
        raise ValueError(f"a contact sheet is a .png or .jpg file, not {path.name}")
    sheet = render_contact_sheet(tiles, **layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_beside(path)
    os.close(fd)
    try:
        kind = formats[path.suffix.lower()]
        sheet.save(tmp, format=kind, **({"quality": 92} if kind == "JPEG" else {}))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
