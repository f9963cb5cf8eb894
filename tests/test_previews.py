"""Previews while the steps run: a fitted latent -> RGB map, rate-limited, in every pipeline's loop."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cinegen.common.params import (CommonParams, ImageParams, PanoramaParams, StoryParams, TrajectoryParams,
                                   UpscaleParams)
from cinegen.server.diffusion.latent_rgb import fit_latent_to_rgb
from cinegen.server.pipelines import base, load_pipelines
from cinegen.server.pipelines.base import JobSpec, RunContext

STORY = """
title: preview test
fps: 24
shots:
  - id: sh010
    prompt: a lighthouse
    frames: 2
"""
TRACKS = {"origin": "top-left", "width": 64, "height": 64,
          "tracks": [{"name": "a", "size": 16, "points": [{"frame": 1001, "x": 10, "y": 10},
                                                          {"frame": 1004, "x": 50, "y": 50}]}]}


@pytest.mark.parametrize("layout", ["BCHW", "BCFHW", "BFCHW"])
def test_the_fit_recovers_a_linear_decoder(layout):
    weight = torch.tensor([[0.3, -0.2, 0.1, 0.05], [0.0, 0.25, -0.1, 0.2], [0.1, 0.1, 0.1, -0.3]])
    bias = torch.tensor([0.5, 0.4, 0.6])
    shape = {"BCHW": (2, 4, 8, 8), "BCFHW": (2, 4, 1, 8, 8), "BFCHW": (2, 1, 4, 8, 8)}[layout]

    def linear_decoder(z):
        x = z if layout == "BCHW" else (z[:, :, 0] if layout == "BCFHW" else z[:, 0])
        rgb = torch.einsum("rc,bchw->brhw", weight, x) + bias[None, :, None, None]
        return F.interpolate(rgb, scale_factor=8, mode="nearest")  # each latent cell covers 8x8 pixels

    projection = fit_latent_to_rgb(linear_decoder, shape, 4, device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(projection.weight, weight, atol=1e-5, rtol=0)  # exact data: lstsq is exact
    torch.testing.assert_close(projection.bias, bias, atol=1e-5, rtol=0)
    latent = torch.randn(shape)
    expected = linear_decoder(latent)[0, :, ::8, ::8].clamp(0, 1)
    torch.testing.assert_close(projection(latent), expected, atol=1e-5, rtol=0)


class _Recorder:
    """What a pipeline reports, in order: ('progress', stage, step, total) and ('preview', frame)."""

    def __init__(self):
        self.events: list[tuple] = []

    def context(self, job: JobSpec, registry) -> RunContext:
        return RunContext(job=job, registry=registry,
                          report_progress=lambda stage, step, total, f: self.events.append(("progress", stage, step, total)),
                          report_preview=lambda frame, rgb: self.events.append(("preview", frame, rgb.shape)),
                          report_frame=lambda *a: None, report_log=lambda m: None, is_cancelled=lambda: False)


def test_previews_are_rate_limited_and_checked_before_any_work(registry, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(base.time, "monotonic", lambda: clock[0])
    recorder = _Recorder()
    ctx = recorder.context(JobSpec("j", "image", CommonParams(), ImageParams()), registry)
    adapter = registry.get("tiny-sd")
    on_latent = ctx.latent_preview(adapter)
    calls = []
    monkeypatch.setattr(base, "latent_projection", lambda a: calls.append(a))  # fitted once, above
    latent = torch.randn(adapter.latent_shape(1, 64, 64))
    for _ in range(5):
        on_latent(latent)
    clock[0] += base.PREVIEW_INTERVAL_S
    on_latent(latent)
    previews = [e for e in recorder.events if e[0] == "preview"]
    assert len(previews) == 2 and previews[0][2][2] == 3 and calls == []


CASES = {
    "image": (dict(steps=3, width=64, height=64, frames=1), ImageParams()),
    "panorama": (dict(steps=3, width=128, height=64), PanoramaParams()),
    "trajectory": (dict(model="tiny-animatediff", steps=3, width=64, height=64, frames=4),
                   TrajectoryParams(trajectory_json=json.dumps(TRACKS))),
    "upscale": (dict(steps=3), UpscaleParams(scale=2.0)),
    "upscale-dit": (dict(model="tiny-wan", steps=3), UpscaleParams(scale=2.0)),
    "story": (dict(steps=3), StoryParams(story_yaml=STORY)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_pipeline_previews_during_its_denoising_steps(case, registry, tmp_path, monkeypatch):
    monkeypatch.setattr(base, "PREVIEW_INTERVAL_S", 0.0)  # every step's preview is shown
    common, params = CASES[case]
    pipeline = case.split("-")[0]
    out = tmp_path / "story" if pipeline == "story" else tmp_path / "f.####.exr"
    recorder = _Recorder()
    job = JobSpec(f"preview-{case}", pipeline, CommonParams(prompt="a red disc", seed=1, out=str(out), **common),
                  params)
    load_pipelines()[pipeline].run(recorder.context(job, registry))
    steps = [i for i, e in enumerate(recorder.events) if e[0] == "progress" and e[3] == 3 and 1 <= e[2] <= 3]
    assert steps, f"{case}: no denoising progress"
    during = [e for e in recorder.events[steps[0]:steps[-1]] if e[0] == "preview"]
    assert len(during) >= 2, f"{case}: previews between the first and the last step: {recorder.events}"
    assert all(np.prod(e[2][:2]) > 0 for e in during)
