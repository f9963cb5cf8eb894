"""What the Blender panel knows between redraws: the connection, the capabilities, running jobs.

Jobs run on worker threads (`run_job`: upload, submit, watch with resume, download); their updates
go through a queue that a `bpy.app.timers` function drains on Blender's main thread, where the
scene properties are updated and results are loaded. Headless, a job runs to its end on the
calling thread instead.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from cinegen.common.client import GeneratorClient
from cinegen.common.connection import ConnectionSettings, check_protocol
from cinegen.common.proto import generator_pb2 as pb
from cinegen.plugin.backend.errors import describe_error
from cinegen.plugin.backend.job_runner import JobCallbacks, JobDraft, JobOutcome, run_job
from cinegen.plugin.model.forms import FieldSpec, pipeline_fields
from cinegen.plugin.model.jobs import JobRecord

DRAIN_INTERVAL = 0.2  # seconds between timer runs while a job is active


@dataclass
class BlenderJob:
    draft: JobDraft
    record: JobRecord
    updates: "queue.Queue[tuple[str, Any]]" = field(default_factory=queue.Queue)
    claimed_folder: str = ""  # the version folder made for it (given back if nothing is written)
    outcome: JobOutcome | None = None
    error: str = ""


@dataclass
class Runtime:
    settings: ConnectionSettings = field(default_factory=ConnectionSettings)
    client: GeneratorClient | None = None
    capabilities: pb.Capabilities | None = None
    jobs: dict[str, BlenderJob] = field(default_factory=dict)
    pipeline_items: list[tuple[str, str, str]] = field(default_factory=list)  # kept alive for Blender's enum


STATE = Runtime()


def connect(settings: ConnectionSettings) -> pb.Capabilities:
    """Connect (blocking, short) and keep the capabilities; raises with a sentence on failure."""
    disconnect()
    client = GeneratorClient.from_settings(settings)
    try:
        client.timeout = settings.connect_timeout
        capabilities = client.capabilities()  # fails fast, saying why (refused, TLS, token)
        client.timeout = settings.call_timeout
        check_protocol(capabilities.protocol_version, capabilities.server_version, settings.address)
    except Exception:
        client.close()
        raise
    STATE.settings, STATE.client, STATE.capabilities = settings, client, capabilities
    STATE.pipeline_items = [(p.name, p.name, p.description) for p in capabilities.pipelines]
    return capabilities


def disconnect() -> None:
    if STATE.client is not None:
        STATE.client.close()
    STATE.client, STATE.capabilities = None, None


def pipeline_info(name: str) -> pb.PipelineInfo | None:
    if STATE.capabilities is None:
        return None
    return next((p for p in STATE.capabilities.pipelines if p.name == name), None)


def fields_of(name: str) -> list[FieldSpec]:
    info = pipeline_info(name)
    return pipeline_fields(info) if info else []


def run_blocking(job: BlenderJob) -> JobOutcome:
    """Run to the end on this thread (headless and farm use); every update is applied at once."""
    assert STATE.client is not None
    STATE.jobs[job.record.job_id] = job
    outcome = run_job(STATE.client, job.draft, shared_disk=STATE.settings.shared_disk,
                      callbacks=_callbacks(job, direct=True))
    job.outcome = outcome
    return outcome


def start_background(job: BlenderJob, on_update: Callable[[BlenderJob], None],
                     on_done: Callable[[BlenderJob], None]) -> None:
    """Run on a worker thread; `on_update`/`on_done` are called on Blender's main thread by a timer."""
    import bpy

    assert STATE.client is not None
    client, settings = STATE.client, STATE.settings
    STATE.jobs[job.record.job_id] = job

    def work() -> None:
        try:
            job.updates.put(("outcome", run_job(client, job.draft, shared_disk=settings.shared_disk,
                                                callbacks=_callbacks(job, direct=False))))
        except Exception as exc:  # refused or unreachable: a sentence for the panel
            job.updates.put(("error", describe_error(exc, settings)))

    def drain() -> float | None:
        finished = _apply_updates(job)
        on_update(job)
        if finished:
            on_done(job)
            return None
        return DRAIN_INTERVAL

    threading.Thread(target=work, name=f"cinegen-{job.record.job_id}", daemon=True).start()
    bpy.app.timers.register(drain, first_interval=DRAIN_INTERVAL)


def cancel(job_id: str) -> None:
    if STATE.client is not None:
        STATE.client.cancel(job_id)
    job = STATE.jobs.get(job_id)
    if job is not None:
        job.record.cancel_requested = True


def _callbacks(job: BlenderJob, *, direct: bool) -> JobCallbacks:
    if direct:
        return JobCallbacks(on_event=job.record.apply, on_transfer=job.record.set_transfer)
    return JobCallbacks(on_event=lambda event: job.updates.put(("event", event)),
                        on_transfer=lambda state, stage: job.updates.put(("transfer", (state, stage))))


def _apply_updates(job: BlenderJob) -> bool:
    """Apply queued updates on the main thread; True once the job has an outcome or an error."""
    while True:
        try:
            kind, value = job.updates.get_nowait()
        except queue.Empty:
            return job.outcome is not None or bool(job.error)
        if kind == "event":
            job.record.apply(value)
        elif kind == "transfer":
            job.record.set_transfer(*value)
        elif kind == "outcome":
            job.outcome = value
        elif kind == "error":
            job.error = value
