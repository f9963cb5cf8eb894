"""The panel's look: compact, dark, one accent colour; scoped to the panel so the host keeps its own."""
from __future__ import annotations

import os
import tempfile

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
#cinegenPanel QLineEdit[invalid="true"], #cinegenPanel QAbstractSpinBox[invalid="true"],
#cinegenPanel QComboBox[invalid="true"], #cinegenPanel QPlainTextEdit[invalid="true"] {{ border-color: {ERROR}; }}
#cinegenPanel QToolButton {{
    background: #353535; color: #d8d8d8; border: 1px solid #444; border-radius: 3px; padding: 2px 6px;
}}
#cinegenPanel QToolButton:hover {{ background: #404040; }}
#cinegenPanel QToolButton:disabled {{ color: #5a5a5a; background: #303030; border-color: #3a3a3a; }}
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
#cinegenPanel #jobStage[state="failed"] {{ color: {ERROR}; }}
#cinegenPanel #thumbnail {{ background: #1a1a1a; border: 1px solid #3a3a3a; color: #5a5a5a; font-size: 10px; }}
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
#cinegenPanel QSplitter::handle {{ background: #2b2b2b; height: 5px; }}
#cinegenPanel QAbstractSpinBox::up-button, #cinegenPanel QAbstractSpinBox::down-button {{
    subcontrol-origin: border; width: 14px; background: #2a2a2a; border-left: 1px solid #3d3d3d;
}}
#cinegenPanel QAbstractSpinBox::up-button {{ subcontrol-position: top right; border-top-right-radius: 3px; }}
#cinegenPanel QAbstractSpinBox::down-button {{ subcontrol-position: bottom right; border-bottom-right-radius: 3px; }}
#cinegenPanel QAbstractSpinBox::up-button:hover, #cinegenPanel QAbstractSpinBox::down-button:hover {{
    background: #3a3a3a;
}}
#cinegenPanel QAbstractSpinBox::up-arrow {{ image: url({{up}}); width: 7px; height: 4px; }}
#cinegenPanel QAbstractSpinBox::down-arrow {{ image: url({{down}}); width: 7px; height: 4px; }}
#cinegenPanel QComboBox::drop-down {{ border: none; width: 16px; }}
#cinegenPanel QComboBox::down-arrow {{ image: url({{down}}); width: 7px; height: 4px; }}
#cinegenPanel QComboBox QAbstractItemView {{
    background: #1f1f1f; color: #e6e6e6; selection-background-color: {ACCENT}; selection-color: #111;
}}
#cinegenPanel QScrollBar:vertical {{ background: transparent; width: 8px; margin: 0; }}
#cinegenPanel QScrollBar::handle:vertical {{ background: #4a4a4a; border-radius: 4px; min-height: 24px; }}
#cinegenPanel QScrollBar::handle:vertical:hover {{ background: #5a5a5a; }}
#cinegenPanel QScrollBar::add-line, #cinegenPanel QScrollBar::sub-line {{ height: 0; width: 0; }}
#cinegenPanel QScrollBar::add-page, #cinegenPanel QScrollBar::sub-page {{ background: transparent; }}
#cinegenPanel QCheckBox {{ color: #d0d0d0; }}
#cinegenPanel QCheckBox::indicator {{
    width: 12px; height: 12px; background: #1f1f1f; border: 1px solid #7a7a7a; border-radius: 2px;
}}
#cinegenPanel QCheckBox::indicator:hover, #cinegenPanel QCheckBox::indicator:focus {{ border-color: {ACCENT}; }}
#cinegenPanel QCheckBox::indicator:checked {{ background: {ACCENT}; border-color: {ACCENT}; image: url({{check}}); }}
#cinegenPanel QCheckBox::indicator:disabled {{ background: #2a2a2a; border-color: #4a4a4a; }}
#cinegenPanel #statusDot {{ font-size: 14px; }}
"""


def apply_style(widget: QtWidgets.QWidget) -> None:
    widget.setObjectName("cinegenPanel")
    widget.setAttribute(QtCore.Qt.WA_StyledBackground, True)  # paint the background the sheet gives
    arrows = arrow_images()
    widget.setStyleSheet(STYLESHEET.replace("{up}", arrows["up"]).replace("{down}", arrows["down"])
                         .replace("{check}", arrows["check"]))


_ARROWS: dict[str, str] = {}


def arrow_images() -> dict[str, str]:
    """Small arrow PNGs for spin boxes and combo boxes (a style sheet that restyles their frame must
    also supply their arrows); drawn once per process, so the package ships no image files."""
    if _ARROWS:
        return _ARROWS
    folder = tempfile.mkdtemp(prefix="cinegen-qss-")
    for name, points in (("up", [(0, 4), (3.5, 0), (7, 4)]), ("down", [(0, 0), (7, 0), (3.5, 4)])):
        image = QtGui.QImage(14, 8, QtGui.QImage.Format_ARGB32)  # drawn at 2x for high-DPI screens
        image.fill(QtCore.Qt.transparent)
        painter = QtGui.QPainter(image)
        painter.setRenderHint(QtGui.QPainter.Antialiasing)
        painter.setPen(QtCore.Qt.NoPen)
        painter.setBrush(QtGui.QColor("#a0a0a0"))
        painter.drawPolygon(QtGui.QPolygonF([QtCore.QPointF(2 * x, 2 * y) for x, y in points]))
        painter.end()
        path = os.path.join(folder, f"{name}.png")
        image.save(path)
        _ARROWS[name] = path.replace(os.sep, "/")
    _ARROWS["check"] = _check_image(folder)
    return _ARROWS


def _check_image(folder: str) -> str:
    """A dark tick for a checked box (a style sheet that draws the box must draw its tick too), at 2x."""
    image = QtGui.QImage(24, 24, QtGui.QImage.Format_ARGB32)
    image.fill(QtCore.Qt.transparent)
    painter = QtGui.QPainter(image)
    painter.setRenderHint(QtGui.QPainter.Antialiasing)
    pen = QtGui.QPen(QtGui.QColor("#161616"), 3.5)
    pen.setCapStyle(QtCore.Qt.RoundCap)
    pen.setJoinStyle(QtCore.Qt.RoundJoin)
    painter.setPen(pen)
    painter.drawPolyline(QtGui.QPolygonF([QtCore.QPointF(5, 12.5), QtCore.QPointF(10, 17.5), QtCore.QPointF(19, 6.5)]))
    painter.end()
    path = os.path.join(folder, "check.png")
    image.save(path)
    return path.replace(os.sep, "/")


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
