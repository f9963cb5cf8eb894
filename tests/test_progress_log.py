"""Progress in a log (CI, farm, `| tee`): a line per stage and about every 10 %, never carriage-return redraws."""
from __future__ import annotations

import io

from cinegen.common.proto import generator_pb2 as pb
from cinegen.server.progress import ProgressBar


def _progress(stage: str, step: int, total: int, fraction: float) -> pb.JobEvent:
    return pb.JobEvent(progress=pb.Progress(stage=stage, step=step, total=total, fraction=fraction, eta_seconds=3))


def _run_two_stage_job(bar: ProgressBar) -> None:
    for stage, offset in (("stage 1/2 64x64", 0.0), ("stage 2/2 128x128", 0.5)):
        for step in range(1, 201):
            bar(_progress(stage, step, 200, offset + 0.5 * step / 200))
    bar.close()


def test_log_output_prints_a_line_per_stage_and_about_every_ten_percent():
    stream = io.StringIO()
    _run_two_stage_job(ProgressBar("upscale", stream, interactive=False))
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    # 10 % of 400 events: ~10 lines, plus the first line of each stage; never one per event.
    assert 10 <= len(lines) <= 14, lines
    assert any(line.startswith("upscale:") and "stage 2/2" in line for line in lines)
    assert lines[-1].startswith("upscale: 100%")


def test_a_stream_that_is_not_a_terminal_gets_log_lines():
    assert ProgressBar("image", io.StringIO()).interactive is False


def test_a_terminal_gets_a_redrawn_bar():
    stream = io.StringIO()
    _run_two_stage_job(ProgressBar("image", stream, interactive=True))
    assert "\r" in stream.getvalue()
