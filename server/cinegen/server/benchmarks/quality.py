"""`cinegen bench quality`: does each method do what it is for? Fixed seeds, measured on the pictures.

Four experiments (`quality/runs.py`), each a method against its baseline on the same seeds:
repetition (objects at 4× native: direct versus the cascade at its defaults, and the cascade's
ablation rows: dilation off, scale fusion off, both off), seam (ring versus plane panoramas and
versus MultiDiffusion's circular padding),
trajectory error (training-free control on versus off; and Tora's trained extractor and fusers on
versus off on a CogVideoX model, over 8 seeds) and consistency (story keyframes with
GoldenMem memory versus without). Side-by-side pictures go to `OUT/quality-*.png`.

Models: `--model` (an `sd` model; an `animatediff` one is taken as the video model) and
`--video-model` when the parser has them (a `cogvideox` `--model` is taken as Tora's model); otherwise the
trained toy models `toy-image` / `toy-video` / `toy-cogvideox` when registered, else the random-weight
`tiny-sd` / `tiny-animatediff` / `tiny-cogvideox`. Random weights prove nothing
about quality: the report says which kind ran (`trained`).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from ..models.registry import ModelRegistry
from ..quality.diagnostics import EMPTY_VIEW_METHODS, EmptyViewResult, empty_view_experiment
from ..quality.figures import Tile, mark_point, rolled_half, save_grid
from ..quality.runs import (CASCADE_VARIANTS, SEAM_METHODS, ConsistencyResult, RepetitionResult, RunSettings,
                            SeamResult, TrajectoryResult, consistency_experiment, repetition_experiment,
                            seam_experiment, tora_experiment, trajectory_experiment)
from ..devices import resolve_device

# toy-image-16 (16x16 latents) where registered: at toy-image's 8x8 the methods' parts have nothing to act on
TRAINED_DEFAULTS = {"sd": ("toy-image-16", "toy-image"), "animatediff": ("toy-video",), "cogvideox": ("toy-cogvideox",)}
RANDOM_DEFAULTS = {"sd": "tiny-sd", "animatediff": "tiny-animatediff", "cogvideox": "tiny-cogvideox"}
RANDOM_WEIGHT_PREFIX = "tiny-"  # the built-in models with seeded random weights
TRAJECTORY_FIGURE_FRAMES = 4
LARGEST_CPU_TARGET = 256  # px: 4x of a 64 px model, 2x of toy-image-16's 128 (what two CPU cores can measure)


def settings_for(native_side: int) -> RunSettings:
    """4x the native size up to LARGEST_CPU_TARGET, never less than 2x (repetition and panorama width)."""
    return RunSettings(scale=max(2, min(4, LARGEST_CPU_TARGET // native_side)))


def pick_model(registry: ModelRegistry, family: str, requested: str | None) -> str:
    """The requested model, else the trained toy model of the family when registered, else the tiny one."""
    if requested:
        return registry.entry(requested).id  # NOT_FOUND with the known models when it does not exist
    ids = {e.id for e in registry.entries() if e.family == family}
    return next((m for m in TRAINED_DEFAULTS[family] if m in ids), RANDOM_DEFAULTS[family])


def chosen_models(registry: ModelRegistry, args: argparse.Namespace) -> tuple[str, str]:
    requested = getattr(args, "model", None)
    video = getattr(args, "video_model", None)
    image = None
    if requested:
        family = registry.entry(requested).family
        if family == "animatediff":
            video = video or requested
        elif family != "cogvideox":  # a CogVideoX model is Tora's (`tora_model`)
            image = requested
    return pick_model(registry, "sd", image), pick_model(registry, "animatediff", video)


def tora_model(registry: ModelRegistry, args: argparse.Namespace) -> str:
    """The CogVideoX model Tora is measured on: a `cogvideox` `--model`, else toy-cogvideox, else tiny-cogvideox."""
    requested = getattr(args, "model", None)
    if requested and registry.entry(requested).family != "cogvideox":
        requested = None
    return pick_model(registry, "cogvideox", requested)


def model_info(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "trained": not model_id.startswith(RANDOM_WEIGHT_PREFIX)}


# ---- pictures -----------------------------------------------------------------------------------
def repetition_figure(result: RepetitionResult, out: Path) -> Path:
    rows = []
    for c in result.cases:
        n = c.counts
        rows.append([Tile(c.images["native"], f"native: {n['native']} (want {c.expected})"),
                     Tile(c.images["direct"], f"direct {result.target[0]}px: {n['direct']} objects")]
                    + [Tile(c.images[v], f"{v}: {n[v]}") for v in CASCADE_VARIANTS])
    return save_grid(out / "quality-repetition.png", rows, row_height=result.target[1])


def empty_view_figure(result: EmptyViewResult, out: Path) -> Path:
    rows = [[Tile(c.images["empty"], f"seed {c.seed}: empty view")]
            + [Tile(c.images[m], f"{m}: {c.counts[m]} objects") for m in EMPTY_VIEW_METHODS] for c in result.cases]
    return save_grid(out / "quality-empty-view.png", rows, row_height=2 * result.cases[0].images["empty"].shape[0])


def seam_figure(result: SeamResult, out: Path) -> Path:
    rows = [[Tile(rolled_half(c.images[p]), f"{p} seed {c.seed}: seam ratio {c.ratios[p]:.2f} (seam at centre)")]
            for c in result.cases for p in SEAM_METHODS]
    return save_grid(out / "quality-seam.png", rows, row_height=2 * result.size[1])


def trajectory_figure(result: TrajectoryResult, out: Path, name: str = "quality-trajectory.png") -> Path:
    step = max(1, result.frames // TRAJECTORY_FIGURE_FRAMES)
    rows = []
    for c in result.cases[:2]:
        for label in ("off", "on"):
            tiles = [Tile(mark_point(frame, *result.requested[f]), f"{label} f{f}" if f else
                          f"{label}: {c.errors[label]:.1f}px")
                     for f, frame in enumerate(c.videos[label]) if f % step == 0]
            rows.append(tiles)
    return save_grid(out / name, rows, row_height=2 * result.size[1])


def tora_figure(result: TrajectoryResult, out: Path) -> Path:
    return trajectory_figure(result, out, "quality-tora.png")


def consistency_figure(result: ConsistencyResult, out: Path) -> Path:
    rows = []
    for c in result.cases:
        for label in ("off", "on"):
            score = c.scores[label]
            tiles = [Tile(k, f"memory {label}" if i == 0 else (f"colour {score['colour']:.2f}" if i == 1 else ""))
                     for i, k in enumerate(c.keyframes[label])]
            rows.append(tiles)
    height = 2 * max(k.shape[0] for k in result.cases[0].keyframes["off"])
    return save_grid(out / "quality-consistency.png", rows, row_height=height)


# ---- the benchmark ------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    device = resolve_device(getattr(args, "device", "auto"))
    registry = ModelRegistry([Path(p) for p in getattr(args, "models", [])], device=device,
                             use_hf_cache=not getattr(args, "no_hf_cache", False))
    image_id, video_id = chosen_models(registry, args)
    tora_id = tora_model(registry, args)
    out = Path(getattr(args, "out", "cinegen-bench"))
    settings = settings_for(max(registry.get(image_id).native_size))
    report: dict[str, Any] = {"benchmark": "quality", "device": str(device), "torch": torch.__version__,
                              "image_model": model_info(image_id), "video_model": model_info(video_id),
                              "tora_model": model_info(tora_id),
                              "seeds": list(settings.seeds), "steps": settings.steps, "guidance": settings.guidance,
                              "scale": settings.scale}
    image, video, tora = registry.get(image_id), registry.get(video_id), registry.get(tora_id)
    pictures, seconds = [], {}
    experiments = (("repetition", repetition_experiment, image, repetition_figure),
                   ("empty_view", empty_view_experiment, image, empty_view_figure),  # the prior behind repetition
                   ("seam", seam_experiment, image, seam_figure),
                   ("trajectory", trajectory_experiment, video, trajectory_figure),
                   ("tora", tora_experiment, tora, tora_figure),  # trained extractor + fusers on vs off
                   ("consistency", consistency_experiment, image, consistency_figure))
    for name, experiment, adapter, figure in experiments:
        started = time.perf_counter()
        result = experiment(adapter, settings, lambda message: print(message, flush=True))
        seconds[name] = round(time.perf_counter() - started, 1)
        report[name] = result.as_dict()
        pictures.append(str(figure(result, out)))
    report["pictures"] = pictures
    report["seconds"] = seconds
    if not all(report[m]["trained"] for m in ("image_model", "video_model", "tora_model")):
        report["note"] = ("random-weight models measure the plumbing, not the methods: their pictures are noise, "
                          "so object counts, seams, errors and consistency say nothing about quality")
    return report
