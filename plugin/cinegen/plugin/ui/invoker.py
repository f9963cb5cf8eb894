"""Run a function on the Qt main thread from any thread (a queued signal to an object living there)."""
from __future__ import annotations

import threading
from typing import Callable

from ..qt import QtCore, QtWidgets, Signal


class MainThreadInvoker(QtCore.QObject):
    _call = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        app = QtWidgets.QApplication.instance()
        if app is not None and self.thread() is not app.thread():
            self.moveToThread(app.thread())
        self._call.connect(self._run)

    def _run(self, fn: Callable[[], None]) -> None:
        fn()

    def __call__(self, fn: Callable[[], None]) -> None:
        if threading.current_thread() is threading.main_thread():  # Qt's GUI thread is the main thread
            fn()
        else:
            self._call.emit(fn)
