"""The `cogvideox` family: CogVideoX DiT video models (`CogVideoXTransformer3DModel`), Tora's base.

Latents are (B, F', C, h, w) with F' = (F − 1)/4 + 1 (the VAE compresses time 4× after a first
frame kept alone). The adapter mirrors `CogVideoXPipeline.__call__` stage by stage — T5 prompt
encoding at the transformer's text length, `randn_tensor` latents × init σ, rotary embeddings for
the latent grid, the transformer's output cast to float and guided, whole-clip VAE decode — so the
stock pipeline is the reference (tests compare). Frame counts that are not 4k + 1 are rounded up to
the next one and the pipeline trims the surplus (the stock pipeline rounds down).

A model folder may also hold Tora's weights (a `ToraPipeline` folder's transformer, or a `tora/`
subfolder): they are loaded beside the model as `adapter.tora` (diffusion/tora.py).
`CogVideoXDPMScheduler` needs the previous step's x̂0 and timestep in its `step`, which the shared
loop does not carry: `new_scheduler` gives `CogVideoXDDIMScheduler` from the same config, and
`sampling_scheduler("dpm")` the DPM scheduler behind `DPMHistoryScheduler`, which keeps them (Tora's
reference inference: DPM, trailing timesteps, with `dynamic_guidance`).
"""
from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .family import Conditioning, FamilyAdapter, ModelEntry
from .folder_check import check_loaded, weights_variant
from .sd import _repeat_halves

COGVIDEOX_PIPELINE_CLASSES = ("CogVideoXPipeline", "ToraPipeline")


