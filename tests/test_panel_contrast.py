"""The panel's own controls stay visible on its dark background whatever palette the host brings:
an unchecked box was #1f1f1f on #2b2b2b (contrast 1.2:1), so a switch such as Overwrite looked like no control."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6", reason="the panel needs a Qt binding")

from cinegen.plugin.qt import QtWidgets, ensure_application  # noqa: E402
from cinegen.plugin.ui.style import apply_style, dark_palette  # noqa: E402

NON_TEXT_CONTRAST = 3.0  # WCAG 2.1, 1.4.11: a control's boundary against what is around it


def _luminance(colour) -> float:
    def channel(v: int) -> float:
        v /= 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4
    return 0.2126 * channel(colour.red()) + 0.7152 * channel(colour.green()) + 0.0722 * channel(colour.blue())


def _contrast(a: float, b: float) -> float:
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


@pytest.fixture()
def dark_host():
    """The application's palette as a dark host sets it (Nuke's, the standalone window's), put back after."""
    app = ensure_application()
    before = app.palette()
    app.setPalette(dark_palette())
    yield app
    app.setPalette(before)


@pytest.mark.parametrize("checked", [False, True])
def test_a_check_box_stands_out_from_the_panel_in_a_dark_host(dark_host, checked):
    app = dark_host
    panel = QtWidgets.QWidget()
    apply_style(panel)
    layout = QtWidgets.QHBoxLayout(panel)
    focused, box = QtWidgets.QCheckBox(), QtWidgets.QCheckBox()  # the first takes the focus; measure the other
    box.setChecked(checked)
    layout.addWidget(focused)
    layout.addWidget(box)
    panel.resize(80, 30)
    panel.show()
    app.processEvents()
    image = panel.grab().toImage()
    background = _luminance(image.pixelColor(1, 1))
    option = QtWidgets.QStyleOptionButton()
    option.initFrom(box)
    rect = box.style().subElementRect(QtWidgets.QStyle.SE_CheckBoxIndicator, option, box).translated(box.pos())
    best = max(_contrast(_luminance(image.pixelColor(x, y)), background)
               for x in range(rect.left(), rect.right() + 1) for y in range(rect.top(), rect.bottom() + 1))
    panel.close()
    panel.deleteLater()
    assert best >= NON_TEXT_CONTRAST


def test_a_disabled_tool_button_looks_disabled(dark_host):
    """▲ on the job already next in the queue is disabled; it looked exactly like the enabled ▼ beside it."""
    panel = QtWidgets.QWidget()
    apply_style(panel)
    layout = QtWidgets.QHBoxLayout(panel)
    up, down = QtWidgets.QToolButton(), QtWidgets.QToolButton()
    up.setText("▲")
    down.setText("▼")
    up.setEnabled(False)
    layout.addWidget(up)
    layout.addWidget(down)
    panel.show()
    dark_host.processEvents()
    image = panel.grab().toImage()

    def brightest(button) -> float:
        rect = button.geometry()
        return max(_luminance(image.pixelColor(x, y)) for x in range(rect.left(), rect.right())
                   for y in range(rect.top(), rect.bottom()))

    assert _contrast(brightest(down), brightest(up)) >= 2.0
    panel.close()
    panel.deleteLater()
