"""What every user-facing pipeline is: typed parameters, validation, and `run(ctx, job)`.

A pipeline module reads like the method's description: plan stages, run the shared denoising loop
with the method's hooks, hand frames to the sink. It knows nothing about gRPC.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import time
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from cinegen.common.params import UNIT_SELECTORS, CommonParams, params_json
from cinegen.common.sequence import SequencePattern

from ..diffusion.latent_rgb import LatentToRGB, fit_latent_to_rgb
from ..errors import InvalidArgument, JobCancelled
from ..models.family import FamilyAdapter
from ..models.lora import check_lora, job_loras, loras_applied, route_loras
from ..models.registry import ModelRegistry
from ..output import FrameSink, base_metadata
from ..output.frames import display_transform_for
from ..scaleout.units import WorkUnit, single_unit

PREVIEW_INTERVAL_S = 0.5  # as the service's own limit: previews are for the eye, not the pipeline
PROJECTION_FIT_CELLS = 16  # latent cells a side of the random latents the preview map is fitted on

@dataclass
class Resolved:
    """Common parameters with every 'model decides' value filled in."""
    prompt: str
    negative_prompt: str
    model: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    frames: int
    fps: float
    first_frame: int
    guidance_2: float | None = None  # Wan 2.2 A14B: the low-noise expert's guidance; None = guidance


@dataclass
class JobSpec:
    job_id: str
    pipeline: str
    common: CommonParams
    params: Any
    # a work unit of a larger job (scaleout): the whole job's options, which its frames' headers record,
    # so a frame reads the same whichever unit made it; "" = this spec's own
    recorded_params: str = ""


def recorded_params(common: CommonParams, params: Any) -> str:
    """The options a frame's header records: the job's, with the options that only pick the part of the
    job a run writes (UNIT_SELECTORS: `--frame-range`, story `--stage` and `--shots`) at their defaults,
    so a farm step's or a Ray unit's frames read as the single-box run's."""
    return params_json(*(_unselected(obj) for obj in (common, params)))


def _unselected(obj: Any) -> Any:
    if not dataclasses.is_dataclass(obj):
        return obj
    fields = {f.name: f for f in dataclasses.fields(obj)}
    defaults = {name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for name, f in fields.items() if name in UNIT_SELECTORS}
    return dataclasses.replace(obj, **defaults)


