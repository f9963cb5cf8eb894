"""Models benchmarks build rather than load: the SD 1.5 layout with fewer channels (a CPU stand-in
whose window is SD 1.5's 64×64 latents), and counting wrappers that make denoiser work visible."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models.family import FamilyAdapter

# SD 1.5's UNet layout (4 levels, 2 layers per block, cross-attention at the top three, 64×64 latents),
# its channels divided by `SD15_CHANNEL_DIVISOR`: the window and the attention token counts are SD 1.5's.
SD15_LAYOUT = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                   down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_CHANNELS = (320, 640, 1280, 1280)


def sd15_layout_adapter(base: FamilyAdapter, channel_divisor: int = 20, seed: int = 0) -> FamilyAdapter:
    """`base` (an SD-family adapter: its VAE, text encoder and scheduler) with an SD 1.5-layout UNet of
    SD 1.5's channels / `channel_divisor`, seeded random weights; native size 512×512 px."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    channels = tuple(max(8, c // channel_divisor) for c in SD15_CHANNELS)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15_LAYOUT, block_out_channels=channels, norm_num_groups=8,
                                attention_head_dim=8,
                                cross_attention_dim=int(base.pipe.text_encoder.config.hidden_size))
    unet = unet.to(base.device, base.dtype).eval()
    p = base.pipe
    pipe = StableDiffusionPipeline(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=unet,
                                   scheduler=base.new_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return type(base)(pipe, base.entry, base.device, base.dtype)


@dataclass
class DenoiserWork:
    """Calls of `adapter.predict` and the latent cells they carried (before guidance doubles them)."""
    calls: int = 0
    cells: int = 0

    def reset(self) -> None:
        self.calls = self.cells = 0


def count_denoiser_work(adapter: FamilyAdapter) -> DenoiserWork:
    """Wrap this adapter instance's `predict` so every call is tallied; returns the tally."""
    work = DenoiserWork()
    predict = adapter.predict

    def counted(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        work.calls += 1
        work.cells += x.numel() // adapter.latent_channels
        return predict(x, t, cond)

    adapter.predict = counted  # type: ignore[method-assign]  # instance attribute: this adapter only
    return work
