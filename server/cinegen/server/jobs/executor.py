"""Executors: what runs one job to its outputs. The queue knows only this interface.

`run(job, events)` returns the job's output paths, raises `JobCancelled` when it stopped between
steps (cancel or shutdown), a `UserError` for a problem the artist can fix, anything else for a bug.
It reports through `events.emit(job, kind=message)` from any thread. An executor that runs jobs
elsewhere (another process, a cluster) implements the same method and forwards the events.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from .queue import Job


class EventSink(Protocol):
    def emit(self, job: "Job", **kind: Any) -> None: ...


class Executor(Protocol):
    def run(self, job: "Job", events: EventSink) -> list[str]: ...


class InProcessExecutor:
    """Runs the job in the calling (GPU worker) thread with a plain function."""

    def __init__(self, runner: Callable[["Job", EventSink], list[str]]):
        self._runner = runner

    def run(self, job: "Job", events: EventSink) -> list[str]:
        return self._runner(job, events)
