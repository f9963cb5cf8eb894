"""Toy-world models trained on CPU and committed with the code: builtin models that have learned something.

`toy-image` is a StableDiffusionPipeline folder (64 px native, factor-8 VAE, byte-level tokenizer)
trained by `python -m cinegen.server.toyworld.train_image`; its weights live in the package under
`toyworld/weights/image/` (fp16 safetensors) and "building" it copies them into the model cache, so
it loads through `StableDiffusionPipeline.from_pretrained` exactly like a downloaded model.

`toy-image-16` is the same model at a 128 px native size (16x16 latents): toy-image's VAE and text encoder
and its UNet fine-tuned on 128 px scenes by `python -m cinegen.server.toyworld.train_image16`; only that
UNet is committed (`toyworld/weights/image16/unet/`).

`toy-video` is AnimateDiff on top of it: only a `MotionAdapter` is trained and committed
(`toyworld/weights/video/motion_adapter/`, by `python -m cinegen.server.toyworld.train_video`), as
AnimateDiff's motion modules are distributed apart from the image model they plug into. Building it
assembles an `AnimateDiffPipeline` from toy-image's parts and the adapter and saves it, so it loads
through `AnimateDiffPipeline.from_pretrained` like any AnimateDiff folder.

`toy-cogvideox` is a CogVideoXPipeline folder (64 px, 9 frames, a 4x/4x causal 3-D VAE, a 4-layer DiT,
v-prediction) trained by `python -m cinegen.server.toyworld.train_cogvideox`, with Tora's trajectory
extractor and fusers trained on top of the frozen model by `python -m cinegen.server.toyworld.train_tora`
in its `tora/` subfolder (Tora's published names); `toyworld/weights/cogvideox/`, fp16, copied like toy-image.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .family import TinyModel

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "toyworld" / "weights"
TOY_IMAGE_DIR = WEIGHTS_DIR / "image"
TOY_MOTION_DIR = WEIGHTS_DIR / "video" / "motion_adapter"
TOY_IMAGE16_UNET_DIR = WEIGHTS_DIR / "image16" / "unet"  # toy-image-16: only its UNet differs from toy-image
TOY_COGVIDEOX_DIR = WEIGHTS_DIR / "cogvideox"
TOY_VIDEO_FRAMES = 8  # the clip length the motion module was trained on
CINEGEN_SIDECAR = "cinegen.json"  # what diffusers' folders do not say: e.g. {"native_frames": 8}


def build_toy_image(folder: Path) -> None:
    """Copy the committed toy-image diffusers folder into `folder` (which may already exist, empty)."""
    if not (TOY_IMAGE_DIR / "model_index.json").exists():
        raise FileNotFoundError(f"The toy-image weights are missing from {TOY_IMAGE_DIR}; reinstall cinegen "
                                "or retrain them with `python -m cinegen.server.toyworld.train_image`.")
    shutil.copytree(TOY_IMAGE_DIR, folder, dirs_exist_ok=True)


def build_toy_image16(folder: Path) -> None:
    """toy-image's folder with the UNet fine-tuned at 128 px (16x16 latents) in place of its own."""
    if not (TOY_IMAGE16_UNET_DIR / "config.json").exists():
        raise FileNotFoundError(f"The toy-image-16 weights are missing from {TOY_IMAGE16_UNET_DIR}; reinstall "
                                "cinegen or retrain them with `python -m cinegen.server.toyworld.train_image16`.")
    build_toy_image(folder)
    shutil.rmtree(folder / "unet")
    shutil.copytree(TOY_IMAGE16_UNET_DIR, folder / "unet")


def build_toy_video(folder: Path) -> None:
    """toy-image's VAE, text encoder and UNet with the committed motion adapter, saved as an AnimateDiff folder."""
    from diffusers import AnimateDiffPipeline, MotionAdapter, StableDiffusionPipeline

    if not (TOY_MOTION_DIR / "config.json").exists():
        raise FileNotFoundError(f"The toy-video motion weights are missing from {TOY_MOTION_DIR}; reinstall cinegen "
                                "or retrain them with `python -m cinegen.server.toyworld.train_video`.")
    sd = StableDiffusionPipeline.from_pretrained(str(TOY_IMAGE_DIR), dtype=torch.float16, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False,
                                                 local_files_only=True)
    adapter = MotionAdapter.from_pretrained(str(TOY_MOTION_DIR), dtype=torch.float16, local_files_only=True)
    pipe = AnimateDiffPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                               motion_adapter=adapter, scheduler=sd.scheduler)
    pipe.to(torch.float16)  # as committed: loading casts to the requested dtype
    pipe.save_pretrained(str(folder), safe_serialization=True)
    (folder / CINEGEN_SIDECAR).write_text(json.dumps({"native_frames": TOY_VIDEO_FRAMES}) + "\n")


def build_toy_cogvideox(folder: Path) -> None:
    """Copy the committed toy-cogvideox folder (with its `tora/` weights) into `folder`."""
    if not (TOY_COGVIDEOX_DIR / "model_index.json").exists():
        raise FileNotFoundError(f"The toy-cogvideox weights are missing from {TOY_COGVIDEOX_DIR}; reinstall cinegen "
                                "or retrain them with `python -m cinegen.server.toyworld.train_cogvideox` and "
                                "`python -m cinegen.server.toyworld.train_tora`.")
    shutil.copytree(TOY_COGVIDEOX_DIR, folder, dirs_exist_ok=True)


def read_sidecar(folder: Path) -> dict:
    """The optional `cinegen.json` of a model folder ({} when absent or unreadable)."""
    try:
        return json.loads((Path(folder) / CINEGEN_SIDECAR).read_text())
    except (OSError, ValueError):
        return {}


def toy_models() -> tuple[TinyModel, ...]:
    """The toy models of the `sd` family, for its `tiny` tuple."""
    return (TinyModel("toy-image", "Toy-world Stable Diffusion (trained on CPU: coloured discs and squares "
                      "on a sky/ground gradient, 64 px native)", build_toy_image, version=1),
            TinyModel("toy-image-16", "Toy-world Stable Diffusion at 128 px native (16x16 latents, where "
                      "FreeScale's dilation and scale fusion can act): toy-image's VAE and text encoder, its UNet "
                      "fine-tuned on 128 px scenes", build_toy_image16, version=1))


def toy_video_models() -> tuple[TinyModel, ...]:
    """The toy models of the `animatediff` family."""
    return (TinyModel("toy-video", "Toy-world AnimateDiff (toy-image plus a motion module trained on CPU: shapes "
                      f"moving along straight and curved paths, 64 px, {TOY_VIDEO_FRAMES} frames)", build_toy_video,
                      version=1),)


def toy_cogvideox_models() -> tuple[TinyModel, ...]:
    """The toy models of the `cogvideox` family."""
    return (TinyModel("toy-cogvideox", "Toy-world CogVideoX with Tora (a tiny video DiT, its 3-D VAE and Tora's "
                      "trajectory extractor and fusers trained on CPU: shapes moving along straight and curved "
                      "paths, 64 px, 9 frames)", build_toy_cogvideox, version=1),)
