"""Toy-world models trained on CPU and committed with the code: builtin models that have learned something.

`toy-image` is a StableDiffusionPipeline folder (64 px native, factor-8 VAE, byte-level tokenizer)
trained by `python -m cinegen.server.toyworld.train_image`; its weights live in the package under
`toyworld/weights/image/` (fp16 safetensors) and "building" it copies them into the model cache, so
it loads through `StableDiffusionPipeline.from_pretrained` exactly like a downloaded model.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .families import TinyModel

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "toyworld" / "weights"
TOY_IMAGE_DIR = WEIGHTS_DIR / "image"


def build_toy_image(folder: Path) -> None:
    """Copy the committed toy-image diffusers folder into `folder` (which may already exist, empty)."""
    if not (TOY_IMAGE_DIR / "model_index.json").exists():
        raise FileNotFoundError(f"The toy-image weights are missing from {TOY_IMAGE_DIR}; reinstall cinegen "
                                "or retrain them with `python -m cinegen.server.toyworld.train_image`.")
    shutil.copytree(TOY_IMAGE_DIR, folder, dirs_exist_ok=True)


def toy_models() -> tuple[TinyModel, ...]:
    """The toy models of the `sd` family, for its `tiny` tuple."""
    return (TinyModel("toy-image", "Toy-world Stable Diffusion (trained on CPU: coloured discs and squares "
                      "on a sky/ground gradient, 64 px native)", build_toy_image, version=1),)
