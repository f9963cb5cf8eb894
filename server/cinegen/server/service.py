"""The gRPC `Generator` service: requests in, validated jobs to the queue, events out."""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import torch

from cinegen.common.exr import srgb_preview_png
from cinegen.common.params import CommonParams, ParamDescription, describe, from_proto
from cinegen.common.proto import generator_pb2 as pb
from cinegen.common.proto import generator_pb2_grpc as pb_grpc
from cinegen.common.sequence import SequencePattern, SequencePatternError, check_output_writable

from . import __version__
from .errors import FailedPrecondition, InvalidArgument, NotFound, UserError
from .jobs import Job, JobManager
from .models.registry import ModelRegistry
from .pipelines import load_pipelines
from .pipelines.base import JobSpec, Pipeline, RunContext

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
CHUNK = 1 << 20  # 1 MiB: far below gRPC's 4 MB default message limit
PREVIEW_INTERVAL = 0.5  # seconds between previews of one job
_STATUS = {"INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT, "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
           "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
           "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED, "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS}


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
    state_dir: Path | None = None  # uploads live here
    use_hf_cache: bool = True
    token: str | None = None  # when set, every call must carry `authorization: Bearer <token>`


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but this machine has no CUDA GPU; use --device cpu.")
    return torch.device(name)


def preview_png(display_rgb: np.ndarray, max_side: int = 256) -> tuple[bytes, int, int]:
    """A small PNG of a display-referred frame, with its size (previews are for the eye only)."""
    h, w = display_rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    return srgb_preview_png(display_rgb, max_side, scene_linear=False), max(1, round(w * scale)), max(1, round(h * scale))


