"""The `sd` family: Stable Diffusion 1.x/2.x and SDXL image UNets.

The adapter mirrors `StableDiffusionPipeline.__call__` step for step (same prompt encoding, same
latent preparation, same guidance arithmetic) so that a one-stage cascade equals the stock pipeline
bit for bit; the tests compare against it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .family import Conditioning, FamilyAdapter, ModelEntry
from .folder_check import check_loaded, weights_variant


AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5  # StableDiffusionXLImg2ImgPipeline's defaults


class SDAdapter(FamilyAdapter):
    family: ClassVar[str] = "sd"
    kind: ClassVar[str] = "image"
    default_steps: ClassVar[int] = 30
    default_guidance: ClassVar[float] = 7.5

    @property
    def is_xl(self) -> bool:
        return type(self.pipe).__name__.startswith("StableDiffusionXL")

    @property
    def native_size(self) -> tuple[int, int]:
        side = int(self.pipe.unet.config.sample_size) * self.vae_scale_factor
        return side, side

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.unet.config.in_channels)

    @property
    def denoiser(self) -> nn.Module:
        return self.pipe.unet

    @property
    def recommended_steps(self) -> int:
        return int(getattr(self.pipe, "_cinegen_default_steps", self.default_steps))

    # ---- prompt ---------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: float, batch: int = 1) -> Conditioning:
        do_cfg = guidance > 1.0
        with torch.no_grad():
            if self.is_xl:
                return self._encode_prompt_xl(prompt, negative_prompt, guidance, batch, do_cfg)
            pos, neg = self.pipe.encode_prompt(prompt, self.device, batch, do_cfg, negative_prompt or None)
        embeds = torch.cat([neg, pos]) if do_cfg else pos
        return Conditioning(embeds=embeds, guidance=guidance, do_cfg=do_cfg)

    def _encode_prompt_xl(self, prompt: str, negative_prompt: str, guidance: float, batch: int, do_cfg: bool) -> Conditioning:
        pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=prompt, device=self.device, num_images_per_prompt=batch,
            do_classifier_free_guidance=do_cfg, negative_prompt=negative_prompt or None)
        embeds = torch.cat([neg, pos]) if do_cfg else pos
        text_embeds = torch.cat([neg_pooled, pooled]) if do_cfg else pooled
        return Conditioning(embeds=embeds, guidance=guidance, do_cfg=do_cfg, extra={"text_embeds": text_embeds})

    def _xl_time_ids(self, height: int, width: int, rows: int, do_cfg: bool = False) -> torch.Tensor:
        if getattr(self.pipe.config, "requires_aesthetics_score", False):
            # the refiner: (original size, crop top-left, aesthetic score); its negative rows carry the low
            # score, as the stock img2img pipeline's defaults (6.0 / 2.5)
            pos, neg = [height, width, 0, 0, AESTHETIC_SCORE], [height, width, 0, 0, NEGATIVE_AESTHETIC_SCORE]
            ids = torch.tensor([neg, pos] if do_cfg else [pos], dtype=self.dtype, device=self.device)
            return ids.repeat_interleave(rows // ids.shape[0], dim=0)
        # (original size, crop top-left, target size) as SDXL's micro-conditioning expects
        ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.dtype, device=self.device)
        return ids.repeat(rows, 1)

    # ---- denoiser -------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        dtype = self.pipe.unet.dtype  # a float32 latent into a float16 UNet (CUDA) fails in conv_in: cast here
        latent_in = (torch.cat([x] * 2) if cond.do_cfg else x).to(dtype)
        embeds = cond.embeds.to(dtype)
        if embeds.shape[0] != latent_in.shape[0]:  # windows/frames batched over one encoded prompt
            embeds = _repeat_halves(embeds, latent_in.shape[0], cond.do_cfg)
        added = None
        if self.is_xl:
            text_embeds = cond.extra["text_embeds"]
            if text_embeds.shape[0] != latent_in.shape[0]:
                text_embeds = _repeat_halves(text_embeds, latent_in.shape[0], cond.do_cfg)
            h, w = x.shape[-2] * self.vae_scale_factor, x.shape[-1] * self.vae_scale_factor
            added = {"text_embeds": text_embeds, "time_ids": self._xl_time_ids(h, w, latent_in.shape[0], cond.do_cfg)}
        with torch.no_grad():
            out = self.pipe.unet(latent_in, t, encoder_hidden_states=embeds, timestep_cond=None,
                                 cross_attention_kwargs=None, added_cond_kwargs=added, return_dict=False)[0]
        if cond.do_cfg:
            uncond, text = out.chunk(2)
            out = uncond + cond.guidance * (text - uncond)
        return out

    # ---- pixels ---------------------------------------------------------------------------
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        vae = self.pipe.vae
        with torch.no_grad():
            dist = vae.encode((images * 2 - 1).to(self.device, vae.dtype)).latent_dist
            latents = dist.sample(generator) if generator is not None else dist.mean
        return (latents * vae.config.scaling_factor).to(self.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Frames with a side above `decode_tile()` px go through the VAE in tiles of that size."""
        from ..diffusion.tiled_vae import tiled_decode

        vae = self.pipe.vae
        z = latents.to(vae.dtype) / vae.config.scaling_factor
        tile = self.decode_tile() // self.vae_scale_factor
        with torch.no_grad():
            if max(z.shape[-2:]) > tile:
                images = tiled_decode(vae, z, tile_latent=tile, overlap_latent=tile // 4)
            else:
                images = vae.decode(z, return_dict=False)[0]
        return (images / 2 + 0.5).clamp(0, 1)


def _repeat_halves(t: torch.Tensor, rows: int, do_cfg: bool) -> torch.Tensor:
    """Repeat [negative; positive] rows so each half covers a batch of latents (windows, frames)."""
    parts = t.chunk(2) if do_cfg else (t,)
    need = rows // len(parts)
    return torch.cat([p.repeat(need // p.shape[0], *[1] * (p.dim() - 1)) for p in parts])


# ---- loading ----------------------------------------------------------------------------------
# the SDXL refiner (an img2img pipeline) loads here too; it runs as `--refiner` after an SDXL base
SD_PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")


def load_sd(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> SDAdapter:
    import diffusers
    from diffusers import StableDiffusionPipeline

    path = Path(entry.path)
    if entry.source == "single-file":
        pipe = _load_single_file(path, entry.kind, dtype)
    else:
        class_name = _pipeline_class_name(path)
        cls = getattr(diffusers, class_name) if class_name in SD_PIPELINE_CLASSES else StableDiffusionPipeline
        kwargs: dict[str, Any] = dict(dtype=dtype, local_files_only=True, variant=weights_variant(path))
        if cls is StableDiffusionPipeline:
            kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe = cls.from_pretrained(str(path), **kwargs)
        check_loaded(pipe)  # before the move: tensors the files lack are refused, never left random
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    keep_vae_in_float32(pipe, dtype)
    return SDAdapter(pipe, entry, device, dtype)


def _load_single_file(path: Path, kind: str, dtype: torch.dtype):
    """A single-file checkpoint through the pipeline class its tensor names say (never its file name),
    built from the configs shipped for that kind (`single_file.py`): nothing is fetched."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    from ..errors import FailedPrecondition
    from .checkpoint_kinds import CHECKPOINT_KINDS, classify_file
    from .single_file import CONFIG_SUFFIX, load_single_file, override_folder

    if kind not in CHECKPOINT_KINDS:
        kind = classify_file(path).kind
    if kind not in CHECKPOINT_KINDS:
        raise FailedPrecondition(f"'{path.name}' is not a Stable Diffusion checkpoint ({classify_file(path).why}).")
    try:
        return load_single_file(path, kind, dtype)
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as exc:
        which = f"its own '{path.stem}{CONFIG_SUFFIX}' folder" if override_folder(path) else f"the {kind} configuration cinegen ships"
        raise FailedPrecondition(
            f"'{path.name}' is an {kind} checkpoint, but its tensors do not fit {which} ({exc}). Put the diffusers "
            f"config folder of its architecture beside it as '{path.stem}{CONFIG_SUFFIX}/' (model_index.json and "
            "each part's config, tokenizer files included), or convert it to a diffusers folder once "
            "(`from_single_file(...).save_pretrained(DIR)`) and put the folder under --models.") from exc


def keep_vae_in_float32(pipe, dtype: torch.dtype) -> None:
    """SDXL's VAE overflows in fp16 (black/NaN frames); its config asks for float32 (`force_upcast`)."""
    vae = getattr(pipe, "vae", None)
    if vae is not None and dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)


def _pipeline_class_name(path: Path) -> str:
    import json

    return json.loads((path / "model_index.json").read_text()).get("_class_name", "")


def build_tiny_sd(folder: Path, seed: int = 0) -> None:
    """A tiny SD model of the real diffusers classes, seeded random weights, saved like a real one.

    64x64 native (8x8 latents), factor-8 VAE, 2-level UNet with cross-attention, byte tokenizer.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, byte_level_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        norm_num_groups=8, attention_head_dim=8)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
        block_out_channels=(16, 16, 32, 32), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        pad_token_id=EOS_ID, projection_dim=32))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=byte_level_clip_tokenizer(),
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
