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


class PixelVAE(torch.nn.Module):
    """A causal stand-in for Wan's VAE whose latent cell is the mean colour of its 8×8 pixels: latent frame 0
    is frame 0 alone, each later one the mean of the next 4 frames (as the causal VAE groups them). The
    tiny random VAE does not reconstruct (round trip error ~0.26), so "frame 0 is the input" needs one
    that can say so; the rest (condition, windows, pinning, decoding) is the pipeline's."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))  # a device for diffusers' execution-device lookup
        self.config = SimpleNamespace(z_dim=4, latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
                                      scale_factor_temporal=4, scale_factor_spatial=8)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode(self, video: torch.Tensor):
        from types import SimpleNamespace

        import torch.nn.functional as F

        groups = [video[:, :, :1]] + [video[:, :, k:k + 4].mean(2, keepdim=True) for k in range(1, video.shape[2], 4)]
        frames = torch.cat(groups, 2)
        b, c, f, h, w = frames.shape
        pooled = F.avg_pool2d(frames.transpose(1, 2).reshape(b * f, c, h, w), 8)
        pooled = pooled.reshape(b, f, c, h // 8, w // 8).transpose(1, 2)
        z = torch.cat([pooled, torch.zeros_like(pooled[:, :1])], 1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: z))

    def decode(self, z: torch.Tensor, return_dict: bool = False):
        import torch.nn.functional as F

        b, _, f, h, w = z.shape
        up = F.interpolate(z[:, :3].transpose(1, 2).reshape(b * f, 3, h, w), scale_factor=8, mode="nearest")
        up = up.reshape(b, f, 3, h * 8, w * 8).transpose(1, 2)
        return (torch.cat([up[:, :, :1]] + [up[:, :, k:k + 1].expand(-1, -1, 4, -1, -1) for k in range(1, f)], 2),)


def pixel_world_wan_i2v(base: WanAdapter) -> WanAdapter:
    """tiny-wan-i2v with `PixelVAE` in place of its VAE."""
    from diffusers import WanImageToVideoPipeline

    parts = {k: base.pipe.components[k] for k in ("tokenizer", "text_encoder", "transformer", "scheduler", "vae")}
    pipe = WanImageToVideoPipeline(image_encoder=None, image_processor=None, **parts)
    pipe.vae = PixelVAE()  # after construction: the scale factors were read from the real VAE (8, 4)
    pipe.set_progress_bar_config(disable=True)
    return WanAdapter(pipe, ModelEntry("tiny-wan-i2v-pixel-world", "wan", "builtin", ""), base.device, base.dtype,
                      TINY_PROFILE)
