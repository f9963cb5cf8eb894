"""`cinegen demo`: a first run on a fresh machine, on the built-in tiny models.

Starts an in-process server, runs each available pipeline once at small sizes, writes EXR
sequences under the demo folder, and says how to look at them. Tiny random-weight models draw
noise-like pictures: that is expected (see the README for real weights).
"""
from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cinegen.common.client import build_request, new_job_id
from cinegen.common.params import PIPELINE_PARAMS, CommonParams


@dataclass
class DemoJob:
    pipeline: str
    common: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)


TRACK_JSON = ('{"width": 64, "height": 64, "tracks": [{"name": "disc", "size": 20, "points": '
              '[{"frame": 1001, "x": 12, "y": 12}, {"frame": 1008, "x": 52, "y": 52}]}]}')
TOY = "toy-image"
TOY_VIDEO = "toy-video"
STORY_YAML = """title: demo
characters: {Disc: a red disc}
shots:
  - {id: sh010, prompt: on the left, frames: 4, characters: [Disc], continuity: true}
  - {id: sh020, prompt: on the right, frames: 4, characters: [Disc]}
"""


def demo_jobs(out: Path) -> list[DemoJob]:
    def seq(name: str) -> str:
        return str(out / name / "demo.####.exr")

    return [
        # the toy-world model has learned discs and squares: real shapes on any machine
        DemoJob("image", dict(prompt="a red disc", model=TOY, seed=1, steps=20, width=64, height=64, frames=4,
                              out=seq("image"))),
        DemoJob("upscale", dict(prompt="a yellow disc", model=TOY, seed=2, steps=20, out=seq("upscale")),
                dict(scale=2.0)),
        DemoJob("panorama", dict(prompt="a blue square", model=TOY, seed=4, steps=20, width=256, height=64,
                                 out=seq("panorama")), dict(projection="ring")),
        DemoJob("trajectory", dict(prompt="a red disc", model=TOY_VIDEO, seed=3, steps=20, width=64,
                                   height=64, frames=8, out=seq("trajectory")), dict(trajectory_json=TRACK_JSON)),
        DemoJob("story", dict(model=TOY, seed=5, steps=12, out=str(out / "story")),
                dict(story_yaml=STORY_YAML, video_model=TOY_VIDEO)),
    ]


def run_demo(args: argparse.Namespace) -> int:
    from .job_client import connect, run_job, summarise_paths

    out = Path(args.out).absolute()
    args.server = None
    failures = 0
    with connect(args) as client:
        offered = {p.name for p in client.capabilities().pipelines}
        for job in demo_jobs(out):
            if job.pipeline not in offered:
                continue
            common = CommonParams(**job.common, overwrite=True)  # a second demo run replaces the samples
            params = PIPELINE_PARAMS[job.pipeline](**job.params)
            request = build_request(job.pipeline, common, params, job_id=new_job_id("demo"), client="cinegen demo")
            result = run_job(client, request, f"demo {job.pipeline}")
            if result.state != "completed":
                print(f"demo {job.pipeline} {result.state}: {result.message}")
                failures += 1
                continue
            for line in summarise_paths(result.outputs):
                print(f"  {job.pipeline:10s} {line}")
    print(f"\nDemo outputs are under {out}. Look at a frame with:\n"
          f"  oiiotool --info -v {shlex.quote(str(out / 'image' / 'demo.1001.exr'))}\n"  # pasteable with spaces
          "The demo uses toy-image and toy-video, small models trained on coloured discs and squares (they "
          "ship with cinegen), so expect simple shapes on a sky, not photographs. Point cinegen at real "
          "weights with --models DIR (see README).")
    return 1 if failures else 0