class CogVideoXAdapter(FamilyAdapter):
    family: ClassVar[str] = "cogvideox"
    kind: ClassVar[str] = "video"
    default_steps: ClassVar[int] = 50
    default_guidance: ClassVar[float] = 6.0

    def __init__(self, pipe: Any, entry: ModelEntry, device: torch.device, dtype: torch.dtype, tora: Any = None):
        super().__init__(pipe, entry, device, dtype)
        self.tora = tora  # ToraModules or None
        self._rotary: dict[tuple[int, int, int], Any] = {}

    # ---- geometry ---------------------------------------------------------------------------
    @property
    def config(self):
        return self.pipe.transformer.config

    @property
    def native_size(self) -> tuple[int, int]:
        s = self.vae_scale_factor
        return int(self.config.sample_width) * s, int(self.config.sample_height) * s

    @property
    def native_frames(self) -> int:
        return int(self.config.sample_frames)

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor_spatial)

    @property
    def temporal_compression(self) -> int:
        return int(self.pipe.vae_scale_factor_temporal)

    @property
    def latent_channels(self) -> int:
        return int(self.config.in_channels)

    @property
    def denoiser(self) -> nn.Module:
        return self.pipe.transformer

    def latent_frames(self, frames: int) -> int:
        """Latent frames whose decode covers `frames` pixel frames (⌈(F − 1)/4⌉ + 1)."""
        return -(-(max(frames, 1) - 1) // self.temporal_compression) + 1

    def decoded_frames(self, frames: int) -> int:
        """Pixel frames the VAE gives back for a request of `frames` (4k + 1 ≥ frames)."""
        return (self.latent_frames(frames) - 1) * self.temporal_compression + 1

    def latent_shape(self, batch: int, width: int, height: int, frames: int = 1) -> tuple[int, ...]:
        s = self.vae_scale_factor
        return (batch, self.latent_frames(frames), self.latent_channels, height // s, width // s)

    def new_scheduler(self, **overrides: Any):
        from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

        config = dict(self.scheduler.config)
        config.update(overrides)
        cls = CogVideoXDDIMScheduler if isinstance(self.scheduler, CogVideoXDPMScheduler) else type(self.scheduler)
        return cls.from_config(config)

    def sampling_scheduler(self, kind: str) -> Any:
        """"dpm": `CogVideoXDPMScheduler` with trailing timesteps, as Tora's inference script sets it
        (wrapped for the shared loop); "ddim": `new_scheduler()`, the folder's own spacing."""
        from diffusers import CogVideoXDPMScheduler

        if kind == "ddim":
            return self.new_scheduler()
        if kind != "dpm":
            raise ValueError(f"unknown CogVideoX sampler {kind!r}")
        config = dict(self.scheduler.config, timestep_spacing="trailing")
        return DPMHistoryScheduler(CogVideoXDPMScheduler.from_config(config))

    # ---- the verbs --------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: float, batch: int = 1) -> Conditioning:
        do_cfg = guidance > 1.0
        with torch.no_grad():
            pos, neg = self.pipe.encode_prompt(prompt, negative_prompt or None, do_cfg, num_videos_per_prompt=batch,
                                               max_sequence_length=int(self.config.max_text_seq_length),
                                               device=self.device)
        embeds = torch.cat([neg, pos]) if do_cfg else pos
        return Conditioning(embeds=embeds, guidance=guidance, do_cfg=do_cfg)

    def rotary_embeddings(self, frames: int, height: int, width: int):
        """Rotary tables for a latent grid (frames, height, width), as the stock pipeline builds them."""
        if not self.config.use_rotary_positional_embeddings:
            return None
        key = (frames, height, width)
        if key not in self._rotary:
            s = self.vae_scale_factor
            self._rotary[key] = self.pipe._prepare_rotary_positional_embeddings(height * s, width * s, frames,
                                                                                self.device)
        return self._rotary[key]

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """x: (B, F', C, h, w) → guided velocity/noise of the same shape."""
        latent_in = torch.cat([x] * 2) if cond.do_cfg else x
        rows = latent_in.shape[0]
        embeds = cond.embeds
        if embeds.shape[0] != rows:  # several clips over one encoded prompt
            embeds = _repeat_halves(embeds, rows, cond.do_cfg)
        rotary = self.rotary_embeddings(x.shape[1], x.shape[3], x.shape[4])
        dtype = self.pipe.transformer.dtype  # loops keep float32 latents; a half transformer wants its own dtype
        latent_in, embeds = latent_in.to(dtype), embeds.to(dtype)
        with torch.no_grad():
            out = self.pipe.transformer(hidden_states=latent_in, encoder_hidden_states=embeds,
                                        timestep=t.expand(rows), image_rotary_emb=rotary,
                                        attention_kwargs=None, return_dict=False)[0]
        out = out.float()
        if cond.do_cfg:
            uncond, text = out.chunk(2)
            out = uncond + cond.guidance * (text - uncond)
        return out

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, F, H, W) or (F, 3, H, W) in [0, 1] → (B, F', C, h, w) scaled latents (mean unless a
        generator asks for a sample)."""
        if images.dim() == 4:
            images = images.permute(1, 0, 2, 3).unsqueeze(0)
        vae = self.pipe.vae
        with torch.no_grad():
            dist = vae.encode((images * 2 - 1).to(self.device, vae.dtype)).latent_dist
            latents = dist.sample(generator) if generator is not None else dist.mode()
        return (latents * self.pipe.vae_scaling_factor_image).permute(0, 2, 1, 3, 4)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, F', C, h, w) → (B, 3, F, H, W) in [0, 1], F = (F' − 1)·4 + 1."""
        vae = self.pipe.vae
        with torch.no_grad(), self.vae_tiling(latents):
            z = 1 / self.pipe.vae_scaling_factor_image * latents.permute(0, 2, 1, 3, 4).to(vae.dtype)  # as stock
            frames = vae.decode(z).sample
        return (frames.float() / 2 + 0.5).clamp(0, 1)

    @contextlib.contextmanager
    def vae_tiling(self, latents: torch.Tensor) -> Iterator[None]:
        """`decode_tile()` px VAE tiles for frames with a side above it (the VAE itself decodes time in
        batches of latent frames); the VAE's own settings are restored after."""
        vae, s, tile = self.pipe.vae, self.vae_scale_factor, self.decode_tile()
        if vae.use_tiling or max(latents.shape[-2:]) * s <= tile:
            yield
            return
        names = ("use_tiling", "tile_sample_min_height", "tile_sample_min_width", "tile_latent_min_height",
                 "tile_latent_min_width", "tile_overlap_factor_height", "tile_overlap_factor_width")
        saved = {name: getattr(vae, name) for name in names}
        # Tiles of whole quarters (latent cells) and an overlap of a quarter: diffusers' tile stride (in
        # latents) and its crop (in pixels) then agree; otherwise the output comes out a few pixels too big.
        tile_h = tile_w = max(4, tile // s // 4 * 4) * s
        vae.enable_tiling(tile_sample_min_height=tile_h, tile_sample_min_width=tile_w,
                          tile_overlap_factor_height=0.25, tile_overlap_factor_width=0.25)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(vae, name, value)

    def temporal_attention_names(self) -> list[str]:
        return []  # CogVideoX attends over all frames' tokens jointly in attn1

    def parameter_bytes(self) -> int:
        extra = sum(p.numel() * p.element_size() for p in self.tora.parameters()) if self.tora is not None else 0
        return super().parameter_bytes() + extra


# ---- sampling as the stock pipeline does with DPM ------------------------------------------------
class DPMHistoryScheduler:
    """`CogVideoXDPMScheduler` for the shared loop: `step(out, t, x)` passes it the previous step's x̂0
    and timestep, as `CogVideoXPipeline` does; every other attribute is the scheduler's."""

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler
        self._previous_x0: torch.Tensor | None = None
        self._previous_t: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scheduler, name)

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        self.scheduler.set_timesteps(*args, **kwargs)
        self._previous_x0, self._previous_t = None, None

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             generator: torch.Generator | None = None, return_dict: bool = False) -> tuple[torch.Tensor]:
        sample, self._previous_x0 = self.scheduler.step(model_output, self._previous_x0, timestep, self._previous_t,
                                                        sample, eta=eta, generator=generator, return_dict=False)
        self._previous_t = timestep
        return (sample,)


