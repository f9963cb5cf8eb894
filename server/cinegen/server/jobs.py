"""Jobs: a queue with one GPU worker, an append-only event log per job, cancel between steps.

Every event gets the next sequence number of its job and is kept, so any number of watchers read
the same log (fan-out) and a watcher that reconnects with `after_seq` misses nothing.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

from cinegen.common.proto import generator_pb2 as pb

from .errors import JobCancelled, UserError
from .pipelines.base import JobSpec

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Job:
    spec: JobSpec
    request: pb.JobRequest
    submitted: float = field(default_factory=time.time)
    state: str = "queued"
    fraction: float = 0.0
    outputs: list[str] = field(default_factory=list)
    events: list[pb.JobEvent] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None

    @property
    def id(self) -> str:
        return self.spec.job_id

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


Runner = Callable[[Job, "JobManager"], list[str]]


class JobManager:
    def __init__(self, runner: Runner, *, max_jobs_kept: int = 500):
        self._runner = runner
        self._jobs: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._cond = threading.Condition()
        self._max_jobs_kept = max_jobs_kept
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="cinegen-gpu-worker", daemon=True)
        self._worker.start()

    # ---- public -------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def submit(self, job: Job) -> tuple[Job, int]:
        with self._cond:
            self._jobs[job.id] = job
            self._queue.append(job.id)
            position = len(self._queue)
            self._emit(job, queued=pb.Queued(position=position))
            self._forget_old_jobs()
            self._cond.notify_all()
            return job, position

    def queue_position(self, job: Job) -> int:
        with self._cond:
            if job.state == "running":
                return 0
            try:
                return list(self._queue).index(job.id) + 1
            except ValueError:
                return -1

    def cancel(self, job_id: str) -> Job | None:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.done:
                return job
            job.cancel_requested.set()
            if job.state == "queued":
                self._queue.remove(job.id)
                self._finish(job, "cancelled", cancelled=pb.Cancelled(reason="cancelled before it started"))
            return job

    def jobs(self) -> list[Job]:
        with self._cond:
            return list(self._jobs.values())

    def watch(self, job_id: str, after_seq: int, is_active: Callable[[], bool] = lambda: True,
              poll: float = 0.5) -> Iterator[pb.JobEvent]:
        """Events after `after_seq`, live, until the job ends (or the watcher goes away)."""
        next_index = max(0, after_seq)  # seq n lives at index n-1
        while True:
            with self._cond:
                job = self._jobs[job_id]
                while next_index >= len(job.events) and not job.done and is_active() and not self._stopping:
                    self._cond.wait(poll)
                batch = job.events[next_index:]
                finished = job.done or self._stopping
            for event in batch:
                yield event
            next_index += len(batch)
            if (finished and next_index >= len(job.events)) or not is_active():
                return

    def emit(self, job: Job, **kind) -> None:
        with self._cond:
            self._emit(job, **kind)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for job in self._jobs.values():
                job.cancel_requested.set()
            self._cond.notify_all()

    # ---- internals ----------------------------------------------------------------------
    def _emit(self, job: Job, **kind) -> pb.JobEvent:
        event = pb.JobEvent(job_id=job.id, seq=len(job.events) + 1, time=time.time(), **kind)
        job.events.append(event)
        if "progress" in kind:
            job.fraction = kind["progress"].fraction
        self._cond.notify_all()
        return event

    def _finish(self, job: Job, state: str, **kind) -> None:
        job.state = state
        if state == "completed":
            job.fraction = 1.0
        self._emit(job, **kind)

    def _forget_old_jobs(self) -> None:
        finished = [j for j in self._jobs.values() if j.done]
        for job in sorted(finished, key=lambda j: j.submitted)[: max(0, len(self._jobs) - self._max_jobs_kept)]:
            del self._jobs[job.id]

    def _next_job(self) -> Job | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            job = self._jobs[self._queue.popleft()]
            job.state = "running"
            job.started_at = time.time()
            # the others moved up one place
            for position, other in enumerate(self._queue, start=1):
                self._emit(self._jobs[other], queued=pb.Queued(position=position))
            return job

    def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            try:
                outputs = self._runner(job, self)
                with self._cond:
                    job.outputs = outputs
                    self._finish(job, "completed", completed=pb.Completed(
                        outputs=outputs, summary=f"{len(outputs)} file(s) written"))
            except JobCancelled:
                with self._cond:
                    self._finish(job, "cancelled", cancelled=pb.Cancelled(reason="cancelled while running"))
            except UserError as exc:
                with self._cond:
                    self._finish(job, "failed", failed=pb.Failed(code=exc.code, message=exc.message))
            except Exception as exc:  # the worker must survive any pipeline bug
                log.error("job %s failed:\n%s", job.id, traceback.format_exc())
                code, message = _describe_crash(exc)
                with self._cond:
                    self._finish(job, "failed", failed=pb.Failed(code=code, message=message))


def _describe_crash(exc: Exception) -> tuple[str, str]:
    text = str(exc)
    if "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
        return ("RESOURCE_EXHAUSTED", "The GPU ran out of memory. Lower the width/height or frames, "
                "use a smaller VAE tile, or close other programs using the GPU, then try again.")
    return ("INTERNAL", f"The server hit an unexpected error ({type(exc).__name__}: {text}). "
            "The job stopped; the server log has the details. Please report it with the job id.")
