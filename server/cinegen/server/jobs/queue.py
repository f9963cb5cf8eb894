"""The job queue: one GPU worker, an append-only event log per job, cancel and shutdown between steps.

Every event gets the next sequence number of its job and is kept (and journaled), so any number of
watchers read the same log (fan-out) and a watcher that reconnects with `after_seq` misses nothing.
Each job has its own condition (sharing the manager's lock), so an event wakes only that job's
watchers, not every open stream on the server.

Queue positions: a job hears its position when it is queued and again only when it moves up to one
of `POSITION_REPORTS` (1, 2, 3, 5, 10, ...): at most a dozen events per job whatever the queue
length, so n queued jobs cost O(n) events, not O(n²). ListJobs and the ticket give exact positions.
"""
from __future__ import annotations

import bisect
import errno
import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from cinegen.common.color import ColorConfigError
from cinegen.common.proto import generator_pb2 as pb

from ..errors import JobCancelled, UserError
from .executor import Executor
from .journal import Journal

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "cancelled")
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
POSITION_REPORTS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
SHUTDOWN_MESSAGE = ("The server is shutting down. The job stays queued and runs again (keeping the frames "
                    "already written) when the server restarts; watch it again then.")


@dataclass
class Job:
    id: str
    request: pb.JobRequest
    client: str = ""  # the owner's client key (peer host / client id): limits, downloads
    spec: Any = None  # the validated JobSpec; restored finished jobs never need one
    submitted: float = field(default_factory=time.time)
    state: str = "queued"
    fraction: float = 0.0
    outputs: list[str] = field(default_factory=list)
    events: list[pb.JobEvent] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None
    resume: bool = False  # restored after a restart: frames already written are kept, not rewritten
    reported_position: int = 0
    cond: threading.Condition | None = None  # set by the manager: watchers of this job wait on it

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0


