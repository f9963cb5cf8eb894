"""The one interface every host (Nuke, Blender, a standalone window) offers the panel.

selection -> plate sequence + frame range + format; tracker/object -> trajectory; result -> node or
strip; a way to run a function on the host's main thread. Adapters stay thin: they translate
between the host's objects and these plain types, nothing more.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cinegen.common.sequence import FrameRange
from cinegen.common.trajectory_io import Trajectory

from ..model.outputs import ResultSequence


class HostSelectionError(ValueError):
    """Nothing usable is selected; the message says what to select."""


@dataclass(frozen=True)
class PlateSelection:
    """A plate the artist selected: frames on disk and their format."""
    pattern: str  # DIR/NAME.####.ext, or one file (a still)
    frames: FrameRange
    width: int
    height: int
    source: str = ""  # the host's name for it (Read node, strip), to place results next to it
    colorspace: str = ""  # the OCIO name of the files' colour space; "" = float is linear, integer sRGB
    fps: float | None = None
    frame_offset: int = 0  # frames the host shifts the files by (a Read's "offset"/"start at")


class BatchProgress:
    """Progress of blocking (batch) work as the host shows it; this default shows nothing."""

    def update(self, fraction: float, stage: str) -> None:
        """`fraction` of the job done (0..1), `stage` in words."""

    def cancelled(self) -> bool:
        """True once the artist asked to stop."""
        return False

    def close(self) -> None:
        """The work ended (done, failed or cancelled)."""


class HostAdapter(ABC):
    name: str = "host"

    @abstractmethod
    def selected_plate(self) -> PlateSelection:
        """The selected plate; raises HostSelectionError saying what to select."""

    @abstractmethod
    def selected_trajectory(self, width: int | None = None, height: int | None = None,
                            frames: FrameRange | None = None) -> Trajectory:
        """The selected tracker's / active object's path as a trajectory (pixels of width×height), over
        `frames` — the frames the job generates — when given."""

    @abstractmethod
    def load_result(self, result: ResultSequence) -> Any:
        """Bring a finished sequence into the host (a Read node, a strip, an Image node); main thread only."""

    @abstractmethod
    def run_on_main_thread(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the host's UI thread (soon, not necessarily before returning)."""

    def take_notices(self) -> list[str]:
        """Sentences for the artist gathered while loading results (e.g. a colour space the project lacks)."""
        return []

    def batch_progress(self, title: str) -> BatchProgress:
        """A progress display for `generate_blocking` (Nuke: `nuke.ProgressTask`)."""
        return BatchProgress()

    def output_root(self) -> Path:
        """Where versioned output folders are made by default."""
        return Path.home() / "cinegen" / "renders"

    def shot_name(self) -> str:
        """A name for output folders (the script's or scene's)."""
        return "cinegen"

    def client_name(self) -> str:
        """Shown in the server's job list."""
        return f"{self.name} / cinegen panel"
