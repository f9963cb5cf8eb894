"""Plate from selection gives each pipeline what its input takes: the upscale plate is a sequence (with its
frames), a panorama's input one picture. The panel used to put DIR/NAME.####.exr into the panorama's input
(the server refused: "There is no input image") and set Frames to the plate's length."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6", reason="the panel needs a Qt binding")

from cinegen.common.connection import ConnectionSettings  # noqa: E402
from cinegen.common.sequence import FrameRange  # noqa: E402
from cinegen.plugin.hosts.base import PlateSelection  # noqa: E402
from cinegen.plugin.hosts.standalone import StandaloneHost  # noqa: E402
from cinegen.plugin.model.history import History  # noqa: E402
from cinegen.plugin.qt import ensure_application  # noqa: E402
from cinegen.plugin.ui.panel import Panel  # noqa: E402
from qt_kit import wait_until  # noqa: E402

PLATE = PlateSelection("/plates/sh010/bg.####.exr", FrameRange(1001, 1096), 2048, 858, source="Read1",
                       colorspace="ACEScg")
STILL = PlateSelection("/plates/sh010/matte.exr", FrameRange(1, 1), 4096, 2048, source="Read2")


@pytest.fixture()
def panel(tmp_path, monkeypatch, running_server):
    app = ensure_application()
    monkeypatch.setenv("CINEGEN_CONFIG_DIR", str(tmp_path / "config"))
    address, port = running_server.address.rsplit(":", 1)
    panel = Panel(host=StandaloneHost(tmp_path / "renders"), settings=ConnectionSettings(host=address, port=int(port)),
                  history=History(tmp_path / "config" / "history.json"))
    panel.show()
    wait_until(lambda: len(panel.forms) >= 5, "the forms")
    yield panel
    panel.shutdown()
    panel.deleteLater()
    app.processEvents()


def _take(panel: Panel, pipeline: str, selection: PlateSelection) -> dict:
    panel.host.plate = selection
    panel.select_pipeline(pipeline)
    panel.plate_from_selection()
    return panel.forms[pipeline].values()


def test_a_sequence_goes_to_the_upscale_plate_with_its_frames(panel):
    values = _take(panel, "upscale", PLATE)
    assert (values["input"], values["frames"], values["first_frame"], values["input_colorspace"]) == \
        ("/plates/sh010/bg.####.exr", 96, 1001, "ACEScg")
    still = _take(panel, "upscale", STILL)
    assert still["input"] == "/plates/sh010/bg.####.exr"  # unchanged: a still is no plate to upscale
    assert "not an image sequence" in panel.banner.text and "matte.exr" in panel.banner.text


def test_a_panorama_takes_the_selections_first_frame_or_the_still_and_keeps_its_frames(panel):
    values = _take(panel, "panorama", PLATE)
    assert values["input"] == "/plates/sh010/bg.1001.exr" and values["input_colorspace"] == "ACEScg"
    assert values["frames"] is None and values["first_frame"] is None  # the panorama's own length, not the plate's
    assert _take(panel, "panorama", STILL)["input"] == "/plates/sh010/matte.exr"
    assert panel.banner.kind == "info"


def test_a_refusal_quoting_a_path_marks_that_field(panel):
    """The server's sentence about a missing plate quotes its path; the Input plate field was not marked."""
    form = panel.forms["upscale"]
    panel.select_pipeline("upscale")
    form.set_values({"model": "tiny-sd", "mode": "plate", "input": "/nowhere/plate.####.exr", "prompt": "x"})
    panel.generate()
    wait_until(lambda: panel.banner.kind == "error", "the refusal")
    assert "'/nowhere/plate.####.exr'" in panel.banner.text
    assert form.labels["input"].property("invalid") and not form.labels["out"].property("invalid")
