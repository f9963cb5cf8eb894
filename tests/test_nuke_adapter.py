"""The Nuke adapter and menu against a stand-in `nuke` module that behaves like Nuke's and records calls.

The stand-in implements only documented Nuke behaviour the adapter relies on: `fromUserText("PATH
first-last")` sets file, first and last; an Enumeration knob refuses a value it doesn't list
(ValueError); `selectedNode()` raises ValueError when nothing is selected; Tracker4 keeps 31 columns
per track in its `tracks` knob with track_x/track_y in columns 2/3.
"""
from __future__ import annotations

import dataclasses
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
CG_CONFIG = "fn-nuke_cg-config-v1.0.0_aces-v1.3_ocio-v2.1"  # Nuke 14+'s default OCIO v2 config
# What a Read's colorspace menu lists per project config (roles on, family prefixes stripped).
CONFIG_SPACES = {CG_CONFIG: OCIO_SPACES + ("Linear Rec.709 (sRGB)",),
                 "aces_1.2": ("scene_linear", "ACES - ACEScg", "ACES - ACES2065-1", "Utility - sRGB - Texture",
                              "Utility - Linear - sRGB", "Utility - Raw"),
                 "nuke-default": ("scene_linear", "linear", "sRGB", "rec709", "Cineon", "raw")}


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

    def execute(self):  # a button knob (the Read's reload)
        self.node.calls.append(("execute", self.name))

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

    def __init__(self, node, tracks: list[dict[int, tuple[float, float]]], names: list[str] | None = None):
        super().__init__(node, "tracks")
        self.tracks = tracks
        self.names = names or [f"track {i + 1}" for i in range(len(tracks))]

    def toScript(self):  # noqa: N802
        """As Nuke writes it: size, 31 column headers, then one row per track (name quoted, curves braced)."""
        header = ["{ 5 1 20 enable e 1 }", "{ 3 1 75 name name 1 }", "{ 2 1 58 track_x track_x 1 }",
                  "{ 2 1 58 track_y track_y 1 }"] + [f"{{ 2 1 58 col{c} col{c} 1 }}" for c in range(4, 31)]
        rows = []
        for track, name in zip(self.tracks, self.names):
            quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
            xs = " ".join(f"x{f} {x}" for f, (x, _) in track.items())
            rows.append("{ {curve K 1} " + quoted + " {curve " + xs + "} {curve} " + " ".join(["{}"] * 27) + " }")
        return f"{{ 1 31 {len(self.tracks)} }} {{ {' '.join(header)} }} {{ {' '.join(rows)} }}"

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
        self.knobs = {k: Knob(self, k) for k in ("file", "first", "last", "label", "on_error", "frame", "reload")}
        self.knobs["frame"]._value = ""
        self.knobs["first"]._value = self.knobs["last"]._value = 1  # Nuke's defaults for a new Read
        self.knobs["frame_mode"] = Knob(self, "frame_mode", "expression", choices=("expression", "start at", "offset"))
        self.knobs["colorspace"] = Knob(self, "colorspace", "default", choices=OCIO_SPACES)
        self.knobs["colorManagement"] = Knob(self, "colorManagement", "OCIO", choices=("Nuke", "OCIO"))
        self.knobs["OCIO_config"] = Knob(self, "OCIO_config", CG_CONFIG)
        self.file_tcl = None  # what nuke.filename(node) returns: the file knob with its TCL evaluated

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
        self.progress_tasks: list[ProgressTask] = []
        self.cancel_progress_at: int | None = None  # the artist presses Cancel once the bar reaches this

    def add(self, node: Node, selected: bool = False) -> Node:
        node.selected = selected
        self.nodes.append(node)
        return node

    def createNode(self, cls, inpanel=True):  # noqa: N802
        self.created.append((cls, {"inpanel": inpanel}))
        node = Node(cls, f"{cls}{len(self.nodes) + 1}")
        config = "nuke-default" if self.root_node["colorManagement"].value() == "Nuke" else \
            self.root_node["OCIO_config"].value()
        node.knobs["colorspace"].choices = CONFIG_SPACES.get(config, OCIO_SPACES)
        node.selected_at_creation = [n.name() for n in self.nodes if n.selected]
        return self.add(node, selected=True)

    def allNodes(self, filter=None):  # noqa: N802, A002 (Nuke's names)
        return [n for n in self.nodes if filter is None or n.Class() == filter]

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

    def getColorspaceList(self, knob):  # noqa: N802
        return list(knob.choices)

    def filename(self, node):
        return node.file_tcl if node.file_tcl is not None else node["file"].value()

    def ProgressTask(self, title):  # noqa: N802
        task = ProgressTask(title, self.cancel_progress_at)
        self.progress_tasks.append(task)
        return task

    def executeInMainThread(self, fn, args=()):  # noqa: N802
        self.main_thread_calls += 1
        fn(*args)

    def getPaneFor(self, name):  # noqa: N802
        return self.panes.setdefault(name, types.SimpleNamespace(name=name))

    def menu(self, name):
        return self.menus.setdefault(name, Menu(name))


