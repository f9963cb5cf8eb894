"""The panel's look: compact, dark, one accent colour; scoped to the panel so the host keeps its own."""
from __future__ import annotations

from ..qt import QtCore, QtGui, QtWidgets

ACCENT = "#e39b2f"
OK = "#5cb85c"
WARN = "#e3c02f"
ERROR = "#e05a4f"
MUTED = "#8c8c8c"

STATE_COLOURS = {"connected": OK, "connecting": WARN, "retrying": WARN, "disconnected": MUTED, "failed": ERROR}

STYLESHEET = f"""
#cinegenPanel {{ background: #2b2b2b; color: #d8d8d8; font-size: 12px; }}
#cinegenPanel QLabel {{ color: #d0d0d0; }}
#cinegenPanel QLabel[invalid="true"] {{ color: {ERROR}; font-weight: bold; }}
#cinegenPanel QLineEdit, #cinegenPanel QPlainTextEdit, #cinegenPanel QSpinBox, #cinegenPanel QDoubleSpinBox,
#cinegenPanel QComboBox {{
    background: #1f1f1f; color: #e6e6e6; border: 1px solid #3d3d3d; border-radius: 3px; padding: 2px 4px;
    selection-background-color: {ACCENT}; selection-color: #111;
}}
#cinegenPanel QLineEdit:focus, #cinegenPanel QPlainTextEdit:focus, #cinegenPanel QSpinBox:focus,
#cinegenPanel QDoubleSpinBox:focus, #cinegenPanel QComboBox:focus {{ border-color: {ACCENT}; }}
#cinegenPanel FieldEditor[invalid="true"] QLineEdit, #cinegenPanel FieldEditor[invalid="true"] QSpinBox,
#cinegenPanel FieldEditor[invalid="true"] QDoubleSpinBox {{ border-color: {ERROR}; }}
#cinegenPanel QToolButton {{
    background: #353535; color: #d8d8d8; border: 1px solid #444; border-radius: 3px; padding: 2px 6px;
}}
#cinegenPanel QToolButton:hover {{ background: #404040; }}
#cinegenPanel QToolButton:checked {{ background: #4a3b22; border-color: {ACCENT}; color: {ACCENT}; }}
#cinegenPanel QToolButton#sectionHeader {{
    background: transparent; border: none; border-bottom: 1px solid #3a3a3a; border-radius: 0;
    color: #b8b8b8; font-weight: bold; text-align: left; padding: 4px 0 2px 0;
}}
#cinegenPanel QPushButton {{
    background: #3a3a3a; color: #e0e0e0; border: 1px solid #4a4a4a; border-radius: 3px; padding: 4px 10px;
}}
#cinegenPanel QPushButton:hover {{ background: #454545; }}
#cinegenPanel QPushButton:disabled {{ color: #6a6a6a; background: #303030; }}
#cinegenPanel QPushButton#generateButton {{
    background: {ACCENT}; color: #161616; font-weight: bold; font-size: 13px; border: none; padding: 6px;
}}
#cinegenPanel QPushButton#generateButton:hover {{ background: #f0ad45; }}
#cinegenPanel QPushButton#generateButton:disabled {{ background: #5a4a30; color: #8a7a60; }}
#cinegenPanel QProgressBar {{
    background: #1c1c1c; border: 1px solid #3a3a3a; border-radius: 3px; height: 12px;
    color: #e8e8e8; text-align: center; font-size: 10px;
}}
#cinegenPanel QProgressBar::chunk {{ background: {ACCENT}; border-radius: 2px; }}
#cinegenPanel QProgressBar[state="completed"]::chunk {{ background: {OK}; }}
#cinegenPanel QProgressBar[state="failed"]::chunk, #cinegenPanel QProgressBar[state="cancelled"]::chunk {{
    background: #6a6a6a;
}}
#cinegenPanel #jobRow {{ background: #323232; border: 1px solid #3c3c3c; border-radius: 4px; }}
#cinegenPanel #jobTitle {{ color: #f0f0f0; font-weight: bold; }}
#cinegenPanel #jobPrompt, #cinegenPanel #jobStage, #cinegenPanel #muted {{ color: {MUTED}; font-size: 11px; }}
#cinegenPanel #thumbnail {{ background: #1a1a1a; border: 1px solid #3a3a3a; }}
#cinegenPanel #banner {{ border-radius: 4px; padding: 4px; }}
#cinegenPanel #banner[kind="error"] {{ background: #4a2522; border: 1px solid {ERROR}; }}
#cinegenPanel #banner[kind="info"] {{ background: #243444; border: 1px solid #3f6f99; }}
#cinegenPanel #banner QLabel {{ color: #f2f2f2; }}
#cinegenPanel QTabWidget::pane {{ border: 1px solid #3a3a3a; top: -1px; }}
#cinegenPanel QTabBar::tab {{
    background: #303030; color: #a8a8a8; padding: 3px 12px; border: 1px solid #3a3a3a; border-bottom: none;
}}
#cinegenPanel QTabBar::tab:selected {{ background: #3a3a3a; color: #f0f0f0; }}
#cinegenPanel QTreeWidget {{ background: #1f1f1f; color: #d8d8d8; border: none; alternate-background-color: #262626; }}
#cinegenPanel QHeaderView::section {{ background: #333; color: #b0b0b0; border: none; padding: 2px 4px; }}
#cinegenPanel QScrollArea {{ border: none; background: transparent; }}
#cinegenPanel QScrollArea > QWidget > QWidget {{ background: transparent; }}
#cinegenPanel QSplitter::handle {{ background: #3a3a3a; }}
"""


def apply_style(widget: QtWidgets.QWidget) -> None:
    widget.setObjectName("cinegenPanel")
    widget.setAttribute(QtCore.Qt.WA_StyledBackground, True)  # paint the background the sheet gives
    widget.setStyleSheet(STYLESHEET)


def dark_palette() -> QtGui.QPalette:
    """For the standalone window (hosts bring their own palette)."""
    palette = QtGui.QPalette()
    colours = {QtGui.QPalette.Window: "#2b2b2b", QtGui.QPalette.WindowText: "#d8d8d8",
               QtGui.QPalette.Base: "#1f1f1f", QtGui.QPalette.AlternateBase: "#262626",
               QtGui.QPalette.Text: "#e6e6e6", QtGui.QPalette.Button: "#353535",
               QtGui.QPalette.ButtonText: "#d8d8d8", QtGui.QPalette.Highlight: ACCENT,
               QtGui.QPalette.HighlightedText: "#111111", QtGui.QPalette.ToolTipBase: "#1f1f1f",
               QtGui.QPalette.ToolTipText: "#e6e6e6"}
    for role, colour in colours.items():
        palette.setColor(role, QtGui.QColor(colour))
    return palette
