"""Nuke: plates from the selected Read node, trajectories from a selected Tracker4, results as Read nodes.

Thin on purpose: every call here is a documented Nuke Python API call (`nuke.selectedNode`,
`nuke.filename`, `Knob.value`, `nuke.createNode`, `File_Knob.fromUserText`, `Node.setXYpos`,
`nuke.executeInMainThread`, `Array_Knob.getValueAt`, `nuke.ProgressTask`, `nuke.getColorspaceList`,
`nuke.allNodes`), so a stand-in `nuke` module that records them tests this adapter honestly.

Tracker4 keeps its tracks in one table knob, ``tracks``. ``tracks.toScript()`` is three TCL lists:
the table size ``{ 1 31 N }``, the column headers (``{ 3 1 75 name name 1 }``: the fourth word is
the column's name) and one row per track (the track's name as text, ``track_x``/``track_y`` as
curves). Values come from ``getValueAt(frame, track * 31 + column)``; names only from the script.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import nuke  # only host adapters import their host

from cinegen.common.sequence import FrameRange, SequencePattern, SequencePatternError
from cinegen.common.trajectory_io import Track, TrackPoint, Trajectory

from ..model.colorspace_names import name_in
from ..model.outputs import ResultSequence
from .base import BatchProgress, HostAdapter, HostSelectionError, PlateSelection

TRACKER_COLUMNS = 31
TRACK_NAME, TRACK_X, TRACK_Y = 1, 2, 3  # Tracker4's column order when the header can't be read
SCENE_LINEAR = "scene_linear"  # the OCIO role every config has: the fallback colour space
RESULT_GAP = 40  # pixels between the input node and its result in the node graph
_TABLE_SIZE = re.compile(r"\{\s*1\s+(\d+)\s+(\d+)\s*\}")
_DEFAULT_SPACE = re.compile(r"^default(?:\s*\((?P<space>.*)\))?$")  # "default" / "default (linear)"
# Characters TCL substitutes in labels and knob text: [cmd], $var, \escapes (braces are quoted as text).
_TCL_SPECIAL = re.compile(r"([\\\[\]$])")


class NukeHost(HostAdapter):
    name = "nuke"

    def __init__(self) -> None:
        self._notices: list[str] = []
        self._last_read: dict[str, Any] = {}  # job id -> its latest Read: a story's shots go side by side

    # ---- selection in -------------------------------------------------------------------------
    def selected_plate(self) -> PlateSelection:
        node = _selected("Read", "Select the Read node of the plate first (one node).")
        # nuke.filename evaluates the file knob's TCL ([file dirname ...], $env(SHOTS)); value() does not.
        text = nuke.filename(node) or ""
        if not text.strip():
            raise HostSelectionError(f"The selected Read node '{node.name()}' reads no file: set its file first.")
        try:
            text = SequencePattern.parse(text, any_extension=True, what="plate").hash_form()
        except SequencePatternError:
            pass  # one picture (a still for a panorama's input image); the panel says so where a sequence is needed
        first, last = int(node["first"].value()), int(node["last"].value())
        return PlateSelection(pattern=text, frames=FrameRange(first, last), width=int(node.width()),
                              height=int(node.height()), source=node.name(),
                              colorspace=_plate_colorspace(node), frame_offset=_frame_offset(node))

    def selected_trajectory(self, width: int | None = None, height: int | None = None,
                            frames: FrameRange | None = None) -> Trajectory:
        node = _selected("Tracker4", "Select a Tracker node (Tracker4) with at least one tracked track.")
        knob = node["tracks"]
        script = knob.toScript()
        match = _TABLE_SIZE.search(script)
        count = int(match.group(2)) if match and int(match.group(1)) == TRACKER_COLUMNS else 0
        columns, rows = _tracker_table(script)
        name_col, x_col, y_col = (columns.get(n, d) for n, d in
                                  (("name", TRACK_NAME), ("track_x", TRACK_X), ("track_y", TRACK_Y)))
        tracks = []
        for index in range(count):
            x_column, y_column = index * TRACKER_COLUMNS + x_col, index * TRACKER_COLUMNS + y_col
            if not knob.isAnimated(x_column):
                continue  # a track never tracked or keyed has no path
            keyed = sorted({int(key.x) for key in knob.animation(x_column).keys()})
            if frames is not None:  # only the frames being generated: the server refuses points outside the clip
                keyed = [f for f in keyed if frames.first <= f <= frames.last]
                if not keyed:
                    continue
            points = tuple(TrackPoint(f, knob.getValueAt(f, x_column), knob.getValueAt(f, y_column)) for f in keyed)
            row = rows[index] if index < len(rows) else []
            name = row[name_col] if name_col < len(row) and row[name_col] else f"track {index + 1}"
            tracks.append(Track(name=name, points=points))
        if not tracks and frames is not None:
            raise HostSelectionError(f"The Tracker '{node.name()}' has no tracked frame in {frames.first}-{frames.last}, "
                                     "the frames being generated: set First frame and Frames to the tracked range.")
        if not tracks:
            raise HostSelectionError(f"The Tracker '{node.name()}' has no tracked tracks: track a feature first.")
        trajectory = Trajectory(width=int(node.width()), height=int(node.height()), tracks=tuple(tracks),
                                origin="bottom-left")  # Nuke counts y up from the bottom
        if width and height and (width, height) != (trajectory.width, trajectory.height):
            trajectory = trajectory.scaled_to(width, height)
        return trajectory

    # ---- results out --------------------------------------------------------------------------
    def load_result(self, result: ResultSequence) -> Any:
        existing = _read_of(result)
        if existing is not None:  # History > Load result again: the Read is already in the script
            self._notices.append(f"{result.pattern} is already read by {existing.name()}: no second Read was made.")
            _reread(existing, result)
            return existing
        for node in nuke.selectedNodes():
            node.setSelected(False)  # createNode would otherwise wire the Read under the selection
        read = nuke.createNode("Read", inpanel=False)
        read["file"].fromUserText(result.nuke_form)  # sets file, first and last
        notice = _set_colorspace(read, result.colorspace or SCENE_LINEAR)
        if notice:
            self._notices.append(notice)
        read["on_error"].setValue("black")
        read["label"].setValue(tcl_escape(f"{result.label}\n{_short(result.prompt)}"))
        source = nuke.toNode(result.source) if result.source else None
        previous = self._last_read.get(result.job_id) if result.job_id else None
        for beside in (previous, source):  # a job's next shot beside its last; else beside the input, to compare
            try:
                if beside is not None:
                    read.setXYpos(beside.xpos() + beside.screenWidth() + RESULT_GAP, beside.ypos())
                    break
            except ValueError:  # the artist deleted that node meanwhile (Nuke's detached-node error)
                continue
        if source is not None:
            _copy_frame_offset(source, read, result.frames.first)
        if result.job_id:
            self._last_read[result.job_id] = read
        return read

    def take_notices(self) -> list[str]:
        notices, self._notices = self._notices, []
        return notices

    def run_on_main_thread(self, fn: Callable[[], None]) -> None:
        nuke.executeInMainThread(fn)

    def batch_progress(self, title: str) -> BatchProgress:
        return NukeProgress(title)

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


class NukeProgress(BatchProgress):
    """`nuke.ProgressTask`: the progress bar of `nuke -t` and of blocking work in the GUI, with its Cancel."""

    def __init__(self, title: str):
        self._task = nuke.ProgressTask(title)

    def update(self, fraction: float, stage: str) -> None:
        self._task.setProgress(int(round(max(0.0, min(1.0, fraction)) * 100)))
        self._task.setMessage(stage)

    def cancelled(self) -> bool:
        return bool(self._task.isCancelled())

    def close(self) -> None:
        del self._task  # Nuke removes the bar when the task object goes away


def tcl_escape(text: str) -> str:
    """Text Nuke shows as typed in a label or knob: `[`, `]`, `$` and `\\` lose their TCL meaning."""
    return _TCL_SPECIAL.sub(r"\\\1", text)


def _selected(node_class: str, hint: str) -> Any:
    try:
        node = nuke.selectedNode()
    except ValueError:  # Nuke raises when nothing is selected
        raise HostSelectionError(hint) from None
    if node.Class() != node_class:
        raise HostSelectionError(f"The selected node '{node.name()}' is a {node.Class()}, not a {node_class}. {hint}")
    return node


def _plate_colorspace(node: Any) -> str:
    """The Read's OCIO colour space; "default (X)" is X, a bare "default" is left to the server's rule."""
    value = str(node["colorspace"].value()).strip()
    match = _DEFAULT_SPACE.match(value)
    if match:
        return (match.group("space") or "").strip()
    return value


def _frame_offset(node: Any) -> int:
    """How many frames the Read shifts its files in the comp: "offset N", or "start at S" (S - first)."""
    mode, frame = str(node["frame_mode"].value()), str(node["frame"].value()).strip()
    try:
        number = int(float(frame)) if frame else 0
    except ValueError:  # an expression: the files are read as numbered
        return 0
    if mode == "offset":
        return number
    if mode == "start at":
        return number - int(node["first"].value())
    return 0


def _copy_frame_offset(source: Any, read: Any, first_frame: int) -> None:
    """A result numbered like its plate gets the plate's shift, so it lines up with it in the comp."""
    if source.Class() != "Read" or int(source["first"].value()) != first_frame:
        return
    mode = str(source["frame_mode"].value())
    if mode in ("offset", "start at") and str(source["frame"].value()).strip():
        read["frame_mode"].setValue(mode)
        read["frame"].setValue(str(source["frame"].value()))


