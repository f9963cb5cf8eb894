"""Waiting on a live Qt panel in tests: spin the event loop until a condition holds."""
from __future__ import annotations

import time

from cinegen.plugin.qt import QtCore, ensure_application


def wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    app = ensure_application()
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        app.processEvents(QtCore.QEventLoop.AllEvents, 20)
        time.sleep(0.005)
