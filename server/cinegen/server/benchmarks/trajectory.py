"""`cinegen bench trajectory`: trajectory error with and without control, and time per step.

On each tiny video model (FreeTraj on tiny-animatediff, Tora on tiny-cogvideox) a disc-sized track
crosses the frame diagonally; the same seed is generated with the trajectory control on and off,
the object is located per frame (trajectory_metric.py) and the mean pixel error against the track
is reported with the seconds per denoising step. The tiny models have random weights, so their
errors measure the plumbing, not the method: expect the two errors to be of the same size there.
"""
from __future__ import annotations

import argparse
import time

import torch

from cinegen.common.trajectory_io import parse_trajectory

from ..diffusion.sampler import LoopCallbacks
from ..models.registry import ModelRegistry
from ..pipelines.base import Resolved
from ..pipelines.trajectory import generate_trajectory_video, track_positions
from ..devices import resolve_device
from ..trajectory_metric import LocateParams, measure_trajectory_error
from .measure import measure

MODELS = ("tiny-animatediff", "tiny-cogvideox")


def diagonal_trajectory(size: int, frames: int, first_frame: int = 1001):
    margin = size / 6
    return parse_trajectory({"width": size, "height": size, "tracks": [{
        "name": "disc", "size": size / 3,
        "points": [{"frame": first_frame, "x": margin, "y": margin},
                   {"frame": first_frame + frames - 1, "x": size - margin, "y": size - margin}]}]})


class StepTimer:
    """Seconds between denoising steps, from the loop's on_step callback (the first step is left out:
    its gap also holds prompt encoding and, for Tora, the flow video's VAE encoding)."""

    def __init__(self) -> None:
        self.stamps = [time.perf_counter()]

    def __call__(self, done: int, todo: int) -> None:
        self.stamps.append(time.perf_counter())

    @property
    def seconds_per_step(self) -> float:
        gaps = [b - a for a, b in zip(self.stamps[1:], self.stamps[2:])]
        return sum(gaps) / max(len(gaps), 1)


def run(args: argparse.Namespace) -> dict:

    device = resolve_device(args.device)
    registry = ModelRegistry(device=device, use_hf_cache=False)
    rows = []
    for model in MODELS:
        adapter = registry.get(model)
        frames = 8 if adapter.family == "animatediff" else 9
        r = Resolved("a red disc", "", model, 0, 8, 6.0, 64, 64, frames, 24.0, 1001)
        trajectory = diagonal_trajectory(64, frames)
        requested = track_positions(trajectory, r.first_frame, frames)[0].numpy()
        for control in (False, True):
            timer = StepTimer()
            with measure(device) as m:
                video = generate_trajectory_video(adapter, r, trajectory, control=control,
                                                  callbacks=LoopCallbacks(on_step=timer))
            frames_hwc = video.permute(1, 2, 3, 0).float().cpu().numpy()
            error = measure_trajectory_error(frames_hwc, requested, LocateParams(reference="temporal"))
            rows.append({"model": model, "method": "tora" if adapter.family == "cogvideox" else "freetraj",
                         "control": control, "size": 64, "frames": frames, "steps": r.steps,
                         "trajectory_error_px": round(error.mean_px, 2),
                         "seconds_per_step": round(timer.seconds_per_step, 4), **m.as_dict()})
    return {"benchmark": "trajectory", "device": str(device), "torch": torch.__version__, "rows": rows,
            "note": "tiny random-weight models: errors test the plumbing, not the method's accuracy"}
