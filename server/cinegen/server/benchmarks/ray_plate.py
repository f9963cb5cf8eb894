"""`cinegen bench ray-plate`: wall time of a video plate upscale (toy-video: 8-frame clips overlapping
by 2) through the gRPC front, in-process and on 1, 2 and 4 local Ray workers (CPU, one torch thread per
worker), with the chunks each case planned, the clips they refined (a boundary costs one clip twice),
the speed-up over one worker, and whether every case wrote the same frames bit for bit.

Cases interleave over `--repeat` rounds (default 2) after a warm-up job per case; figures are medians
with spreads. On a small shared CPU the speed-up is capped by the cores.
"""
from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .measure import stat
from .ray_cases import WORKER_COUNTS, time_ray_cases

MODEL, PLATE_FRAMES, SIDE, STEPS = "toy-video", 44, 32, 8  # 7 clips, at frames 0, 6, ..., 36; 64x64 out

def write_plate(folder: Path) -> str:
    from cinegen.common.exr import ExrMetadata, write_exr_frame

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    for k in range(PLATE_FRAMES):
        rgb = np.stack([(x + 2 * k) % SIDE / SIDE, y / SIDE, np.full_like(x, k / PLATE_FRAMES)], -1)
        write_exr_frame(folder / f"plate.{1001 + k}.exr", rgb, metadata=ExrMetadata())
    return str(folder / "plate.####.exr")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cinegen.common.client import build_request
    from cinegen.common.exr import read_exr_frame
    from cinegen.common.params import CommonParams, UpscaleParams

    from ..models.registry import ModelRegistry
    from ..pipelines import load_pipelines
    from ..pipelines.base import JobSpec
    from ..pipelines.upscale import plate_clip_length
    from ..scaleout.ray_executor import plan_units

    rounds = max(1, getattr(args, "repeat", 2) or 2)
    torch.set_num_threads(1)  # in-process as each worker: the same kernels, comparable frames
    registry = ModelRegistry(use_hf_cache=False)
    with tempfile.TemporaryDirectory(prefix="cinegen-bench-ray-plate-") as tmp:
        plate = write_plate(Path(tmp) / "plate")
        spec = JobSpec("plan", "upscale", CommonParams(model=MODEL, out="x.####.exr"), UpscaleParams(input=plate))
        plans = {n: plan_units(load_pipelines()["upscale"], spec, registry, workers=n) for n in WORKER_COUNTS}
        window = plate_clip_length(registry, MODEL)  # a unit's weight is the frames of the clips it refines
        measured = time_ray_cases(
            registry, rounds, Path(tmp),
            lambda out: build_request("upscale", CommonParams(model=MODEL, seed=2, steps=STEPS, prompt="a quay at dusk",
                                                              out=str(out / "up.####.exr")),
                                      UpscaleParams(input=plate, scale=2.0), job_id=f"bench-{uuid.uuid4().hex[:8]}"),
            lambda out: {p.name: read_exr_frame(p)[0] for p in out.glob("up.*.exr")})
    same = measured.same_frames_as("1 worker(s)")
    rows = []
    for name in measured.times:
        units = plans[int(name.split()[0]) if name != "in-process" else 1]
        rows.append({"case": name, "frames": PLATE_FRAMES, "chunks": " | ".join(u.name for u in units),
                     "clips_refined": round(sum(u.weight for u in units) / window),
                     "busiest_chunk_clips": round(max(u.weight for u in units) / window),
                     "seconds": stat(measured.times[name], 3), "same_frames_as_1_worker": same[name]})
    return {"benchmark": "ray-plate", "device": "cpu", "rounds": rounds, "rows": rows,
            "comparisons": measured.speedups(),
            "notes": [f"{MODEL} plate of {PLATE_FRAMES} frames {SIDE}x{SIDE} -> 64x64, {STEPS} steps (strength 0.5), "
                      "8-frame clips overlapping by 2; one torch thread per worker; wall time Submit -> completed "
                      "over gRPC; in-process frames may differ from the workers' in the last bits only where its "
                      "thread count differs (here it uses one too)"]}
