"""One job from start to end, blocking, no Qt: upload inputs, submit, watch (resuming), download.

Used on a worker thread by the Qt panel and by Blender's native panel; each step reports through
callbacks. The job id is chosen here, before submitting, so a submit retried after a dropped
connection is idempotent on the server and never queues the job twice.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from cinegen.common.client import GeneratorClient, ServerUnavailable
from cinegen.common.proto import generator_pb2 as pb

from .transfer import fetch_outputs, stage_inputs


@dataclass
class JobDraft:
    """A request ready to go, and what this machine needs to know about it."""
    request: pb.JobRequest  # with job_id and out set
    local_output: str = ""  # DIR/NAME.####.exr here; downloads land there when the disk is not shared
    upload_fields: tuple[tuple[str, str], ...] = ()  # (group, name) of path parameters naming local files
    source: str = ""  # the host's name for the input, to place the result next to it

    @property
    def job_id(self) -> str:
        return self.request.job_id


@dataclass
class JobOutcome:
    job_id: str
    state: str  # completed | failed | cancelled
    outputs: list[str] = field(default_factory=list)  # files on this machine
    message: str = ""
    code: str = ""


@dataclass
class JobCallbacks:
    on_submitted: Callable[[pb.JobTicket], None] = lambda ticket: None
    on_event: Callable[[pb.JobEvent], None] = lambda event: None
    on_transfer: Callable[[str, str], None] = lambda state, stage: None
    on_reconnect: Callable[[int, float], None] = lambda after_seq, delay: None


def submit_with_retry(client: GeneratorClient, request: pb.JobRequest) -> pb.JobTicket:
    """Submit; when the server is briefly unreachable, try again per the client's back-off policy."""
    delays = client.backoff.delays() if client.backoff else iter(())
    while True:
        try:
            return client.submit(request)
        except ServerUnavailable:
            wait = next(delays, None)
            if wait is None:
                raise
            time.sleep(wait)


def run_job(client: GeneratorClient, draft: JobDraft, *, shared_disk: bool = True,
            callbacks: JobCallbacks | None = None) -> JobOutcome:
    """Run one job to its end; raises ServerUnavailable / RequestRejected when it can't be run."""
    callbacks = callbacks or JobCallbacks()
    request = draft.request
    if not shared_disk and draft.upload_fields:
        stage_inputs(client, request, draft.upload_fields, callbacks.on_transfer)
    ticket = submit_with_retry(client, request)
    callbacks.on_submitted(ticket)
    outputs: list[str] = []
    for event in client.watch(ticket.job_id, 0, on_reconnect=callbacks.on_reconnect):
        callbacks.on_event(event)
        kind = event.WhichOneof("kind")
        if kind == "frame_written":
            outputs.append(event.frame_written.path)
        elif kind == "completed":
            outputs = list(event.completed.outputs) or outputs
            if not shared_disk:
                outputs = fetch_outputs(client, outputs, request.common.out, draft.local_output,
                                        callbacks.on_transfer)
            return JobOutcome(ticket.job_id, "completed", outputs)
        elif kind == "failed":
            return JobOutcome(ticket.job_id, "failed", [], event.failed.message, event.failed.code)
        elif kind == "cancelled":
            return JobOutcome(ticket.job_id, "cancelled", [], event.cancelled.reason)
    return JobOutcome(ticket.job_id, "failed", [], "The server closed the event stream before the job ended: "
                      "check the server is still running, then look for the job in its queue.", "UNAVAILABLE")
