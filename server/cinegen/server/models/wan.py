"""The `wan` family: Wan 2.1/2.2 DiT video models (text-to-video, image-to-video) on diffusers' Wan classes.

The adapter mirrors `WanPipeline.__call__` / `WanImageToVideoPipeline.__call__` step for step: the
same UMT5 prompt encoding (max_sequence_length 512), float32 latents from `randn_tensor`, the folder's
flow-matching scheduler, conditional then unconditional transformer passes combined as
`uncond + g·(cond − uncond)`, and decoding with the VAE's per-channel `latents_mean`/`latents_std`
(x / (1/std) + mean, exactly the stock arithmetic). With nothing installed its result equals the
stock pipeline for the same seed; the tests compare against it.

Video tensors: pixels are (B, 3, F, H, W) in [0, 1] (display-referred), latents (B, C, F', H', W')
with F' = (F − 1)/4 + 1 — the causal VAE takes F = 4k + 1 frames.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgument
from .family import Conditioning, Family, FamilyAdapter, ModelEntry, TinyModel
from .folder_check import check_loaded, weights_variant
from .wan_text import WAN_MAX_SEQUENCE_LENGTH

WAN_PIPELINE_CLASSES = ("WanPipeline", "WanImageToVideoPipeline")
PROFILE_FILE = "cinegen.json"  # what a folder says about its training size (written for the tiny models)


@dataclass(frozen=True)
class WanProfile:
    """What the model was trained at and how it is best sampled."""
    native_width: int
    native_height: int
    native_frames: int = 81
    recommended_steps: int = 50


# Released architectures by transformer width (heads × head dim); Wan 2.2 5B trains at 1280×704, 121 frames.
KNOWN_PROFILES: dict[int, WanProfile] = {
    1536: WanProfile(832, 480),      # Wan 2.1 1.3B (480p)
    5120: WanProfile(1280, 720),     # Wan 2.1 / 2.2 14B (720p)
    3072: WanProfile(1280, 704, 121),  # Wan 2.2 TI2V 5B
}


def as_pil_image(image: Any):
    """A PIL image as is; a float tensor or array in [0, 1], (3, H, W) or (H, W, 3), as an 8-bit RGB PIL image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise InvalidArgument(f"A conditioning picture must be one image, (3, H, W) or (H, W, 3); got {array.shape}.")
    if array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = array.transpose(1, 2, 0)
    return Image.fromarray((np.clip(array[..., :3], 0.0, 1.0) * 255).round().astype(np.uint8), "RGB")


