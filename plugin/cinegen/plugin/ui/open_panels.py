"""The panels open in this application, so a host's menu can bring one forward instead of making a second
(a second panel would be a second connection with its own queue)."""
from __future__ import annotations

import weakref
from typing import Any

from ..qt import QtWidgets

_OPEN: weakref.WeakSet[Any] = weakref.WeakSet()  # panels not yet shut down


def add(panel: Any) -> None:
    _OPEN.add(panel)


def discard(panel: Any) -> None:
    _OPEN.discard(panel)


def open_panel(host: str = "") -> Any:
    """This application's panel (for `host`, a HostAdapter name) that is still open, or None: a host may have made
    one already (Nuke builds a pane's widget itself when it restores a saved layout), and a second panel would be a
    second connection with its own queue."""
    for panel in list(_OPEN):
        try:
            panel.objectName()
        except RuntimeError:  # its pane was closed and Qt deleted it without a close event
            _OPEN.discard(panel)
            continue
        if not host or panel.host.name == host:
            return panel
    return None


def reveal(panel: QtWidgets.QWidget) -> None:
    """Bring a docked or floating panel to the front: its tab made current in every tab widget above it."""
    chain = [panel]
    while chain[-1].parentWidget() is not None:
        chain.append(chain[-1].parentWidget())
    for depth, widget in enumerate(chain[1:], start=1):
        if isinstance(widget, QtWidgets.QTabWidget):  # its pages sit in its own stack, one level further down
            index = next((i for i in (widget.indexOf(w) for w in chain[:depth]) if i >= 0), -1)
            if index >= 0:
                widget.setCurrentIndex(index)
        elif isinstance(widget, QtWidgets.QStackedWidget) and not isinstance(widget.parentWidget(),
                                                                               QtWidgets.QTabWidget):
            widget.setCurrentWidget(chain[depth - 1])
    if panel.isWindow():  # floating; a docked one is shown by its tab (show() would paint it over another tab)
        panel.show()
    panel.window().raise_()
    panel.window().activateWindow()
