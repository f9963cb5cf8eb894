"""Export toy-image-16's fine-tuned UNet (fp16, into the package) and draw its loss curve and samples.

    python -m cinegen.server.toyworld.report_image16 --run DIR [--export] --docs docs/pictures/toyworld
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from .report import PROMPTS, grid, load_toy_adapter, plot_losses, read_losses, sample


def export_unet(run_unet: Path, dest: Path) -> None:
    """The UNet again in fp16 (half the bytes; loading upcasts to the requested dtype)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(run_unet)).to(torch.float16)
    if dest.exists():
        shutil.rmtree(dest)
    unet.save_pretrained(str(dest), safe_serialization=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="the --out folder of train_image16")
    p.add_argument("--docs", type=Path, required=True)
    p.add_argument("--export", action="store_true", help="copy the fp16 UNet into the package")
    p.add_argument("--seeds", type=int, default=4)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    a.docs.mkdir(parents=True, exist_ok=True)
    plot_losses(read_losses(a.run / "unet16_loss.csv"), "toy-image-16 unet loss", a.docs / "unet16_loss.png")
    shutil.copy(a.run / "unet16_loss.csv", a.docs / "unet16_loss.csv")
    from ..models.toy import TOY_IMAGE16_UNET_DIR, build_toy_image16

    if a.export:
        export_unet(a.run / "unet", TOY_IMAGE16_UNET_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "toy-image-16"
        build_toy_image16(folder)
        if not a.export:  # the run's own UNet in place of the committed one
            shutil.rmtree(folder / "unet")
            shutil.copytree(a.run / "unet", folder / "unet")
        adapter = load_toy_adapter(folder)
        native = adapter.native_size[0]
        rows = [[sample(adapter, prompt, seed, native, steps=20) for seed in range(a.seeds)] for prompt in PROMPTS]
        grid(rows, 1).save(a.docs / "samples16_native.png")


if __name__ == "__main__":
    main()
