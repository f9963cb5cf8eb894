"""The Nuke adapter and menu against a stand-in `nuke` module that behaves like Nuke's and records calls.

The stand-in implements only documented Nuke behaviour the adapter relies on: `fromUserText("PATH
first-last")` sets file, first and last; an Enumeration knob refuses a value it doesn't list
(ValueError); `selectedNode()` raises ValueError when nothing is selected; Tracker4 keeps 31 columns
per track in its `tracks` knob with track_x/track_y in columns 2/3.
"""
from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest

from cinegen.common.exr import ExrMetadata, write_exr_frame
from cinegen.common.sequence import FrameRange
from cinegen.plugin.backend.results import results_from_outputs
from cinegen.plugin.hosts.base import HostSelectionError
from cinegen.plugin.model.outputs import ResultSequence

OCIO_SPACES = ("scene_linear", "ACEScg", "ACES2065-1", "sRGB - Texture", "raw")


class Knob:
    def __init__(self, node: "Node", name: str, value=None, choices: tuple[str, ...] = ()):
        self.node, self.name, self._value, self.choices = node, name, value, choices

    def value(self):
        return self._value

    def setValue(self, value):  # noqa: N802 (Nuke's names)
        if self.choices and value not in self.choices:
            raise ValueError(f"Invalid value {value!r} for knob {self.name}")
        self._value = value
        self.node.calls.append(("setValue", self.name, value))

    def fromUserText(self, text):  # noqa: N802
        self.node.calls.append(("fromUserText", self.name, text))
        path, _, frames = text.rpartition(" ")
        first, last = (int(v) for v in frames.split("-"))
        self._value = path
        self.node["first"]._value, self.node["last"]._value = first, last


class AnimationKey:
    def __init__(self, x: float):
        self.x = x


