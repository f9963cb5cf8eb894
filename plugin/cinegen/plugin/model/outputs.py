"""Where results go and what came back: versioned output folders, and files grouped into sequences.

Every job writes into a new version folder, ``ROOT/NAME/v003/NAME_v003.####.exr``, so a result is
never overwritten by the next one (the previous Read node or strip keeps its frames). A version is
claimed by creating its folder (``mkdir`` fails when another panel took it first).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cinegen.common.sequence import FrameRange, SequencePattern

_VERSION = re.compile(r"^v(\d{3,})$")
_FRAME_IN_NAME = re.compile(r"^(?P<prefix>.*?)(?P<frame>-?\d+)(?P<suffix>\.[A-Za-z0-9]+)$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
# Pictures a host reads as a sequence; a job's other files (a story's cut, Episode_2.otio) are never frames.
PICTURE_SUFFIXES = (".exr", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dpx", ".cin", ".hdr", ".tga", ".bmp",
                    ".webp", ".sgi", ".rgb", ".jp2", ".j2c")


def safe_name(text: str, fallback: str = "cinegen") -> str:
    """A file-name-safe version of a shot or pipeline name."""
    return _SAFE_NAME.sub("_", text).strip("._") or fallback


def claim_version_folder(root: str | os.PathLike[str], name: str) -> tuple[Path, int]:
    """Create and return the next free ``ROOT/NAME/vNNN`` folder and its number (1, 2, ...)."""
    base = Path(root) / safe_name(name)
    base.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in base.iterdir() if p.is_dir() and (m := _VERSION.match(p.name))]
    version = max(taken, default=0) + 1
    while True:
        folder = base / f"v{version:03d}"
        try:
            folder.mkdir()
            return folder, version
        except FileExistsError:  # another panel claimed it between listing and creating
            version += 1


def versioned_output(root: str | os.PathLike[str], name: str) -> str:
    """A new output pattern ``ROOT/NAME/vNNN/NAME_vNNN.####.exr`` (its folder is claimed)."""
    folder, version = claim_version_folder(root, name)
    return str(folder / f"{safe_name(name)}_v{version:03d}.####.exr")


@dataclass(frozen=True)
class ResultSequence:
    """One generated image sequence, ready for a host: where, which frames, how it was made."""
    pattern: str  # DIR/NAME.####.exr
    frames: FrameRange
    pipeline: str = ""
    job_id: str = ""
    seed: int | None = None
    model: str = ""
    prompt: str = ""
    colorspace: str = ""  # the EXR header's cinegen:colorspace; empty = the host's scene-linear space
    source: str = ""  # the host's name for the input (Read node, strip) to place the result next to
    fps: float | None = None

    @property
    def parsed(self) -> SequencePattern:
        return SequencePattern.parse(self.pattern, any_extension=True, what="result")

    @property
    def first_file(self) -> str:
        return self.parsed.path_for(self.frames.first)

    def file_names(self) -> list[str]:
        return [self.parsed.file_name_for(frame) for frame in self.frames]

    @property
    def nuke_form(self) -> str:
        """``"/path/NAME.####.exr 1001-1024"`` for a Read node's ``fromUserText``."""
        return self.parsed.nuke_form(self.frames.first, self.frames.last)

    @property
    def label(self) -> str:
        """Short text for a node label or strip name: pipeline, seed, model."""
        parts = [self.pipeline or "cinegen"]
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        if self.model:
            parts.append(self.model)
        return " · ".join(parts)


def group_sequences(paths: Iterable[str]) -> list[tuple[str, FrameRange]]:
    """Frame files grouped into ``(DIR/NAME.####.ext, first-last)``; files without a frame number, and files that
    are not pictures (a story titled "Episode 2" writes Episode_2.otio), are left out.

    The padding is that of the shortest number in a group (1001 with ``####``; 12345 still fits).
    """
    groups: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
    for path in paths:
        folder, name = os.path.split(path)
        match = _FRAME_IN_NAME.match(name)
        if not match or match.group("suffix").lower() not in PICTURE_SUFFIXES:
            continue
        digits = match.group("frame").lstrip("-")
        groups.setdefault((folder, match.group("prefix"), match.group("suffix")), []).append(
            (int(match.group("frame")), len(digits)))
    out = []
    for (folder, prefix, suffix), frames in groups.items():
        padding = min(width for _, width in frames)
        numbers = [frame for frame, _ in frames]
        out.append((os.path.join(folder, f"{prefix}{'#' * padding}{suffix}"), FrameRange(min(numbers), max(numbers))))
    return sorted(out)
