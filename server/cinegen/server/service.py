"""The gRPC `Generator` service: requests in, validated and bounded jobs to the queue, events out.

Every answer is OK or a named status with a sentence: user errors map to their code, and any other
exception while checking a request is reported as INVALID_ARGUMENT (with the traceback in the log),
never as UNKNOWN. Long-lived streams (Watch, Upload, Download) are counted against `--max-streams`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np
import torch

from cinegen.common.exr import CINEGEN_PREFIX, srgb_preview_png
from cinegen.common.params import (DISPLAY_TRANSFORMS, UNUSED_COMMON, CommonParams, ParamDescription, describe,
                                   from_proto, plain_help)
from cinegen.common.proto import generator_pb2 as pb
from cinegen.common.proto import generator_pb2_grpc as pb_grpc
from cinegen.common.sequence import SequencePattern, SequencePatternError, check_output_writable

from . import __version__
from .devices import resolve_device
from .documents import Origin, check_story, check_trajectory
from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, UserError
from .jobs import InProcessExecutor, Job, JobManager, Journal
from .jobs.queue import TERMINAL
from .jobs.state_lock import StateLock
from .limits import ASSUMED_SIDE, MAX_NAME_CHARS, MAX_PATH_CHARS, Limits, check_job, check_text, over
from .memory_check import check_fits, device_budget
from .models.job_models import JobModels
from .models.offload import normalise_mode
from .models.lora import MAX_LORAS, job_loras
from .models.registry import ModelRegistry
from .models.speedups import Speedups
from .named_values import apply_named_values
from .output.frames import frame_header
from .plate_colour import check_colour_config, check_plate_colorspace, converted_params, remove_converted
from .paths import PathPolicy, decode_utf8, prove_writable, read_request_file
from .pipelines import load_pipelines
from .pipelines.base import JobSpec, Pipeline, RunContext, recorded_params
from .pipelines.frame_range import check_frame_range, parse_frame_range

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
CHUNK = 1 << 20  # 1 MiB: far below gRPC's 4 MB default message limit
PREVIEW_INTERVAL = 0.5  # seconds between previews of one job
JOURNAL_FILE = "jobs.sqlite"
CLIENT_ID_HEADER = "cinegen-client-id"  # optional: tells apart several clients of one machine
_STATUS = {"INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT, "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
           "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
           "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED, "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
           "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED, "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE}
NAME_MAX = 255  # bytes of one file name on Linux, macOS and Windows file systems
TEMP_NAME_EXTRA = 32  # '.' + '.tmp-' + a process id + '-' + 8 hex digits, with room to spare
_TEMP_FRAME = re.compile(r"^\.(?P<name>.+)\.tmp-\d+-[0-9a-f]+$")  # write_exr_frame's temporary names


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    models_dirs: list[Path] = field(default_factory=list)
    device: str = "auto"
    max_width: int = 8192
    max_height: int = 8192
    max_frames: int = 2000
    memory_budget: int | None = None
    state_dir: Path | None = None  # journal and uploads; None = a temporary folder removed on close
    use_hf_cache: bool = True
    token: str | None = None  # when set, every call must carry `authorization: Bearer <token>`
    limits: Limits = field(default_factory=Limits)
    output_roots: list[Path] = field(default_factory=list)
    input_roots: list[Path] = field(default_factory=list)
    insecure: bool = False  # allow binding off loopback without a token (and without roots)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # clients must present a certificate signed by this CA
    ray: str | None = None  # a Ray cluster address, or "local": jobs' work units run on its workers
    ray_workers: int | None = None  # Ray workers to start; default one per GPU of the cluster (1 on CPU)
    device_memory: int | None = None  # bytes a job may use at its peak; None = the GPU's free memory (CPU: unchecked)
    compile: str | None = None  # torch.compile backend for every denoiser loaded (models/speedups.py); None = off
    channels_last: bool = False  # UNet weights in channels-last memory format


class Unavailable(UserError):
    code = "UNAVAILABLE"


LIST_OUTPUT_BUDGET = 3 << 20  # bytes of one ListJobs reply, outputs and all: under a stock client's 4 MB limit


def job_list(jobs: list[Job], output_budget: int = LIST_OUTPUT_BUDGET) -> pb.JobList:
    """Every kept job, oldest first; the newest jobs' outputs first take the budget, older ones past it are
    counted in `outputs_omitted` (500 kept 1000-frame plates are ~40 MB of names: no client could read it)."""
    ordered = sorted(jobs, key=lambda j: j.submitted)
    out = pb.JobList()
    for job in ordered:
        out.jobs.add(job_id=job.id, pipeline=job.request.pipeline, state=job.state, fraction=job.fraction,
                     prompt=job.request.common.prompt, submitted=job.submitted, client=job.request.client,
                     last_seq=job.last_seq)
    left, shown = output_budget - out.ByteSize(), {}  # the prompts (up to --max-prompt each) take their share first
    for job in reversed(ordered):
        size = sum(_string_field_size(path) for path in job.outputs)
        shown[job.id] = size <= left
        left -= size if shown[job.id] else 0
    for entry, job in zip(out.jobs, ordered):
        if shown[job.id]:
            entry.outputs.extend(job.outputs)
        else:
            entry.outputs_omitted = len(job.outputs)
    return out


def _string_field_size(text: str) -> int:
    """Bytes of one repeated-string entry on the wire: its tag, its length (a varint) and its UTF-8."""
    size = len(text.encode("utf-8"))
    return 1 + size + (size >= 1 << 7) + (size >= 1 << 14) + (size >= 1 << 21)


def preview_png(display_rgb: np.ndarray, max_side: int = 256) -> tuple[bytes, int, int]:
    """A small PNG of a display-referred frame, with its size (previews are for the eye only)."""
    h, w = display_rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    return srgb_preview_png(display_rgb, max_side, scene_linear=False), max(1, round(w * scale)), max(1, round(h * scale))


def client_key(context: grpc.ServicerContext) -> str:
    """Who is asking: the peer's host, plus the optional client id header (several panels on one host)."""
    peer = context.peer() or ""
    host = peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer
    client_id = dict(context.invocation_metadata() or ()).get(CLIENT_ID_HEADER, "")
    if not isinstance(client_id, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", client_id):
        raise InvalidArgument(f"The {CLIENT_ID_HEADER} header may only use letters, digits, '.', '_' and '-' "
                              "(at most 64).")
    return f"{host}/{client_id}"


def _unary(method: Callable) -> Callable:
    """Turn UserErrors into their status, and anything unexpected into a named status (never UNKNOWN)."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except UserError as exc:
            context.abort(_STATUS.get(exc.code, grpc.StatusCode.INVALID_ARGUMENT), exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug or an odd input: a sentence, the traceback in the log
            if isinstance(exc, grpc.RpcError):
                raise
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"The server could not use this request ({type(exc).__name__}); check its values. "
                          "The server log has the details.")
    return wrapper


class _StreamSlots:
    """Counts open streams; one over `limit` is refused, so streams never take every RPC thread."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open = 0
        self._lock = threading.Lock()

    def acquire(self, limits: Limits) -> None:
        with self._lock:
            if self._open >= self.limit:
                raise over(limits, "max_streams", "The number of open streams (Watch, Upload, Download)",
                           self._open + 1)
            self._open += 1

    def release(self) -> None:
        with self._lock:
            self._open -= 1

    @property
    def open(self) -> int:
        with self._lock:
            return self._open


class GeneratorService(pb_grpc.GeneratorServicer):
    def __init__(self, config: ServerConfig, registry: ModelRegistry | None = None, unit_runner: Any = None):
        self.config = config
        self.limits = config.limits
        self.device = resolve_device(config.device)
        self.registry = registry or ModelRegistry(config.models_dirs, device=self.device,
                                                  memory_budget=config.memory_budget,
                                                  use_hf_cache=config.use_hf_cache,
                                                  speedups=Speedups(config.compile, None, config.channels_last))
        self.pipelines: dict[str, Pipeline] = load_pipelines()
        self._owns_state_dir = config.state_dir is None  # a temporary folder is removed on close()
        self.state_dir = Path(config.state_dir or tempfile.mkdtemp(prefix="cinegen-server-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_lock = StateLock(self.state_dir)  # before the journal: a second server would re-run its jobs
        try:
            self._start(config, unit_runner)
        except BaseException:  # a journal that will not open, Ray that will not start: the folder is free again
            self._state_lock.release()
            raise

    def _start(self, config: ServerConfig, unit_runner: Any) -> None:
        self.uploads_dir = self.state_dir / "uploads"
        fenced = bool(config.input_roots or config.output_roots)
        input_roots = list(config.input_roots) + ([self.uploads_dir] if fenced else [])
        self.paths = PathPolicy(output_roots=list(config.output_roots), input_roots=input_roots)
        self.streams = _StreamSlots(self.limits.max_streams)
        self._upload_lock = threading.Lock()
        self._upload_bytes = _folder_size(self.uploads_dir)
        self._last_preview: dict[str, float] = {}
        self.journal = Journal(self.state_dir / JOURNAL_FILE)
        # with Ray, `unit_runner.run(pipeline, ctx)` replaces `pipeline.run(ctx)`: same queue, journal, events
        self.unit_runner = unit_runner or (_start_ray(config, self.registry) if config.ray else None)
        self.jobs = JobManager(InProcessExecutor(self._run_job), journal=self.journal, restored=self._restore())

    def close(self) -> None:
        self.jobs.stop()
        self.journal.close()
        self._state_lock.release()
        if self.unit_runner is not None and self.config.ray:  # workers this service started
            self.unit_runner.close()
        if self._owns_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # ---- restart ----------------------------------------------------------------------------
    def _restore(self) -> list[Job]:
        """Jobs of the journal: finished ones for ListJobs/Watch, unfinished ones queued again in order."""
        restored = []
        for saved in self.journal.load():
            request = pb.JobRequest.FromString(saved.request)
            job = Job(id=saved.id, request=request, client=saved.client, submitted=saved.submitted,
                      state=saved.state, fraction=saved.fraction, outputs=saved.outputs,
                      events=[pb.JobEvent.FromString(data) for _, data in saved.events])
            if job.state not in TERMINAL:
                self._requeue_restored(job)
            restored.append(job)
        return restored

    def _requeue_restored(self, job: Job) -> None:
        was_running = job.state == "running"
        job.state, job.resume = "queued", True
        note = "interrupted by a server restart; resuming (frames already written are kept)" if was_running \
            else "queued again after a server restart"
        try:
            job.spec = self.validate(job.request, resume=True)
        except UserError as exc:
            job.state = "failed"
            self._append_restored(job, failed=pb.Failed(code=exc.code, message=f"After a server restart the job "
                                                        f"could not run again: {exc.message}"))
            self.journal.set_state(job.id, "failed", job.fraction)
            return
        self._remove_stale_temp_frames(job.spec)
        self._append_restored(job, log=pb.Log(level="warning", message=note))
        self.journal.set_state(job.id, "queued", job.fraction)

    def _append_restored(self, job: Job, **kind: Any) -> None:
        event = pb.JobEvent(job_id=job.id, seq=job.last_seq + 1, time=time.time(), **kind)
        job.events.append(event)
        self.journal.add_event(job.id, event.seq, event.SerializeToString())

    def _remove_stale_temp_frames(self, spec: JobSpec) -> None:
        """Temporary frames of an interrupted write (`.NAME.1001.exr.tmp-PID-XXXX`) are never a result."""
        out = spec.common.out
        if self.pipelines[spec.pipeline].output_is_folder:
            folders = [Path(out)] + [p for p in Path(out).glob("*") if p.is_dir() and not p.is_symlink()]
            belongs: Callable[[str], bool] = lambda name: name.endswith(".exr")  # noqa: E731
        else:
            pattern = SequencePattern.parse(out)
            folders = [Path(pattern.directory or ".")]
            frame_name = re.compile(re.escape(pattern.prefix) + r"-?\d+" + re.escape(pattern.suffix) + r"\Z")
            belongs = lambda name: frame_name.match(name) is not None  # noqa: E731
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                m = _TEMP_FRAME.match(entry.name)
                if m and belongs(m.group("name")) and entry.is_file(follow_symlinks=False):
                    Path(entry.path).unlink(missing_ok=True)
                    log.info("removed a stale temporary frame %s", entry.path)

    # ---- capabilities -----------------------------------------------------------------------
    @_unary
    def GetCapabilities(self, request, context):
        caps = pb.Capabilities(server_version=__version__, device=self._device_info(),
                               max_width=self.config.max_width, max_height=self.config.max_height,
                               protocol_version=PROTOCOL_VERSION)
        for name, pipe in self.pipelines.items():
            info = caps.pipelines.add(name=name, description=pipe.description, families=list(pipe.families),
                                      output_is_folder=pipe.output_is_folder)
            unused = UNUSED_COMMON.get(name, ())
            descriptions = describe(CommonParams, "common") + describe(pipe.params_type, name)
            labels = {d.name: d.label for d in descriptions}  # help names labels, not CLI options
            for desc in descriptions:
                if desc.name not in unused:
                    info.params.append(_param_spec(desc, labels))
        for e in self.registry.entries():
            m = caps.models.add(id=e.id, family=e.family, source=e.source, path=e.path,
                                loaded=self.registry.is_loaded(e.id), description=e.description, kind=e.kind)
            if self.registry.is_loaded(e.id):
                a = self.registry.get(e.id)
                m.native_width, m.native_height = a.native_size
                m.native_frames = a.native_frames
        for addon in self.registry.addons():
            source = "folder" if os.path.isdir(addon.path) else "single-file"  # SparseCtrl: a diffusers folder
            caps.addons.add(id=addon.id, family=addon.base, source=source, path=addon.path, kind=addon.kind)
        caps.model_notes.extend(self.registry.discovery_notes())
        return caps

    def _device_info(self) -> pb.DeviceInfo:
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            return pb.DeviceInfo(name=props.name, kind="cuda", total_memory=props.total_memory,
                                 memory_budget=self.registry.memory_budget,
                                 device_memory=device_budget(self.device, self.config.device_memory) or 0)
        return pb.DeviceInfo(name="cpu", kind=self.device.type, memory_budget=self.registry.memory_budget,
                             device_memory=self.config.device_memory or 0)

    # ---- submit -----------------------------------------------------------------------------
    @_unary
    def Submit(self, request, context):
        if self.jobs.stopping:
            raise Unavailable("The server is shutting down and takes no new jobs; submit again once it is back.")
        client = client_key(context)
        check_text("The job id", request.job_id, MAX_NAME_CHARS)
        existing = self.jobs.get(request.job_id) if request.job_id else None
        if existing is not None:
            return self._existing_ticket(existing, request)
        self._admit(self.jobs.queued_count(), self.jobs.queued_count(client))  # early: before any checking work
        try:
            spec = self.validate(request)
        except (UserError, grpc.RpcError):
            raise
        except (OSError, ValueError, TypeError, RecursionError, OverflowError) as exc:
            log.info("request refused: %s", exc, exc_info=True)
            raise InvalidArgument(f"The request could not be checked ({type(exc).__name__}); "
                                  "check its paths and values.") from None
        kept = pb.JobRequest()
        kept.CopyFrom(request)
        kept.common.seed = spec.common.seed  # the journal keeps the seed chosen now: a resumed job goes on with it
        # again under the queue's lock: a Submit of the same id may have been queued while this one was checked
        job, position = self.jobs.submit(Job(id=spec.job_id, request=kept, client=client, spec=spec), self._admit)
        if job.request is not kept:
            return self._existing_ticket(job, request)
        return pb.JobTicket(job_id=job.id, queue_position=position)

    def _existing_ticket(self, existing: Job, request: pb.JobRequest) -> pb.JobTicket:
        if _same_request(existing.request, request):
            return pb.JobTicket(job_id=existing.id, queue_position=self.jobs.queue_position(existing), existing=True)
        raise AlreadyExists(f"Job id '{request.job_id}' is already used by a different request. "
                            "Choose a new job id, or resubmit exactly the same request.")

    def _admit(self, queued: int, mine: int) -> None:
        if queued >= self.limits.max_queue:
            raise over(self.limits, "max_queue", "The number of queued jobs", queued + 1)
        if mine >= self.limits.max_queue_per_client:
            raise over(self.limits, "max_queue_per_client", "The number of jobs this client has queued", mine + 1)

    def validate(self, request: pb.JobRequest, *, resume: bool = False) -> JobSpec:
        job_id = request.job_id or uuid.uuid4().hex[:12]
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", job_id):
            raise InvalidArgument(f"Job id '{job_id}' may only use letters, digits, '.', '_' and '-' (at most 64).")
        check_text("The client label", request.client, MAX_NAME_CHARS)
        pipeline = self.pipelines.get(request.pipeline)
        if pipeline is None:
            raise NotFound(f"There is no pipeline '{request.pipeline[:64]}'. "
                           f"This server offers: {', '.join(self.pipelines)}.")
        common = from_proto(request.common, CommonParams)
        which = request.WhichOneof("params")
        if which not in (None, pipeline.name):
            raise InvalidArgument(f"The request is for the '{pipeline.name}' pipeline but carries '{which}' "
                                  "parameters; send the parameters of the pipeline you name.")
        params_msg = getattr(request, pipeline.name) if which else None
        params = from_proto(params_msg, pipeline.params_type) if params_msg is not None else pipeline.params_type()
        apply_named_values(request.values, common=common, params=params, pipeline=pipeline.name,
                           typed_common=request.common, typed_params=params_msg)  # options newer than the client
        if common.display_transform not in ("", *DISPLAY_TRANSFORMS):
            raise InvalidArgument(f"Display to linear '{common.display_transform[:40]}' is not one of "
                                  f"{', '.join(DISPLAY_TRANSFORMS)}.")
        check_colour_config(common.display_transform)
        check_plate_colorspace(params)
        check_job(self.limits, common, params, pipeline.name)
        common.out = self.paths.job_output(common.out)  # what is checked below is where the frames go
        if getattr(params, "input", ""):
            params.input = os.path.abspath(os.path.expanduser(params.input))  # read where it was checked
        self._validate_common(common, pipeline, resume=resume, job_id=job_id)
        self._check_inputs(params, common)
        if common.seed is None:
            common.seed = secrets.randbelow(2**31)  # chosen now so every event and header reports it
        spec = JobSpec(job_id=job_id, pipeline=pipeline.name, common=common, params=params)
        if common.model:
            self.registry.entry(common.model)  # NOT_FOUND with the list of models
        pipeline.validate(spec, self.registry)
        if not resume:  # a half-downloaded model folder: refused naming the file it lacks, before any load
            for model_id in pipeline.lora_models(spec, self.registry).values():  # the job's models, by role
                self.registry.check_files(model_id)
        pipeline.check_loras(spec, self.registry)  # every LoRA fits a model of the job, or a sentence why not
        check_frame_range(spec, pipeline.name, pipeline.frame_ranges)
        if not resume:  # a journaled job was accepted once: it is not refused on restart
            check_fits(pipeline, spec, self.registry, device_budget(self.device, self.config.device_memory), self.device)
        return spec

    def _validate_common(self, c: CommonParams, pipeline: Pipeline, *, resume: bool, job_id: str = "") -> None:
        cfg = self.config
        for name, value, limit in (("width", c.width, cfg.max_width), ("height", c.height, cfg.max_height)):
            if value is None:
                continue
            if value <= 0 or value % 8:
                raise InvalidArgument(f"{name.capitalize()} {value} is not a positive multiple of 8; "
                                      f"try {max(8, round(value / 8) * 8)}.")
            if value > limit:
                raise InvalidArgument(f"{name.capitalize()} {value} is over this server's limit of {limit} px; "
                                      "use the upscale pipeline to go larger, or raise --max-size on the server.")
        if c.steps is not None and c.steps <= 0:
            raise InvalidArgument(f"Steps must be at least 1 (got {c.steps}).")
        if c.frames is not None and not 1 <= c.frames <= cfg.max_frames:
            hint = " (`cinegen serve --max-frames N` changes it)" if c.frames > cfg.max_frames else ""
            raise InvalidArgument(f"Frames must be between 1 and {cfg.max_frames} (got {c.frames}){hint}.")
        if c.guidance is not None and c.guidance < 0:
            raise InvalidArgument(f"Guidance must be 0 or more (got {c.guidance}).")
        c.offload = normalise_mode(c.offload)  # INVALID_ARGUMENT naming the modes
        if c.compression not in ("", "zip", "piz", "dwaa", "none"):
            raise InvalidArgument(f"Compression '{c.compression[:16]}' is not one of zip, piz, dwaa, none.")
        if not c.out:
            raise InvalidArgument("Say where to write the frames: --out DIR/NAME.####.exr.")
        if pipeline.output_is_folder:
            folder = self.paths.output(c.out, "The output folder")
            _check_folder_writable(folder)
            return
        try:
            pattern = SequencePattern.parse(c.out)
        except SequencePatternError as exc:
            raise InvalidArgument(str(exc)) from exc
        self.paths.output(pattern.directory or ".", "The output folder")
        _check_frame_name_length(pattern, c)
        try:
            check_output_writable(pattern)
        except Exception as exc:  # OutputNotWritableError carries the sentence
            raise FailedPrecondition(str(exc)) from exc
        if not resume and not getattr(c, "overwrite", False):
            chunk = parse_frame_range(c.frame_range)  # a farm chunk only clashes with frames of its own range
            first = chunk.first if chunk else c.first_frame if c.first_frame is not None else 1001
            _refuse_existing_frames(pattern, first, chunk.count if chunk else c.frames, job_id, c.seed)

    def _check_inputs(self, params: Any, common: CommonParams) -> None:
        """Input paths inside the roots; story and trajectory documents safe to parse and within limits."""
        for name in ("input",):
            value = getattr(params, name, "")
            if value:
                self.paths.input(os.path.dirname(value) if "#" in value or "%" in value else value,
                                 f"The {name} path")
        if len(common.lora) > MAX_LORAS:
            raise InvalidArgument(f"The job names {len(common.lora)} LoRAs; at most {MAX_LORAS} are taken.")
        for item in common.lora:
            check_text("A LoRA path", item, MAX_PATH_CHARS)
        for lora in job_loras(common, params):  # --lora, and upscale's deprecated comma-separated lora
            self.paths.input(lora.path, "The LoRA path")
        if hasattr(params, "trajectory_json"):
            if params.trajectory_json.strip():
                check_trajectory(params.trajectory_json, Origin("the trajectory_json document"), self.limits)
            elif params.trajectory.strip():
                text = self._read_server_document(params.trajectory.strip(), "The trajectory file")
                check_trajectory(text, Origin(f"the trajectory file '{params.trajectory}'", True), self.limits)
                # the checked text, not the path: the pipeline never re-reads a file that may have changed
                params.trajectory_json, params.trajectory = text, ""
        if hasattr(params, "story_yaml"):
            story = None
            if params.story_yaml:
                story = check_story(params.story_yaml, Origin("the story_yaml document"), self.limits)
                if "\n" not in params.story_yaml:
                    params.story_yaml += "\n"  # one line without a newline would be taken for a file path
            elif params.story:
                text = self._read_server_document(params.story, "The story file")
                story = check_story(text, Origin(f"the story file '{params.story}'", True), self.limits,
                                    name=os.path.basename(params.story))
            if story is not None:  # the story's shots set the frame count, not --frames
                frames = sum(shot.frames for shot in story.shots)
                pixels = (common.width or ASSUMED_SIDE) * (common.height or ASSUMED_SIDE) * frames
                if pixels > self.limits.max_pixels:
                    raise over(self.limits, "max_pixels", f"The story's pixel budget width × height × frames of "
                               f"all shots ({frames} frames)", pixels)

    def _read_server_document(self, path: str, what: str) -> str:
        resolved = self.paths.input(path, what)
        return decode_utf8(read_request_file(resolved, self.limits.max_text, what, "--max-text"), f"{what} '{path}'")

    # ---- watch / cancel / list ---------------------------------------------------------------
    def Watch(self, request, context):
        try:
            job = self.jobs.get(request.job_id)
            if job is None:
                raise NotFound(f"There is no job '{request.job_id[:64]}' on this server. Submit it again.")
            self.streams.acquire(self.limits)
        except UserError as exc:
            context.abort(_STATUS[exc.code], exc.message)
        try:
            yield from self.jobs.watch(job.id, request.after_seq, is_active=context.is_active)
        finally:
            self.streams.release()

    @_unary
    def Cancel(self, request, context):
        job = self.jobs.cancel(request.job_id)
        if job is None:
            raise NotFound(f"There is no job '{request.job_id[:64]}' to cancel.")
        return pb.CancelReply(cancelled=job.cancel_requested.is_set(), state=job.state)

    @_unary
    def Reorder(self, request, context):
        job = self.jobs.get(request.job_id)
        if job is None:
            raise NotFound(f"There is no job '{request.job_id[:64]}' to move.")
        if job.client != client_key(context):
            raise PermissionDenied("Only the client that queued a job can move it in the queue.")
        position, queued = self.jobs.move(job.id, max(0, request.position))
        if position < 0:
            raise FailedPrecondition(f"Job '{job.id}' is {job.state}, not queued: only queued jobs can be moved.")
        return pb.ReorderReply(position=position, queued=queued)

    @_unary
    def ListJobs(self, request, context):
        return job_list(self.jobs.jobs())

    # ---- files ------------------------------------------------------------------------------
    def Upload(self, request_iterator, context):
        try:
            self.streams.acquire(self.limits)
        except UserError as exc:
            context.abort(_STATUS[exc.code], exc.message)
        try:
            return self._upload(request_iterator, context)
        except UserError as exc:
            context.abort(_STATUS[exc.code], exc.message)
        except OSError as exc:  # the server's disk, not the request: a sentence, never UNKNOWN with a path
            log.exception("upload failed")
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED if full else grpc.StatusCode.FAILED_PRECONDITION,
                          "The server could not store the upload (" + ("its disk is full" if full else
                          exc.strerror or type(exc).__name__) + "); try again later or ask whoever runs it. "
                          "The server log has the details.")
        finally:
            self.streams.release()

    def _upload(self, request_iterator, context) -> pb.UploadReply:
        client = client_key(context)
        folder_of_client = self.uploads_dir / hashlib.sha256(client.encode()).hexdigest()[:16]  # ids are per client
        asset_id, handle, path, size, counted = None, None, None, 0, 0  # counted: bytes added to _upload_bytes
        try:
            for chunk in request_iterator:
                if asset_id is None:
                    asset_id = chunk.asset_id or secrets.token_hex(8)
                    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", asset_id):
                        raise InvalidArgument("The asset id may only use letters, digits, '_' and '-' (at most 64).")
                    check_text("The upload file name", chunk.filename, 255)
                    name = os.path.basename(chunk.filename)
                    if not name or name in (".", "..") or name != chunk.filename or name.startswith("."):
                        raise InvalidArgument(f"Upload file name '{chunk.filename}' must be a plain file name "
                                              "without folders (and not starting with '.').")
                    folder = folder_of_client / asset_id
                    folder.mkdir(parents=True, exist_ok=True)
                    path = folder / name
                    # a part file per stream: two uploads of one name at once never write into one file
                    handle = open(folder / f".{name}.part-{secrets.token_hex(4)}", "xb")
                size += len(chunk.data)
                if size > self.limits.max_upload:
                    raise over(self.limits, "max_upload", "The uploaded file's size in bytes", f"over {size - 1}")
                with self._upload_lock:
                    if self._upload_bytes + len(chunk.data) > self.limits.max_upload_total:
                        raise over(self.limits, "max_upload_total", "The bytes of all uploads kept by the server",
                                   self._upload_bytes + len(chunk.data))
                    self._upload_bytes += len(chunk.data)
                    counted += len(chunk.data)
                handle.write(chunk.data)
            if handle is None:
                raise InvalidArgument("The upload was empty: send at least one chunk.")
            handle.close()
            if path.exists():
                with self._upload_lock:
                    self._upload_bytes -= path.stat().st_size
            os.replace(handle.name, path)  # the file appears whole or not at all
        except BaseException:
            if handle is not None:
                with contextlib.suppress(OSError):  # a full disk fails the buffer's flush again: the part goes anyway
                    handle.close()
                with self._upload_lock:  # what was counted, landed on disk or not
                    self._upload_bytes -= counted
                Path(handle.name).unlink(missing_ok=True)
            raise
        return pb.UploadReply(asset_id=asset_id, path=str(path), size=size)

    def Download(self, request, context):
        try:
            self.streams.acquire(self.limits)
        except UserError as exc:
            context.abort(_STATUS[exc.code], exc.message)
        try:
            try:
                fd, total = self._open_download(request.path, client_key(context))
            except UserError as exc:
                context.abort(_STATUS[exc.code], exc.message)
            with os.fdopen(fd, "rb") as f:
                offset = 0
                while True:
                    data = f.read(CHUNK)
                    if not data:
                        break
                    yield pb.FileChunk(data=data, offset=offset, total=total)
                    offset += len(data)
        finally:
            self.streams.release()

    def _open_download(self, path: str, client: str) -> tuple[int, int]:
        """Only a regular file a job of this client wrote, opened without following a symlink."""
        check_text("The download path", path, MAX_PATH_CHARS)
        wanted = os.path.abspath(path) if path else ""
        allowed = {os.path.abspath(p) for job in self.jobs.jobs() if job.client == client for p in job.outputs}
        if wanted not in allowed:
            raise NotFound(f"'{path}' is not a file a job of yours wrote on this server; only your jobs' "
                           "outputs can be downloaded.")
        try:
            fd = os.open(wanted, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise NotFound(f"'{path}' was written by your job but is no longer on the server's disk "
                           "(it was deleted or moved).") from None
        except OSError:
            raise NotFound(f"'{path}' is no longer the file your job wrote (it was replaced by a link or "
                           "made unreadable); it cannot be downloaded.") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise NotFound(f"'{path}' is no longer a regular file; it cannot be downloaded.")
        return fd, info.st_size

    # ---- running a job -----------------------------------------------------------------------
    def _run_job(self, job: Job, manager) -> list[str]:
        pipeline = self.pipelines[job.spec.pipeline]
        self._recheck_roots(job.spec, pipeline)
        started = time.perf_counter()
        model_id = pipeline.model_id(job.spec, self.registry)
        manager.emit(job, started=pb.Started(model=model_id, seed=job.spec.common.seed or 0,
                                             device=str(self.device)))

        def report_progress(stage: str, step: int, total: int, fraction: float) -> None:
            elapsed = time.perf_counter() - started
            eta = elapsed * (1 - fraction) / fraction if fraction > 0.01 else -1.0
            manager.emit(job, progress=pb.Progress(stage=stage, step=step, total=total, fraction=fraction,
                                                   eta_seconds=eta))

        def report_preview(frame: int, display_rgb: np.ndarray) -> None:
            now = time.monotonic()
            if now - self._last_preview.get(job.id, 0.0) < PREVIEW_INTERVAL:
                return  # previews are rate-limited: they are for the eye, not the pipeline
            self._last_preview[job.id] = now
            png, w, h = preview_png(display_rgb)
            manager.emit(job, preview=pb.Preview(frame=frame, png=png, width=w, height=h))

        def report_frame(frame: int, path: str, sequence: str) -> None:
            manager.emit(job, frame_written=pb.FrameWritten(frame=frame, path=path, sequence=sequence))

        def report_log(message: str) -> None:
            manager.emit(job, log=pb.Log(level="info", message=message))

        plates = self.state_dir / "plates" / job.id  # working-space copies of a plate in another colour space
        converted = converted_params(job.spec.params, plates, report_log, job.spec.common.frames)
        spec = job.spec if converted is job.spec.params else dataclasses.replace(
            job.spec, params=converted,  # headers name the artist's plate and its space, not the temporary copy
            recorded_params=job.spec.recorded_params or recorded_params(job.spec.common, job.spec.params))
        models = JobModels(self.registry, spec.common.offload, report_log)  # --offload on what the job loads
        ctx = RunContext(job=spec, registry=models, report_progress=report_progress,
                         report_preview=report_preview, report_frame=report_frame, report_log=report_log,
                         is_cancelled=lambda: manager.is_stopping_or_cancelled(job))
        ctx.existing_frames = _existing_frames_policy(job, pipeline)
        try:
            outputs = self.unit_runner.run(pipeline, ctx) if self.unit_runner else pipeline.run(ctx)
        finally:
            ctx.wait_for_frames()  # frames still being written land (and are reported) before the job ends
            self._last_preview.pop(job.id, None)
            models.close()
            job.outputs = list(ctx.outputs)
            remove_converted(plates)
        note = _left_over_frames(job.spec, pipeline, outputs)
        if note:
            manager.emit(job, log=pb.Log(level="warning", message=note))
        return outputs


    def _recheck_roots(self, spec: JobSpec, pipeline: Pipeline) -> None:
        """The roots again as the job starts: a folder inside one swapped for a link to elsewhere while the job
        waited in the queue would otherwise take its frames (or give its plate) outside them."""
        if not (self.paths.output_roots or self.paths.input_roots):
            return
        out = spec.common.out
        self.paths.output(out if pipeline.output_is_folder else SequencePattern.parse(out).directory or ".",
                          "The output folder")
        plate = getattr(spec.params, "input", "")
        if plate:
            self.paths.input(os.path.dirname(plate) if "#" in plate or "%" in plate else plate, "The input path")
        for lora in job_loras(spec.common, spec.params):
            self.paths.input(lora.path, "The LoRA path")


def _start_ray(config: ServerConfig, registry: ModelRegistry) -> Any:
    from .scaleout.ray_executor import start_ray_runner  # Ray is an optional extra

    return start_ray_runner(config, registry)


def _left_over_frames(spec: JobSpec, pipeline: Pipeline, outputs: list[str]) -> str:
    """An --overwrite job shorter than the sequence it replaced leaves the old tail beside its frames, and a
    Read node takes it for part of the sequence: said (never deleted: they may be wanted)."""
    common = spec.common
    if pipeline.output_is_folder or not getattr(common, "overwrite", False) or common.frame_range:
        return ""
    pattern = SequencePattern.parse(common.out)
    written = {os.path.abspath(p) for p in outputs}
    left = [frame for frame, path in pattern.glob_existing().items() if os.path.abspath(path) not in written]
    if not left:
        return ""
    return (f"{len(left)} frame(s) of {pattern.hash_form()} from an earlier run remain beside this job's frames "
            f"({min(left)}-{max(left)}); a Read node shows them as part of the sequence: delete them if they are "
            "not wanted.")


def _existing_frames_policy(job: Job, pipeline: Pipeline) -> str:
    """write: replace (--overwrite, a story's folder); keep: never overwrite, keeping only the frames this job
    wrote (same id, seed, prompt and options: a resumed job, a retried farm task); keep-or-write: a resumed
    --overwrite job keeps its own frames and writes over any other."""
    replaces = getattr(job.spec.common, "overwrite", False) or pipeline.output_is_folder
    if job.resume:
        return "keep-or-write" if replaces else "keep"
    if replaces:
        return "write"  # a story's folder is its own: re-running shots replaces them by design
    return "keep"  # never overwrite; only this job's own frames (a retried farm task's) are kept


def _refuse_existing_frames(pattern: SequencePattern, first: int, frames: int | None, job_id: str = "",
                            seed: int | None = None) -> None:
    # without --frames the count is the model's or the plate's, known at run time: the first frame is
    # checked now, and the frame sink refuses any other existing frame before writing over it. Frames of
    # this very job (its id and seed: a farm task retried, a resubmit to a new server) are no clash: the
    # sink keeps those whose prompt and options match too
    last = first + (frames or 1) - 1
    same = {CINEGEN_PREFIX + "job": job_id, CINEGEN_PREFIX + "seed": str(seed)}
    clash = [f for f, path in pattern.glob_existing().items() if first <= f <= last
             and not (job_id and seed is not None and same.items() <= frame_header(path).items())]
    if clash:
        raise AlreadyExists(f"{len(clash)} frame(s) of {pattern.hash_form()} already exist (first: "
                            f"{pattern.file_name_for(clash[0])}); pick another output, delete them, or ask to "
                            "overwrite (--overwrite, or 'Overwrite' in the panel).")


def _check_frame_name_length(pattern: SequencePattern, c: CommonParams) -> None:
    """A frame's name with room for the temporary name it is written under first (`.NAME.tmp-PID-XXXXXXXX`)
    fits the file system's name limit: refused now, not when the job writes its first frame."""
    last = (c.first_frame if c.first_frame is not None else 1001) + (c.frames or 1) - 1
    name = os.path.basename(pattern.path_for(last))
    room = NAME_MAX - TEMP_NAME_EXTRA
    if len(name.encode("utf-8")) > room:
        raise InvalidArgument(f"The frame file name '{name[:40]}…' is {len(name.encode('utf-8'))} bytes long; frames "
                              f"are written under names of at most {room} bytes (the disk's limit of {NAME_MAX}, "
                              "less room for the temporary name). Shorten the NAME in --out.")


def _folder_size(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _param_spec(d: ParamDescription, labels: dict[str, str] | None = None) -> pb.ParamSpec:
    spec = pb.ParamSpec(name=d.name, type=d.type, default_json=json.dumps(d.default),
                        help=plain_help(d.help, labels or {}),
                        group=d.group, label=d.label, step=d.step, choices=list(d.choices),
                        families=list(d.families), kinds=list(d.kinds))
    if d.minimum is not None:
        spec.minimum = d.minimum
    if d.maximum is not None:
        spec.maximum = d.maximum
    return spec


def _same_request(a: pb.JobRequest, b: pb.JobRequest) -> bool:
    a2, b2 = pb.JobRequest(), pb.JobRequest()
    a2.CopyFrom(a)
    b2.CopyFrom(b)
    a2.client = b2.client = ""  # the same job resubmitted from another client is still the same job
    if not (a2.common.HasField("seed") and b2.common.HasField("seed")):
        a2.common.ClearField("seed")  # "any seed" matches the seed the server chose for the first submit
        b2.common.ClearField("seed")
    return a2.SerializeToString(deterministic=True) == b2.SerializeToString(deterministic=True)


def _check_folder_writable(folder: Path) -> None:
    try:
        prove_writable(folder)
    except OSError as exc:
        raise FailedPrecondition(f"Cannot write into the output folder {folder} ({exc.strerror}). "
                                 "Pick a folder you can write to, or fix its permissions.") from exc