class TracksKnob(Knob):
    """Tracker4's table: `tracks[t]` = {frame: (x, y)}; x/y are columns 2/3 of 31 per track."""

    def __init__(self, node, tracks: list[dict[int, tuple[float, float]]]):
        super().__init__(node, "tracks")
        self.tracks = tracks

    def toScript(self):  # noqa: N802
        return f"{{ 1 31 {len(self.tracks)} }} {{ {{ 5 1 20 enable e 1 }} }} {{ ... }}"

    def _track(self, column: int) -> tuple[dict[int, tuple[float, float]], int]:
        return self.tracks[column // 31], column % 31

    def isAnimated(self, column):  # noqa: N802
        track, _ = self._track(column)
        return bool(track)

    def animation(self, column):
        track, _ = self._track(column)
        return types.SimpleNamespace(keys=lambda: [AnimationKey(float(f)) for f in track])

    def getValueAt(self, frame, column):  # noqa: N802
        track, which = self._track(column)
        return track[int(frame)][{2: 0, 3: 1}[which]]


class Node:
    def __init__(self, cls: str, name: str, *, width: int = 1920, height: int = 1080, x: int = 0, y: int = 0):
        self._class, self._name, self._width, self._height = cls, name, width, height
        self._x, self._y, self.selected = x, y, False
        self.calls: list[tuple] = []
        self.knobs = {k: Knob(self, k) for k in ("file", "first", "last", "label", "on_error")}
        self.knobs["colorspace"] = Knob(self, "colorspace", "default", choices=OCIO_SPACES)

    def __getitem__(self, name):
        return self.knobs[name]

    def Class(self):  # noqa: N802
        return self._class

    def name(self):
        return self._name

    def width(self):
        return self._width

    def height(self):
        return self._height

    def xpos(self):
        return self._x

    def ypos(self):
        return self._y

    def screenWidth(self):  # noqa: N802
        return 80

    def setXYpos(self, x, y):  # noqa: N802
        self._x, self._y = x, y
        self.calls.append(("setXYpos", x, y))

    def setSelected(self, selected):  # noqa: N802
        self.selected = selected


class StandInNuke(types.ModuleType):
    NUKE_VERSION_STRING = "16.0v1"

    def __init__(self):
        super().__init__("nuke")
        self.nodes: list[Node] = []
        self.created: list[tuple[str, dict]] = []
        self.main_thread_calls = 0
        self.root_node = Node("Root", "Root")
        self.panes: dict[str, object] = {}
        self.menus: dict[str, "Menu"] = {}

    def add(self, node: Node, selected: bool = False) -> Node:
        node.selected = selected
        self.nodes.append(node)
        return node

    def createNode(self, cls, inpanel=True):  # noqa: N802
        self.created.append((cls, {"inpanel": inpanel}))
        node = Node(cls, f"{cls}{len(self.nodes) + 1}")
        node.selected_at_creation = [n.name() for n in self.nodes if n.selected]
        return self.add(node, selected=True)

    def selectedNodes(self):  # noqa: N802
        return [n for n in self.nodes if n.selected]

    def selectedNode(self):  # noqa: N802
        selected = self.selectedNodes()
        if not selected:
            raise ValueError("no node selected")
        return selected[-1]

    def toNode(self, name):  # noqa: N802
        return next((n for n in self.nodes if n.name() == name), None)

    def root(self):
        return self.root_node

    def executeInMainThread(self, fn, args=()):  # noqa: N802
        self.main_thread_calls += 1
        fn(*args)

    def getPaneFor(self, name):  # noqa: N802
        return self.panes.setdefault(name, types.SimpleNamespace(name=name))

    def menu(self, name):
        return self.menus.setdefault(name, Menu(name))


class Menu:
    def __init__(self, name):
        self.name, self.commands, self.submenus = name, [], {}

    def addMenu(self, name):  # noqa: N802
        return self.submenus.setdefault(name, Menu(name))

    def addCommand(self, name, command, shortcut=""):  # noqa: N802
        self.commands.append((name, command, shortcut))


@pytest.fixture()
def nuke(monkeypatch):
    fake = StandInNuke()
    monkeypatch.setitem(sys.modules, "nuke", fake)
    monkeypatch.delitem(sys.modules, "cinegen.plugin.hosts.nuke_host", raising=False)
    yield fake
    sys.modules.pop("cinegen.plugin.hosts.nuke_host", None)


@pytest.fixture()
def host(nuke):
    return importlib.import_module("cinegen.plugin.hosts.nuke_host").NukeHost()


def result(pattern="/shots/sh010/cinegen/sh010_image/v002/sh010_image_v002.####.exr", colorspace="ACEScg",
           source="", seed=42) -> ResultSequence:
    return ResultSequence(pattern=pattern, frames=FrameRange(1001, 1024), pipeline="image", job_id="image-1",
                          seed=seed, model="tiny-sd", prompt="a lighthouse at dusk", colorspace=colorspace,
                          source=source)


def test_result_becomes_a_read_node_with_hash_pattern_frame_range_and_label(nuke, host):
    read = host.load_result(result())
    assert nuke.created == [("Read", {"inpanel": False})]
    assert ("fromUserText", "file",
            "/shots/sh010/cinegen/sh010_image/v002/sh010_image_v002.####.exr 1001-1024") in read.calls
    assert (read["first"].value(), read["last"].value()) == (1001, 1024)
    assert read["on_error"].value() == "black"
    label = read["label"].value()
    assert "image" in label and "seed 42" in label and "tiny-sd" in label and "lighthouse" in label


def test_read_colorspace_is_the_exr_header_space_when_nuke_knows_it_else_scene_linear(nuke, host):
    assert host.load_result(result(colorspace="ACEScg"))["colorspace"].value() == "ACEScg"
    assert host.load_result(result(colorspace="Some studio space"))["colorspace"].value() == "scene_linear"
    assert host.load_result(result(colorspace=""))["colorspace"].value() == "scene_linear"


def test_colorspace_of_a_written_exr_reaches_the_read_node(nuke, host, tmp_path):
    for frame in (1001, 1002):
        write_exr_frame(tmp_path / f"shot.{frame}.exr", np.full((8, 8, 4), 0.5, np.float32),
                        metadata=ExrMetadata(pipeline="image", colorspace="ACES2065-1"))
    (sequence,) = results_from_outputs([str(tmp_path / "shot.1001.exr"), str(tmp_path / "shot.1002.exr")],
                                       pipeline="image", seed=7)
    read = host.load_result(sequence)
    assert read["colorspace"].value() == "ACES2065-1"
    assert read["file"].value() == f"{tmp_path.as_posix()}/shot.####.exr"
    assert (read["first"].value(), read["last"].value()) == (1001, 1002)


def test_result_is_placed_next_to_its_input_and_not_wired_under_the_selection(nuke, host):
    plate = nuke.add(Node("Read", "Read1", x=100, y=200), selected=True)
    read = host.load_result(result(source="Read1"))
    assert read.selected_at_creation == []  # deselected first: createNode would connect to the selection
    assert (read.xpos(), read.ypos()) == (plate.xpos() + plate.screenWidth() + 40, plate.ypos())


def test_previous_results_are_kept_as_their_own_read_nodes(nuke, host):
    first = host.load_result(result(pattern="/r/v001/a_v001.####.exr"))
    second = host.load_result(result(pattern="/r/v002/a_v002.####.exr"))
    assert first is not second and len([n for n in nuke.nodes if n.Class() == "Read"]) == 2
    assert first["file"].value() == "/r/v001/a_v001.####.exr"
    assert second["file"].value() == "/r/v002/a_v002.####.exr"


def test_plate_comes_from_the_selected_read_in_canonical_hash_form(nuke, host):
    read = nuke.add(Node("Read", "Plate", width=2048, height=858), selected=True)
    read["file"]._value = "/plates/sh010/sh010_bg.%04d.exr"
    read["first"]._value, read["last"]._value = 1001, 1096
    read["colorspace"]._value = "ACEScg"
    plate = host.selected_plate()
    assert plate.pattern == "/plates/sh010/sh010_bg.####.exr"
    assert plate.frames == FrameRange(1001, 1096)
    assert (plate.width, plate.height, plate.source, plate.colorspace) == (2048, 858, "Plate", "ACEScg")


def test_plate_selection_errors_say_what_to_select(nuke, host):
    with pytest.raises(HostSelectionError, match="Select the Read node"):
        host.selected_plate()
    nuke.add(Node("Grade", "Grade1"), selected=True)
    with pytest.raises(HostSelectionError, match="is a Grade, not a Read"):
        host.selected_plate()


def test_tracker_tracks_become_a_bottom_left_trajectory_with_their_keyed_frames(nuke, host):
    tracker = nuke.add(Node("Tracker4", "Tracker1", width=1920, height=1080), selected=True)
    tracker.knobs["tracks"] = TracksKnob(tracker, [{1001: (100.0, 50.0), 1005: (300.0, 250.5)},
                                                   {},  # an empty track: skipped
                                                   {1002: (960.0, 540.0)}])
    trajectory = host.selected_trajectory()
    assert (trajectory.origin, trajectory.width, trajectory.height) == ("bottom-left", 1920, 1080)
    assert [t.name for t in trajectory.tracks] == ["track 1", "track 3"]
    assert [(p.frame, p.x, p.y) for p in trajectory.tracks[0].points] == [(1001, 100.0, 50.0), (1005, 300.0, 250.5)]
    top_left = trajectory.to_top_left().tracks[0].points[0]
    assert (top_left.x, top_left.y) == (100.0, 1080 - 50.0)  # y counted from the other edge
    half = host.selected_trajectory(960, 540)
    assert (half.tracks[0].points[1].x, half.tracks[0].points[1].y) == (150.0, 125.25)


def test_tracker_without_tracks_is_refused_with_a_sentence(nuke, host):
    tracker = nuke.add(Node("Tracker4", "Tracker1"), selected=True)
    tracker.knobs["tracks"] = TracksKnob(tracker, [{}])
    with pytest.raises(HostSelectionError, match="no tracked tracks"):
        host.selected_trajectory()


def test_main_thread_calls_go_through_execute_in_main_thread(nuke, host):
    seen = []
    host.run_on_main_thread(lambda: seen.append(1))
    assert seen == [1] and nuke.main_thread_calls == 1


def test_output_folder_follows_the_saved_script(nuke, host, tmp_path):
    assert host.shot_name() == "cinegen"  # unsaved script: Nuke's root is named "Root"
    nuke.root_node._name = str(tmp_path / "sh010_comp_v003.nk")
    assert host.output_root() == tmp_path / "cinegen"
    assert host.shot_name() == "sh010_comp_v003"
    assert host.client_name().startswith("nuke 16.0v1")


def test_menu_registers_the_panel_class_as_a_dockable_pane(nuke, monkeypatch):
    registered, docked = [], []

    class PythonPanel:
        def addToPane(self, pane):  # noqa: N802
            docked.append(pane.name)

    def register_widget(widget, name, panel_id, create=False):
        registered.append((widget, name, panel_id, create))
        return PythonPanel() if create else None

    nukescripts = types.ModuleType("nukescripts")
    nukescripts.panels = types.SimpleNamespace(registerWidgetAsPanel=register_widget)
    monkeypatch.setitem(sys.modules, "nukescripts", nukescripts)
    spec = importlib.util.spec_from_file_location(
        "cinegen_nuke_menu", __import__("pathlib").Path(__file__).parents[1] / "plugin" / "nuke" / "menu.py")
    menu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(menu)

    assert registered[0] == ("cinegen.plugin.panel.Panel", "cinegen", "uk.co.cinegen.panel", False)
    (name, command, _), = nuke.menu("Nuke").submenus["cinegen"].commands
    assert name == "Show panel"
    command()
    command()
    assert [r[3] for r in registered] == [False, True]  # one panel per session, created on first show
    assert docked == ["Properties.1", "Properties.1"]
    module_name, _, class_name = registered[0][0].rpartition(".")
    from cinegen.plugin.qt import QtWidgets
    assert issubclass(getattr(importlib.import_module(module_name), class_name), QtWidgets.QWidget)
