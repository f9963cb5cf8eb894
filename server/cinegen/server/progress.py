"""Progress of one job on the terminal, or as plain log lines when the output is not a terminal.

On a terminal a bar redraws in place (stage, step/total, percentage, ETA). In CI, a farm log or
`| tee`, carriage-return redraws would pile up into one endless line, so there the same events
print one line when a stage starts and about every 10 % of the job.
"""
from __future__ import annotations

import sys
from typing import TextIO


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class ProgressBar:
    """Turns a job's events into a progress display on `stream` (stderr by default)."""

    def __init__(self, label: str, stream: TextIO | None = None, *, interactive: bool | None = None,
                 line_every: float = 0.10):
        self.label = label
        self.stream = stream or sys.stderr
        self.interactive = _is_terminal(self.stream) if interactive is None else interactive
        self.line_every = line_every
        self._last_stage: str | None = None
        self._last_fraction = -1.0
        self.bar = None
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, desc=label, unit="‰", file=self.stream, dynamic_ncols=True,
                            bar_format="{desc} {bar} {percentage:3.0f}% {postfix}")

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def __call__(self, event) -> None:
        kind = event.WhichOneof("kind")
        if kind == "progress":
            self._progress(event.progress)
        elif kind == "frame_written":
            self._line(f"  wrote {event.frame_written.path}")
        elif kind == "queued" and event.queued.position > 1:
            if self.bar is not None:
                self.bar.set_postfix_str(f"queued #{event.queued.position}")
            else:
                self._line(f"{self.label}: queued #{event.queued.position}")
        elif kind == "log":
            self._line(f"  {event.log.message}")

    def _progress(self, p) -> None:
        eta = f"ETA {p.eta_seconds:4.0f}s" if p.eta_seconds >= 0 else "ETA  --"
        if self.bar is not None:
            self.bar.n = int(p.fraction * 1000)
            self.bar.set_postfix_str(f"{p.stage} {p.step}/{p.total} {eta}", refresh=False)
            self.bar.refresh()
            return
        # Plain log: a line per new stage and per `line_every` of the job, never one per redraw.
        new_stage = p.stage != self._last_stage
        if new_stage or p.fraction >= self._last_fraction + self.line_every or (p.fraction >= 1.0 > self._last_fraction):
            self._last_stage = p.stage
            self._last_fraction = p.fraction
            self._line(f"{self.label}: {p.fraction * 100:3.0f}% {p.stage} {p.step}/{p.total} {eta.strip()}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