def dynamic_guidance(guidance: float, t: torch.Tensor, steps: int) -> float:
    """CogVideoX's dynamic CFG scale at timestep `t` of `steps`, computed as `CogVideoXPipeline` does it
    (`use_dynamic_cfg=True`, which Tora's reference uses with DPM). The formula puts the *timestep*
    (0–999) against the step count — as the reference writes it, so results match it."""
    return 1 + guidance * ((1 - math.cos(math.pi * ((steps - t.item()) / steps) ** 5.0)) / 2)


# ---- loading ----------------------------------------------------------------------------------
def _class_name(folder: Path) -> str:
    try:
        return json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError):
        return ""


def _load_components(folder: Path, dtype: torch.dtype):
    """A `ToraPipeline` folder's parts as a stock `CogVideoXPipeline` (Tora's extra weights are left
    out of the transformer here and loaded as Tora modules)."""
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline,
                           CogVideoXTransformer3DModel)
    from transformers import AutoTokenizer, T5EncoderModel

    kwargs = dict(local_files_only=True)
    own = lambda part: dict(dtype=dtype, variant=weights_variant(folder / part), **kwargs)  # noqa: E731 - fp16 files
    return CogVideoXPipeline(
        tokenizer=AutoTokenizer.from_pretrained(str(folder / "tokenizer"), **kwargs),
        text_encoder=T5EncoderModel.from_pretrained(str(folder / "text_encoder"), **own("text_encoder")),
        vae=AutoencoderKLCogVideoX.from_pretrained(str(folder / "vae"), **own("vae")),
        transformer=CogVideoXTransformer3DModel.from_pretrained(str(folder / "transformer"), **own("transformer")),
        scheduler=CogVideoXDDIMScheduler.from_pretrained(str(folder / "scheduler"), **kwargs))


