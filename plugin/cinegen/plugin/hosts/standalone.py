"""A host with no application around it: for tests, demos and a standalone window.

Selections are set by the caller; loaded results are kept in `loaded`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from cinegen.common.sequence import FrameRange
from cinegen.common.trajectory_io import Trajectory

from ..model.outputs import ResultSequence
from .base import HostAdapter, HostSelectionError, PlateSelection


class StandaloneHost(HostAdapter):
    name = "standalone"

    def __init__(self, output_root: str | Path | None = None):
        self._output_root = Path(output_root) if output_root else None
        self.plate: PlateSelection | None = None
        self.trajectory: Trajectory | None = None
        self.loaded: list[ResultSequence] = []
        self._invoker = None

    def selected_plate(self) -> PlateSelection:
        if self.plate is None:
            raise HostSelectionError("No plate is selected: choose a plate file in the Input field.")
        return self.plate

    def selected_trajectory(self, width: int | None = None, height: int | None = None,
                            frames: FrameRange | None = None) -> Trajectory:
        if self.trajectory is None:
            raise HostSelectionError("No trajectory is selected: load a trajectory JSON file instead.")
        if width and height and (width, height) != (self.trajectory.width, self.trajectory.height):
            return self.trajectory.scaled_to(width, height)
        return self.trajectory

    def load_result(self, result: ResultSequence) -> Any:
        self.loaded.append(result)
        return result

    def run_on_main_thread(self, fn: Callable[[], None]) -> None:
        if self._invoker is None:
            from ..ui.invoker import MainThreadInvoker  # Qt only when a Qt loop is what runs us
            self._invoker = MainThreadInvoker()
        self._invoker(fn)

    def output_root(self) -> Path:
        return self._output_root or super().output_root()
