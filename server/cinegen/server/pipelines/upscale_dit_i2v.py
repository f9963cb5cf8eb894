"""CineScale image-to-video on Wan I2V models: the first frame conditions every stage at that stage's size.

CineScale's high-resolution I2V mode (ALGORITHMS.md §1b) runs the same cascade as text-to-video,
with the image-to-video model's own condition at each stage:

- **generate** (``--input IMAGE``; a sequence's first frame): the image is the video's first frame.
  The base stage at the training size is the stock ``WanImageToVideoPipeline`` computation (bit for
  bit with CineScale's knobs at identity, tests). Every refinement stage builds the stock I2V
  condition again at *its* size — the image resized by the pipeline's own processor, the VAE latent
  of ``[image, 0, …, 0]`` and the frame mask — so the last stage sees the picture at the target
  resolution, not an upsampled latent of it. CLIP image tokens (Wan 2.1 I2V) are the image's at
  every stage; a model with no image projection takes none. CineScale's upsample, re-noising at
  step K, NTK-RoPE and attention scaling run on top, unchanged.
- **plate / refine**: the plate is refined as on a text-to-video model (its latents re-noised at K),
  conditioned on its own first frame at each stage's size.
- Clips longer than the model's own are denoised in temporal windows; the condition is windowed
  with the latent (stacked on the channels), so each window sees its own frames of it — the first
  window the image, later ones the mask 0 and the encoded zeros, as an I2V model sees frames after
  the first.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..diffusion.temporal_chunks import predict_in_temporal_windows
from ..models.family import Conditioning, ModelEntry

__all__ = ["condition_windows_predict", "entry_is_image_to_video", "stage_condition"]


def entry_is_image_to_video(registry: Any, entry: ModelEntry) -> bool:
    """Whether a Wan entry is an image-to-video model, from its folder's model_index.json (built-in or
    already loaded models: from the model itself)."""
    index = Path(entry.path) / "model_index.json" if entry.path else None
    if index is not None and index.is_file():
        try:
            return json.loads(index.read_text()).get("_class_name") == "WanImageToVideoPipeline"
        except (OSError, ValueError):
            return False
    if entry.source == "builtin" or registry.is_loaded(entry.id):
        return bool(getattr(registry.get(entry.id), "is_image_to_video", False))
    return False


def stage_condition(adapter: Any, cond: Conditioning, image: torch.Tensor, frames: int, width: int,
                    height: int) -> Conditioning:
    """``cond`` with the stock I2V condition of ``image`` (3, H, W) for a width × height clip of ``frames``."""
    rows = torch.zeros(adapter.latent_shape(1, width, height, frames), dtype=torch.float32, device=adapter.device)
    return adapter.with_image_condition(cond, image, rows, frames, width, height)  # only the rows' shape is used


def condition_windows_predict(adapter: Any, cond: Conditioning, window: int, overlap: int) -> Callable:
    """``(v, t) → velocity`` with ``cond``'s I2V condition cut to each temporal window of the latent."""
    condition = cond.extra["condition"]

    def predict(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if v.shape[2] <= window:
            return adapter.predict(v, t, cond)  # one window: the stock call
        channels = v.shape[1]

        def one(z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            own = dataclasses.replace(cond, extra={**cond.extra, "condition": z[:, channels:]})
            return adapter.predict(z[:, :channels], u, own)
        return predict_in_temporal_windows(one, torch.cat([v, condition.to(v.dtype)], dim=1), t, window, overlap)
    return predict
