"""What an artist typed survives closing and reopening the panel (a Nuke pane closed, Nuke restarted):
the pipeline shown and every form's values come back; a damaged or outdated file is ignored."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("PySide6", reason="the panel needs a Qt binding")

from cinegen.common.connection import ConnectionSettings  # noqa: E402
from cinegen.plugin.hosts.standalone import StandaloneHost  # noqa: E402
from cinegen.plugin.model.history import History  # noqa: E402
from cinegen.plugin.qt import ensure_application  # noqa: E402
from cinegen.plugin.ui.panel import Panel  # noqa: E402
from qt_kit import wait_until  # noqa: E402

PROMPT = "a lighthouse at dusk, ünïcødé 灯台 — [not TCL] $HOME\nsecond line"


@pytest.fixture()
def open_panel(tmp_path, monkeypatch, running_server):
    app = ensure_application()
    monkeypatch.setenv("CINEGEN_CONFIG_DIR", str(tmp_path / "config"))
    address, port = running_server.address.rsplit(":", 1)
    panels = []

    def make() -> Panel:
        panel = Panel(host=StandaloneHost(tmp_path / "renders"), settings=ConnectionSettings(host=address, port=int(port)),
                      history=History(tmp_path / "config" / "history.json"))
        panel.resize(360, 700)
        panel.show()
        panels.append(panel)
        wait_until(lambda: len(panel.forms) >= 5, "the forms")
        return panel

    yield make
    for panel in panels:
        panel.shutdown()
        panel.deleteLater()
    app.processEvents()


def test_the_pipeline_and_form_values_come_back_when_the_panel_is_opened_again(open_panel, tmp_path):
    first = open_panel()
    first.select_pipeline("panorama")
    typed = {"prompt": PROMPT, "width": 96, "steps": 7, "lora": ["/loras/a.safetensors:0.5"], "projection": "ring"}
    first.forms["panorama"].set_values(typed)
    first.forms["image"].set_values({"prompt": "the image form's own prompt"})
    wait_until(lambda: (tmp_path / "config" / "panel.json").exists(), "the form state to be written", timeout=5)
    first.close()  # the pane goes away; its connection closes

    second = open_panel()
    assert second.current_pipeline() == "panorama"
    values = second.forms["panorama"].values()
    assert {name: values[name] for name in typed} == typed
    assert second.forms["image"].values()["prompt"] == "the image form's own prompt"


def test_a_damaged_or_outdated_form_state_is_ignored(open_panel, tmp_path):
    state = tmp_path / "config" / "panel.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"pipeline": "no-such-pipeline",
                                 "forms": {"image": {"width": "wide", "steps": 9, "gone_option": 1}, "story": 3,
                                           "no-such-pipeline": {"prompt": "kept for a server that has it"}}}))
    panel = open_panel()
    assert panel.current_pipeline() == "image"  # the first pipeline, as with no state
    values = panel.forms["image"].values()
    assert values["steps"] == 9 and values["width"] is None  # the bad value left at its default, the rest kept
    panel.save_form_state()
    assert json.loads(state.read_text())["forms"]["no-such-pipeline"] == {"prompt": "kept for a server that has it"}
    state.write_text("{ not json")
    open_panel()


def test_a_pipeline_typed_in_survives_a_reconnect_to_a_server_that_lacks_it(open_panel, tmp_path):
    panel = open_panel()
    panel.forms["panorama"].set_values({"prompt": "typed before the reconnect"})
    full = panel.session.capabilities
    lacking = type(full)()
    lacking.CopyFrom(full)
    del lacking.pipelines[[p.name for p in lacking.pipelines].index("panorama")]
    panel._on_capabilities(lacking)  # connected to another server, which has no panorama
    assert "panorama" not in panel.forms
    panel.save_form_state()
    saved = json.loads((tmp_path / "config" / "panel.json").read_text())["forms"]
    assert saved["panorama"]["prompt"] == "typed before the reconnect"
    panel._on_capabilities(full)  # back on a server with panorama
    assert panel.forms["panorama"].values()["prompt"] == "typed before the reconnect"


def test_changing_the_pipeline_keeps_the_save_delay(tmp_path, monkeypatch):
    """currentIndexChanged carries the index: wired straight to QTimer.start it became start(index), so after
    choosing the first pipeline the form state was written on every key press (an interval of 0 ms)."""
    from cinegen.plugin.ui.panel import FORM_SAVE_DELAY_MS

    app = ensure_application()
    monkeypatch.setenv("CINEGEN_CONFIG_DIR", str(tmp_path / "config"))
    panel = Panel(host=StandaloneHost(tmp_path / "renders"), history=History(tmp_path / "config" / "history.json"),
                  autoconnect=False)
    try:
        for name in ("image", "video", "panorama"):
            panel.pipeline_combo.addItem(name, name)
        for index in (2, 0):
            panel.pipeline_combo.setCurrentIndex(index)
            assert panel._save_timer.interval() == FORM_SAVE_DELAY_MS
            assert panel._save_timer.remainingTime() > FORM_SAVE_DELAY_MS // 2
    finally:
        panel.shutdown()
        panel.deleteLater()
        app.processEvents()