class RunContext:
    """What a running pipeline may use: models, progress, cancel checks, previews, frame sinks."""

    def __init__(self, *, job: JobSpec, registry: ModelRegistry,
                 report_progress: Callable[[str, int, int, float], None],
                 report_preview: Callable[[int, np.ndarray], None],
                 report_frame: Callable[[int, str, str], None],
                 report_log: Callable[[str], None],
                 is_cancelled: Callable[[], bool]):
        self.job = job
        self.registry = registry
        self._report_progress = report_progress
        self._report_preview = report_preview
        self._report_frame = report_frame
        self.log = report_log
        self._is_cancelled = is_cancelled
        self.outputs: list[str] = []
        self._last_preview_at = -PREVIEW_INTERVAL_S
        self.existing_frames = "write"  # write | refuse | keep / keep-or-write (a resumed job): see FrameSink
        self._job_models = contextlib.ExitStack()  # the job's LoRAs, removed when the pipeline's run ends
        self._with_loras: set[str] = set()
        self._runs = 0
        self._sinks: list[FrameSink] = []

    # ---- the job's models (the one place LoRAs go on and come off) ----------------------------
    def models(self, ids: dict[str, str]) -> dict[str, FamilyAdapter]:
        """The job's models by role ({"keyframes": id, "motion": id}), each with the job's LoRAs that fit it
        (the first role a LoRA fits; motion LoRAs to AnimateDiff) until the pipeline's `run` returns."""
        adapters = {role: self.registry.get(model_id) for role, model_id in ids.items()}
        specs = job_loras(self.job.common, self.job.params)
        if specs and any(a.entry.id not in self._with_loras for a in adapters.values()):
            for role, routed in route_loras(specs, adapters).items():
                adapter = adapters[role]
                if adapter.entry.id in self._with_loras:  # asked for again in the same job: already on
                    continue
                self._with_loras.add(adapter.entry.id)
                if routed:
                    self.log(f"LoRA on {role} model {adapter.entry.id}: "
                             + ", ".join(f"{Path(s.path).name} x{s.weight:g}" for s in routed))
                    self._job_models.enter_context(loras_applied(adapter, routed))
        return adapters

    def model(self, model_id: str) -> FamilyAdapter:
        """The job's model, with the job's LoRAs on it (see `models`)."""
        return self.models({"model": model_id})["model"]

    @contextlib.contextmanager
    def loras_on(self, adapter: FamilyAdapter):
        """The job's LoRAs on `adapter` for the block, for code handed a model directly (tests, helpers);
        a no-op when the job already put them on through `model`/`models` (they come off after run)."""
        if adapter.entry.id in self._with_loras:
            yield
            return
        self._with_loras.add(adapter.entry.id)
        try:
            with loras_applied(adapter, route_loras(job_loras(self.job.common, self.job.params),
                                                    {"model": adapter})["model"]):
                yield
        finally:
            self._with_loras.discard(adapter.entry.id)

    def release_models(self) -> None:
        """Take the job's LoRAs off again: the resident models are as they were before the job, bit for bit."""
        self._with_loras.clear()
        self._job_models.close()

    def check_cancel(self) -> None:
        if self._is_cancelled():
            raise JobCancelled()

    def progress(self, stage: str, step: int, total: int, fraction: float) -> None:
        self._report_progress(stage, step, total, max(0.0, min(1.0, fraction)))

    def preview(self, frame: int, display_rgb: np.ndarray) -> None:
        self._report_preview(frame, display_rgb)
        # stamped after reporting, so the service's own rate limit (same interval) never drops one
        self._last_preview_at = time.monotonic()

    def preview_due(self) -> bool:
        """Whether a preview now would be shown: checked before any work is spent on one."""
        return time.monotonic() - self._last_preview_at >= PREVIEW_INTERVAL_S

    def latent_preview(self, adapter: FamilyAdapter, frame: int = 0) -> Callable[[torch.Tensor], None]:
        """A `LoopCallbacks.on_latent`: the latent's linear RGB projection as a preview, rate-limited."""
        projection = latent_projection(adapter)

        def on_latent(latents: torch.Tensor) -> None:
            if self.preview_due():
                self.preview(frame, projection(latents).permute(1, 2, 0).cpu().numpy())
        return on_latent

    def frame_written(self, frame: int, path: str, sequence: str) -> None:
        """A frame is on disk under its final name: an output of the job, and an event (also for frames
        a cluster worker wrote)."""
        self.outputs.append(path)
        self._report_frame(frame, path, sequence)

    def frame_sink(self, pattern: SequencePattern, resolved: Resolved, *, sequence: str = "",
                   prompt: str | None = None, seed: int | None = None, envmap_latlong: bool = False,
                   pixel_aspect: float = 1.0) -> FrameSink:
        common = self.job.common
        meta = base_metadata(pipeline=self.job.pipeline, model=resolved.model,
                             seed=resolved.seed if seed is None else seed,
                             prompt=resolved.prompt if prompt is None else prompt, job=self.job.job_id,
                             params_json=self.job.recorded_params or recorded_params(common, self.job.params),
                             fps=resolved.fps,
                             envmap_latlong=envmap_latlong)

        def on_written(frame: int, path: str, seq: str) -> None:
            self.frame_written(frame, path, seq)

        transform = display_transform_for(common.display_transform, bool(getattr(self.job.params, "input", "")))
        meta = dataclasses.replace(meta, extra={**meta.extra, "display_transform": transform},
                                   pixel_aspect=pixel_aspect)
        sink = FrameSink(pattern, resolved.first_frame, meta, compression=common.compression or "zip",
                         display_transform=transform,
                         sequence=sequence, on_written=on_written, existing=self.existing_frames, on_log=self.log)
        self._sinks.append(sink)
        return sink

    def wait_for_frames(self) -> None:
        """Wait until every frame queued on this job's sinks is on disk (or failed): a job that stops early
        (cancelled, failed) reports its last frames before its terminal event, never after it."""
        for sink in self._sinks:
            with contextlib.suppress(Exception):  # a write error already failed the job (or the job ends anyway)
                sink.flush()


class StepProgress:
    """Turns (stage k of n, step i of m) into events with an overall fraction."""

    def __init__(self, ctx: RunContext, stage_weights: list[float]):
        total = sum(stage_weights) or 1.0
        self.ctx = ctx
        self.starts = [sum(stage_weights[:i]) / total for i in range(len(stage_weights))]
        self.sizes = [w / total for w in stage_weights]

    def callback(self, stage_index: int, label: str) -> Callable[[int, int], None]:
        def on_step(done: int, todo: int) -> None:
            frac = self.starts[stage_index] + self.sizes[stage_index] * done / max(todo, 1)
            self.ctx.progress(label, done, todo, frac)
        return on_step


