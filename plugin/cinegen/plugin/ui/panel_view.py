"""The panel's widgets and how they are laid out; `Panel` (panel.py) adds what they do.

Connection bar and message banner on top; the pipeline picker and its form in a scroll area with
Generate under it; the queue and history in tabs below, behind a splitter.
"""
from __future__ import annotations

from typing import Any

from ..model.forms import PLATE_FIELD, TRAJECTORY_FIELD
from ..model.history import History
from ..qt import QtCore, QtGui, QtWidgets
from .connection import Banner, ConnectionBar
from .form import ParamForm
from .history_view import HistoryView
from .queue_view import QueueView
from .style import apply_style


class PanelView(QtWidgets.QWidget):
    def __init__(self, history: History, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.history = history
        self.forms: dict[str, ParamForm] = {}
        self._build()
        apply_style(self)
        self.setWindowTitle("cinegen")

    def _build(self) -> None:
        self.connection = ConnectionBar()
        self.banner = Banner()
        self.pipeline_combo = QtWidgets.QComboBox()
        self.pipeline_combo.setToolTip("What to make; the form below shows this pipeline's options.")
        self.description = QtWidgets.QLabel()
        self.description.setObjectName("muted")
        self.description.setWordWrap(True)
        self.stack = QtWidgets.QStackedWidget()
        self.placeholder = QtWidgets.QLabel("Connect to a cinegen server to see its pipelines.")
        self.placeholder.setObjectName("muted")
        self.placeholder.setAlignment(QtCore.Qt.AlignCenter)
        self.stack.addWidget(self.placeholder)
        self.plate_button = QtWidgets.QPushButton("Plate from selection")
        self.plate_button.setToolTip("Use the selected Read node / strip as the input plate.")
        self.trajectory_button = QtWidgets.QPushButton("Trajectory from selection")
        self.trajectory_button.setToolTip("Use the selected tracker / the active object's screen path.")
        self.generate_button = QtWidgets.QPushButton("Generate")
        self.generate_button.setObjectName("generateButton")
        self.generate_button.setToolTip("Queue a job with these settings (Ctrl+Return).")
        # Only while the focus is in the panel: docked in Nuke's main window a window-wide Ctrl+Return also fired
        # from the Script Editor, where Ctrl+Return runs the script, and queued a job instead.
        self.generate_shortcuts = []
        for keys in ("Ctrl+Return", "Ctrl+Enter"):  # the main and the keypad Enter
            shortcut = QtGui.QShortcut(QtGui.QKeySequence(keys), self) if hasattr(QtGui, "QShortcut") else \
                QtWidgets.QShortcut(QtGui.QKeySequence(keys), self)  # QShortcut is in QtWidgets in Qt 5
            shortcut.setContext(QtCore.Qt.WidgetWithChildrenShortcut)
            shortcut.activated.connect(self.generate_button.click)  # click() does nothing while it is disabled
            self.generate_shortcuts.append(shortcut)

        pipeline_row = QtWidgets.QHBoxLayout()
        pipeline_row.addWidget(QtWidgets.QLabel("Pipeline"))
        pipeline_row.addWidget(self.pipeline_combo, 1)
        host_row = QtWidgets.QHBoxLayout()
        host_row.addWidget(self.plate_button)
        host_row.addWidget(self.trajectory_button)
        form_page = QtWidgets.QWidget()
        form_layout = QtWidgets.QVBoxLayout(form_page)
        form_layout.setContentsMargins(0, 0, 4, 0)
        form_layout.setSpacing(4)
        form_layout.addLayout(pipeline_row)
        form_layout.addWidget(self.description)
        form_layout.addLayout(host_row)
        form_layout.addWidget(self.stack)
        form_layout.addStretch(1)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarAlwaysOff)
        scroll.setWidget(form_page)
        scroll.viewport().installEventFilter(self)  # its width decides one or two fields a row
        self._viewport = scroll.viewport()
        self.form_scroll = scroll
        top = QtWidgets.QWidget()
        top_layout = QtWidgets.QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(scroll, 1)
        top_layout.addWidget(self.generate_button)

        self.queue_view = QueueView()
        self.history_view = HistoryView(self.history)
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(self.queue_view, "Queue")
        self.tabs.addTab(self.history_view, "History")
        self.form_page = form_page
        self.splitter = splitter = QtWidgets.QSplitter(QtCore.Qt.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(self.tabs)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([560, 300])
        splitter.setChildrenCollapsible(False)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(5)
        layout.addWidget(self.connection)
        layout.addWidget(self.banner)
        layout.addWidget(splitter, 1)
        self.setMinimumWidth(320)
        self._update_actions()

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:  # noqa: N802 (Qt's name)
        if watched is getattr(self, "_viewport", None) and event.type() == QtCore.QEvent.Resize:
            self._fit_form_width()
        return super().eventFilter(watched, event)

    def _fit_form_width(self) -> None:
        form = self.current_form()
        if form is not None:
            margins = self.form_page.layout().contentsMargins()
            form.fit_width(self._viewport.width() - margins.left() - margins.right())

    def _fit_form(self) -> None:
        """Give the form the height it needs (up to two thirds), the queue the rest."""
        total = sum(self.splitter.sizes())
        wanted = self.form_page.sizeHint().height() + self.generate_button.sizeHint().height() + 12
        top = min(wanted, total * 2 // 3)
        self.splitter.setSizes([top, max(total - top, 1)])

    def current_pipeline(self) -> str:
        return self.pipeline_combo.currentData() or ""

    def current_form(self) -> ParamForm | None:
        return self.forms.get(self.current_pipeline())

    def select_pipeline(self, name: str) -> bool:
        index = self.pipeline_combo.findData(name)
        if index >= 0:
            self.pipeline_combo.setCurrentIndex(index)
        return index >= 0

    def _on_pipeline_changed(self, *_: Any) -> None:
        form = self.current_form()
        for page in self.forms.values():  # the stack takes the size of the shown form only
            policy = QtWidgets.QSizePolicy.Preferred if page is form else QtWidgets.QSizePolicy.Ignored
            page.setSizePolicy(policy, policy)
        self.stack.setCurrentWidget(form or self.placeholder)
        self.stack.adjustSize()
        self.description.setText(form.property("description") if form else "")
        self._update_actions()
        self._fit_form_width()
        self._fit_form()

    def _update_actions(self) -> None:
        form = self.current_form()
        self.generate_button.setEnabled(form is not None and self.can_generate())
        self.plate_button.setVisible(bool(form and form.has_field(PLATE_FIELD)))
        self.trajectory_button.setVisible(bool(form and form.has_field(TRAJECTORY_FIELD)))

    def can_generate(self) -> bool:
        return False
