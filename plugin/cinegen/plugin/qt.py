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


def exec_dialog(dialog: QtWidgets.QDialog) -> int:
    """`exec` in PySide6, `exec_` in PySide2."""
    return (getattr(dialog, "exec", None) or dialog.exec_)()


def ensure_application() -> QtWidgets.QApplication:
    """The running QApplication, or a new one (standalone use, tests, Blender's timer-driven loop)."""
    app = QtWidgets.QApplication.instance()
    return app if app is not None else QtWidgets.QApplication([])


__all__ = ["QtCore", "QtGui", "QtWidgets", "Signal", "Slot", "QAction", "QT_BINDING", "exec_dialog",
           "ensure_application"]
