"""Frame-numbered file patterns and frame ranges: ``DIR/NAME.####.exr``.

One pattern, several spellings (DESIGN.md, "Frames on disk"):

- ``####``   a run of N hashes is N-digit zero padding (Nuke, Blender);
- ``%04d``   printf style, ``%0Nd`` is N digits, ``%d`` is unpadded (Nuke, ffmpeg);
- ``$F4``    Houdini style, ``$FN`` is N digits, ``$F`` is unpadded.

All spellings of the same padding parse to the same :class:`SequencePattern`; ``hash_form`` is the
canonical ``####`` spelling. Padding is a minimum width, as in printf: frame 12345 with ``####`` is
``12345``, frame -5 is ``-005``. Only the file name may carry the frame token (not the folder).

Outputs are OpenEXR sequences; readers of plates pass ``any_extension=True``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

DEFAULT_FIRST_FRAME = 1001
OUTPUT_EXTENSION = ".exr"

# One alternative per spelling; `$F` must not swallow Houdini's other variables ($FF, $FPS...).
_FRAME_TOKEN = re.compile(r"(?P<hashes>#+)|%(?:0(?P<printf>\d+))?d|\$F(?P<houdini>\d*)(?![A-Za-z_])")
_FRAME_RANGE = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?$")
_SPELLINGS_HINT = "NAME.####.exr (or %04d / $F4)"
_TRAILING_RANGE = re.compile(r"\.[A-Za-z0-9]+(?P<range>\s+-?\d+(?:\s*-\s*-?\d+)?\s*)$")


class SequencePatternError(ValueError):
    """A path that is not a usable frame pattern; the message is meant for the artist."""


class OutputNotWritableError(OSError):
    """The folder of an output sequence cannot be created or written; the message says what to do."""


@dataclass(frozen=True)
class FrameRange:
    """An inclusive range of frame numbers, e.g. 1001-1096 (96 frames)."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError(f"The frame range {self.first}-{self.last} ends before it starts.")

    @classmethod
    def parse(cls, text: str) -> FrameRange:
        """Read ``"1001-1096"`` (or a single frame, ``"1001"``)."""
        match = _FRAME_RANGE.match(text)
        if match is None:
            raise ValueError(f"'{text}' is not a frame range: write it as FIRST-LAST, e.g. 1001-1096.")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        return cls(first, last)

    @classmethod
    def from_count(cls, first: int, count: int) -> FrameRange:
        """``count`` frames starting at ``first``."""
        if count < 1:
            raise ValueError(f"A frame range needs at least one frame, not {count}.")
        return cls(first, first + count - 1)

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last + 1))

    def __contains__(self, frame: object) -> bool:
        return isinstance(frame, int) and self.first <= frame <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def compact_frame_list(frames: Iterable[int]) -> str:
    """Frames as a short list of runs: ``[1003, 1004, 1005, 1010]`` -> ``"1003-1005, 1010"``."""
    runs: list[list[int]] = []
    for frame in sorted(set(frames)):
        if runs and frame == runs[-1][1] + 1:
            runs[-1][1] = frame
        else:
            runs.append([frame, frame])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@dataclass(frozen=True)
