"""What the Blender panel knows between redraws: the connection, the pipelines, the queue of jobs.

Queued jobs run on worker threads (`run_job`: upload, submit, watch with resume, download); their
updates go through a queue per job that one `bpy.app.timers` function (`drain`) empties on
Blender's main thread, where the scene is changed and results are loaded: the UI never waits on
the network. Headless (`blender -b`), timers do not run while a script runs, so a job runs to its
end on the calling thread and prints its progress on stdout.
"""
from __future__ import annotations

import os
import queue
import sys
import tempfile
import threading
import traceback
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from cinegen.common.client import GeneratorClient
from cinegen.common.connection import ConnectionSettings, check_protocol
from cinegen.common.proto import generator_pb2 as pb
from cinegen.plugin.backend.errors import describe_error
from cinegen.plugin.backend.job_runner import JobCallbacks, JobDraft, JobOutcome, run_job
from cinegen.plugin.model.history import History
from cinegen.plugin.model.jobs import JobRecord

from . import forms as forms_mod

DRAIN_INTERVAL = 0.2  # seconds between timer runs while a job is active
QUEUE_KEEP = 8  # finished jobs kept in the queue view
DEFAULT_PIPELINE = "image"  # every server and this plugin's own descriptions have it


@dataclass
class BlenderJob:
    draft: JobDraft
    record: JobRecord
    on_done: Callable[["BlenderJob"], None] | None = None
    updates: "queue.Queue[tuple[str, Any]]" = field(default_factory=queue.Queue)
    claimed_folder: str = ""  # the version folder made for it (given back if nothing is written)
    outcome: JobOutcome | None = None
    error: str = ""
    finished: bool = False  # results loaded (or the failure reported) on the main thread
    loaded: list = field(default_factory=list)  # what finishing put in the scene (node / strip per sequence)
    preview_shown: bytes = field(default=b"", repr=False)

    @property
    def job_id(self) -> str:
        return self.record.job_id


@dataclass
class Runtime:
    settings: ConnectionSettings = field(default_factory=ConnectionSettings)
    client: GeneratorClient | None = None
    capabilities: pb.Capabilities | None = None
    forms: list[forms_mod.PipelineForm] = field(default_factory=list)
    forms_origin: str = ""
    jobs: dict[str, BlenderJob] = field(default_factory=dict)  # newest first
    pipeline_items: list[tuple[str, str, str]] = field(default_factory=list)  # kept alive for Blender's enum
    history: History | None = None
    previews: Any = None  # a bpy.utils.previews collection, one icon per job
    echo: TextIO | None = None  # headless: progress lines go here
    on_change: Callable[[], None] | None = None  # redraw after an update
    token: str | None = None  # the access token (None: not read from the user's settings yet)
    saved: ConnectionSettings | None = None  # the user's settings as the last Connect saved them (None: not read)


STATE = Runtime()


def set_forms(forms: list[forms_mod.PipelineForm], origin: str) -> None:
    from . import options

    STATE.forms, STATE.forms_origin = forms, origin
    STATE.pipeline_items = [(f.name, f.name, f.description, "NONE", pipeline_number(f.name)) for f in forms]
    options.install(forms)


def pipeline_number(name: str) -> int:
    """The number Blender stores for a pipeline menu choice.

    Fixed by the name, so a saved scene stays on its pipeline when another server lists the pipelines
    in another order; also the menu's default (a new scene's 0 would match no pipeline at all)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def form_of(name: str) -> forms_mod.PipelineForm | None:
    return next((f for f in STATE.forms if f.name == name), None)


def saved_settings() -> ConnectionSettings:
    """The connection settings the last Connect saved for this user (read once, then kept up to date)."""
    if STATE.saved is None:
        STATE.saved = ConnectionSettings.load()
    return STATE.saved


def token() -> str:
    """The access token the panel shows: this session's, else the one saved with the connection settings."""
    if STATE.token is None:
        STATE.token = saved_settings().token
    return STATE.token


def set_token(value: str) -> None:
    STATE.token = value.strip()


def history() -> History:
    if STATE.history is None:
        STATE.history = History()
    return STATE.history


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
    forms_mod.save_cached(capabilities)
    set_forms(forms_mod.forms_from(capabilities), f"cinegen {capabilities.server_version} at {settings.address}")
    return capabilities


def stop_timer() -> None:
    import bpy

    if bpy.app.timers.is_registered(drain):
        bpy.app.timers.unregister(drain)


def disconnect() -> None:
    if STATE.client is not None:
        STATE.client.close()
    STATE.client, STATE.capabilities = None, None


# ---- running jobs ---------------------------------------------------------------------------------
def run_blocking(job: BlenderJob) -> JobOutcome:
    """Run to the end on this thread (headless and farm use); every update is applied at once."""
    assert STATE.client is not None
    _remember(job)
    outcome = run_job(STATE.client, job.draft, shared_disk=STATE.settings.shared_disk,
                      callbacks=_callbacks(job, direct=True))
    job.outcome = outcome
    return outcome


def start_background(job: BlenderJob) -> None:
    """Queue the job on a worker thread; `drain` applies its updates and finishes it on the main thread."""
    assert STATE.client is not None
    client, settings = STATE.client, STATE.settings
    _remember(job)

    def work() -> None:
        try:
            job.updates.put(("outcome", run_job(client, job.draft, shared_disk=settings.shared_disk,
                                                callbacks=_callbacks(job, direct=False))))
        except Exception as exc:  # refused or unreachable: a sentence for the panel
            job.updates.put(("error", describe_error(exc, settings)))

    threading.Thread(target=work, name=f"cinegen-{job.job_id}", daemon=True).start()
    start_timer()


