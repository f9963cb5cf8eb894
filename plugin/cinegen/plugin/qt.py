"""The Qt binding: PySide6 (Nuke 16, standalone), else PySide2 (Nuke 15). Import Qt only from here."""
from __future__ import annotations

try:
    from PySide6 import QtCore, QtGui, QtWidgets
    QT_BINDING = "PySide6"
except ImportError:  # Nuke 15 ships PySide2 only
    from PySide2 import QtCore, QtGui, QtWidgets  # type: ignore[no-redef]
    QT_BINDING = "PySide2"

Signal = QtCore.Signal
Slot = QtCore.Slot
# QAction moved from QtWidgets (Qt 5) to QtGui (Qt 6)
QAction = getattr(QtGui, "QAction", None) or getattr(QtWidgets, "QAction")


def emit_keeps_references(emits: int = 200) -> bool:
    """False on a binding whose Python `Signal.emit` drops a reference to True each time (PySide6 6.12.0:
    the process aborts with bool_dealloc/none_dealloc after a few hundred signals).

    Other threads move True's count a little meanwhile; a leaking binding moves it by `emits`."""
    import sys

    class _Probe(QtCore.QObject):
        ping = Signal()

    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(emits):
        probe.ping.emit()
    return sys.getrefcount(True) - before > -emits // 2


def exec_dialog(dialog: QtWidgets.QDialog) -> int:
    """`exec` in PySide6, `exec_` in PySide2."""
    return (getattr(dialog, "exec", None) or dialog.exec_)()


def ensure_application() -> QtWidgets.QApplication:
    """The running QApplication, or a new one (standalone use, tests, Blender's timer-driven loop)."""
    app = QtWidgets.QApplication.instance()
    return app if app is not None else QtWidgets.QApplication([])


if not emit_keeps_references():  # say so where the artist can read it, before the abort
    import warnings

    warnings.warn(f"{QT_BINDING} {QtCore.qVersion()} loses a reference on every signal emit and will abort the "
                  "cinegen panel; install another PySide6 (pip install 'PySide6-Essentials!=6.12.0').",
                  RuntimeWarning, stacklevel=1)

__all__ = ["QtCore", "QtGui", "QtWidgets", "Signal", "Slot", "QAction", "QT_BINDING", "exec_dialog",
           "ensure_application"]