def cogvideox_dtype(folder: Path, dtype: torch.dtype) -> torch.dtype:
    """The half precision the transformer was saved in when a half precision is asked: CogVideoX-5B
    ships bfloat16 weights (float16 overflows in it), 2B float16. Read from the weights' header only."""
    from .checkpoint_kinds import read_header

    if dtype not in (torch.float16, torch.bfloat16):
        return dtype
    for weights in sorted((folder / "transformer").glob("*.safetensors")):
        try:
            saved = {info.get("dtype") for info in read_header(weights).values()}
        except (OSError, ValueError):
            continue
        if "BF16" in saved:
            return torch.bfloat16
        if "F16" in saved:
            return torch.float16
    return dtype


def load_cogvideox(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> CogVideoXAdapter:
    from diffusers import CogVideoXPipeline

    from ..diffusion.tora import load_tora_weights

    folder = Path(entry.path)
    dtype = cogvideox_dtype(folder, dtype)
    if _class_name(folder) == "ToraPipeline":
        pipe = _load_components(folder, dtype)
    else:
        pipe = CogVideoXPipeline.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                                 variant=weights_variant(folder))
    check_loaded(pipe)  # before the move: tensors the files lack are refused, never left random
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    config = pipe.transformer.config
    tora = load_tora_weights(folder, latent_channels=int(pipe.vae.config.latent_channels),
                             patch_size=int(config.patch_size))
    if tora is not None:
        tora.to(device=device, dtype=dtype)
    return CogVideoXAdapter(pipe, entry, device, dtype, tora=tora)


# ---- the tiny model -----------------------------------------------------------------------------
def tiny_t5_tokenizer():
    """A T5 (Unigram) tokenizer over single printable ASCII characters, built in code: no download."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(chr(c), -3.0) for c in range(33, 127)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_t5_encoder(vocab_size: int):
    """A 2-layer T5 encoder for the tiny tokenizer's vocabulary (weights from the caller's torch seed)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0))


def build_tiny_cogvideox(folder: Path, seed: int = 0) -> None:
    """A tiny CogVideoX (real diffusers classes, seeded random weights), with tiny Tora modules saved
    in `tora/` under Tora's published parameter names; 64 px, 9 frames native, 2 DiT layers."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from safetensors.torch import save_file
    from ..diffusion.tora import ToraConfig, ToraModules, to_published_state_dict

    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = tiny_t5_encoder(len(tokenizer))
    torch.manual_seed(seed + 1)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
        text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        max_text_seq_length=226, use_rotary_positional_embeddings=True)
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 16, 16), latent_channels=4, layers_per_block=1,
                                 norm_num_groups=4, temporal_compression_ratio=4, sample_height=64, sample_width=64)
    # CogVideoX-5B's scheduler settings
    scheduler = CogVideoXDDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       clip_sample=False, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                       set_alpha_to_one=True, snr_shift_scale=1.0, timestep_spacing="trailing")
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=scheduler)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    torch.manual_seed(seed + 3)
    tora = ToraModules(ToraConfig(num_layers=2, hidden_dim=32, latent_channels=4, feature_channels=16))
    for fuser in tora.fusers:  # untrained fusers are the identity; give the tiny ones a visible effect
        for conv in (fuser.gamma_temporal, fuser.beta_temporal):
            nn.init.normal_(conv.weight, std=0.02)
    (folder / "tora").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in to_published_state_dict(tora).items()},
              str(folder / "tora" / "diffusion_pytorch_model.safetensors"))


def cogvideox_family():
    """The registry's `Family` for CogVideoX (the lead adds this factory to FAMILY_FACTORIES)."""
    from .family import Family, TinyModel
    from .toy import toy_cogvideox_models

    return Family("cogvideox", COGVIDEOX_PIPELINE_CLASSES, load_cogvideox,
                  tiny=(TinyModel("tiny-cogvideox", "Tiny CogVideoX video DiT with tiny Tora modules (random weights, "
                                  "64 px, 9 frames)", build_tiny_cogvideox, version=1),) + toy_cogvideox_models())