def _releasing_job_models(run: Callable) -> Callable:
    """`run` that takes the job's LoRAs off when it ends, however it ends (outermost run only)."""
    @functools.wraps(run)
    def wrapper(self: "Pipeline", ctx: RunContext) -> list[str]:
        if not hasattr(ctx, "release_models"):  # a stand-in context (tests): nothing to release
            return run(self, ctx)
        ctx._runs += 1
        try:
            return run(self, ctx)
        finally:
            ctx._runs -= 1
            if ctx._runs == 0:
                ctx.release_models()
    wrapper._releases_job_models = True  # type: ignore[attr-defined]
    return wrapper


class Pipeline(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    params_type: ClassVar[type]
    families: ClassVar[tuple[str, ...]]
    output_is_folder: ClassVar[bool] = False  # story writes DIR, the others DIR/NAME.####.exr
    frame_ranges: ClassVar[bool] = False  # can write part of its sequence (--frame-range)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # every pipeline's run, whoever calls it (service, Ray worker, test), ends with the job's LoRAs off
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and not getattr(run, "_releases_job_models", False):
            cls.run = _releasing_job_models(run)  # type: ignore[method-assign]

    def validate(self, job: JobSpec, registry: ModelRegistry) -> None:
        """Raise a UserError for anything wrong with the request that can be seen before running."""

    def lora_models(self, job: JobSpec, registry: ModelRegistry) -> dict[str, str]:
        """The models the job's LoRAs may go on, by role, in the order they are tried."""
        return {"model": self.model_id(job, registry)}

    def check_loras(self, job: JobSpec, registry: ModelRegistry) -> None:
        """At Submit: every LoRA is a LoRA file that fits one of the job's models (which are loaded for it)."""
        specs = job_loras(job.common, job.params)
        for spec in specs:  # the files first: a wrong path is refused before any model loads
            check_lora(spec)
        if specs:
            route_loras(specs, {role: registry.get(m) for role, m in self.lora_models(job, registry).items()})

    @abstractmethod
    def run(self, ctx: RunContext) -> list[str]:
        """Generate; return the output paths (frames, timelines)."""

    def work_units(self, job: JobSpec, registry: ModelRegistry, *, chunk: int, workers: int) -> list[WorkUnit]:
        """How the job splits into independent units for a cluster (scaleout/units.py): each unit run
        alone gives its frames exactly as the whole job does. `chunk` frames per chunk where frames are
        independent, `workers` to split among. One unit unless the pipeline knows better."""
        return single_unit()

    # ---- helpers most pipelines share -------------------------------------------------------
    def model_id(self, job: JobSpec, registry: ModelRegistry) -> str:
        return job.common.model or registry.default_model(self.families)

    def check_family(self, job: JobSpec, registry: ModelRegistry) -> None:
        entry = registry.entry(self.model_id(job, registry))
        if entry.family not in self.families:
            raise InvalidArgument(f"The {self.name} pipeline runs on {', '.join(self.families)} models; "
                                  f"'{entry.id}' is a {entry.family} model. Pick another with --model.")

    def resolve(self, job: JobSpec, adapter: FamilyAdapter) -> Resolved:
        c = job.common
        w, h = adapter.native_size
        recommended = getattr(adapter, "recommended_steps", adapter.default_steps)
        return Resolved(
            prompt=c.prompt, negative_prompt=c.negative_prompt, model=adapter.entry.id,
            seed=c.seed if c.seed is not None else random.randrange(2**31),
            steps=c.steps if c.steps is not None else recommended,
            guidance=c.guidance if c.guidance is not None else adapter.default_guidance,
            width=c.width or w, height=c.height or h,
            frames=c.frames or adapter.native_frames, fps=c.fps or 24.0,
            first_frame=c.first_frame if c.first_frame is not None else 1001,
            guidance_2=getattr(c, "guidance_2", None))


_PROJECTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def latent_projection(adapter: FamilyAdapter) -> LatentToRGB:
    """The model's latent -> RGB preview map, fitted once per loaded model (a small VAE decode)."""
    if adapter not in _PROJECTIONS:
        side = PROJECTION_FIT_CELLS * adapter.vae_scale_factor
        _PROJECTIONS[adapter] = fit_latent_to_rgb(adapter.decode, adapter.latent_shape(2, side, side, 1),
                                                  adapter.latent_channels, device=adapter.device, dtype=adapter.dtype)
    return _PROJECTIONS[adapter]


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator: noise is the same on every device, as in diffusers' `randn_tensor`."""
    return torch.Generator("cpu").manual_seed(int(seed))


def log_duration(ctx: RunContext, label: str, started: float) -> None:
    ctx.log(f"{label} took {time.perf_counter() - started:.1f} s")


def fields_of(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
