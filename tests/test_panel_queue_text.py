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
