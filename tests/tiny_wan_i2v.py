"""A tiny Wan 2.1-style I2V model that attends to CLIP image tokens (the built-in `tiny-wan-i2v` has no
CLIP image encoder): tiny-wan-i2v's text encoder, VAE and scheduler, a 2-layer CLIP vision tower and
a transformer with an image projection."""
from __future__ import annotations

import torch

from cinegen.server.models.family import ModelEntry
from cinegen.server.models.wan import TINY_PROFILE, TINY_Z_DIM, WanAdapter


def tiny_wan_i2v_with_clip(base: WanAdapter) -> WanAdapter:
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=16))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=2 * TINY_Z_DIM + 4,
        out_channels=TINY_Z_DIM, text_dim=32, freq_dim=16, ffn_dim=48, num_layers=2, image_dim=16,
        added_kv_proj_dim=24)
    parts = {k: base.pipe.components[k] for k in ("tokenizer", "text_encoder", "vae", "scheduler")}
    pipe = WanImageToVideoPipeline(transformer=transformer, image_encoder=encoder, image_processor=processor, **parts)
    pipe.set_progress_bar_config(disable=True)
    return WanAdapter(pipe, ModelEntry("tiny-wan-i2v-clip", "wan", "builtin", ""), base.device, base.dtype,
                      TINY_PROFILE)
