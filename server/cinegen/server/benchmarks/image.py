"""Image pipeline: seconds per frame on the tiny model (and the device it ran on)."""
from __future__ import annotations

import argparse

import torch

from ..models.registry import ModelRegistry
from ..pipelines.base import Resolved
from ..pipelines.image import generate_images
from ..devices import resolve_device
from .measure import measure


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    registry = ModelRegistry(device=device, use_hf_cache=False)
    adapter = registry.get("tiny-sd")
    rows = []
    generate_images(adapter, Resolved("warm-up", "", "tiny-sd", 0, 1, 7.5, 64, 64, 1, 24.0, 1001))
    for size in (64, 128):
        r = Resolved("a red disc", "", "tiny-sd", 0, 8, 7.5, size, size, 4, 24.0, 1001)
        with measure(device) as m:
            latents = generate_images(adapter, r)
            adapter.decode(latents)
        rows.append({"size": size, "frames": 4, "steps": 8, **m.as_dict(),
                     "seconds_per_frame": round(m.seconds / 4, 3)})
    return {"benchmark": "image", "device": str(device), "torch": torch.__version__, "rows": rows}
