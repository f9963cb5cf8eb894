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
from pathlib import Path
from typing import Any

import torch

from .measure import stat
from .ray_cases import time_ray_cases

SHOTS, FRAMES, STEPS, SIDE = 8, 8, 8, 64


def story_yaml() -> str:
    shots = "".join(f"  - id: sh{10 * (k + 1):03d}\n    prompt: shot {k} of the harbour at dawn\n"
                    f"    frames: {FRAMES}\n" for k in range(SHOTS))
    return f"title: Bench Story\nfps: 24\nshots:\n{shots}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cinegen.common.client import build_request
    from cinegen.common.exr import read_exr_frame
    from cinegen.common.params import CommonParams, StoryParams

    from ..models.registry import ModelRegistry

    rounds = max(1, getattr(args, "repeat", 2) or 2)
    torch.set_num_threads(1)  # in-process as each worker: the same kernels, comparable frames
    registry = ModelRegistry(use_hf_cache=False)
    with tempfile.TemporaryDirectory(prefix="cinegen-bench-ray-") as tmp:
        measured = time_ray_cases(
            registry, rounds, Path(tmp),
            lambda out: build_request("story", CommonParams(seed=5, steps=STEPS, width=SIDE, height=SIDE,
                                                            out=str(out)), StoryParams(story_yaml=story_yaml())),
            lambda out: {p.relative_to(out).as_posix(): read_exr_frame(p)[0] for p in out.glob("sh*/*.exr")})
    same = measured.same_frames_as("in-process")
    rows = [{"case": name, "shots": SHOTS, "frames": SHOTS * FRAMES, "seconds": stat(measured.times[name], 3),
             "same_frames_as_in_process": same[name]} for name in measured.times]
    return {"benchmark": "ray-story", "device": "cpu", "rounds": rounds, "rows": rows,
            "comparisons": measured.speedups(),
            "notes": [f"{SHOTS} shots x {FRAMES} frames, {SIDE}x{SIDE}, {STEPS} steps, tiny models; one torch thread "
                      "per worker; wall time Submit -> completed over gRPC; noisy on a shared machine"]}