def _project_config() -> str:
    """The project's OCIO config name ("nuke-default", "aces_1.2", a path...), "" when Nuke manages colour."""
    root = nuke.root()
    try:
        if str(root["colorManagement"].value()) == "Nuke":
            return "nuke-default"
        return str(root["OCIO_config"].value())
    except (NameError, KeyError):  # Nuke before 14 has no colorManagement knob
        return ""


def _set_colorspace(read: Any, colorspace: str) -> str:
    """Tag the Read with the EXR's own colour space when the project's config has it (under any of its names).

    Otherwise the config's scene_linear role, and a sentence for the artist: that role may have other
    primaries than the file (nuke-default's `linear` is Rec.709, cinegen writes ACEScg by default)."""
    config = _project_config()
    listed = _listed_colorspaces(read["colorspace"])
    if listed:  # the config's own spelling of the file's space: "ACES - ACEScg" in aces_1.2, "ACEScg" in OCIO v2
        name = name_in(colorspace, listed)
        if name:
            read["colorspace"].setValue(name)
            return ""
    else:  # a Nuke that can't list its spaces: try the file's name as it is
        aces_name = colorspace.lower().startswith("aces") or colorspace.lower() in ("lin_ap1", "lin_ap0")
        if not (aces_name and config == "nuke-default"):  # nuke-default has no ACES spaces at all
            try:
                read["colorspace"].setValue(colorspace)
                return ""
            except (ValueError, NameError):  # Nuke refuses a name its config doesn't have
                pass
    tagged = SCENE_LINEAR
    if not listed or name_in(SCENE_LINEAR, listed):
        read["colorspace"].setValue(SCENE_LINEAR)
    else:  # roles hidden from colour-space menus (a Preferences switch): Nuke's float default is scene-linear
        tagged = str(read["colorspace"].value())
    if colorspace == SCENE_LINEAR:
        return ""
    return (f"The result is in {colorspace}, which this project's OCIO config ({config or 'unknown'}) does not "
            f"have: its Read is tagged '{tagged}' and colours may shift. Switch the project to an ACES "
            f"config (Project Settings > Color) or convert with an OCIOColorSpace node from {colorspace}.")


