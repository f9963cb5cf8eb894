"""A queue row's stage line as an artist reads it: the time left in s, min or h (a long video job said
"about 7385 s left", and a job about to end "about 0 s left")."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6", reason="the panel needs a Qt binding")

from cinegen.plugin.model.jobs import JobRecord  # noqa: E402
from cinegen.plugin.ui.queue_view import JobRow  # noqa: E402


@pytest.mark.parametrize("eta, shown", [(42.4, "denoise 3/30 · about 42 s left"), (600, "denoise 3/30 · about 10 min left"),
                                        (7385, "denoise 3/30 · about 2 h 03 min left"), (0.2, "denoise 3/30")])
def test_the_time_left_reads_in_seconds_minutes_or_hours(eta, shown):
    record = JobRecord("image-1", "image", state="running", stage="denoise 3/30", eta_seconds=eta)
    assert JobRow._stage_text(record) == shown


def test_a_failed_jobs_stage_line_is_red_not_the_muted_grey_of_the_others():
    from cinegen.plugin.qt import QtGui, QtWidgets, ensure_application
    from cinegen.plugin.ui.style import ERROR, apply_style

    app = ensure_application()
    panel = QtWidgets.QWidget()
    apply_style(panel)
    layout = QtWidgets.QVBoxLayout(panel)
    running = JobRow(JobRecord("image-1", "image", state="running", stage="denoise 3/30"))
    failed = JobRow(JobRecord("image-2", "image", state="running", stage="denoise 3/30"))
    layout.addWidget(running)
    layout.addWidget(failed)
    panel.show()
    failed.update_from(JobRecord("image-2", "image", state="failed", message="out of GPU memory"))
    app.processEvents()
    colour = failed.stage.palette().color(QtGui.QPalette.WindowText)
    assert colour == QtGui.QColor(ERROR) and running.stage.palette().color(QtGui.QPalette.WindowText) != colour
    panel.close()
    panel.deleteLater()


def test_rows_read_in_the_order_the_jobs_run_and_a_move_moves_the_row():
    """Listed newest first, the running job sank under every job queued after it and ▲ only changed a number."""
    from cinegen.plugin.qt import ensure_application
    from cinegen.plugin.ui.queue_view import QueueView

    ensure_application()
    view = QueueView()
    records = {n: JobRecord(f"image-{n}", "image") for n in range(5)}
    for record in records.values():
        view.show_record(record)  # submitting, in the order sent
    assert view.ordered_ids() == ["image-0", "image-1", "image-2", "image-3", "image-4"]
    for n, (state, position) in enumerate([("completed", 0), ("running", 0), ("queued", 1), ("queued", 2),
                                           ("queued", 3)]):
        records[n].state, records[n].queue_position = state, position
        view.show_record(records[n])
    assert view.ordered_ids() == ["image-1", "image-2", "image-3", "image-4", "image-0"]
    records[4].queue_position, records[2].queue_position = 1, 2  # ▲ on image-4, twice: the server's new order
    records[3].queue_position = 3
    for n in (4, 2, 3):
        view.show_record(records[n])
    assert view.ordered_ids() == ["image-1", "image-4", "image-2", "image-3", "image-0"]
    records[1].state = "completed"  # done: below the waiting ones, above the older finished job
    view.show_record(records[1])
    assert view.ordered_ids() == ["image-4", "image-2", "image-3", "image-1", "image-0"]
    view.deleteLater()
