"""The figure for plates with highlights (docs/methods.md): max value in vs out, mean error in the highlights,
before (plate in and out by the sRGB curve, clipped at 1: the path until this change, which
``--display-transform srgb`` with the highlight rule turned off still is) and after (the job's default: in
through the SDR view forward, out through its inverse, the plate kept beyond the view).

    OMP_NUM_THREADS=1 .venv/bin/python tools/plate_highlights_figure.py [--model toy-image] [--picture PNG]

A 64 px test plate (ACEScg): a grey ground with a lit disc, a neutral ramp 0..8, a sun of 200 and an orange
practical (8, 2, 1); through an identity stand-in model at scale 1 (the colour path alone), and upscaled 2x
by the upscale pipeline on the model at strength 0 (its VAE only) and 0.5 (refined).
"Highlights": output pixels where the plate (bilinear to the output size) has a channel above 1. Errors are
against that upscaled plate: mean |out - plate| / plate (brightest channel) and mean |log2 out/plate| (stops).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from cinegen.common.exr import ExrMetadata, read_exr_frame, write_exr_frame
from cinegen.common.params import CommonParams, UpscaleParams
from cinegen.server.models.registry import ModelRegistry
from cinegen.server.output import plate_highlights
from cinegen.server.pipelines.base import JobSpec, RunContext
from cinegen.server.pipelines.upscale import UpscalePipeline


def test_plate(size: int = 64) -> np.ndarray:
    """A toy-world shot (the toy models' world: sky over ground, a disc) with light in it: a sky that
    brightens to 4 at the horizon (inside the view), a sun of 200 and an orange practical (8, 2, 1)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    horizon = size * 0.55
    t = np.clip(y / horizon, 0, 1)[..., None]
    rgb = np.where(y[..., None] < horizon, (1 - t) * np.array([0.25, 0.45, 0.9]) + t * np.array([4.0, 4.0, 4.2]),
                   np.array([0.08, 0.3, 0.06])).astype(np.float32)
    rgb[np.hypot(x - 44, y - 46) < 9] = (0.7, 0.05, 0.04)  # a red disc on the ground
    rgb[np.hypot(x - 18, y - 18) < 5] = 200.0  # the sun
    rgb[50:56, 12:18] = (8.0, 2.0, 1.0)  # an orange practical
    return rgb


@contextlib.contextmanager
def identity_model():
    """A stand-in that changes nothing: the cascade hands the plate's model pixels back (the colour path alone)."""
    from cinegen.server.pipelines import upscale

    saved = upscale.run_cascade, upscale.decode_latents
    upscale.run_cascade = lambda adapter, cond, x0, *a, **k: x0  # run at scale 1: no resize either
    upscale.decode_latents = lambda adapter, images, settings: images
    try:
        yield
    finally:
        upscale.run_cascade, upscale.decode_latents = saved


@contextlib.contextmanager
def rule_off():
    original = plate_highlights.PlateHighlights.apply
    plate_highlights.PlateHighlights.apply = lambda self, output: output
    try:
        yield
    finally:
        plate_highlights.PlateHighlights.apply = original


def run(registry: ModelRegistry, folder: Path, model: str, strength: float, transform: str, name: str,
        scale: float = 2.0) -> np.ndarray:
    job = JobSpec(name, "upscale", CommonParams(model=model, steps=20, seed=5, prompt="a red disc",
                                                out=str(folder / name / "o.####.exr"), display_transform=transform),
                  UpscaleParams(input=str(folder / "plate.####.exr"), scale=scale, strength=strength))
    ctx = RunContext(job=job, registry=registry, report_progress=lambda *e: None, report_preview=lambda *a: None,
                     report_frame=lambda *a: None, report_log=lambda line: None, is_cancelled=lambda: False)
    UpscalePipeline().validate(job, registry)
    return read_exr_frame(UpscalePipeline().run(ctx)[0])[0][..., :3]


def figures(out: np.ndarray, plate_up: np.ndarray) -> dict:
    """Max out; per region of the upscaled plate the mean error: beyond the view (the rule's weight > 0),
    above 1 but inside the view (the model carries it), inside [0, 1]."""
    beyond = plate_highlights.plate_to_model(plate_up, "view").highlights
    beyond = np.zeros(plate_up.shape[:2], bool) if beyond is None else beyond.weight > 0
    peak = plate_up.max(axis=-1)
    regions = {"beyond_view": beyond, "above_1_inside_view": (peak > 1.0) & ~beyond, "inside_0_1": peak <= 1.0}
    row: dict = {"max_out": round(float(out.max()), 3)}
    for name, mask in regions.items():
        o, p = out[mask].max(axis=-1), peak[mask]
        stops = np.abs(np.log2(np.maximum(o, 1e-4) / np.maximum(p, 1e-4)))
        row[name] = {"pixels": int(mask.sum()), "mean_abs_stops": round(float(stops.mean()), 3),
                     "mean_rel_error": round(float(np.mean(np.abs(o - p) / np.maximum(p, 1e-2))), 3)}
    return row


def picture(path: Path, *rows: list[np.ndarray]) -> None:
    """Each image at -6 stops through the sRGB curve (the highlights' shape visible), side by side, rows stacked."""
    from PIL import Image

    from cinegen.common.color import scene_linear_to_srgb_display

    def tile(c: np.ndarray) -> np.ndarray:
        shown = np.clip(scene_linear_to_srgb_display(np.ascontiguousarray(c * 2.0 ** -6)), 0, 1)
        return np.pad(shown, ((2, 2), (2, 2), (0, 0)), constant_values=1.0)

    strip = np.concatenate([np.concatenate([tile(c) for c in row], axis=1) for row in rows], axis=0)
    image = Image.fromarray((strip * 255 + 0.5).astype(np.uint8)).resize((strip.shape[1] * 2, strip.shape[0] * 2),
                                                                        Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-image")
    parser.add_argument("--picture", type=Path, help="write plate / before / after (rows: strength 0, 0.5) at -6 stops")
    args = parser.parse_args()
    registry = ModelRegistry(use_hf_cache=False)
    rgb = test_plate()
    plate_up = torch.nn.functional.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None], scale_factor=2,
                                               mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    report: dict = {"model": args.model, "plate_max_in": float(rgb.max()),
                    "highlight_pixels_out": int((plate_up.max(-1) > 1).sum())}
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_exr_frame(folder / "plate.1001.exr", rgb, metadata=ExrMetadata())
        with identity_model():  # the colour path alone, at scale 1: compared with the plate itself
            with rule_off():
                before = run(registry, folder, args.model, 0.0, "srgb", "before-identity", scale=1.0)
            after = run(registry, folder, args.model, 0.0, "view", "after-identity", scale=1.0)
        report["identity model, scale 1"] = {"before": figures(before, rgb), "after": figures(after, rgb)}
        for strength in (0.0, 0.5):
            with rule_off():
                before = run(registry, folder, args.model, strength, "srgb", f"before{strength}")
            after = run(registry, folder, args.model, strength, "view", f"after{strength}")
            report[f"{args.model} strength {strength}"] = {"before": figures(before, plate_up),
                                                          "after": figures(after, plate_up)}
            outputs[strength] = (before, after)
    if args.picture:
        picture(args.picture, [plate_up, *outputs[0.0]], [plate_up, *outputs[0.5]])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
