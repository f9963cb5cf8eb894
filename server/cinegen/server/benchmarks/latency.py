"""`cinegen bench latency`: what an artist waits for before seeing anything.

1. Submit → first preview and Submit → first denoising step of an `image` job on the tiny model
   over gRPC on 127.0.0.1 (round 1 loads the model: "cold"; the others find it loaded: "warm").
2. Cold start of the light commands in a fresh interpreter: `cinegen --help`, `cinegen pipelines
   --server` against a running server, and the same listing with torch and diffusers imported
   first (what `pipelines --server` paid before the light commands stopped importing them).
Rounds interleave the commands; figures are medians with spreads.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .measure import stat

CLI = [sys.executable, "-m", "cinegen.server.cli"]
HEAVY_FIRST = [sys.executable, "-c", "import sys, torch, diffusers; from cinegen.server.cli import main; "
               "sys.exit(main(sys.argv[1:]))"]


def preview_latency(client: Any, folder: Path, steps: int) -> dict[str, float]:
    from cinegen.common.client import build_request
    from cinegen.common.params import CommonParams

    seen: dict[str, float] = {}
    request = build_request("image", CommonParams(prompt="a red disc", seed=1, steps=steps, width=64, height=64,
                                                  frames=1, out=str(folder / uuid.uuid4().hex / "i.####.exr")),
                            job_id=f"bench-latency-{uuid.uuid4().hex[:8]}")

    def on_event(event: Any) -> None:
        kind = event.WhichOneof("kind")
        if kind == "preview":
            seen.setdefault("preview", time.perf_counter())
        elif kind == "progress" and event.progress.step >= 1:
            seen.setdefault("step", time.perf_counter())

    start = time.perf_counter()
    result = client.run(request, on_event=on_event)
    end = time.perf_counter()
    assert result.state == "completed", result.message
    return {"first_preview_s": seen.get("preview", end) - start, "first_step_s": seen.get("step", end) - start,
            "job_s": end - start}


def _timed_command(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cinegen.common.client import GeneratorClient

    from ..server import start_server
    from ..service import ServerConfig

    rounds = max(2, getattr(args, "repeat", 2) or 2)
    steps = 2 if getattr(args, "tiny", False) else 8
    running = start_server(ServerConfig(port=0, use_hf_cache=False, device=args.device))
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="cinegen-bench-latency-") as tmp, \
                GeneratorClient(running.address, timeout=120) as client:
            client.wait_ready(timeout=60)
            jobs = [preview_latency(client, Path(tmp), steps) for _ in range(rounds)]
            for label, chosen in (("cold (round 1 loads the model)", jobs[:1]), ("warm (model loaded)", jobs[1:])):
                rows.append({"part": "Submit → first preview", "case": f"image 64², {steps} steps, {label}",
                             **{k: stat([j[k] for j in chosen], 3) for k in ("first_preview_s", "first_step_s", "job_s")}})
            commands = {"cinegen --help": CLI + ["--help"],
                        "cinegen pipelines --server": CLI + ["pipelines", "--server", running.address],
                        "same, torch + diffusers imported first (before)": HEAVY_FIRST + ["pipelines", "--server",
                                                                                           running.address]}
            times: dict[str, list[float]] = {name: [] for name in commands}
            for r in range(rounds):
                for name in (list(commands) if r % 2 == 0 else list(reversed(commands))):
                    times[name].append(_timed_command(commands[name]))
            rows += [{"part": "cold start", "case": name, "seconds": stat(samples, 3)} for name, samples in times.items()]
    finally:
        running.stop()
    return {"benchmark": "latency", "device": args.device, "rounds": rounds, "rows": rows}
