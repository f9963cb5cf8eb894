"""`cinegen bench ray-story`: wall time of an 8-shot story through the gRPC front, in-process and on
1, 2 and 4 local Ray workers (CPU: tiny models, one torch thread per worker), with the speed-up over
one worker and whether every case wrote the same frames.

Cases interleave over `--repeat` rounds (default 2) after a warm-up job per case (workers load their
models once); figures are medians with spreads. On a small shared CPU the speed-up is noisy and
capped by the cores: 4 workers on 2 cores only show the scheduling overhead.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .measure import ratio_stat, stat

SHOTS, FRAMES, STEPS, SIDE = 8, 8, 8, 64
WORKER_COUNTS = (1, 2, 4)


def story_yaml() -> str:
    shots = "".join(f"  - id: sh{10 * (k + 1):03d}\n    prompt: shot {k} of the harbour at dawn\n"
                    f"    frames: {FRAMES}\n" for k in range(SHOTS))
    return f"title: Bench Story\nfps: 24\nshots:\n{shots}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from cinegen.common.client import GeneratorClient, build_request
    from cinegen.common.exr import read_exr_frame
    from cinegen.common.params import CommonParams, StoryParams

    from ..models.registry import ModelRegistry
    from ..scaleout.ray_executor import RayUnitRunner, WorkerConfig, create_workers
    from ..server import start_server
    from ..service import GeneratorService, ServerConfig

    rounds = max(1, getattr(args, "repeat", 2) or 2)
    torch.set_num_threads(1)  # in-process as each worker: the same kernels, comparable frames
    registry = ModelRegistry(use_hf_cache=False)
    ray.init(num_cpus=max(WORKER_COUNTS), include_dashboard=False, log_to_driver=False)
    servers: dict[str, Any] = {}
    try:
        pool = create_workers(WorkerConfig(use_hf_cache=False, cache_dir=str(registry.cache_dir), threads=1),
                              max(WORKER_COUNTS), {"num_cpus": 1})
        cases: dict[str, Any] = {"in-process": None, **{f"{n} worker(s)": RayUnitRunner(pool[:n]) for n in WORKER_COUNTS}}
        for name, runner in cases.items():
            config = ServerConfig(port=0, use_hf_cache=False)
            servers[name] = start_server(config, GeneratorService(config, registry=registry, unit_runner=runner))
        times: dict[str, list[float]] = {name: [] for name in cases}
        frames: dict[str, dict[str, np.ndarray]] = {}
        with tempfile.TemporaryDirectory(prefix="cinegen-bench-ray-") as tmp:
            def one_job(name: str) -> float:
                out = Path(tmp) / uuid.uuid4().hex
                request = build_request("story", CommonParams(seed=5, steps=STEPS, width=SIDE, height=SIDE,
                                                              out=str(out)), StoryParams(story_yaml=story_yaml()))
                with GeneratorClient(servers[name].address, timeout=600) as client:
                    start = time.perf_counter()
                    result = client.run(request)
                    seconds = time.perf_counter() - start
                assert result.state == "completed", result.message
                frames[name] = {p.relative_to(out).as_posix(): read_exr_frame(p)[0] for p in out.glob("sh*/*.exr")}
                return seconds

            for name in cases:
                one_job(name)  # warm-up: models loaded in every worker the case uses
            for r in range(rounds):
                for name in (list(cases) if r % 2 == 0 else list(reversed(list(cases)))):
                    times[name].append(one_job(name))
        reference = frames["in-process"]
        same = {name: frames[name].keys() == reference.keys()
                and all(np.array_equal(frames[name][k], reference[k]) for k in reference) for name in cases}
    finally:
        for running in servers.values():
            running.stop()
        ray.shutdown()
    rows = [{"case": name, "shots": SHOTS, "frames": SHOTS * FRAMES, "seconds": stat(times[name], 3),
             "same_frames_as_in_process": same[name]} for name in cases]
    one = times["1 worker(s)"]
    comparisons = [{"name": f"speed-up of {n} worker(s) over 1", "ratio": ratio_stat(one, times[f"{n} worker(s)"])}
                   for n in WORKER_COUNTS[1:]]
    return {"benchmark": "ray-story", "device": "cpu", "rounds": rounds, "rows": rows, "comparisons": comparisons,
            "notes": [f"{SHOTS} shots x {FRAMES} frames, {SIDE}x{SIDE}, {STEPS} steps, tiny models; one torch thread "
                      "per worker; wall time Submit -> completed over gRPC; noisy on a shared machine"]}