def start_timer() -> None:
    """Follow the unfinished jobs; also after the add-on is enabled again (Reload Scripts) while one runs."""
    import bpy

    if active_jobs() and not bpy.app.timers.is_registered(drain):
        # persistent: a job started before File > Open still finishes (into the scene now open)
        bpy.app.timers.register(drain, first_interval=DRAIN_INTERVAL, persistent=True)


def drain() -> float | None:
    """The timer: apply every job's updates; load the finished ones. Stops itself when all are done."""
    for job in list(STATE.jobs.values()):
        if job.finished:
            continue
        if _apply_updates(job):
            job.finished = True
            if job.on_done is not None:
                try:
                    job.on_done(job)
                except Exception as exc:  # Blender drops a timer that raises: every other job would stall
                    traceback.print_exc()
                    job.record.state, job.record.message = "failed", f"Loading the results failed: {exc}"
        show_preview(job)
    if STATE.on_change is not None:
        STATE.on_change()
    return DRAIN_INTERVAL if active_jobs() else None


def active_jobs() -> list[BlenderJob]:
    return [job for job in STATE.jobs.values() if not job.finished]


def cancel(job_id: str) -> None:
    """Ask the server to cancel, on a worker thread: a call to an unreachable host would hold Blender's UI
    for the whole call time-out. A refusal shows in the job's progress line."""
    job, client, settings = STATE.jobs.get(job_id), STATE.client, STATE.settings
    if job is not None:
        job.record.cancel_requested = True
    if client is None:
        return

    def work() -> None:
        try:
            client.cancel(job_id)
        except Exception as exc:  # gone, or the job is unknown there: say so where the artist looks
            sentence = f"cancel failed: {describe_error(exc, settings)}"
            if job is not None:
                job.updates.put(("stage", sentence))
            else:
                print(f"cinegen: {job_id} {sentence}", file=sys.stderr)
    threading.Thread(target=work, name=f"cinegen-cancel-{job_id}", daemon=True).start()


def clear_finished() -> None:
    STATE.jobs = {k: j for k, j in STATE.jobs.items() if not j.finished}


def _remember(job: BlenderJob) -> None:
    STATE.jobs = {job.job_id: job, **STATE.jobs}
    finished = [k for k, j in STATE.jobs.items() if j.finished]
    for key in finished[QUEUE_KEEP:]:
        del STATE.jobs[key]


def _echo(job: BlenderJob) -> None:
    if STATE.echo is not None:
        record = job.record
        STATE.echo.write(f"cinegen: {record.job_id} {record.state} {record.fraction:4.0%} {record.stage}\n")
        STATE.echo.flush()


def _callbacks(job: BlenderJob, *, direct: bool) -> JobCallbacks:
    if direct:
        def on_event(event: pb.JobEvent) -> None:
            stage = job.record.stage
            job.record.apply(event)
            if job.record.stage != stage:  # one line per change, not per event
                _echo(job)

        def on_transfer(state: str, stage: str) -> None:
            job.record.set_transfer(state, stage)
            _echo(job)

        def on_reconnect(after_seq: int, delay: float) -> None:
            _reconnecting(job.record, after_seq, delay)
            _echo(job)
        return JobCallbacks(on_event=on_event, on_transfer=on_transfer, on_reconnect=on_reconnect)
    return JobCallbacks(on_event=lambda event: job.updates.put(("event", event)),
                        on_transfer=lambda state, stage: job.updates.put(("transfer", (state, stage))),
                        on_reconnect=lambda after_seq, delay: job.updates.put(("reconnect", (after_seq, delay))))


def _reconnecting(record: JobRecord, after_seq: int, delay: float) -> None:
    """The watch lost the server and tries again (per the back-off policy): say so, not the last progress."""
    record.reconnects += 1
    record.stage = f"connection lost: resuming after event {after_seq} in {delay:.1f} s"


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
        elif kind == "reconnect":
            _reconnecting(job.record, *value)
        elif kind == "stage":
            job.record.stage = value
        elif kind == "outcome":
            job.outcome = value
        elif kind == "error":
            job.error = value


# ---- live preview ---------------------------------------------------------------------------------
def preview_folder() -> str:
    folder = os.path.join(tempfile.gettempdir(), f"cinegen-previews-{os.getpid()}")
    os.makedirs(folder, exist_ok=True)
    return folder


def show_preview(job: BlenderJob) -> Any:
    """Load the job's newest preview PNG into the previews collection (an icon the panel draws)."""
    png = job.record.preview_png
    if STATE.previews is None or not png or png is job.preview_shown:
        return None
    path = os.path.join(preview_folder(), f"{job.job_id}.png")
    with open(path, "wb") as handle:
        handle.write(png)
    job.preview_shown = png
    if job.job_id in STATE.previews:
        del STATE.previews[job.job_id]  # the collection refuses a second load under one name
    return STATE.previews.load(job.job_id, path, "IMAGE", force_reload=True)


def preview_icon(job_id: str) -> int:
    if STATE.previews is None or job_id not in STATE.previews:
        return 0
    return STATE.previews[job_id].icon_id


def open_previews() -> None:
    import bpy.utils.previews

    if STATE.previews is None:
        STATE.previews = bpy.utils.previews.new()


def close_previews() -> None:
    import bpy.utils.previews

    if STATE.previews is not None:
        bpy.utils.previews.remove(STATE.previews)
        STATE.previews = None


def echo_to_stdout(enabled: bool) -> None:
    STATE.echo = sys.stdout if enabled else None