class ProgressTask:
    """nuke.ProgressTask: a progress bar with a Cancel button (here: cancelled once `cancel_at` is reached)."""

    def __init__(self, title, cancel_at: int | None = None):
        self.title, self.progress, self.messages, self.cancel_at = title, [], [], cancel_at

    def setProgress(self, percent):  # noqa: N802
        self.progress.append(percent)

    def setMessage(self, text):  # noqa: N802
        self.messages.append(text)

    def isCancelled(self):  # noqa: N802
        return self.cancel_at is not None and bool(self.progress) and self.progress[-1] >= self.cancel_at


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
           source="", seed=42, prompt="a lighthouse at dusk") -> ResultSequence:
    return ResultSequence(pattern=pattern, frames=FrameRange(1001, 1024), pipeline="image", job_id="image-1",
                          seed=seed, model="tiny-sd", prompt=prompt, colorspace=colorspace,
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
    assert host.load_result(result("/r/v2/b.####.exr", colorspace="Some studio space"))["colorspace"].value() == \
        "scene_linear"
    assert host.load_result(result("/r/v3/c.####.exr", colorspace=""))["colorspace"].value() == "scene_linear"


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
    read["frame"]._value = ""
    read["colorspace"]._value = "ACEScg"
    plate = host.selected_plate()
    assert plate.pattern == "/plates/sh010/sh010_bg.####.exr"
    assert plate.frames == FrameRange(1001, 1096)
    assert (plate.width, plate.height, plate.source, plate.colorspace) == (2048, 858, "Plate", "ACEScg")


def test_a_read_of_one_picture_is_offered_as_it_is(nuke, host):
    """A still (a matte painting for a panorama's input image) is a selection too; where a pipeline needs a
    sequence the panel says so (test_panel_plate_selection)."""
    read = nuke.add(Node("Read", "Matte", width=4096, height=2048), selected=True)
    read["file"]._value = "/plates/sh010/matte.exr"
    plate = host.selected_plate()
    assert (plate.pattern, plate.frames, plate.width) == ("/plates/sh010/matte.exr", FrameRange(1, 1), 4096)
    read["file"]._value = ""
    with pytest.raises(HostSelectionError, match="reads no file"):
        host.selected_plate()


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


def test_tracker_keys_are_taken_over_the_frames_being_generated_only(nuke, host):
    tracker = nuke.add(Node("Tracker4", "Tracker1", width=1920, height=1080), selected=True)
    tracker.knobs["tracks"] = TracksKnob(tracker, [{f: (float(f - 1000), 10.0) for f in range(1, 251)},
                                                   {200: (5.0, 5.0)}])  # keyed only outside the job's frames
    trajectory = host.selected_trajectory(frames=FrameRange(101, 108))
    assert [t.name for t in trajectory.tracks] == ["track 1"]
    assert [p.frame for p in trajectory.tracks[0].points] == list(range(101, 109))
    with pytest.raises(HostSelectionError, match="no tracked frame in 1001-1008"):
        host.selected_trajectory(frames=FrameRange(1001, 1008))


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


def _nukescripts_like_nukes(registered: list, docked: list) -> types.ModuleType:
    """nukescripts.panels as Nuke 15/16 ship it: the widget string goes into a PyCustom_Knob command,
    `__import__('nukescripts').panels.WidgetKnob(<string>)`, which Nuke evaluates later in `__main__`."""

    class PythonPanel:
        def __init__(self, widget):
            self.command = "__import__('nukescripts').panels.WidgetKnob(" + widget + ")"

        def addToPane(self, pane):  # noqa: N802
            docked.append(pane.name)

        def show(self):
            docked.append("floating")

    def register_widget(widget, name, panel_id, create=False):
        registered.append((widget, name, panel_id, create))
        return PythonPanel(widget) if create else None

    module = types.ModuleType("nukescripts")
    module.panels = types.SimpleNamespace(registerWidgetAsPanel=register_widget, WidgetKnob=lambda cls: cls)
    return module


def _evaluate_in_fresh_main(command: str):
    """What Nuke does with the knob command: eval in a `__main__` namespace where nothing is imported."""
    namespace = {"__name__": "__main__", "__builtins__": __import__("builtins")}
    return eval(command, namespace)  # noqa: S307 (the point of the test)


def _run_menu(monkeypatch, nuke):
    registered, docked = [], []
    monkeypatch.setitem(sys.modules, "nukescripts", _nukescripts_like_nukes(registered, docked))
    spec = importlib.util.spec_from_file_location(
        "cinegen_nuke_menu", __import__("pathlib").Path(__file__).parents[1] / "plugin" / "nuke" / "menu.py")
    menu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(menu)
    return menu, registered, docked


def test_menu_registers_the_panel_once_with_a_string_that_resolves_in_a_fresh_main(nuke, monkeypatch):
    menu, registered, docked = _run_menu(monkeypatch, nuke)
    menu.register()  # menu.py sourced again (plugin path listed twice): still one pane
    assert len(registered) == 1
    widget, title, panel_id, create = registered[0]
    assert (title, panel_id, create) == ("cinegen", "uk.co.cinegen.panel", True)
    panel_class = _evaluate_in_fresh_main(menu._panel.command)
    from cinegen.plugin.qt import QtWidgets
    from cinegen.plugin.ui.panel import Panel
    assert panel_class is Panel and issubclass(panel_class, QtWidgets.QWidget)
    assert "Pane" not in nuke.menus  # registerWidgetAsPanel adds the Pane menu entry itself
    (name, command, shortcut), = nuke.menu("Nuke").submenus["cinegen"].commands
    assert (name, shortcut) == ("Show panel", "ctrl+alt+g")
    command()
    command()
    assert len(registered) == 1 and docked == ["Properties.1", "Properties.1"]


def test_show_panel_brings_forward_the_pane_a_saved_layout_restored_instead_of_a_second_panel(
        nuke, monkeypatch, tmp_path, running_server):
    """Nuke restores a saved layout's pane by building its own panel from the registration (nukescripts' addPanel);
    Show panel then docked the menu's panel too: two connections, two queues, jobs split between them."""
    from cinegen.common.connection import ConnectionSettings
    from cinegen.plugin.qt import QtWidgets, ensure_application

    app = ensure_application()
    monkeypatch.setenv("CINEGEN_CONFIG_DIR", str(tmp_path / "config"))
    address, port = running_server.address.rsplit(":", 1)
    ConnectionSettings(host=address, port=int(port)).save()
    menu, _, docked = _run_menu(monkeypatch, nuke)
    tabs = QtWidgets.QTabWidget()  # the pane the layout restored it into, another tab in front
    tabs.addTab(QtWidgets.QLabel("Properties"), "Properties")
    restored = _evaluate_in_fresh_main(menu._panel.command)()
    tabs.addTab(restored, "cinegen")
    tabs.setCurrentIndex(0)
    try:
        (name, command, _), = nuke.menu("Nuke").submenus["cinegen"].commands
        command()
        assert docked == [] and tabs.currentWidget() is restored
    finally:
        restored.shutdown()
        tabs.deleteLater()
        app.processEvents()
    command()  # no cinegen pane open any more: the menu's panel is docked
    assert docked == ["Properties.1"]


def test_the_fresh_main_evaluation_catches_a_bare_class_path(nuke, monkeypatch):
    """The old registration string, a bare dotted path, fails the way it fails in Nuke."""
    monkeypatch.setitem(sys.modules, "nukescripts", _nukescripts_like_nukes([], []))
    with pytest.raises(NameError, match="cinegen"):
        _evaluate_in_fresh_main("__import__('nukescripts').panels.WidgetKnob(cinegen.plugin.panel.Panel)")


# ---- Nuke-specific behaviour -------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["a [exec rm -rf /] castle", "costs $HOME and $env(PATH)", "back\\slash ]["])
def test_prompt_in_a_label_is_text_to_tcl(nuke, host, prompt):
    read = host.load_result(result(prompt=prompt))
    label = read["label"].value()
    assert _tcl_substitute(label) == f"image · seed 42 · tiny-sd\n{prompt}"


def _tcl_substitute(text: str) -> str:
    """What Nuke's label shows: TCL substitution; fails on an unescaped [ or $ (a command or variable)."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            out.append(text[i + 1])
            i += 2
            continue
        if char in "[$":
            raise AssertionError(f"TCL would substitute {text[i:i + 12]!r}")
        if char == "]":
            raise AssertionError("a stray ] in TCL text")
        out.append(char)
        i += 1
    return "".join(out)


def test_plate_path_is_the_evaluated_file_name_and_the_reads_offset_carries_to_the_result(nuke, host):
    plate = nuke.add(Node("Read", "Plate", width=1024, height=512), selected=True)
    plate["file"]._value = "[getenv SHOTS]/sh010/bg.%04d.exr"  # value() is the unevaluated TCL
    plate.file_tcl = "/shots/sh010/bg.%04d.exr"
    plate["first"]._value, plate["last"]._value = 1001, 1010
    plate["frame_mode"]._value, plate["frame"]._value = "offset", "-1000"
    selection = host.selected_plate()
    assert selection.pattern == "/shots/sh010/bg.####.exr" and selection.frame_offset == -1000
    read = host.load_result(result(pattern="/r/v001/a.####.exr", source="Plate"))
    assert (read["frame_mode"].value(), read["frame"].value()) == ("offset", "-1000")  # lines up with the plate
    plate["frame_mode"]._value, plate["frame"]._value = "start at", "1"
    assert host.selected_plate().frame_offset == 1 - 1001


def test_plate_default_colorspace_is_resolved_and_sent(nuke, host):
    plate = nuke.add(Node("Read", "Plate"), selected=True)
    plate["file"]._value = "/p/bg.####.dpx"
    plate["first"]._value, plate["last"]._value = 1, 2
    plate["colorspace"]._value = "default (Cineon)"
    assert host.selected_plate().colorspace == "Cineon"
    plate["colorspace"]._value = "default"
    assert host.selected_plate().colorspace == ""  # the server's rule: float is linear, integer sRGB


def test_tracker_track_names_are_kept(nuke, host):
    tracker = nuke.add(Node("Tracker4", "Tracker1"), selected=True)
    tracker.knobs["tracks"] = TracksKnob(tracker, [{1001: (1.0, 2.0)}, {}, {1001: (3.0, 4.0)}],
                                         names=["left eye", "unused", 'tip "a" {b}'])
    assert [t.name for t in host.selected_trajectory().tracks] == ["left eye", 'tip "a" {b}']


def test_an_aces_result_in_a_nuke_default_project_is_tagged_scene_linear_with_a_notice(nuke, host):
    nuke.root_node["OCIO_config"]._value = "nuke-default"
    read = host.load_result(result(colorspace="ACEScg"))
    assert read["colorspace"].value() == "scene_linear"
    (notice,) = host.take_notices()
    assert "ACEScg" in notice and "nuke-default" in notice and "scene_linear" in notice
    assert host.take_notices() == []
    nuke.root_node["OCIO_config"]._value = CG_CONFIG
    assert host.load_result(result("/r/v2/b.####.exr", colorspace="ACEScg"))["colorspace"].value() == "ACEScg"
    assert host.take_notices() == []


@pytest.mark.parametrize("config, written, tagged", [
    ("aces_1.2", "ACEScg", "ACES - ACEScg"),  # Nuke 13's ACES config spells the same space its own way
    ("aces_1.2", "ACES2065-1", "ACES - ACES2065-1"),
    (CG_CONFIG, "ACES - ACEScg", "ACEScg"),  # a server whose $OCIO is an ACES 1.x config
    ("nuke-default", "Linear Rec.709 (sRGB)", "linear"),  # the same primaries: no shift, no notice
])
def test_the_read_gets_the_projects_own_name_for_the_files_space(nuke, host, config, written, tagged):
    nuke.root_node["OCIO_config"]._value = config
    assert host.load_result(result(colorspace=written))["colorspace"].value() == tagged
    assert host.take_notices() == []


def test_with_roles_hidden_from_the_menus_an_unknown_space_leaves_the_reads_default_and_says_so(nuke, host):
    """Preferences > Color can hide OCIO roles from colour-space menus: tagging 'scene_linear' then failed, and
    the finished frames were reported as not loaded."""
    CONFIG_SPACES["no-roles"] = ("ACES - ACEScg", "Utility - Linear - sRGB")
    nuke.root_node["OCIO_config"]._value = "no-roles"
    try:
        read = host.load_result(result(colorspace="Some studio space"))
    finally:
        del CONFIG_SPACES["no-roles"]
    assert read["colorspace"].value() == "default"
    (notice,) = host.take_notices()
    assert "Some studio space" in notice and "'default'" in notice


def test_a_jobs_shots_are_read_side_by_side_and_loading_again_reuses_the_read(nuke, host):
    """A story's shots come back as one Read each: Nuke puts unconnected new nodes on one spot, so they went on
    top of each other; History > Load result again made a second Read of the same files."""
    shots = [result(f"/r/story/v001/sh0{n}0/sh0{n}0.####.exr") for n in (1, 2, 3)]
    reads = [host.load_result(shot) for shot in shots]
    assert len({(r.xpos(), r.ypos()) for r in reads}) == 3
    assert [r.xpos() for r in reads] == [0, 80 + 40, 2 * (80 + 40)] and {r.ypos() for r in reads} == {0}
    host.take_notices()
    again = host.load_result(result("/r/story/v001/sh020/sh020.%04d.exr"))  # the same files, the other spelling
    assert again is reads[1] and len(nuke.allNodes("Read")) == 3
    (notice,) = host.take_notices()
    assert again.name() in notice


def test_a_result_written_over_its_read_updates_that_reads_frames_and_rereads_them(nuke, host):
    """An output path typed in the form and Overwrite on: the next job's files land under the same names. The
    Read found for them must show the new frames and range, not what it read (and cached) before."""
    first = host.load_result(result("/r/out/plate_fix.####.exr"))
    longer = dataclasses.replace(result("/r/out/plate_fix.####.exr"), frames=FrameRange(1001, 1048), job_id="image-2")
    again = host.load_result(longer)
    assert again is first and len(nuke.allNodes("Read")) == 1
    assert (again["first"].value(), again["last"].value()) == (1001, 1048)
    assert ("execute", "reload") in again.calls


def test_batch_progress_goes_through_nuke_progress_task(nuke, host, running_server, tmp_path):
    from cinegen.common.connection import ConnectionSettings
    from cinegen.plugin.batch import GenerationFailed, generate_blocking

    nuke.root_node._name = str(tmp_path / "sh010_comp.nk")
    address, port = running_server.address.rsplit(":", 1)
    settings = ConnectionSettings(host=address, port=int(port))
    tiny = dict(model="tiny-sd", width=64, height=64, steps=2, frames=1, prompt="batch $x [y]")
    (read,) = generate_blocking(host, "image", tiny, settings=settings)
    (task,) = nuke.progress_tasks
    assert task.title == "cinegen image" and task.progress[-1] == 100 and task.progress == sorted(task.progress)
    assert read.Class() == "Read" and "\\$x \\[y\\]" in read["label"].value()
    from cinegen.plugin.backend.exr_header import read_exr_header
    header = read_exr_header(read["file"].value().replace("####", str(read["first"].value())))
    assert f"seed {header['cinegen:seed']} · tiny-sd" in read["label"].value()  # the seed the server chose
    nuke.cancel_progress_at = 0  # Cancel pressed at the first progress event
    with pytest.raises(GenerationFailed, match="cancelled"):
        generate_blocking(host, "image", {**tiny, "steps": 50, "width": 128, "height": 128}, settings=settings)


def test_the_pane_nuke_builds_from_menu_py_shows_this_sessions_options(nuke, monkeypatch, tmp_path, running_server):
    """The pane as Nuke makes it (the registered string evaluated in a fresh __main__, the class called with no
    arguments) finds the Nuke host and the saved server, and its forms carry the new options with their editors;
    menu.py sourced twice still registers one pane."""
    import time

    from cinegen.common.connection import ConnectionSettings
    from cinegen.plugin.qt import ensure_application
    from cinegen.plugin.ui import fields as editors

    app = ensure_application()
    monkeypatch.setenv("CINEGEN_CONFIG_DIR", str(tmp_path / "config"))
    address, port = running_server.address.rsplit(":", 1)
    ConnectionSettings(host=address, port=int(port)).save()
    menu, registered, _ = _run_menu(monkeypatch, nuke)
    menu.register()
    assert len(registered) == 1
    panel = _evaluate_in_fresh_main(menu._panel.command)()  # WidgetKnob instantiates the class itself
    try:
        deadline = time.monotonic() + 30
        while len(panel.forms) < 5:
            assert time.monotonic() < deadline, "the pane did not connect"
            app.processEvents()
            time.sleep(0.01)
        assert type(panel.host).__name__ == "NukeHost"
        for name, form in panel.forms.items():
            assert isinstance(form.editors["offload"], editors.EnumEditor), name
            assert isinstance(form.editors["lora"], editors.LoraEditor), name
        assert isinstance(panel.forms["image"].editors["refiner"], editors.EnumEditor)
        assert isinstance(panel.forms["panorama"].editors["keep_first_frame"], editors.BoolEditor)
        assert isinstance(panel.forms["story"].editors["keyframe_motion"], editors.EnumEditor)
        assert isinstance(panel.forms["story"].editors["sparsectrl"], editors.EnumEditor)
        panel.select_pipeline("panorama")  # a Wan I2V panorama's first frame comes from the selected Read
        assert not panel.plate_button.isHidden()
    finally:
        panel.shutdown()
        panel.deleteLater()
        app.processEvents()


def test_each_group_of_equivalent_names_is_one_space_in_ocios_own_aces_config():
    """The names a Read may be tagged with instead of the file's are aliases of one space (OCIO's built-in ACES
    config knows the ACES 1.x and short names); nuke-default's `linear` is Rec.709 linear (common.color)."""
    PyOpenColorIO = pytest.importorskip("PyOpenColorIO")
    from cinegen.plugin.model.colorspace_names import EQUIVALENT_NAMES

    config = PyOpenColorIO.Config.CreateFromFile("ocio://default")
    for names in EQUIVALENT_NAMES:
        spaces = {config.getColorSpace(n).getName() for n in names if n != "linear"}
        assert len(spaces) == 1 and None not in spaces, names
