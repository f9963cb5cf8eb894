"""Export the trained toy-image model (fp16, into the package) and draw its loss curves and sample grids.

    python -m cinegen.server.toyworld.report --run DIR [--export] --docs docs/pictures/toyworld
Loss plots are drawn with PIL (no plotting library needed): raw loss in grey, a 50-step moving
average in black, log-scaled y axis.
"""
from __future__ import annotations

import argparse
import csv
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

PROMPTS = ("a red disc", "a blue square", "a yellow disc", "a black square",
           "a red disc and a blue square", "a yellow square and a black disc")


def export_weights(pipeline_folder: Path, dest: Path) -> None:
    """Save the pipeline again in fp16 (half the bytes; loading upcasts to the requested dtype)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(pipeline_folder), safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16)
    if dest.exists():
        shutil.rmtree(dest)
    pipe.save_pretrained(str(dest), safe_serialization=True)


def read_losses(path: Path) -> np.ndarray:
    with path.open() as f:
        return np.array([float(row["loss"]) for row in csv.DictReader(f)])


def plot_losses(losses: np.ndarray, title: str, out: Path, size: tuple[int, int] = (640, 360)) -> None:
    w, h = size
    margin = 48
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    window = min(50, max(1, len(losses) // 10))
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    lo, hi = math.log10(max(losses.min(), 1e-6)), math.log10(losses.max())
    hi = hi if hi > lo else lo + 1

    def xy(i: float, v: float) -> tuple[float, float]:
        x = margin + (w - 2 * margin) * i / max(1, len(losses) - 1)
        y = h - margin - (h - 2 * margin) * (math.log10(max(v, 1e-6)) - lo) / (hi - lo)
        return x, y

    draw.rectangle([margin, margin, w - margin, h - margin], outline="black")
    draw.line([xy(i, v) for i, v in enumerate(losses)], fill=(190, 190, 190), width=1)
    draw.line([xy(i + window - 1, v) for i, v in enumerate(smooth)], fill="black", width=2)
    for k in range(math.floor(lo), math.ceil(hi) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** k
            if lo <= math.log10(v) <= hi:
                y = xy(0, v)[1]
                draw.line([margin - 4, y, margin, y], fill="black")
                draw.text((4, y - 6), f"{v:g}", fill="black")
    draw.text((margin, 12), f"{title}: {len(losses)} steps, last {window}-step mean {smooth[-1]:.4f} (log y)",
              fill="black")
    draw.text((w // 2 - 20, h - margin + 8), "step", fill="black")
    draw.text((margin, h - margin + 8), "0", fill="black")
    draw.text((w - margin - 24, h - margin + 8), str(len(losses) - 1), fill="black")
    img.save(out)


def sample(adapter, prompt: str, seed: int, size: int, steps: int = 30, guidance: float = 7.5) -> np.ndarray:
    """One image (H, W, 3) in [0, 1] through the `image` pipeline's own sampler."""
    from ..pipelines.base import Resolved
    from ..pipelines.image import generate_images

    r = Resolved(prompt=prompt, negative_prompt="", model=adapter.entry.id, seed=seed, steps=steps,
                 guidance=guidance, width=size, height=size, frames=1, fps=24.0, first_frame=0)
    return adapter.decode(generate_images(adapter, r))[0].permute(1, 2, 0).float().numpy()


def grid(images: list[list[np.ndarray]], scale: int) -> Image.Image:
    rows = [np.concatenate(row, axis=1) for row in images]
    arr = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
    pil = Image.fromarray(arr)
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)


def load_toy_adapter(folder: Path):
    from ..models.family import ModelEntry
    from ..models.sd import load_sd

    return load_sd(ModelEntry("toy-image", "sd", "folder", str(folder)), torch.device("cpu"), torch.float32)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="the --out folder of train_image")
    p.add_argument("--docs", type=Path, required=True)
    p.add_argument("--export", action="store_true", help="copy the fp16 weights into the package")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    a.docs.mkdir(parents=True, exist_ok=True)
    for name in ("vae", "unet", "decoder"):
        if not (a.run / f"{name}_loss.csv").exists():
            continue
        plot_losses(read_losses(a.run / f"{name}_loss.csv"), f"{name} loss", a.docs / f"{name}_loss.png")
        shutil.copy(a.run / f"{name}_loss.csv", a.docs / f"{name}_loss.csv")
    from ..models.toy import TOY_IMAGE_DIR

    if a.export:
        export_weights(a.run / "pipeline", TOY_IMAGE_DIR)
    adapter = load_toy_adapter(TOY_IMAGE_DIR if a.export else a.run / "pipeline")
    native = adapter.native_size[0]
    rows = [[sample(adapter, prompt, seed, native) for seed in range(6)] for prompt in PROMPTS]
    grid(rows, 2).save(a.docs / "samples_native.png")
    big = [[sample(adapter, "a red disc", seed, native * 4) for seed in range(3)]]
    grid(big, 1).save(a.docs / "samples_4x_direct.png")
    from .world import batch

    images, _ = batch(0, 0, 12, native)
    grid([list(images[:6].transpose(0, 2, 3, 1)), list(images[6:].transpose(0, 2, 3, 1))], 2).save(
        a.docs / "world_examples.png")


if __name__ == "__main__":
    main()
