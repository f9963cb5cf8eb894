"""The peers the methods are measured against, run through their own published code.

MultiDiffusion (Bar-Tal et al. 2023) with `circular_padding=True` is diffusers'
`StableDiffusionPanoramaPipeline`: views of a fixed latent window slide over the panorama with a fixed
stride and wrap around the right edge, and each step averages the views' denoised latents. Its window is
hard-wired to 64 latent cells (SD's 512 px) and its stride to 8; here both are set from the model being
measured (window = the model's native latent side, stride = window / 8, MultiDiffusion's 64 / 8), so the
peer runs the same window, steps and seed as cinegen's ring. The stock pipeline fails when the views form
more than one row with circular padding, so panoramas are one native window high.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.family import FamilyAdapter
from ..pipelines.base import Resolved

MULTIDIFFUSION_STRIDE_DIVISOR = 8  # MultiDiffusion's stride 8 for its 64-cell window
VIEW_BATCH = 8  # views per UNet call: the pipeline's own batching (same algorithm, fewer calls)


def multidiffusion_window(adapter: FamilyAdapter) -> tuple[int, int]:
    """(window, stride) in latent cells: the model's native latent side and an eighth of it."""
    window = min(adapter.native_size) // adapter.vae_scale_factor
    return window, max(1, window // MULTIDIFFUSION_STRIDE_DIVISOR)


def multidiffusion_ring(adapter: FamilyAdapter, r: Resolved) -> np.ndarray:
    """A 360° panorama (H, W, 3) in [0, 1] by diffusers' MultiDiffusion with circular padding."""
    from diffusers import StableDiffusionPanoramaPipeline

    view_window, view_stride = multidiffusion_window(adapter)
    if r.height // adapter.vae_scale_factor > view_window:
        raise ValueError(f"MultiDiffusion's circular padding takes one row of views: height {r.height} px is more "
                         f"than the {view_window * adapter.vae_scale_factor} px window")

    class WindowedPanorama(StableDiffusionPanoramaPipeline):
        def get_views(self, panorama_height: int, panorama_width: int, window_size: int = 64, stride: int = 8,
                      circular_padding: bool = False) -> list[tuple[int, int, int, int]]:
            # the pipeline asks with its SD defaults (64, 8): the model's own window and stride instead
            return super().get_views(panorama_height, panorama_width, view_window, view_stride, circular_padding)

    pipe = adapter.pipe
    peer = WindowedPanorama(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                            scheduler=adapter.new_scheduler(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False)
    peer.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(r.seed)  # as cinegen's seeded_generator draws noise
    with torch.no_grad():
        out = peer(r.prompt, height=r.height, width=r.width, num_inference_steps=r.steps, guidance_scale=r.guidance,
                   negative_prompt=r.negative_prompt or None, generator=generator, circular_padding=True,
                   view_batch_size=VIEW_BATCH, output_type="np")
    return np.asarray(out.images[0], dtype=np.float32)


__all__ = ["multidiffusion_ring", "multidiffusion_window"]