class GeneratorService(pb_grpc.GeneratorServicer):
    def __init__(self, config: ServerConfig, registry: ModelRegistry | None = None):
        self.config = config
        self.device = resolve_device(config.device)
        self.registry = registry or ModelRegistry(config.models_dirs, device=self.device,
                                                  memory_budget=config.memory_budget,
                                                  use_hf_cache=config.use_hf_cache)
        self.pipelines: dict[str, Pipeline] = load_pipelines()
        self._owns_state_dir = config.state_dir is None  # a temporary folder is removed on close()
        self.state_dir = Path(config.state_dir or tempfile.mkdtemp(prefix="cinegen-server-"))
        self.jobs = JobManager(self._run_job)
        self._last_preview: dict[str, float] = {}

    def close(self) -> None:
        self.jobs.stop()
        if self._owns_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # ---- capabilities -----------------------------------------------------------------------
    def GetCapabilities(self, request, context):
        caps = pb.Capabilities(server_version=__version__, device=self._device_info(),
                               max_width=self.config.max_width, max_height=self.config.max_height,
                               protocol_version=PROTOCOL_VERSION)
        for name, pipe in self.pipelines.items():
            info = caps.pipelines.add(name=name, description=pipe.description, families=list(pipe.families),
                                      output_is_folder=pipe.output_is_folder)
            for desc in describe(CommonParams, "common") + describe(pipe.params_type, name):
                info.params.append(_param_spec(desc))
        for e in self.registry.entries():
            m = caps.models.add(id=e.id, family=e.family, source=e.source, path=e.path,
                                loaded=self.registry.is_loaded(e.id), description=e.description)
            if self.registry.is_loaded(e.id):
                a = self.registry.get(e.id)
                m.native_width, m.native_height = a.native_size
                m.native_frames = a.native_frames
        return caps

    def _device_info(self) -> pb.DeviceInfo:
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            return pb.DeviceInfo(name=props.name, kind="cuda", total_memory=props.total_memory,
                                 memory_budget=self.registry.memory_budget)
        return pb.DeviceInfo(name="cpu", kind=self.device.type, memory_budget=self.registry.memory_budget)

    # ---- submit -----------------------------------------------------------------------------
    def Submit(self, request, context):
        try:
            existing = self.jobs.get(request.job_id) if request.job_id else None
            if existing is not None:
                if _same_request(existing.request, request):
                    return pb.JobTicket(job_id=existing.id, queue_position=self.jobs.queue_position(existing),
                                        existing=True)
                context.abort(grpc.StatusCode.ALREADY_EXISTS,
                              f"Job id '{request.job_id}' is already used by a different request. "
                              "Choose a new job id, or resubmit exactly the same request.")
            spec = self.validate(request)
        except UserError as exc:
            context.abort(_STATUS[exc.code], exc.message)
        job, position = self.jobs.submit(Job(spec=spec, request=request))
        return pb.JobTicket(job_id=job.id, queue_position=position)

    def validate(self, request: pb.JobRequest) -> JobSpec:
        job_id = request.job_id or uuid.uuid4().hex[:12]
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", job_id):
            raise InvalidArgument(f"Job id '{job_id}' may only use letters, digits, '.', '_' and '-' (at most 64).")
        pipeline = self.pipelines.get(request.pipeline)
        if pipeline is None:
            raise NotFound(f"There is no pipeline '{request.pipeline}'. "
                           f"This server offers: {', '.join(self.pipelines)}.")
        common = from_proto(request.common, CommonParams)
        which = request.WhichOneof("params")
        if which not in (None, pipeline.name):
            raise InvalidArgument(f"The request is for the '{pipeline.name}' pipeline but carries '{which}' "
                                  "parameters; send the parameters of the pipeline you name.")
        params_msg = getattr(request, pipeline.name) if which else None
        params = from_proto(params_msg, pipeline.params_type) if params_msg is not None else pipeline.params_type()
        self._validate_common(common, pipeline)
        if common.seed is None:
            common.seed = secrets.randbelow(2**31)  # chosen now so every event and header reports it
        spec = JobSpec(job_id=job_id, pipeline=pipeline.name, common=common, params=params)
        if common.model:
            self.registry.entry(common.model)  # NOT_FOUND with the list of models
        pipeline.validate(spec, self.registry)
        return spec

    def _validate_common(self, c: CommonParams, pipeline: Pipeline) -> None:
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
            raise InvalidArgument(f"Frames must be between 1 and {cfg.max_frames} (got {c.frames}).")
        if c.guidance is not None and c.guidance < 0:
            raise InvalidArgument(f"Guidance must be 0 or more (got {c.guidance}).")
        if c.compression not in ("", "zip", "piz", "dwaa", "none"):
            raise InvalidArgument(f"Compression '{c.compression}' is not one of zip, piz, dwaa, none.")
        if not c.out:
            raise InvalidArgument("Say where to write the frames: --out DIR/NAME.####.exr.")
        if pipeline.output_is_folder:
            folder = Path(c.out)
            _check_folder_writable(folder)
            return
        try:
            pattern = SequencePattern.parse(c.out)
        except SequencePatternError as exc:
            raise InvalidArgument(str(exc)) from exc
        try:
            check_output_writable(pattern)
        except Exception as exc:  # OutputNotWritableError carries the sentence
            raise FailedPrecondition(str(exc)) from exc

    # ---- watch / cancel / list ---------------------------------------------------------------
    def Watch(self, request, context):
        job = self.jobs.get(request.job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"There is no job '{request.job_id}' on this server "
                          "(it may have been forgotten after a restart). Submit it again.")
        yield from self.jobs.watch(job.id, request.after_seq, is_active=context.is_active)

    def Cancel(self, request, context):
        job = self.jobs.cancel(request.job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"There is no job '{request.job_id}' to cancel.")
        return pb.CancelReply(cancelled=job.cancel_requested.is_set(), state=job.state)

    def ListJobs(self, request, context):
        out = pb.JobList()
        for job in sorted(self.jobs.jobs(), key=lambda j: j.submitted):
            out.jobs.add(job_id=job.id, pipeline=job.spec.pipeline, state=job.state, fraction=job.fraction,
                         prompt=job.spec.common.prompt, submitted=job.submitted, client=job.request.client,
                         outputs=job.outputs, last_seq=len(job.events))
        return out

    # ---- files ------------------------------------------------------------------------------
    def Upload(self, request_iterator, context):
        asset_id, handle, path, size = None, None, None, 0
        try:
            for chunk in request_iterator:
                if asset_id is None:
                    asset_id = chunk.asset_id or secrets.token_hex(8)
                    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", asset_id):
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The asset id may only use letters, digits, '_' and '-'.")
                    name = os.path.basename(chunk.filename)
                    if not name or name in (".", "..") or name != chunk.filename:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"Upload file name '{chunk.filename}' must be a plain file name without folders.")
                    folder = self.state_dir / "assets" / asset_id
                    folder.mkdir(parents=True, exist_ok=True)
                    path = folder / name
                    handle = open(folder / f".{name}.part", "wb")
                handle.write(chunk.data)
                size += len(chunk.data)
            if handle is None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The upload was empty: send at least one chunk.")
            handle.close()
            os.replace(handle.name, path)  # the file appears whole or not at all
        finally:
            if handle is not None and not handle.closed:
                handle.close()
                Path(handle.name).unlink(missing_ok=True)
        return pb.UploadReply(asset_id=asset_id, path=str(path), size=size)

    def Download(self, request, context):
        path = Path(request.path).resolve()
        allowed = {Path(p).resolve() for job in self.jobs.jobs() for p in job.outputs}
        if path not in allowed:
            context.abort(grpc.StatusCode.NOT_FOUND, f"'{request.path}' is not a file a job on this server wrote; "
                          "only job outputs can be downloaded.")
        total = path.stat().st_size
        with open(path, "rb") as f:
            offset = 0
            while True:
                data = f.read(CHUNK)
                if not data:
                    break
                yield pb.FileChunk(data=data, offset=offset, total=total)
                offset += len(data)

    # ---- running a job -----------------------------------------------------------------------
    def _run_job(self, job: Job, manager: JobManager) -> list[str]:
        pipeline = self.pipelines[job.spec.pipeline]
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

        ctx = RunContext(job=job.spec, registry=self.registry, report_progress=report_progress,
                         report_preview=report_preview, report_frame=report_frame, report_log=report_log,
                         is_cancelled=job.cancel_requested.is_set)
        try:
            return pipeline.run(ctx)
        finally:
            self._last_preview.pop(job.id, None)
            job.outputs = list(ctx.outputs)


def _param_spec(d: ParamDescription) -> pb.ParamSpec:
    spec = pb.ParamSpec(name=d.name, type=d.type, default_json=json.dumps(d.default), help=d.help,
                        group=d.group, label=d.label, step=d.step, choices=list(d.choices))
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
    return a2.SerializeToString(deterministic=True) == b2.SerializeToString(deterministic=True)


def _check_folder_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".cinegen-write-test-"):
            pass
    except OSError as exc:
        raise FailedPrecondition(f"Cannot write into the output folder {folder} ({exc.strerror}). "
                                 "Pick a folder you can write to, or fix its permissions.") from exc
