"""History: what was made with which seed, model and prompt; re-run with changes, or load it again."""
from __future__ import annotations

from ..model.history import History, HistoryEntry
from ..qt import QtCore, QtGui, QtWidgets, Signal

# The prompt takes what width there is; the short columns keep theirs; the model is in the tooltips.
COLUMNS = ("", "Prompt", "Pipeline", "Seed", "State", "When")
# Dropped in this order where a narrow dock would otherwise squeeze the prompt (they stay in its tooltip).
HIDE_WHEN_NARROW = ("When", "Pipeline")
THUMBNAIL = 32  # rows are this tall, so a thumbnail never spills onto the next row
PROMPT_MIN_WIDTH = 120


class HistoryView(QtWidgets.QWidget):
    rerun_requested = Signal(object)  # HistoryEntry
    load_requested = Signal(object)  # HistoryEntry

    def __init__(self, history: History, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.history = history
        self.tree = QtWidgets.QTreeWidget()
        self.tree.setHeaderLabels(list(COLUMNS))
        self.tree.setRootIsDecorated(False)
        self.tree.setAlternatingRowColors(True)
        self.tree.setUniformRowHeights(True)
        self.tree.setSelectionMode(QtWidgets.QAbstractItemView.SingleSelection)
        self.tree.itemDoubleClicked.connect(lambda *_: self._rerun())
        self.tree.itemSelectionChanged.connect(self._update_buttons)
        self.tree.setIconSize(QtCore.QSize(THUMBNAIL, THUMBNAIL))
        self.tree.setTextElideMode(QtCore.Qt.ElideRight)
        self.tree.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarAlwaysOff)
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setMinimumSectionSize(24)
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeToContents)
        header.setSectionResizeMode(COLUMNS.index("Prompt"), QtWidgets.QHeaderView.Stretch)
        header.resizeSection(COLUMNS.index("Prompt"), PROMPT_MIN_WIDTH)
        self.tree.viewport().installEventFilter(self)  # its width decides which short columns fit
        self.rerun = QtWidgets.QPushButton("Re-run with changes")
        self.rerun.setToolTip("Put this job's settings (and its seed, locked) back in the form: change one thing, "
                              "then press Generate.")
        self.rerun.clicked.connect(self._rerun)
        self.load = QtWidgets.QPushButton("Load result")
        self.load.setToolTip("Bring this job's frames into the host again.")
        self.load.clicked.connect(self._load)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.rerun)
        buttons.addWidget(self.load)
        buttons.addStretch(1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.tree, 1)
        layout.addLayout(buttons)
        self.refresh()

    def refresh(self) -> None:
        selected = self.selected_entry()
        self.tree.clear()
        for entry in self.history.entries:
            prompt = entry.prompt.replace("\n", " ").strip() or "(no prompt)"
            seed = "" if entry.seed is None else str(entry.seed)
            item = QtWidgets.QTreeWidgetItem(["", prompt, entry.pipeline, seed, entry.state, entry.when])
            item.setData(0, QtCore.Qt.UserRole, entry.job_id)
            item.setSizeHint(0, QtCore.QSize(THUMBNAIL, THUMBNAIL + 2))  # uniform rows take the first row's height
            icon = _thumbnail(entry.thumbnail)
            if icon is not None:
                item.setIcon(0, icon)
            made = f"{entry.pipeline} · seed {seed or 'random'} · {entry.model or 'default model'}"
            item.setToolTip(COLUMNS.index("Prompt"), f"{entry.prompt}\n{made}\n{entry.when}")
            item.setToolTip(COLUMNS.index("State"), entry.message or entry.state)
            self.tree.addTopLevelItem(item)
            if selected is not None and entry.job_id == selected.job_id:
                item.setSelected(True)
        self._update_buttons()
        self._fit_columns()

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:  # noqa: N802 (Qt's name)
        if watched is self.tree.viewport() and event.type() == QtCore.QEvent.Resize:
            self._fit_columns()
        return super().eventFilter(watched, event)

    def _fit_columns(self) -> None:
        """Show the short columns that fit beside a readable prompt; with no horizontal scroll bar, a column
        past the right edge would be cut off unseen."""
        header = self.tree.header()
        for name in HIDE_WHEN_NARROW:
            header.setSectionHidden(COLUMNS.index(name), False)
        width = self.tree.viewport().width()
        for name in HIDE_WHEN_NARROW:
            if width - self._short_columns_width() >= PROMPT_MIN_WIDTH:
                break
            header.setSectionHidden(COLUMNS.index(name), True)

    def _short_columns_width(self) -> int:
        header = self.tree.header()
        prompt = COLUMNS.index("Prompt")
        return sum(max(self.tree.sizeHintForColumn(i), header.sectionSizeHint(i)) for i in range(len(COLUMNS))
                   if i != prompt and not header.isSectionHidden(i))

    def selected_entry(self) -> HistoryEntry | None:
        items = self.tree.selectedItems() if hasattr(self, "tree") else []
        return self.history.get(items[0].data(0, QtCore.Qt.UserRole)) if items else None

    def select(self, job_id: str) -> None:
        for index in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(index)
            item.setSelected(item.data(0, QtCore.Qt.UserRole) == job_id)

    def _update_buttons(self) -> None:
        entry = self.selected_entry()
        self.rerun.setEnabled(entry is not None)
        self.load.setEnabled(entry is not None and bool(entry.outputs))

    def _rerun(self) -> None:
        entry = self.selected_entry()
        if entry is not None:
            self.rerun_requested.emit(entry)

    def _load(self) -> None:
        entry = self.selected_entry()
        if entry is not None:
            self.load_requested.emit(entry)


def _thumbnail(path: str) -> QtGui.QIcon | None:
    if not path:
        return None
    pixmap = QtGui.QPixmap(path)
    if pixmap.isNull():
        return None  # the picture was removed: the row stays, without it
    return QtGui.QIcon(pixmap.scaled(THUMBNAIL, THUMBNAIL, QtCore.Qt.KeepAspectRatio, QtCore.Qt.SmoothTransformation))