class JobManager:
    def __init__(self, executor: Executor, *, journal: Journal | None = None, max_jobs_kept: int = 500,
                 restored: list[Job] | None = None):
        self._executor = executor
        self._journal = journal
        self._jobs: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._max_jobs_kept = max_jobs_kept
        self._stopping = False  # no new job starts; the running one stops at its next step
        self._closed = False  # every unfinished job has its shutdown event: watchers may end
        self._running: Job | None = None
        for job in restored or ():
            job.cond = threading.Condition(self._lock)
            self._jobs[job.id] = job
            if job.state == "queued":
                self._queue.append(job.id)
        self._worker = threading.Thread(target=self._work_loop, name="cinegen-gpu-worker", daemon=True)
        self._worker.start()

    # ---- public -------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stopping

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def submit(self, job: Job, admit: Callable[[int, int], None] | None = None) -> tuple[Job, int]:
        """Queue `job` and return it with its position, or return the job already known under its id.

        The id check, `admit(queued, queued_by_this_client)` (the queue limits; it may raise) and the
        insert happen under one lock: concurrent Submits of one id (a client retrying after a deadline)
        queue it once, and concurrent Submits never pass a queue limit together."""
        with self._lock:
            known = self._jobs.get(job.id)
            if known is not None:
                return known, self._position(known)
            if admit is not None:
                admit(len(self._queue), sum(1 for j in self._queue if self._jobs[j].client == job.client))
            job.cond = threading.Condition(self._lock)
            self._jobs[job.id] = job
            if self._journal:
                self._journal.add_job(job.id, job.client, job.request.SerializeToString(), job.state, job.submitted)
            self._queue.append(job.id)
            position = len(self._queue)
            job.reported_position = position
            self._emit(job, queued=pb.Queued(position=position))
            self._forget_old_jobs()
            self._work.notify_all()
            return job, position

    def queue_position(self, job: Job) -> int:
        with self._lock:
            return self._position(job)

    def queued_count(self, client: str | None = None) -> int:
        with self._lock:
            return sum(1 for j in self._queue if client is None or self._jobs[j].client == client)

    def move(self, job_id: str, position: int) -> tuple[int, list[str]]:
        """Put a queued job at `position` among the queued (0 = next); returns (its new position, the queue).

        The position is -1 when the job is not queued (running or finished jobs stay where they are).
        Every job whose place changed hears its new position."""
        with self._lock:
            if job_id not in self._queue:
                return -1, list(self._queue)
            before = list(self._queue)
            self._queue.remove(job_id)
            self._queue.insert(min(position, len(self._queue)), job_id)
            if self._journal:  # a restart keeps the new order
                self._journal.set_queue_order(list(self._queue))
            for index, other_id in enumerate(self._queue):
                if index >= len(before) or before[index] != other_id:
                    other = self._jobs[other_id]
                    other.reported_position = index + 1
                    self._emit(other, queued=pb.Queued(position=index + 1))
            return self._queue.index(job_id), list(self._queue)

    def cancel(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.done:
                return job
            job.cancel_requested.set()
            if job.state == "queued":
                self._queue.remove(job.id)
                self._finish(job, "cancelled", cancelled=pb.Cancelled(reason="cancelled before it started"))
            return job

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def watch(self, job_id: str, after_seq: int, is_active: Callable[[], bool] = lambda: True,
              poll: float = 1.0) -> Iterator[pb.JobEvent]:
        """Events after `after_seq`, live, until the job ends, the server stops or the watcher goes away."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            index = bisect.bisect_right([e.seq for e in job.events], after_seq)
        assert job.cond is not None
        while True:
            with job.cond:
                while index >= len(job.events) and not job.done and not self._closed and is_active():
                    job.cond.wait(poll)
                batch = job.events[index:]
                finished = job.done or self._closed
            yield from batch
            index += len(batch)
            if (finished and index >= len(job.events)) or not is_active():
                return

    def emit(self, job: Job, **kind: Any) -> None:
        with self._lock:
            self._emit(job, **kind)

    def stop(self, timeout: float = 30.0) -> None:
        """Take no more jobs; the running one stops at its next step and stays queued in the journal.

        Every watcher gets a terminal `failed` event with code UNAVAILABLE that says so."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._work.notify_all()
            running = self._running
        if running is not None:
            self._worker.join(timeout)  # the worker sees `stopping` at the next step boundary
        with self._lock:
            for job in self._jobs.values():
                if not job.done:
                    self._emit_shutdown(job)
            self._closed = True
            for job in self._jobs.values():
                assert job.cond is not None
                job.cond.notify_all()

    # ---- internals ----------------------------------------------------------------------
    def _position(self, job: Job) -> int:
        if job.state == "running":
            return 0
        try:
            return self._queue.index(job.id) + 1
        except ValueError:
            return -1

    def _emit(self, job: Job, **kind: Any) -> pb.JobEvent:
        event = pb.JobEvent(job_id=job.id, seq=job.last_seq + 1, time=time.time(), **kind)
        job.events.append(event)
        if "progress" in kind:
            job.fraction = kind["progress"].fraction
        if "frame_written" in kind and kind["frame_written"].path not in job.outputs:
            job.outputs.append(kind["frame_written"].path)  # an output from now on: its owner may download it
        if self._journal:
            self._journal.add_event(job.id, event.seq, _for_journal(event).SerializeToString())
        assert job.cond is not None
        job.cond.notify_all()
        return event

    def _emit_shutdown(self, job: Job) -> None:
        """Live watchers end with UNAVAILABLE; the journal keeps a log line at that seq, so that after the
        restart the job's history goes on (a replay must not end at a shutdown that did not end the job)."""
        event = pb.JobEvent(job_id=job.id, seq=job.last_seq + 1, time=time.time(),
                            failed=pb.Failed(code="UNAVAILABLE", message=SHUTDOWN_MESSAGE))
        job.events.append(event)
        if self._journal:
            note = pb.JobEvent(job_id=job.id, seq=event.seq, time=event.time,
                               log=pb.Log(level="warning", message="the server stopped; the job stays queued"))
            self._journal.add_event(job.id, event.seq, note.SerializeToString())

    def _set_state(self, job: Job, state: str) -> None:
        job.state = state
        if self._journal:
            self._journal.set_state(job.id, state, job.fraction)

    def _finish(self, job: Job, state: str, **kind: Any) -> None:
        if state == "completed":
            job.fraction = 1.0
        self._set_state(job, state)
        if self._journal:
            self._journal.set_outputs(job.id, job.outputs)
        self._emit(job, **kind)

    def _forget_old_jobs(self) -> None:
        finished = [j for j in self._jobs.values() if j.done]
        old = sorted(finished, key=lambda j: j.submitted)[: max(0, len(self._jobs) - self._max_jobs_kept)]
        for job in old:
            del self._jobs[job.id]
        if old and self._journal:
            self._journal.forget([j.id for j in old])

    def _next_job(self) -> Job | None:
        with self._lock:
            while not self._queue and not self._stopping:
                self._work.wait()
            if self._stopping:
                return None
            job = self._jobs[self._queue.popleft()]
            job.started_at = time.time()
            self._set_state(job, "running")
            self._running = job
            for position, other_id in enumerate(self._queue, start=1):
                other = self._jobs[other_id]
                if position in POSITION_REPORTS and position < other.reported_position:
                    other.reported_position = position
                    self._emit(other, queued=pb.Queued(position=position))
            return job

    def _work_loop(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            try:
                outputs = self._executor.run(job, self)
                with self._lock:
                    job.outputs = outputs
                    self._finish(job, "completed", completed=pb.Completed(
                        outputs=outputs, summary=f"{len(outputs)} file(s) written"))
            except JobCancelled:
                with self._lock:
                    if self._stopping and not job.cancel_requested.is_set():
                        self._requeue_for_restart(job)
                        return
                    self._finish(job, "cancelled", cancelled=pb.Cancelled(reason="cancelled while running"))
            except UserError as exc:
                with self._lock:
                    self._finish(job, "failed", failed=pb.Failed(code=exc.code, message=exc.message))
            except Exception as exc:  # the worker must survive any pipeline bug
                log.error("job %s failed:\n%s", job.id, traceback.format_exc())
                code, message = _describe_crash(exc)
                with self._lock:
                    self._finish(job, "failed", failed=pb.Failed(code=code, message=message))
            finally:
                with self._lock:
                    self._running = None

    def _requeue_for_restart(self, job: Job) -> None:
        job.resume = True
        self._set_state(job, "queued")
        if self._journal:
            self._journal.set_outputs(job.id, job.outputs)

    def is_stopping_or_cancelled(self, job: Job) -> bool:
        """The pipeline's step-boundary check: a cancel of this job, or a server shutdown."""
        return job.cancel_requested.is_set() or self._stopping


def _for_journal(event: pb.JobEvent) -> pb.JobEvent:
    """Previews are for the eye while a job runs: the journal keeps their place (seq) but not their PNG."""
    if event.WhichOneof("kind") != "preview":
        return event
    slim = pb.JobEvent()
    slim.CopyFrom(event)
    slim.preview.png = b""
    return slim


def _describe_crash(exc: Exception) -> tuple[str, str]:
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:  # a cut, a keyframe, a converted plate: not a bug
        where = f" ({exc.filename})" if exc.filename else ""
        return ("RESOURCE_EXHAUSTED", f"A disk the job writes to is full{where}. Free space there or choose "
                "another output folder, then submit again.")
    if isinstance(exc, ColorConfigError):  # the server's $OCIO, found lacking mid-job: its sentence says the fix
        return ("FAILED_PRECONDITION", text)
    if "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
        return ("RESOURCE_EXHAUSTED", "The GPU ran out of memory. Lower the width/height or frames, "
                "use a smaller VAE tile, or close other programs using the GPU, then try again.")
    return ("INTERNAL", f"The server hit an unexpected error ({type(exc).__name__}: {text}). "
            "The job stopped; the server log has the details. Please report it with the job id.")
