"""Tiny SD 1.x / SD 2.x / SDXL / SDXL-refiner pipelines of the real diffusers classes, seeded random weights.

Each keeps what tells its kind apart in an original single file and in diffusers' conversion: SD 1 a
CLIP text model, SD 2 an OpenCLIP tower, SDXL two towers of different widths (diffusers tells them
apart by width) with the text-time micro-conditioning, the refiner only the OpenCLIP tower with
the aesthetic score (5 time ids). Base and refiner share one VAE architecture, as the real pair
shares its latent space. 64 px native (8x8 latents), byte-level tokenizer.
"""
from __future__ import annotations

import torch

TIME_DIM = 8  # addition_time_embed_dim of the tiny SDXL UNets


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
                         block_out_channels=(16, 16, 32, 32), norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def _text(seed: int, hidden: int, *, projection: bool = False, act: str = "quick_gelu", projection_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from cinegen.server.models.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID, hidden_act=act,
                            projection_dim=projection_dim)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _randomise_norms(module: torch.nn.Module, seed: int) -> None:
    """Norm weights and biases start at 1 and 0: random ones so a swapped or dropped tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if name.endswith("weight") else 0.0))


def tiny_sd(seed: int = 0, v2: bool = False):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from cinegen.server.models.tokenizer import byte_level_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8, use_linear_projection=v2)
    text = _text(seed + 2, 32, act="gelu" if v2 else "quick_gelu")
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction" if v2 else "epsilon")
    pipe = StableDiffusionPipeline(vae=_vae(seed + 1), text_encoder=text, tokenizer=byte_level_clip_tokenizer(),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    for i, part in enumerate((pipe.unet, pipe.vae, pipe.text_encoder)):
        _randomise_norms(part, seed + 10 + i)
    return pipe.to(torch.float32)


def _xl_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                  timestep_spacing="leading")


def _xl_unet(seed: int, cross: int, time_ids: int, pooled: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross, norm_num_groups=8, attention_head_dim=(4, 8), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=time_ids * TIME_DIM + pooled, transformer_layers_per_block=1)


def tiny_sdxl(seed: int = 0):
    """CLIP ViT-L stand-in 32 wide, OpenCLIP bigG stand-in 64 wide (pooled projection 32): context 96."""
    from diffusers import StableDiffusionXLPipeline

    from cinegen.server.models.tokenizer import byte_level_clip_tokenizer

    pipe = StableDiffusionXLPipeline(
        vae=_vae(seed + 1), text_encoder=_text(seed + 2, 32), text_encoder_2=_text(seed + 3, 64, projection=True, act="gelu"),
        tokenizer=byte_level_clip_tokenizer(), tokenizer_2=byte_level_clip_tokenizer(),
        unet=_xl_unet(seed, 96, 6, 32), scheduler=_xl_scheduler(), force_zeros_for_empty_prompt=True)
    for i, part in enumerate((pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)):
        _randomise_norms(part, seed + 10 + i)
    return pipe.to(torch.float32)


def tiny_refiner(seed: int = 100):
    """The OpenCLIP stand-in only (context 64), time ids (size, crop, aesthetic score): 5 * 8 + 32."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from cinegen.server.models.tokenizer import byte_level_clip_tokenizer

    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=_vae(seed + 1), text_encoder=None, text_encoder_2=_text(seed + 3, 64, projection=True, act="gelu"),
        tokenizer=None, tokenizer_2=byte_level_clip_tokenizer(), unet=_xl_unet(seed, 64, 5, 32),
        scheduler=_xl_scheduler(), requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    for i, part in enumerate((pipe.unet, pipe.vae, pipe.text_encoder_2)):
        _randomise_norms(part, seed + 10 + i)
    return pipe.to(torch.float32)


BUILDERS = {"sd1": lambda: tiny_sd(0), "sd2": lambda: tiny_sd(0, v2=True), "sdxl": lambda: tiny_sdxl(0),
            "sdxl-refiner": lambda: tiny_refiner(100)}
