"""The user-facing pipelines. A pipeline slots in by adding its class path to PIPELINE_CLASSES."""
from __future__ import annotations

import importlib

from .base import Pipeline

PIPELINE_CLASSES: list[str] = [
    "cinegen.server.pipelines.image:ImagePipeline",
    "cinegen.server.pipelines.upscale:UpscalePipeline",
    "cinegen.server.pipelines.panorama:PanoramaPipeline",
    "cinegen.server.pipelines.trajectory:TrajectoryPipeline",
    "cinegen.server.pipelines.story:StoryPipeline",
]


def load_pipelines() -> dict[str, Pipeline]:
    out: dict[str, Pipeline] = {}
    for path in PIPELINE_CLASSES:
        module, cls = path.split(":")
        pipeline = getattr(importlib.import_module(module), cls)()
        out[pipeline.name] = pipeline
    return out