class WanAdapter(FamilyAdapter):
    family: ClassVar[str] = "wan"
    kind: ClassVar[str] = "video"
    default_steps: ClassVar[int] = 50
    default_guidance: ClassVar[float] = 5.0

    def __init__(self, pipe: Any, entry: ModelEntry, device: torch.device, dtype: torch.dtype,
                 profile: WanProfile | None = None):
        super().__init__(pipe, entry, device, dtype)
        self.profile = profile or infer_profile(pipe)

    # ---- geometry ---------------------------------------------------------------------------
    @property
    def native_size(self) -> tuple[int, int]:
        return self.profile.native_width, self.profile.native_height

    @property
    def native_frames(self) -> int:
        return self.profile.native_frames

    @property
    def recommended_steps(self) -> int:
        return self.profile.recommended_steps

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor_spatial)

    @property
    def temporal_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor_temporal)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(p) for p in self.denoiser.config.patch_size)  # type: ignore[return-value]

    @property
    def size_multiple(self) -> int:
        """Pixel sizes must be multiples of this: VAE factor × transformer patch."""
        return self.vae_scale_factor * max(self.patch_size[1:])

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.vae.config.z_dim)

    @property
    def denoiser(self) -> nn.Module:
        return self.pipe.transformer if self.pipe.transformer is not None else self.pipe.transformer_2

    @property
    def denoisers(self) -> list[nn.Module]:
        """Every transformer (Wan 2.2 A14B has a high-noise and a low-noise one): methods patch them all."""
        return [m for m in (self.pipe.transformer, getattr(self.pipe, "transformer_2", None)) if m is not None]

    @property
    def transformer_dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def is_image_to_video(self) -> bool:
        return type(self.pipe).__name__ == "WanImageToVideoPipeline"

    @property
    def transformer_parameters(self) -> int:
        return sum(p.numel() for p in self.denoiser.parameters())

    def token_grid(self, width: int, height: int) -> tuple[int, int]:
        """(rows, cols) of latent tokens per frame at a pixel size."""
        _, patch_h, patch_w = self.patch_size
        s = self.vae_scale_factor
        return height // (s * patch_h), width // (s * patch_w)

    @property
    def training_token_grid(self) -> tuple[int, int]:
        return self.token_grid(*self.native_size)

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.temporal_scale_factor + 1

    def latent_shape(self, batch: int, width: int, height: int, frames: int = 1) -> tuple[int, ...]:
        s = self.vae_scale_factor
        return (batch, self.latent_channels, self.latent_frames(frames), height // s, width // s)

    # ---- prompt -----------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: float, batch: int = 1,
                      guidance_2: float | None = None) -> Conditioning:
        """`guidance_2`: the low-noise expert's scale on Wan 2.2 A14B (diffusers' `guidance_scale_2`)."""
        from diffusers import WanPipeline

        do_cfg = guidance > 1.0
        if guidance_2 is not None and self._model_for(torch.tensor(0)) is self.denoiser:
            guidance_2 = None  # one expert: nothing else to guide (diffusers refuses it there)
        # WanPipeline's T5 encoding for every Wan pipeline: the I2V/V2V modules call ftfy even when it is missing.
        encode = functools.partial(WanPipeline._get_t5_prompt_embeds, self.pipe, num_videos_per_prompt=batch,
                                   max_sequence_length=WAN_MAX_SEQUENCE_LENGTH, device=self.device)
        with torch.no_grad():
            positive = encode(prompt=prompt).to(self.transformer_dtype)
            extra = {} if guidance_2 is None else {"guidance_2": float(guidance_2)}
            if not do_cfg:
                return Conditioning(embeds=positive, guidance=guidance, do_cfg=False, extra=extra)
            negative = encode(prompt=negative_prompt or "").to(self.transformer_dtype)
        return Conditioning(embeds=torch.cat([negative, positive]), guidance=guidance, do_cfg=True, extra=extra)

    def with_image_condition(self, cond: Conditioning, image: Any, latents: torch.Tensor, frames: int,
                             width: int, height: int, last_image: Any | None = None) -> Conditioning:
        """Image-to-video: the first (and optionally last) frame as the stock I2V pipeline conditions on it.

        `latents` is the noise already drawn (so the generator is used exactly as in the stock pipeline).
        """
        if not self.is_image_to_video:
            raise InvalidArgument(f"'{self.entry.id}' is a text-to-video Wan model; pick an image-to-video one.")
        if self.pipe.config.expand_timesteps:
            raise InvalidArgument("Image conditioning of Wan 2.2 TI2V (expand_timesteps) models is not supported yet.")
        # CLIP's processor rescales by 1/255 whatever it is given, so float pictures would be rescaled twice:
        # every picture reaches both processors as the 8-bit PIL image the stock pipeline is called with
        image = as_pil_image(image)
        last_image = None if last_image is None else as_pil_image(last_image)
        extra = dict(cond.extra)
        embeds = self.clip_image_embeds(image if last_image is None else [image, last_image])
        if embeds is not None:
            extra["image_embeds"] = embeds.repeat(latents.shape[0], 1, 1)
        extra["condition"] = self.image_condition_latent(image, latents, frames, width, height, last_image)
        return dataclasses.replace(cond, extra=extra)

    @property
    def takes_clip_image(self) -> bool:
        """Wan 2.1 I2V also attends to CLIP image tokens; models without an image projection do not."""
        return self.denoiser.config.image_dim is not None

    def clip_image_embeds(self, images: Any) -> torch.Tensor | None:
        """The CLIP image tokens of one PIL image (or a list: first and last), as the stock pipeline's
        `encode_image`; None for a model that takes none."""
        if not self.takes_clip_image:
            return None
        if self.pipe.image_encoder is None:
            raise InvalidArgument(f"'{self.entry.id}' attends to CLIP image tokens but its folder has no "
                                  "image_encoder; use the complete model folder.")
        with torch.no_grad():
            return self.pipe.encode_image(images, self.device)

    def image_condition_latent(self, image: Any, latents: torch.Tensor, frames: int, width: int, height: int,
                               last_image: Any | None = None) -> torch.Tensor:
        """[frame mask | VAE latent of (image, 0, …, 0[, last])], (B, 4 + C, F', h, w), as the stock
        `prepare_latents` builds it from the PIL image(s); B = the rows of `latents`."""
        with torch.no_grad():
            pixels = self.pipe.video_processor.preprocess(image, height=height, width=width)
            last = None if last_image is None else self.pipe.video_processor.preprocess(
                last_image, height=height, width=width).to(self.device, torch.float32)
            _, condition = self.pipe.prepare_latents(
                pixels.to(self.device, torch.float32), latents.shape[0], self.latent_channels, height, width,
                frames, torch.float32, self.device, None, latents, last)
        return condition

    # ---- denoiser ---------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Velocity for float32 latents x at t: conditional pass, then unconditional, as `WanPipeline` does."""
        model = self._model_for(t)
        # Wan 2.2 A14B: the low-noise expert takes guidance_scale_2 (unset: the same as the first, as diffusers)
        guidance = cond.extra.get("guidance_2", cond.guidance) if model is not self.denoiser else cond.guidance
        dtype = model.dtype
        condition = cond.extra.get("condition")
        latent_in = (x if condition is None else torch.cat([x, condition], dim=1)).to(dtype)
        image_embeds = cond.extra.get("image_embeds")
        image_embeds = None if image_embeds is None else image_embeds.to(dtype)
        timestep = self._timestep(t, x)
        negative, positive = cond.embeds.chunk(2) if cond.do_cfg else (None, cond.embeds)
        with torch.no_grad():
            out = model(hidden_states=latent_in, timestep=timestep, encoder_hidden_states=_rows(positive, x),
                        encoder_hidden_states_image=image_embeds, attention_kwargs=None, return_dict=False)[0]
            if cond.do_cfg:
                uncond = model(hidden_states=latent_in, timestep=timestep, encoder_hidden_states=_rows(negative, x),
                               encoder_hidden_states_image=image_embeds, attention_kwargs=None,
                               return_dict=False)[0]
                out = uncond + guidance * (out - uncond)
        return out

    def _model_for(self, t: torch.Tensor) -> nn.Module:
        # Wan 2.2 A14B: the first transformer above the boundary timestep, the second below it.
        boundary = self.pipe.config.boundary_ratio
        if boundary is None or self.pipe.transformer_2 is None:
            return self.denoiser
        if t >= boundary * self.scheduler.config.num_train_timesteps:
            return self.pipe.transformer
        return self.pipe.transformer_2

    def _timestep(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.pipe.config.expand_timesteps:
            return t.expand(x.shape[0])
        # Wan 2.2 TI2V takes one timestep per latent token (all equal for text-to-video).
        _, patch_h, patch_w = self.patch_size
        tokens = x.shape[2] * (x.shape[3] // patch_h) * (x.shape[4] // patch_w)
        return (torch.ones(tokens, device=x.device) * t).unsqueeze(0).expand(x.shape[0], -1)

    # ---- pixels -----------------------------------------------------------------------------
    def _latent_statistics(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1/std) shaped (1, C, 1, 1, 1), computed as the stock pipelines do."""
        config = self.pipe.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(device, dtype)
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(device, dtype)
        return mean, inverse_std

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, F, H, W) or (F, 3, H, W) in [0, 1] -> normalised float32 latents.

        The distribution's mode, as every stock Wan pipeline encodes; `generator` is not needed.
        """
        if images.dim() == 4:
            images = images.permute(1, 0, 2, 3).unsqueeze(0)
        vae = self.pipe.vae
        with torch.no_grad():
            video = (2.0 * images.to(self.device, torch.float32) - 1.0).to(vae.dtype)
            latents = vae.encode(video).latent_dist.mode().to(torch.float32)
        mean, inverse_std = self._latent_statistics(latents.device, torch.float32)
        return (latents - mean) * inverse_std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, F', H', W') -> (B, 3, F, H, W) in [0, 1]."""
        vae = self.pipe.vae
        latents = latents.to(self.device, vae.dtype)
        mean, inverse_std = self._latent_statistics(latents.device, latents.dtype)
        with torch.no_grad(), self.vae_tiling(self.auto_tile(latents)):
            video = vae.decode(latents / inverse_std + mean, return_dict=False)[0]
        return (video / 2 + 0.5).clamp(0, 1)

    def auto_tile(self, latents: torch.Tensor) -> int | None:
        """`decode_tile()` px tiles for frames with a side above it, unless the caller tiles already;
        the causal VAE streams time (one latent frame at a time) on its own."""
        s, tile = self.vae_scale_factor, self.decode_tile()
        if getattr(self.pipe.vae, "use_tiling", False) or max(latents.shape[-2:]) * s <= tile:
            return None
        return tile

    @contextlib.contextmanager
    def vae_tiling(self, tile: int | None) -> Iterator[None]:
        """Tiled VAE (tile px, 3/4 stride) within the block; tile=None keeps the VAE as configured."""
        vae = self.pipe.vae
        if tile is None:
            yield
            return
        saved = {name: getattr(vae, name) for name in ("use_tiling", "tile_sample_min_height", "tile_sample_min_width",
                                                       "tile_sample_stride_height", "tile_sample_stride_width")}
        vae.enable_tiling(tile, tile, tile * 3 // 4, tile * 3 // 4)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(vae, name, value)

    # ---- LoRA -------------------------------------------------------------------------------
    def lora_applied(self, path: str, scale: float = 1.0) -> contextlib.AbstractContextManager[None]:
        """Within the block the LoRA in `path` (.safetensors) is loaded into the transformer; unloaded after."""
        from .lora import LoraSpec, loras_applied

        return loras_applied(self, [LoraSpec(path, scale)] if path else [])


def _rows(embeds: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One prompt row per latent video in the batch."""
    return embeds if embeds.shape[0] == x.shape[0] else embeds.repeat(x.shape[0] // embeds.shape[0], 1, 1)


# ---- loading ----------------------------------------------------------------------------------
def infer_profile(pipe: Any, folder: Path | None = None) -> WanProfile:
    """The folder's `cinegen.json` if present, else the released model with this transformer width."""
    if folder is not None and (folder / PROFILE_FILE).is_file():
        return WanProfile(**json.loads((folder / PROFILE_FILE).read_text()))
    transformer = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
    width = int(transformer.config.num_attention_heads) * int(transformer.config.attention_head_dim)
    return KNOWN_PROFILES.get(width, KNOWN_PROFILES[1536])


def wan_dtype(dtype: torch.dtype) -> torch.dtype:
    # Wan and UMT5 are trained in bfloat16; float16 overflows in T5's feed-forward.
    return torch.bfloat16 if dtype == torch.float16 else dtype


def load_wan(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> WanAdapter:
    import diffusers

    folder = Path(entry.path)
    class_name = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    # Imported by name: the I2V module pulls in CLIP's image processor, which text-to-video never needs.
    cls = getattr(diffusers, class_name if class_name in WAN_PIPELINE_CLASSES else "WanPipeline")
    dtype = wan_dtype(dtype)
    parts: dict[str, Any] = {}
    variant = weights_variant(folder)
    if dtype != torch.float32:  # the Wan VAE runs in float32, as diffusers' examples load it
        parts["vae"] = diffusers.AutoencoderKLWan.from_pretrained(str(folder), subfolder="vae", dtype=torch.float32,
                                                        local_files_only=True,
                                                        variant=weights_variant(folder / "vae"))  # its own files
    pipe = cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True, variant=variant, **parts)
    check_loaded(pipe)  # before the move: tensors the files lack are refused, never left random
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return WanAdapter(pipe, entry, device, dtype, infer_profile(pipe, folder))


TINY_PROFILE = WanProfile(native_width=32, native_height=32, native_frames=5, recommended_steps=3)
TINY_Z_DIM = 4


def tiny_wan_vae(seed: int = 0) -> nn.Module:
    """A small `AutoencoderKLWan` (×8 spatial, ×4 temporal, 4 latent channels with non-trivial statistics)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=8, z_dim=TINY_Z_DIM, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                            temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, -0.1],
                            latents_std=[1.5, 0.8, 1.2, 2.0])


def tiny_wan_transformer(in_channels: int = TINY_Z_DIM, seed: int = 0) -> nn.Module:
    """A 2-layer `WanTransformer3DModel`: 2 heads of 12 channels (RoPE split t, h, w = 4, 4, 4), text_dim 32."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                 in_channels=in_channels, out_channels=TINY_Z_DIM, text_dim=32, freq_dim=16,
                                 ffn_dim=48, num_layers=2)


def wan_flow_scheduler(flow_shift: float = 3.0) -> Any:
    """UniPC over flow-matching sigmas, configured like the released Wan 2.1 folders."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift,
                                   num_train_timesteps=1000, solver_order=2, solver_type="bh2",
                                   lower_order_final=True, final_sigmas_type="zero")


def build_tiny_wan(folder: Path, seed: int = 0, *, image_to_video: bool = False) -> None:
    """A tiny Wan model of the real diffusers classes, seeded random weights, saved like a real one.

    32×32 native, 5 frames (2 latent frames of 4×4, 2×2 tokens), UniPC with flow shift 3,
    byte-level UMT5 text side. The image-to-video variant takes [noise | mask | image latents].
    """
    import diffusers

    from .wan_text import byte_level_t5_tokenizer, tiny_umt5_encoder

    in_channels = 2 * TINY_Z_DIM + 4 if image_to_video else TINY_Z_DIM  # 4 = mask channels (temporal factor)
    parts = dict(tokenizer=byte_level_t5_tokenizer(), text_encoder=tiny_umt5_encoder(32, seed + 2, layers=1),
                 vae=tiny_wan_vae(seed + 1), transformer=tiny_wan_transformer(in_channels, seed),
                 scheduler=wan_flow_scheduler())
    if image_to_video:
        pipe = diffusers.WanImageToVideoPipeline(image_processor=None, image_encoder=None, **parts)
    else:
        pipe = diffusers.WanPipeline(**parts)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    (Path(folder) / PROFILE_FILE).write_text(json.dumps(dataclasses.asdict(TINY_PROFILE)))


def build_tiny_wan_i2v(folder: Path, seed: int = 0) -> None:
    build_tiny_wan(folder, seed, image_to_video=True)


def wan_family() -> Family:
    return Family("wan", WAN_PIPELINE_CLASSES, load_wan, tiny=(
        TinyModel("tiny-wan", "Tiny Wan text-to-video DiT (random weights, 32 px, 5 frames, for tests and the demo)",
                  build_tiny_wan, version=1),
        TinyModel("tiny-wan-i2v", "Tiny Wan image-to-video DiT (random weights, 32 px, 5 frames)",
                  build_tiny_wan_i2v, version=1),
    ))
