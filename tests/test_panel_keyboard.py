"""Ctrl+Return generates only while the focus is in the panel: docked in a host's main window (Nuke), a
window-wide shortcut also fired from the host's own widgets, e.g. Nuke's Script Editor, where Ctrl+Return runs
the script, and queued a job instead."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6", reason="the panel needs a Qt binding")

from PySide6.QtTest import QTest  # noqa: E402

from cinegen.plugin.hosts.standalone import StandaloneHost  # noqa: E402
from cinegen.plugin.model.history import History  # noqa: E402
from cinegen.plugin.qt import QtCore, QtWidgets, ensure_application  # noqa: E402
from cinegen.plugin.ui.panel import Panel  # noqa: E402

CLICK_DELAY_MS = 300  # a shortcut "clicks" its button through animateClick, which emits after 100 ms


@pytest.fixture()
def docked(tmp_path, monkeypatch):
    """The panel docked beside a host widget (a script editor) in one main window; Generate counted, not run."""
    app = ensure_application()
    monkeypatch.setenv("CINEGEN_CONFIG_DIR", str(tmp_path / "config"))
    window = QtWidgets.QMainWindow()
    central = QtWidgets.QWidget()
    layout = QtWidgets.QHBoxLayout(central)
    script_editor = QtWidgets.QPlainTextEdit()
    panel = Panel(host=StandaloneHost(tmp_path / "renders"), history=History(tmp_path / "config" / "history.json"),
                  autoconnect=False)
    layout.addWidget(script_editor)
    layout.addWidget(panel)
    window.setCentralWidget(central)
    window.show()
    window.activateWindow()
    app.processEvents()
    panel.generate_button.clicked.disconnect()
    presses = []
    panel.generate_button.clicked.connect(lambda: presses.append(1))
    panel.generate_button.setEnabled(True)  # as when connected
    yield panel, script_editor, presses
    panel.shutdown()
    window.close()
    window.deleteLater()
    app.processEvents()


@pytest.mark.parametrize("key, modifiers", [(QtCore.Qt.Key_Return, QtCore.Qt.ControlModifier),
                                            (QtCore.Qt.Key_Enter, QtCore.Qt.ControlModifier | QtCore.Qt.KeypadModifier)])
def test_ctrl_return_generates_from_the_panel_and_not_from_the_hosts_widgets(docked, key, modifiers):
    panel, script_editor, presses = docked
    script_editor.setFocus()
    QTest.keyClick(script_editor, key, modifiers)
    QTest.qWait(CLICK_DELAY_MS)
    assert presses == [], "Ctrl+Return in the host's script editor queued a generation"
    panel.pipeline_combo.setFocus()
    QTest.keyClick(panel.pipeline_combo, key, modifiers)
    QTest.qWait(CLICK_DELAY_MS)
    assert presses == [1]
    panel.generate_button.setEnabled(False)  # not connected: the shortcut does nothing either
    QTest.keyClick(panel.pipeline_combo, key, modifiers)
    QTest.qWait(CLICK_DELAY_MS)
    assert presses == [1]
