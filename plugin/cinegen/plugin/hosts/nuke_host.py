"""Nuke: plates from the selected Read node, trajectories from a selected Tracker4, results as Read nodes.

Thin on purpose: every call here is a documented Nuke Python API call (`nuke.selectedNode`,
`Knob.value`, `nuke.createNode`, `File_Knob.fromUserText`, `Node.setXYpos`,
`nuke.executeInMainThread`, `Array_Knob.getValueAt`), so a stand-in `nuke` module that records
them tests this adapter honestly.

Tracker4 keeps its tracks in one table knob, ``tracks``: 31 columns per track, column 2 is
``track_x`` and column 3 ``track_y`` (pixels, origin bottom-left); the table's size is the
``{ 1 31 N }`` header of ``tracks.toScript()``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import nuke  # only host adapters import their host

from cinegen.common.sequence import FrameRange, SequencePattern, SequencePatternError
from cinegen.common.trajectory_io import Track, TrackPoint, Trajectory

from ..model.outputs import ResultSequence
from .base import HostAdapter, HostSelectionError, PlateSelection

TRACKER_COLUMNS = 31
TRACK_X, TRACK_Y = 2, 3
SCENE_LINEAR = "scene_linear"  # the OCIO role every config has: the fallback colour space
RESULT_GAP = 40  # pixels between the input node and its result in the node graph
_TABLE_SIZE = re.compile(r"\{\s*1\s+(\d+)\s+(\d+)\s*\}")


class NukeHost(HostAdapter):
    name = "nuke"

    # ---- selection in -------------------------------------------------------------------------
    def selected_plate(self) -> PlateSelection:
        node = _selected("Read", "Select the Read node of the plate first (one node).")
        text = node["file"].value()
        try:
            pattern = SequencePattern.parse(text, any_extension=True, what="plate")
        except SequencePatternError as exc:
            raise HostSelectionError(f"The selected Read node '{node.name()}' reads '{text}', which is not an "
                                     f"image sequence: {exc}") from None
        first, last = int(node["first"].value()), int(node["last"].value())
        return PlateSelection(pattern=pattern.hash_form(), frames=FrameRange(first, last), width=int(node.width()),
                              height=int(node.height()), source=node.name(),
                              colorspace=str(node["colorspace"].value()))

    def selected_trajectory(self, width: int | None = None, height: int | None = None) -> Trajectory:
        node = _selected("Tracker4", "Select a Tracker node (Tracker4) with at least one tracked track.")
        knob = node["tracks"]
        match = _TABLE_SIZE.search(knob.toScript())
        count = int(match.group(2)) if match and int(match.group(1)) == TRACKER_COLUMNS else 0
        tracks = []
        for index in range(count):
            x_column, y_column = index * TRACKER_COLUMNS + TRACK_X, index * TRACKER_COLUMNS + TRACK_Y
            if not knob.isAnimated(x_column):
                continue  # a track never tracked or keyed has no path
            frames = sorted({int(key.x) for key in knob.animation(x_column).keys()})
            points = tuple(TrackPoint(f, knob.getValueAt(f, x_column), knob.getValueAt(f, y_column)) for f in frames)
            tracks.append(Track(name=f"track {index + 1}", points=points))
        if not tracks:
            raise HostSelectionError(f"The Tracker '{node.name()}' has no tracked tracks: track a feature first.")
        trajectory = Trajectory(width=int(node.width()), height=int(node.height()), tracks=tuple(tracks),
                                origin="bottom-left")  # Nuke counts y up from the bottom
        if width and height and (width, height) != (trajectory.width, trajectory.height):
            trajectory = trajectory.scaled_to(width, height)
        return trajectory

    # ---- results out --------------------------------------------------------------------------
    def load_result(self, result: ResultSequence) -> Any:
        for node in nuke.selectedNodes():
            node.setSelected(False)  # createNode would otherwise wire the Read under the selection
        read = nuke.createNode("Read", inpanel=False)
        read["file"].fromUserText(result.nuke_form)  # sets file, first and last
        _set_colorspace(read, result.colorspace or SCENE_LINEAR)
        read["on_error"].setValue("black")
        read["label"].setValue(f"{result.label}\n{_short(result.prompt)}")
        source = nuke.toNode(result.source) if result.source else None
        if source is not None:  # beside the input, so the comparison is one glance away
            read.setXYpos(source.xpos() + source.screenWidth() + RESULT_GAP, source.ypos())
        return read

    def run_on_main_thread(self, fn: Callable[[], None]) -> None:
        nuke.executeInMainThread(fn)

    # ---- where -------------------------------------------------------------------------------
    def output_root(self) -> Path:
        script = nuke.root().name()
        if script and script != "Root":
            return Path(script).parent / "cinegen"
        return super().output_root()

    def shot_name(self) -> str:
        script = nuke.root().name()
        return Path(script).stem if script and script != "Root" else "cinegen"

    def client_name(self) -> str:
        return f"nuke {nuke.NUKE_VERSION_STRING} / cinegen panel"


def _selected(node_class: str, hint: str) -> Any:
    try:
        node = nuke.selectedNode()
    except ValueError:  # Nuke raises when nothing is selected
        raise HostSelectionError(hint) from None
    if node.Class() != node_class:
        raise HostSelectionError(f"The selected node '{node.name()}' is a {node.Class()}, not a {node_class}. {hint}")
    return node


def _set_colorspace(read: Any, colorspace: str) -> None:
    """The EXR's own colour space when this Nuke's OCIO config knows it, else the scene-linear role."""
    try:
        read["colorspace"].setValue(colorspace)
    except (ValueError, NameError):  # Nuke refuses a name its config doesn't have
        read["colorspace"].setValue(SCENE_LINEAR)


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
