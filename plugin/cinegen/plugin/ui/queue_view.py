"""The queue: one row per job with its live preview, progress bar, stage text, cancel and, while it waits,
move up / move down (the server's Reorder). Rows never get wider than the list: text is elided to the
row's width, so nothing is cut off once the scroll bar appears.

Rows read in the order the jobs run: the running job on top, then the waiting ones by their place in the
server's queue (so ▲ moves a row up), then those being sent, then finished jobs, newest first. Listed
newest first, the running job sank under every job queued after it, and ▲ only changed a number."""
from __future__ import annotations

from ..model.jobs import JobRecord
from ..qt import QtCore, QtGui, QtWidgets, Signal

THUMBNAIL = 56


class ElidedLabel(QtWidgets.QLabel):
    """One line of text shortened with "…" to whatever width the layout gives it (never asks for more)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self._full = ""
        self.setSizePolicy(QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Preferred)
        self.setMinimumWidth(1)

    def set_full_text(self, text: str) -> None:
        self._full = text
        self._elide()

    def full_text(self) -> str:
        return self._full

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        self.setText(self.fontMetrics().elidedText(self._full, QtCore.Qt.ElideRight, max(self.width(), 1)))


class JobRow(QtWidgets.QFrame):
    cancel_requested = Signal(str)
    move_requested = Signal(str, int)  # job id, -1 = up (sooner), +1 = down

    def __init__(self, record: JobRecord, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.job_id = record.job_id
        self.setObjectName("jobRow")
        self.thumbnail = QtWidgets.QLabel()
        self.thumbnail.setObjectName("thumbnail")
        self.thumbnail.setFixedSize(THUMBNAIL, THUMBNAIL)
        self.thumbnail.setAlignment(QtCore.Qt.AlignCenter)
        self.thumbnail.setText(record.pipeline)  # until the first preview arrives
        self.title = ElidedLabel()
        self.title.setObjectName("jobTitle")
        self.prompt = ElidedLabel()
        self.prompt.setObjectName("jobPrompt")
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFixedHeight(14)
        self.progress.setMinimumWidth(1)
        self.progress.setSizePolicy(QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Fixed)
        self.stage = ElidedLabel()
        self.stage.setObjectName("jobStage")
        self.up = QtWidgets.QToolButton()
        self.up.setText("▲")
        self.up.setObjectName("moveUp")
        self.up.setToolTip("Run this job sooner (move it up the server's queue).")
        self.up.clicked.connect(lambda: self.move_requested.emit(self.job_id, -1))
        self.down = QtWidgets.QToolButton()
        self.down.setText("▼")
        self.down.setObjectName("moveDown")
        self.down.setToolTip("Run this job later (move it down the server's queue).")
        self.down.clicked.connect(lambda: self.move_requested.emit(self.job_id, 1))
        self.cancel = QtWidgets.QToolButton()
        self.cancel.setText("✕")
        self.cancel.setObjectName("cancelButton")
        self.cancel.setToolTip("Cancel this job (it stops between denoising steps).")
        self.cancel.clicked.connect(lambda: self.cancel_requested.emit(self.job_id))

        text = QtWidgets.QVBoxLayout()
        text.setSpacing(1)
        header = QtWidgets.QHBoxLayout()
        header.addWidget(self.title, 1)
        header.addWidget(self.up)
        header.addWidget(self.down)
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
        self.title.set_full_text(record.title)
        self.prompt.set_full_text(record.prompt.replace("\n", " ").strip() or "(no prompt)")
        self.prompt.setToolTip(record.prompt)
        waiting = record.state == "queued" and not record.cancel_requested
        self.up.setVisible(waiting)
        self.down.setVisible(waiting)
        self.up.setEnabled(waiting and record.queue_position > 1)  # already next: nowhere to go
        self.progress.setValue(int(round(record.fraction * 1000)))
        self.progress.setFormat(f"{record.fraction * 100:.0f}%")
        for widget in (self.progress, self.stage):  # the style sheet colours them by state (a failure in red)
            if widget.property("state") != record.state:
                widget.setProperty("state", record.state)
                widget.style().unpolish(widget)
                widget.style().polish(widget)
        self.stage.set_full_text(self._stage_text(record))
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
        if record.state == "running" and record.eta_seconds >= 0.5:
            text += f" · about {time_left(record.eta_seconds)} left"
        if record.cancel_requested and not record.done:
            text += " · cancelling…"
        return text

    def thumbnail_pixmap(self) -> QtGui.QPixmap | None:
        pixmap = self.thumbnail.pixmap()
        return pixmap if pixmap is not None and not pixmap.isNull() else None


def time_left(seconds: float) -> str:
    """A duration as an artist reads it: "40 s", "12 min", "2 h 05 min" (a long video job said "7385 s")."""
    seconds = round(seconds)
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


_RUN_GROUP = {"running": 0, "downloading": 0, "queued": 1, "submitting": 2, "uploading": 2}


def _run_order(record: JobRecord, arrival: int) -> tuple[int, int, int]:
    if record.done:
        return 3, -arrival, 0  # finished: newest first
    group = _RUN_GROUP.get(record.state, 2)
    if group == 1:
        return 1, record.queue_position if record.queue_position > 0 else 1 << 30, arrival
    return group, arrival, 0  # running (several on a Ray cluster) and being sent: in the order they were sent


class QueueView(QtWidgets.QWidget):
    cancel_requested = Signal(str)
    move_requested = Signal(str, int)
    clear_requested = Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.rows: dict[str, JobRow] = {}
        self._records: dict[str, tuple[JobRecord, int]] = {}  # job id -> (its record, arrival number)
        self._arrivals = 0
        self.container = QtWidgets.QWidget()
        self.list = QtWidgets.QVBoxLayout(self.container)
        self.list.setContentsMargins(2, 2, 2, 2)
        self.list.setSpacing(4)
        self.empty = QtWidgets.QLabel("No jobs yet: fill in the prompt and press Generate.")
        self.empty.setObjectName("muted")
        self.empty.setAlignment(QtCore.Qt.AlignCenter)
        self.list.addWidget(self.empty)
        self.list.addStretch(1)
        self.scroll = scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarAlwaysOff)  # rows fit the width instead
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
            row.move_requested.connect(self.move_requested.emit)
            self.rows[record.job_id] = row
            self._arrivals += 1
            self.list.insertWidget(0, row)
            self.empty.hide()
        else:
            row.update_from(record)
        self._records[record.job_id] = (record, self._records.get(record.job_id, (record, self._arrivals))[1])
        self._arrange()
        return row

    def ordered_ids(self) -> list[str]:
        """Job ids top to bottom, as shown."""
        widgets = [self.list.itemAt(i).widget() for i in range(self.list.count())]
        return [w.job_id for w in widgets if isinstance(w, JobRow)]

    def _arrange(self) -> None:
        wanted = sorted(self.rows, key=lambda job_id: _run_order(*self._records[job_id]))
        if wanted == self.ordered_ids():
            return  # most events (progress) change nothing: no relayout
        for index, job_id in enumerate(wanted):
            self.list.removeWidget(self.rows[job_id])
            self.list.insertWidget(index, self.rows[job_id])

    def remove(self, job_id: str) -> None:
        row = self.rows.pop(job_id, None)
        self._records.pop(job_id, None)
        if row is not None:
            row.setParent(None)
            row.deleteLater()
        self.empty.setVisible(not self.rows)
