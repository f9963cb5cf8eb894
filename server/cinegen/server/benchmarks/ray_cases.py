"""What the Ray benchmarks share: one gRPC server per case (in-process, then 1, 2 and 4 local Ray workers
from one pool, one torch thread each), a warm-up job per case (workers load their models once), timed jobs
interleaved over the rounds, the frames each case wrote, and the speed-ups over one worker."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .measure import interleaved, ratio_stat

WORKER_COUNTS = (1, 2, 4)


@dataclass
class RayCaseRun:
    times: dict[str, list[float]]  # case -> wall seconds per round, Submit -> completed over gRPC
    frames: dict[str, dict[str, np.ndarray]]  # case -> its last job's frames by name

    def same_frames_as(self, reference: str) -> dict[str, bool]:
        """Whether each case wrote the reference case's frames, bit for bit."""
        ref = self.frames[reference]
        return {name: got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)
                for name, got in self.frames.items()}

    def speedups(self) -> list[dict[str, Any]]:
        one = self.times["1 worker(s)"]
        return [{"name": f"speed-up of {n} worker(s) over 1", "ratio": ratio_stat(one, self.times[f"{n} worker(s)"])}
                for n in WORKER_COUNTS[1:]]


def time_ray_cases(registry: Any, rounds: int, tmp: Path, request: Callable[[Path], Any],
                   collect: Callable[[Path], dict[str, np.ndarray]]) -> RayCaseRun:
    """Run `request(out)` on every case's server: once to warm up, then `rounds` interleaved timed runs;
    `collect(out)` reads the frames a run wrote."""
    import ray

    from cinegen.common.client import GeneratorClient

    from ..scaleout.ray_executor import RayUnitRunner, WorkerConfig, create_workers, start_local_ray
    from ..server import start_server
    from ..service import GeneratorService, ServerConfig

    start_local_ray(num_cpus=max(WORKER_COUNTS))
    servers: dict[str, Any] = {}
    try:
        pool = create_workers(WorkerConfig(use_hf_cache=False, cache_dir=str(registry.cache_dir), threads=1),
                              max(WORKER_COUNTS), {"num_cpus": 1})
        cases: dict[str, Any] = {"in-process": None,
                                 **{f"{n} worker(s)": RayUnitRunner(pool[:n]) for n in WORKER_COUNTS}}
        for name, runner in cases.items():
            config = ServerConfig(port=0, use_hf_cache=False)
            servers[name] = start_server(config, GeneratorService(config, registry=registry, unit_runner=runner))
        frames: dict[str, dict[str, np.ndarray]] = {}

        def one_job(name: str, _round: int) -> float:
            out = tmp / uuid.uuid4().hex
            with GeneratorClient(servers[name].address, timeout=600) as client:
                start = time.perf_counter()
                result = client.run(request(out))
                seconds = time.perf_counter() - start
            assert result.state == "completed", result.message
            frames[name] = collect(out)
            return seconds

        for name in cases:
            one_job(name, -1)  # warm-up: models loaded in every worker the case uses
        times = interleaved(list(cases), rounds, one_job)
    finally:
        for running in servers.values():
            running.stop()
        ray.shutdown()
    return RayCaseRun(times, frames)
