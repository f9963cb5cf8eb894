"""Ray behind the same gRPC front: a job's work units (units.py) run on a pool of Ray actors.

The service, its queue, journal and event log stay as they are; only `pipeline.run(ctx)` is replaced
by `RayUnitRunner.run(pipeline, ctx)`, which
- splits the job into the units its pipeline declares (story: keyframes, a unit per shot, the cut;
  frame chunks; plates in chunks of whole clips, one per worker; or one unit),
- runs each unit, once the units it waits for are done, on an idle `UnitWorker` actor (one per GPU,
  `num_gpus=1`; on a CPU cluster `num_cpus=1`), which keeps its models resident in its own registry,
- forwards the unit's events (progress, previews, frames, log lines), in the order the unit made
  them, into the job's one event stream, with the job's overall fraction,
- stops every running unit on cancel (each worker checks a flag between steps, as in-process jobs do),
- runs a unit again, on the next idle worker, when its worker dies (Ray restarts the actor).
Units write their frames straight to the shared output folder, as a farm node would.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import errors
from ..errors import JobCancelled, UserError
from ..pipelines.base import JobSpec, Pipeline, RunContext, recorded_params
from .units import DEFAULT_CHUNK, WorkUnit, check_order, single_unit

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 4  # a unit whose worker was lost this many times fails the job
RETRY_DELAY_S = 1.0  # times the attempt: a worker Ray restarts (or that is only unreachable) gets a moment
POLL_S = 0.05  # how often the scheduler looks at cancel (a unit's end wakes it at once)
PREVIEW_SIDE = 256  # previews travel from the workers at most this big
PREVIEW_INTERVAL_S = 0.5
WORKER_START_S = 300  # workers that cannot be placed (a busy cluster) fail the start instead of hanging
MAX_BATCH = 64  # events of a unit sent together at most
ENDINGS = ("done", "cancelled", "user_error", "crash")  # a unit's last event
_USER_ERRORS = {cls.code: cls for cls in (errors.InvalidArgument, errors.NotFound, errors.FailedPrecondition,
                                           errors.ResourceExhausted, errors.PermissionDenied, errors.AlreadyExists)}


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to build its own model registry (the server's, on another machine)."""
    models_dirs: tuple[str, ...] = ()
    device: str = "cpu"
    memory_budget: int | None = None
    use_hf_cache: bool = True
    cache_dir: str | None = None
    threads: int | None = None  # torch CPU threads; results are bit-identical only at equal thread counts


