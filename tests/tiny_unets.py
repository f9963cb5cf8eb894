"""A seeded two-level UNet of the real diffusers class, for tests of attention and convolution patches."""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel


def tiny_unet() -> UNet2DConditionModel:
    """Cross-attention at the top level only, 8x8 latents, in eval mode; the same weights every call."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
    ).eval()
