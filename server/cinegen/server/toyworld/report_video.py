"""Export the trained toy-video motion adapter (fp16, into the package), plot its loss, draw sample clips.

    python -m cinegen.server.toyworld.report_video --run DIR [--export] --docs docs/pictures/toyworld
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

from .report import grid, plot_losses, read_losses

PROMPTS = ("a red disc", "a blue square", "a yellow disc", "a black square")


def export_motion_adapter(folder: Path, dest: Path) -> None:
    """Save the adapter again in fp16 (half the bytes; loading upcasts to the requested dtype)."""
    from diffusers import MotionAdapter

    adapter = MotionAdapter.from_pretrained(str(folder)).to(torch.float16)
    if dest.exists():
        shutil.rmtree(dest)
    adapter.save_pretrained(str(dest), safe_serialization=True)


def sample_clip(adapter, prompt: str, seed: int, frames: int, steps: int = 20) -> list[np.ndarray]:
    """Frames (H, W, 3) in [0, 1] of one text-to-video run through the pipelines' own loop."""
    from ..pipelines.base import Resolved, seeded_generator
    from ..pipelines.trajectory import denoise, stock_noise

    w, h = adapter.native_size
    r = Resolved(prompt=prompt, negative_prompt="", model=adapter.entry.id, seed=seed, steps=steps, guidance=7.5,
                 width=w, height=h, frames=frames, fps=8.0, first_frame=0)
    generator = seeded_generator(seed)
    video = adapter.decode(denoise(adapter, r, stock_noise(adapter, r, generator), generator))[0]
    return [video[:, f].permute(1, 2, 0).float().numpy() for f in range(frames)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="the --out folder of train_video")
    p.add_argument("--docs", type=Path, required=True)
    p.add_argument("--export", action="store_true", help="copy the fp16 adapter into the package")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    a.docs.mkdir(parents=True, exist_ok=True)
    plot_losses(read_losses(a.run / "motion_loss.csv"), "motion module loss", a.docs / "motion_loss.png")
    shutil.copy(a.run / "motion_loss.csv", a.docs / "motion_loss.csv")
    from ..models.toy import TOY_MOTION_DIR, TOY_VIDEO_FRAMES

    if a.export:
        export_motion_adapter(a.run / "motion_adapter", TOY_MOTION_DIR)
    from ..models.registry import ModelRegistry

    adapter = ModelRegistry(use_hf_cache=False).get("toy-video")
    rows = [sample_clip(adapter, prompt, seed, TOY_VIDEO_FRAMES) for prompt in PROMPTS for seed in (0, 1)]
    grid(rows, 2).save(a.docs / "video_samples.png")
    from .clips import clip_batch

    clips, _ = clip_batch(0, 0, 4, adapter.native_size[0])
    grid([list(c.transpose(0, 2, 3, 1)) for c in clips], 2).save(a.docs / "clip_examples.png")


if __name__ == "__main__":
    main()