# ------------------------------------------------------------------------------------------ the worker
class UnitWorker:
    """One Ray actor: a model registry kept resident, the pipelines, one unit at a time.

    `run_unit` is a streaming generator: it yields the unit's events, as lists of plain tuples in the
    order they happened, while the pipeline runs in a thread, ending with ("done", outputs),
    ("cancelled",), ("user_error", code, message) or ("crash", text). `cancel` arrives on a second actor thread while a unit runs."""

    def __init__(self, config: WorkerConfig):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # workers never reach for the network either
        if config.threads:
            import torch

            torch.set_num_threads(config.threads)
        from ..models.registry import ModelRegistry
        from ..pipelines import load_pipelines

        self.device, self.note = worker_device(config.device)
        if self.note:
            log.warning(self.note)
        self.registry = ModelRegistry([Path(p) for p in config.models_dirs], device=self.device,
                                      memory_budget=config.memory_budget, use_hf_cache=config.use_hf_cache,
                                      cache_dir=Path(config.cache_dir) if config.cache_dir else None)
        self.pipelines = load_pipelines()
        self._cancelled: set[str] = set()

    def pid(self) -> int:
        return os.getpid()

    def placement(self) -> dict[str, Any]:
        """Where Ray put this worker: its process, node, the GPUs Ray gave it (CUDA_VISIBLE_DEVICES is
        set to them, so `cuda` is the first of them), the device it runs on and why when not the GPU."""
        import ray

        context = ray.get_runtime_context()
        return {"pid": os.getpid(), "node": context.get_node_id(),
                "gpus": [str(g) for g in context.get_accelerator_ids().get("GPU", [])],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": self.device,
                "note": self.note}

    def cancel(self, key: str) -> None:
        self._cancelled.add(key)

    def run_unit(self, key: str, spec: JobSpec, existing_frames: str) -> Iterator[list[tuple]]:
        events: queue.Queue = queue.Queue()
        last_preview = [0.0]

        def preview(frame: int, rgb: np.ndarray) -> None:
            now = time.monotonic()
            if now - last_preview[0] >= PREVIEW_INTERVAL_S:  # previews are for the eye: few and small
                last_preview[0] = now
                step = max(1, -(-max(rgb.shape[:2]) // PREVIEW_SIDE))
                events.put(("preview", frame, np.ascontiguousarray(rgb[::step, ::step])))

        from ..models.job_models import JobModels

        models = JobModels(self.registry, spec.common.offload, lambda message: events.put(("log", message)))
        ctx = RunContext(job=spec, registry=models,
                         report_progress=lambda *a: events.put(("progress", *a)),
                         report_preview=preview,
                         report_frame=lambda *a: events.put(("frame", *a)),
                         report_log=lambda message: events.put(("log", message)),
                         is_cancelled=lambda: key in self._cancelled)
        ctx.existing_frames = existing_frames

        def work() -> None:
            try:
                events.put(("done", self.pipelines[spec.pipeline].run(ctx)))
            except JobCancelled:
                events.put(("cancelled",))
            except UserError as exc:
                events.put(("user_error", exc.code, exc.message))
            except Exception as exc:  # reported to the job like an in-process crash, with the worker's trace
                log.error("unit %s failed:\n%s", key, traceback.format_exc())
                events.put(("crash", f"{type(exc).__name__}: {exc}"))
            finally:
                models.close()  # model-offloaded weights back to CPU memory between units

        thread = threading.Thread(target=work, name=f"cinegen-unit-{key}", daemon=True)
        thread.start()
        try:
            while True:
                batch = [events.get()]
                while batch[-1][0] not in ENDINGS and not events.empty() and len(batch) < MAX_BATCH:
                    batch.append(events.get())  # what piled up travels as one object: fewer round trips
                yield batch
                if batch[-1][0] in ENDINGS:
                    return
        finally:
            thread.join()
            self._cancelled.discard(key)


def worker_device(requested: str) -> tuple[str, str]:
    """The device a worker runs on, and a sentence when it is not the one asked for: a worker Ray gave a
    GPU (its resources may be declared, `ray start --num-gpus`) where torch sees no CUDA runs on the CPU."""
    if requested != "cuda":
        return requested, ""
    import torch

    if torch.cuda.is_available():
        return "cuda", ""
    why = "torch here is built without CUDA" if torch.version.cuda is None else "no CUDA device or driver is usable"
    return "cpu", (f"Ray gave this worker GPU(s) {os.environ.get('CUDA_VISIBLE_DEVICES', '?')} (CUDA_VISIBLE_DEVICES) "
                   f"but {why} (torch {torch.__version__}); it runs on the CPU")


# ------------------------------------------------------------------------------------------ planning
def plan_units(pipeline: Pipeline, spec: JobSpec, registry: Any, chunk: int = DEFAULT_CHUNK,
               workers: int = 1) -> list[WorkUnit]:
    """The job's units, as its pipeline declares them from what the server knows at run time (story
    file, plate on disk), for `workers` workers."""
    if spec.common.frame_range:  # already a chunk
        return single_unit()
    return pipeline.work_units(spec, registry, chunk=chunk, workers=max(1, workers))


def unit_spec(spec: JobSpec, unit: WorkUnit) -> JobSpec:
    """The job with the unit's options: a story stage and its shots, or a frame range (the frames'
    headers keep the whole job's options: the files equal a single-box run's)."""
    recorded = spec.recorded_params or recorded_params(spec.common, spec.params)  # as a single-box run's
    if unit.stage:
        params = dataclasses.replace(spec.params, stage=unit.stage, shots=list(unit.shots))
        return dataclasses.replace(spec, params=params, recorded_params=recorded)
    if unit.frame_range:
        return dataclasses.replace(spec, common=dataclasses.replace(spec.common, frame_range=unit.frame_range),
                                   recorded_params=recorded)
    return spec


# ------------------------------------------------------------------------------------------ the driver
@dataclass
class _Running:
    unit: WorkUnit
    worker: Any
    key: str
    thread: threading.Thread
    attempt: int
    result: tuple | None = None  # the unit's last event, or ("lost", why) when its worker died
    cancel_sent: bool = False


class RayUnitRunner:
    """Runs jobs' units on Ray actors; `run(pipeline, ctx)` stands in for `pipeline.run(ctx)`."""

    def __init__(self, workers: list[Any], *, chunk: int = DEFAULT_CHUNK, placements: list[dict] | None = None):
        if not workers:
            raise ValueError("a Ray runner needs at least one worker")
        self.workers = list(workers)
        self.chunk = chunk
        self._serial = 0
        # "worker 2 (GPU 1)": who ran a unit, in the job's log; a restarted actor may sit elsewhere since
        self.labels = {id(w): f"worker {k + 1}" + (f" (GPU {','.join(p['gpus'])})" if p and p.get("gpus") else "")
                       for k, (w, p) in enumerate(zip(self.workers, placements or [None] * len(self.workers)))}

    @classmethod
    def start(cls, address: str, config: WorkerConfig, *, workers: int | None = None,
              chunk: int = DEFAULT_CHUNK) -> "RayUnitRunner":
        """Connect to the cluster at `address` (or start a local one for `local`) and create the workers:
        one per GPU of the cluster, else `workers` CPU workers (default 1)."""
        import ray

        if not ray.is_initialized():
            with _signal_handlers_kept():
                if address == "local":
                    start_local_ray(num_cpus=workers or None)
                else:
                    ray.init(address=address, log_to_driver=False)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus and workers and workers > gpus:
            raise SystemExit(f"--ray-workers {workers} is more than the cluster's {gpus} GPU(s): each worker holds "
                             f"one GPU; give at most {gpus}, or leave --ray-workers out for one per GPU.")
        count = workers or gpus or 1
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        config = dataclasses.replace(config, device="cuda" if gpus else "cpu")
        pool = create_workers(config, count, resources)
        placements = ray.get([w.placement.remote() for w in pool])
        for k, where in enumerate(placements):
            log.info("ray: worker %d: pid %s on node %s, GPU %s (CUDA_VISIBLE_DEVICES=%s), runs on %s", k + 1,
                     where["pid"], where["node"][:12], ",".join(where["gpus"]) or "none",
                     where["cuda_visible_devices"], where["device"])
            if where["note"]:
                log.warning("ray: worker %d: %s", k + 1, where["note"])
        return cls(pool, chunk=chunk, placements=placements)

    def close(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []

    # ---- one job -------------------------------------------------------------------------------
    def run(self, pipeline: Pipeline, ctx: RunContext) -> list[str]:
        units = plan_units(pipeline, ctx.job, ctx.registry, self.chunk, len(self.workers))
        check_order(units)
        if len(units) > 1:
            ctx.log(f"ray: {len(units)} units on {len(self.workers)} worker(s): "
                    f"{', '.join(u.name for u in units[:8])}{', ...' if len(units) > 8 else ''}")
        return _JobRun(self, ctx, units).run()

    def next_key(self, job_id: str, unit: WorkUnit) -> str:
        self._serial += 1
        return f"{job_id}/{unit.name}/{self._serial}"


class _JobRun:
    """The scheduler of one job: ready units to idle workers, events forwarded, cancel, retries."""

    def __init__(self, runner: RayUnitRunner, ctx: RunContext, units: list[WorkUnit]):
        self.runner, self.ctx, self.units = runner, ctx, units
        self.lock = threading.Lock()  # one unit's events reach the job at a time, each unit's in order
        self.fractions = {u.name: 0.0 for u in units}
        self.total_weight = sum(u.weight for u in units) or 1.0
        self.outputs: dict[str, list[str]] = {}
        self.attempts = {u.name: 0 for u in units}
        self.existing_frames = ctx.existing_frames
        self.unit_ended = threading.Event()  # wakes the scheduler at once instead of at its next poll
        self.not_before: dict[str, float] = {}  # a lost unit's next attempt waits until then

    def run(self) -> list[str]:
        pending = list(self.units)
        running: list[_Running] = []
        idle = list(self.runner.workers)
        failure: BaseException | None = None
        try:
            while pending or running:
                if failure is None and self._cancelled():
                    failure = JobCancelled()
                if failure is not None:
                    pending = []
                    self._cancel(running)
                now = time.monotonic()
                for unit in [u for u in pending if all(a in self.outputs for a in u.after)
                             and self.not_before.get(u.name, 0.0) <= now]:
                    if not idle:
                        break
                    pending.remove(unit)
                    running.append(self._start(unit, idle.pop(0)))
                self.unit_ended.wait(POLL_S)
                self.unit_ended.clear()
                for item in [r for r in running if r.result is not None]:
                    running.remove(item)
                    idle.append(item.worker)  # a dead worker comes back: Ray restarts the actor
                    outcome = self._finish(item)
                    if outcome == "retry":
                        pending.insert(0, item.unit)
                    elif outcome is not None and failure is None:
                        failure = outcome
        except BaseException as exc:  # even a bug here stops every unit before the job ends
            self._cancel(running)
            for item in running:
                item.thread.join(timeout=30)
            raise exc
        if failure is not None:
            raise failure
        ordered = [path for unit in self.units for path in self.outputs[unit.name]]
        return list(dict.fromkeys(ordered))  # the cut may be written by two units: listed once

    def _cancelled(self) -> bool:
        try:
            self.ctx.check_cancel()
            return False
        except JobCancelled:
            return True

    def _cancel(self, running: list[_Running]) -> None:
        for item in running:
            if item.result is None and not item.cancel_sent:
                item.worker.cancel.remote(item.key)
                item.cancel_sent = True

    def _start(self, unit: WorkUnit, worker: Any) -> _Running:
        self.attempts[unit.name] += 1
        attempt = self.attempts[unit.name]
        key = self.runner.next_key(self.ctx.job.job_id, unit)
        if len(self.units) > 1:
            self.ctx.log(f"ray: {unit.name} on {self.runner.labels.get(id(worker), 'a worker')}"
                         + (f" (attempt {attempt})" if attempt > 1 else ""))
        # a retried unit keeps the frames its lost attempt finished (they are whole: written, then renamed)
        existing = "keep" if attempt > 1 and self.existing_frames == "refuse" else self.existing_frames
        item = _Running(unit, worker, key, threading.Thread(), attempt)
        item.thread = threading.Thread(target=self._follow, args=(item, unit_spec(self.ctx.job, unit), existing),
                                       name=f"cinegen-ray-{unit.name}", daemon=True)
        item.thread.start()
        return item

    def _follow(self, item: _Running, spec: JobSpec, existing: str) -> None:
        import ray

        try:
            stream = item.worker.run_unit.options(num_returns="streaming").remote(item.key, spec, existing)
            for ref in stream:
                for event in ray.get(ref):
                    if event[0] in ENDINGS:
                        item.result = event
                        return
                    self._forward(item.unit, event)
            item.result = ("lost", "the worker ended the unit without a result")
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
            item.result = ("lost", type(exc).__name__)
        except Exception as exc:  # a failure of Ray itself is the job's failure, never a hang
            item.result = ("crash", f"{type(exc).__name__}: {exc}")
        finally:
            if item.result is None:
                item.result = ("crash", "the unit's follower thread stopped")
            self.unit_ended.set()

    def _forward(self, unit: WorkUnit, event: tuple) -> None:
        kind, ctx = event[0], self.ctx
        with self.lock:
            if kind == "progress":
                stage, step, total, fraction = event[1:]
                self.fractions[unit.name] = max(self.fractions[unit.name], fraction)
                overall = sum(self.fractions[u.name] * u.weight for u in self.units) / self.total_weight
                label = stage if unit.stage or unit.name == "all" else f"{unit.name} {stage}"
                ctx.progress(label, step, total, overall)
            elif kind == "frame":
                ctx.frame_written(*event[1:])
            elif kind == "preview":
                ctx.preview(event[1], event[2])
            elif kind == "log":
                ctx.log(event[1] if unit.name == "all" else f"{unit.name}: {event[1]}")

    def _finish(self, item: _Running) -> str | BaseException | None:
        """None when the unit is done; 'retry' after a lost worker; else the job's error."""
        result = item.result or ("lost", "no result")
        kind = result[0]
        if kind == "done":
            self.outputs[item.unit.name] = list(result[1])
            with self.lock:
                self.fractions[item.unit.name] = 1.0
            return None
        if kind == "cancelled":
            return JobCancelled()
        if kind == "user_error":
            return _USER_ERRORS.get(result[1], UserError)(result[2])
        if kind == "lost":
            if self._cancelled():
                return JobCancelled()
            if item.attempt < MAX_ATTEMPTS:
                self.not_before[item.unit.name] = time.monotonic() + RETRY_DELAY_S * item.attempt
                self.ctx.log(f"ray: the worker running {item.unit.name} was lost ({result[1]}); "
                             f"running it again (attempt {item.attempt + 1} of {MAX_ATTEMPTS})")
                return "retry"
            return RuntimeError(f"the Ray workers running {item.unit.name} were lost {MAX_ATTEMPTS} times "
                                f"({result[1]}); check the cluster's nodes and their memory")
        return RuntimeError(f"{item.unit.name} on a Ray worker: {result[1]}")


def start_local_ray(attempts: int = 3, **init_kwargs) -> None:
    """A Ray instance of this process's own (`address="local"`: never one another `ray start` left on the
    machine). Ray gives its raylet a fixed 30 s to register, which a busy 2-core box can miss: try again."""
    import ray

    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")  # a busy box starts the GCS slowly too
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", include_dashboard=False, log_to_driver=False, **init_kwargs)
            return
        except Exception as exc:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            log.warning("Ray's node did not start in time (attempt %d of %d); starting it again", attempt, attempts)
            ray.shutdown()


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Ray's driver installs its own SIGTERM/SIGINT handling; `cinegen serve` keeps its graceful stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def create_workers(config: WorkerConfig, count: int, resources: dict[str, float]) -> list[Any]:
    """`count` UnitWorker actors, restarted by Ray when their process dies (its unit is then re-run)."""
    import ray

    actor = ray.remote(UnitWorker).options(max_restarts=-1, max_task_retries=0, max_concurrency=2, **resources)
    workers = [actor.remote(config) for _ in range(count)]
    try:
        ray.get([w.pid.remote() for w in workers], timeout=WORKER_START_S)  # each built its registry: ready
    except ray.exceptions.GetTimeoutError:
        for worker in workers:
            ray.kill(worker, no_restart=True)
        raise SystemExit(f"Ray could not start {count} worker(s) with {resources} each within {WORKER_START_S} s: "
                         "the cluster lacks the free CPUs/GPUs (see `ray status`); ask for fewer workers.") from None
    return workers


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def start_ray_runner(config: Any, registry: Any) -> RayUnitRunner:
    """The runner of `cinegen serve --ray ADDRESS|local`, its workers configured like this server."""
    if not ray_available():
        raise SystemExit("--ray needs Ray on this machine: pip install 'cinegen[ray]'.")
    worker = WorkerConfig(models_dirs=tuple(str(p) for p in config.models_dirs), memory_budget=config.memory_budget,
                          use_hf_cache=config.use_hf_cache, cache_dir=str(registry.cache_dir))
    return RayUnitRunner.start(config.ray, worker, workers=config.ray_workers)
