"""`cinegen bench`: time and peak memory of pipelines. Benchmarks measure; tests never time."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

# name -> module with `run(args) -> dict` ; each pipeline adds its own entry
BENCHMARKS: dict[str, str] = {
    "image": "cinegen.server.benchmarks.image",
    "trajectory": "cinegen.server.benchmarks.trajectory",
    "upscale": "cinegen.server.benchmarks.upscale",
    "panorama": "cinegen.server.benchmarks.panorama",
    "upscale-dit": "cinegen.server.benchmarks.upscale_dit",
    "quality": "cinegen.server.benchmarks.quality",
}


def run_bench(args: argparse.Namespace) -> int:
    if args.what not in BENCHMARKS:
        print(f"Unknown benchmark '{args.what}'. Available: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[args.what])
    report = module.run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.what}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"report written to {path}")
    return 0