def _read_of(result: ResultSequence) -> Any:
    """A Read in the script that already reads the result's files (`####` and `%04d` spell the same)."""
    wanted = _same_form(result.pattern)
    for node in nuke.allNodes("Read"):
        if _same_form(nuke.filename(node) or "") == wanted:
            return node
    return None


def _reread(read: Any, result: ResultSequence) -> None:
    """The files may be new under the same names (an output path typed in the form, Overwrite on): this job's
    range, and frames read from disk again, not the ones Nuke cached."""
    if (int(read["first"].value()), int(read["last"].value())) != (result.frames.first, result.frames.last):
        read["file"].fromUserText(result.nuke_form)  # sets file, first and last
    try:
        read["reload"].execute()
    except (KeyError, NameError, AttributeError, RuntimeError):  # a Nuke without the button: it rereads on change
        pass


def _same_form(path: str) -> str:
    """One spelling per sequence: `####`, forward or back slashes (Nuke writes / on Windows too), case on Windows."""
    try:
        path = SequencePattern.parse(path, any_extension=True).hash_form()
    except SequencePatternError:
        pass
    return os.path.normcase(os.path.normpath(path))


def _listed_colorspaces(knob: Any) -> list[str]:
    """The colour spaces a Read's `colorspace` knob offers (family prefixes stripped); [] when Nuke can't say."""
    try:
        return [str(name) for name in nuke.getColorspaceList(knob)]
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return []


def _tracker_table(script: str) -> tuple[dict[str, int], list[list[str]]]:
    """Column index by name and each row's words, from Tracker4's `tracks.toScript()`."""
    try:
        groups = _tcl_words(script)
        header, rows = groups[1], groups[2]
        columns = {}
        for index, column in enumerate(_tcl_words(header)):
            words = _tcl_words(column)
            if len(words) >= 4:
                columns.setdefault(words[3], index)
        return columns, [_tcl_words(row) for row in _tcl_words(rows)]
    except (IndexError, ValueError):
        return {}, []


def _tcl_words(text: str) -> list[str]:
    """The words of one TCL list: {braced} and "quoted" words unwrapped, backslash escapes resolved."""
    words, i, n = [], 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        if text[i] == "{":
            depth, j = 1, i + 1
            while j < n and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1 if text[j] != "\\" else 2
            if depth:
                raise ValueError("unbalanced braces")
            words.append(text[i + 1:j - 1])
            i = j
        elif text[i] == '"':
            j, out = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                out.append(text[j])
                j += 1
            words.append("".join(out))
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace():
                j += 1
            words.append(re.sub(r"\\(.)", r"\1", text[i:j]))
            i = j
    return words


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
