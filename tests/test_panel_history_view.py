"""The History tab as a narrow dock shows it: no column cut off at the right, a readable prompt, and
thumbnails inside their own rows."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6", reason="the panel needs a Qt binding")

from cinegen.plugin.model.history import History, HistoryEntry  # noqa: E402
from cinegen.plugin.qt import QtCore, QtGui, ensure_application  # noqa: E402
from cinegen.plugin.ui import history_view  # noqa: E402
from cinegen.plugin.ui.style import apply_style  # noqa: E402


@pytest.fixture()
def view(tmp_path):
    app = ensure_application()
    history = History(tmp_path / "history.json")
    for n in range(3):
        history.add(HistoryEntry(f"image-{n}", "panorama", values={}, seed=1234567890 + n, state="completed",
                                 prompt=f"a lighthouse on a cliff at dusk, number {n}"))
    picture = QtGui.QImage(64, 64, QtGui.QImage.Format_RGB32)
    picture.fill(QtGui.QColor("#c05030"))
    buffer = QtCore.QBuffer()
    buffer.open(QtCore.QIODevice.WriteOnly)
    picture.save(buffer, "PNG")
    history.save_thumbnail("image-0", bytes(buffer.data()))  # the oldest entry, last row: the first has none
    widget = history_view.HistoryView(history)
    apply_style(widget)
    widget.show()
    yield widget
    widget.close()
    widget.deleteLater()
    app.processEvents()


@pytest.mark.parametrize("width", [320, 440, 700])
def test_every_shown_column_fits_and_the_prompt_stays_readable(view, width):
    view.resize(width, 300)
    ensure_application().processEvents()
    tree, header = view.tree, view.tree.header()
    shown = [i for i in range(len(history_view.COLUMNS)) if not header.isSectionHidden(i)]
    right = max(header.sectionViewportPosition(i) + header.sectionSize(i) for i in shown)
    assert right <= tree.viewport().width(), "a column past the right edge is cut off (no horizontal scroll bar)"
    assert header.sectionSize(history_view.COLUMNS.index("Prompt")) >= history_view.PROMPT_MIN_WIDTH
    for name in ("Seed", "State"):  # what a re-run needs stays in view
        assert history_view.COLUMNS.index(name) in shown, name
    if width >= 700:
        assert len(shown) == len(history_view.COLUMNS)


def test_thumbnails_stay_inside_their_row(view):
    view.resize(440, 300)
    ensure_application().processEvents()
    tree = view.tree
    above, pictured = tree.topLevelItem(1), tree.topLevelItem(2)
    assert not pictured.icon(0).isNull() and pictured.icon(0).actualSize(QtCore.QSize(99, 99)).height() >= 24
    assert tree.visualItemRect(pictured).height() >= history_view.THUMBNAIL  # rows take the first row's height
    assert tree.visualItemRect(pictured).top() > tree.visualItemRect(above).bottom()
