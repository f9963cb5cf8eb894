"""The queue as the panel sees it: one `JobRecord` per job, updated by the server's events.

Events carry a per-job sequence number; a record applies each number once, so a stream resumed
after a dropped connection (`Watch(after_seq)`) can neither repeat nor silently skip an event: a
repeat is counted and ignored, a hole is recorded in `gaps`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cinegen.common.proto import generator_pb2 as pb

ACTIVE_STATES = ("submitting", "uploading", "queued", "running", "downloading")
FINAL_STATES = ("completed", "failed", "cancelled")


@dataclass
class JobRecord:
    job_id: str
    pipeline: str
    prompt: str = ""
    seed: int | None = None
    model: str = ""
    state: str = "submitting"  # one of ACTIVE_STATES or FINAL_STATES
    fraction: float = 0.0
    stage: str = ""
    queue_position: int = 0
    eta_seconds: float = -1.0
    preview_png: bytes = field(default=b"", repr=False)
    preview_frame: int = -1
    frames_written: dict[int, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    message: str = ""
    last_seq: int = 0
    seqs: list[int] = field(default_factory=list)  # every sequence number applied, in order
    duplicates: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (after, next) where events went missing
    reconnects: int = 0
    cancel_requested: bool = False

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def title(self) -> str:
        seed = "" if self.seed is None else f" · seed {self.seed}"
        model = f" · {self.model}" if self.model else ""
        return f"{self.pipeline}{seed}{model}"

    def apply(self, event: pb.JobEvent) -> bool:
        """Apply one server event; False when it was already applied (a resumed stream's repeat)."""
        if event.seq and event.seq <= self.last_seq:
            self.duplicates += 1
            return False
        if event.seq and event.seq != self.last_seq + 1:
            self.gaps.append((self.last_seq, event.seq))
        if event.seq:
            self.last_seq = event.seq
            self.seqs.append(event.seq)
        kind = event.WhichOneof("kind")
        if kind == "queued":
            self.state, self.queue_position = "queued", event.queued.position
            self.stage = f"queued, position {event.queued.position}"
        elif kind == "started":
            self.state, self.model, self.seed = "running", event.started.model, event.started.seed
            self.stage = f"started on {event.started.device}" if event.started.device else "started"
        elif kind == "progress":
            p = event.progress
            self.state, self.fraction, self.eta_seconds = "running", p.fraction, p.eta_seconds
            self.stage = f"{p.stage} {p.step}/{p.total}" if p.total else p.stage
        elif kind == "preview":
            self.preview_png, self.preview_frame = bytes(event.preview.png), event.preview.frame
        elif kind == "frame_written":
            self.frames_written[event.frame_written.frame] = event.frame_written.path
        elif kind == "completed":
            self.state, self.fraction = "completed", 1.0
            self.outputs = list(event.completed.outputs)
            self.stage = event.completed.summary or "done"
        elif kind == "failed":
            self.state, self.message = "failed", event.failed.message
            self.stage = "failed"
        elif kind == "cancelled":
            self.state, self.stage = "cancelled", "cancelled"
            self.message = event.cancelled.reason
        return True

    def set_transfer(self, state: str, stage: str) -> None:
        """Upload or download progress on this machine (not a server event)."""
        self.state, self.stage = state, stage


class JobQueue:
    """The jobs of this panel, newest first."""

    def __init__(self) -> None:
        self._records: dict[str, JobRecord] = {}

    def add(self, record: JobRecord) -> JobRecord:
        self._records = {record.job_id: record, **self._records}
        return record

    def get(self, job_id: str) -> JobRecord | None:
        return self._records.get(job_id)

    def remove(self, job_id: str) -> None:
        self._records.pop(job_id, None)

    def records(self) -> list[JobRecord]:
        return list(self._records.values())

    def active(self) -> list[JobRecord]:
        return [r for r in self._records.values() if not r.done]

    def clear_finished(self) -> list[str]:
        gone = [job_id for job_id, r in self._records.items() if r.done]
        for job_id in gone:
            del self._records[job_id]
        return gone

    def __len__(self) -> int:
        return len(self._records)
