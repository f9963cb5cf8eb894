"""The queue: one row per job with its live preview, progress bar, stage text and a cancel button."""
from __future__ import annotations

from ..model.jobs import JobRecord
from ..qt import QtCore, QtGui, QtWidgets, Signal

THUMBNAIL = 56


class JobRow(QtWidgets.QFrame):
    cancel_requested = Signal(str)

    def __init__(self, record: JobRecord, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.job_id = record.job_id
        self.setObjectName("jobRow")
        self.thumbnail = QtWidgets.QLabel()
        self.thumbnail.setObjectName("thumbnail")
        self.thumbnail.setFixedSize(THUMBNAIL, THUMBNAIL)
        self.thumbnail.setAlignment(QtCore.Qt.AlignCenter)
        self.thumbnail.setText(record.pipeline)  # until the first preview arrives
        self.title = QtWidgets.QLabel()
        self.title.setObjectName("jobTitle")
        self.prompt = QtWidgets.QLabel()
        self.prompt.setObjectName("jobPrompt")
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFixedHeight(14)
        self.stage = QtWidgets.QLabel()
        self.stage.setObjectName("jobStage")
        self.cancel = QtWidgets.QToolButton()
        self.cancel.setText("✕")
        self.cancel.setObjectName("cancelButton")
        self.cancel.setToolTip("Cancel this job (it stops between denoising steps).")
        self.cancel.clicked.connect(lambda: self.cancel_requested.emit(self.job_id))

        text = QtWidgets.QVBoxLayout()
        text.setSpacing(1)
        header = QtWidgets.QHBoxLayout()
        header.addWidget(self.title, 1)
        header.addWidget(self.cancel)
        text.addLayout(header)
        text.addWidget(self.prompt)
        text.addWidget(self.progress)
        text.addWidget(self.stage)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(6)
        layout.addWidget(self.thumbnail)
        layout.addLayout(text, 1)
        self._shown_preview = b""
        self.update_from(record)

    def update_from(self, record: JobRecord) -> None:
        self.title.setText(record.title)
        prompt = record.prompt.replace("\n", " ").strip() or "(no prompt)"
        self.prompt.setText(self.prompt.fontMetrics().elidedText(prompt, QtCore.Qt.ElideRight, 260))
        self.prompt.setToolTip(record.prompt)
        self.progress.setValue(int(round(record.fraction * 1000)))
        self.progress.setFormat(f"{record.fraction * 100:.0f}%")
        if self.progress.property("state") != record.state:
            self.progress.setProperty("state", record.state)
            self.progress.style().unpolish(self.progress)
            self.progress.style().polish(self.progress)
        self.stage.setText(self._stage_text(record))
        self.stage.setToolTip(record.message or record.stage)
        self.cancel.setVisible(not record.done)
        self.cancel.setEnabled(not record.cancel_requested)
        if record.preview_png and record.preview_png is not self._shown_preview:
            self._shown_preview = record.preview_png
            pixmap = QtGui.QPixmap()
            if pixmap.loadFromData(record.preview_png, "PNG"):
                self.thumbnail.setPixmap(pixmap.scaled(THUMBNAIL, THUMBNAIL, QtCore.Qt.KeepAspectRatio,
                                                       QtCore.Qt.SmoothTransformation))

    @staticmethod
    def _stage_text(record: JobRecord) -> str:
        if record.state == "failed":
            return f"failed: {record.message}" if record.message else "failed"
        if record.state == "cancelled":
            return "cancelled"
        text = record.stage or record.state
        if record.state == "running" and record.eta_seconds > 0:
            text += f" · about {record.eta_seconds:.0f} s left"
        if record.cancel_requested and not record.done:
            text += " · cancelling…"
        return text

    def thumbnail_pixmap(self) -> QtGui.QPixmap | None:
        pixmap = self.thumbnail.pixmap()
        return pixmap if pixmap is not None and not pixmap.isNull() else None


class QueueView(QtWidgets.QWidget):
    cancel_requested = Signal(str)
    clear_requested = Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.rows: dict[str, JobRow] = {}
        self.container = QtWidgets.QWidget()
        self.list = QtWidgets.QVBoxLayout(self.container)
        self.list.setContentsMargins(2, 2, 2, 2)
        self.list.setSpacing(4)
        self.empty = QtWidgets.QLabel("No jobs yet: fill in the prompt and press Generate.")
        self.empty.setObjectName("muted")
        self.empty.setAlignment(QtCore.Qt.AlignCenter)
        self.list.addWidget(self.empty)
        self.list.addStretch(1)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.container)
        clear = QtWidgets.QPushButton("Clear finished")
        clear.setToolTip("Remove finished, failed and cancelled jobs from this list (the history keeps them).")
        clear.clicked.connect(self.clear_requested.emit)
        footer = QtWidgets.QHBoxLayout()
        footer.addStretch(1)
        footer.addWidget(clear)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(scroll, 1)
        layout.addLayout(footer)

    def show_record(self, record: JobRecord) -> JobRow:
        row = self.rows.get(record.job_id)
        if row is None:
            row = JobRow(record)
            row.cancel_requested.connect(self.cancel_requested.emit)
            self.rows[record.job_id] = row
            self.list.insertWidget(0, row)  # newest on top
            self.empty.hide()
        else:
            row.update_from(record)
        return row

    def remove(self, job_id: str) -> None:
        row = self.rows.pop(job_id, None)
        if row is not None:
            row.setParent(None)
            row.deleteLater()
        self.empty.setVisible(not self.rows)