class SequencePattern:
    """``directory/prefix<frame zero-padded to padding digits>suffix``."""

    directory: str
    prefix: str
    padding: int
    suffix: str

    def __post_init__(self) -> None:
        if self.padding < 1:
            raise ValueError(f"Frame padding must be at least 1 digit, not {self.padding}.")

    @classmethod
    def parse(cls, text: str | os.PathLike[str], *, any_extension: bool = False,
              what: str = "output") -> SequencePattern:
        """Parse any accepted spelling; ``what`` names the path in error messages ("output", "plate")."""
        text = os.fspath(text)
        if not text.strip():
            raise SequencePatternError(f"No {what} path was given: write it as DIR/{_SPELLINGS_HINT}.")
        directory, name = os.path.split(text)
        tokens = list(_FRAME_TOKEN.finditer(name))
        if not tokens:
            hint = "" if _FRAME_TOKEN.search(directory) is None else " (the folder name cannot hold it)"
            raise SequencePatternError(
                f"The {what} '{text}' has no frame number{hint}: write it as {_SPELLINGS_HINT}.")
        if len(tokens) > 1:
            spelled = " and ".join(f"'{t.group(0)}'" for t in tokens)
            raise SequencePatternError(
                f"The {what} '{text}' has {len(tokens)} frame numbers ({spelled}): keep exactly one, "
                f"as in {_SPELLINGS_HINT}.")
        token = tokens[0]
        prefix, suffix = name[: token.start()], name[token.end():]
        pasted_range = _TRAILING_RANGE.search(suffix)
        if pasted_range:  # Nuke's file knob shows "PATH 1001-1096"; the range is not part of the file name
            alone = text[: len(text) - len(pasted_range.group("range"))]
            raise SequencePatternError(
                f"The {what} '{text}' ends in the frame range '{pasted_range.group('range').strip()}': give the path "
                f"alone ('{alone}'); the frames are chosen apart from it.")
        if not any_extension and not suffix.lower().endswith(OUTPUT_EXTENSION):
            raise SequencePatternError(
                f"The {what} '{text}' must be an OpenEXR sequence ending in '.exr', "
                f"such as {_SPELLINGS_HINT}.")
        return cls(directory, prefix, _padding_of(token), suffix)

    def file_name_for(self, frame: int) -> str:
        return f"{self.prefix}{frame:0{self.padding}d}{self.suffix}"

    def path_for(self, frame: int) -> str:
        """The file of one frame, e.g. ``/shots/sh010/sh010.1001.exr``."""
        return os.path.join(self.directory, self.file_name_for(frame))

    def hash_form(self) -> str:
        """The canonical spelling, ``DIR/NAME.####.exr``."""
        return os.path.join(self.directory, f"{self.prefix}{'#' * self.padding}{self.suffix}")

    def nuke_form(self, first: int, last: int) -> str:
        """What Nuke's ``file`` knob ``fromUserText`` takes: ``"/path/NAME.####.exr 1001-1096"``."""
        # Nuke wants forward slashes on every platform.
        return f"{self.hash_form().replace(os.sep, '/')} {FrameRange(first, last)}"

    def glob_existing(self) -> dict[int, str]:
        """Frames of this pattern present on disk, in frame order: ``{frame: path}``."""
        folder = self.directory or os.curdir
        frame_in_name = re.compile(re.escape(self.prefix) + r"(-?\d+)" + re.escape(self.suffix) + r"\Z")
        found: dict[int, str] = {}
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return found
        for entry in entries:
            match = frame_in_name.match(entry.name)
            # Only the canonical spelling belongs to the sequence: "sh.01001.exr" is not "sh.####.exr".
            if match and self.file_name_for(int(match.group(1))) == entry.name and entry.is_file():
                found[int(match.group(1))] = os.path.join(self.directory, entry.name)
        return dict(sorted(found.items()))

    def frame_range_on_disk(self) -> FrameRange | None:
        """First to last frame found on disk (there may be gaps), or ``None`` when there is none."""
        frames = self.glob_existing()
        if not frames:
            return None
        return FrameRange(min(frames), max(frames))

    def missing_frames(self, frames: Iterable[int]) -> list[int]:
        """The frames of ``frames`` that have no file on disk."""
        present = self.glob_existing()
        return [frame for frame in frames if frame not in present]


def _padding_of(token: re.Match[str]) -> int:
    if token.group("hashes"):
        return len(token.group("hashes"))
    digits = token.group("printf") if token.group(0).startswith("%") else token.group("houdini")
    return max(int(digits), 1) if digits else 1


def check_output_writable(pattern: SequencePattern) -> None:
    """Create the output folder if needed and prove a file can be written in it.

    Raises :class:`OutputNotWritableError` saying which folder and what to do.
    """
    folder = pattern.directory or os.curdir
    shown = os.path.abspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputNotWritableError(
            f"The output folder '{shown}' is a file, not a folder: choose another output path.")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise OutputNotWritableError(
            f"The output folder '{shown}' could not be created ({error.strerror or error}): choose a "
            "folder you can write to, or ask for write access to its parent.") from error
    try:
        # A real file proves more than os.access, which network shares and ACLs can fool.
        handle, probe = tempfile.mkstemp(prefix=".cinegen-write-test-", dir=folder)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise OutputNotWritableError(
            f"Cannot write into the output folder '{shown}' ({error.strerror or error}): choose "
            "another output folder or fix its permissions.") from error
