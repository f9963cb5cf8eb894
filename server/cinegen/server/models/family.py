"""The family adapter: the same verbs for every model family, so pipelines are written once.

A pipeline never touches a diffusers pipeline directly; it asks the adapter to encode a prompt,
predict noise (or velocity) with classifier-free guidance, encode/decode pixels, and where the
modules that methods patch live (self-attention, cross-attention, temporal attention, 3x3 convs).
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn


@dataclass
class Conditioning:
    """An encoded prompt. `embeds` holds [negative, positive] stacked when guidance is on."""
    embeds: torch.Tensor
    guidance: float
    do_cfg: bool
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific (SDXL pooled embeds, time ids)


@dataclass(frozen=True)
class ModelEntry:
    """Where a model comes from; loading is lazy."""
    id: str
    family: str
    source: str  # builtin | folder | hf-cache | single-file | paired
    path: str
    description: str = ""
    kind: str = "model"  # model, or for a single file its checkpoint kind (sd1, sd2, sdxl, sdxl-refiner)
    extra_path: str = ""  # paired models: the second folder (an AnimateDiff MotionAdapter beside its SD 1.5)


@dataclass(frozen=True)
class AddOn:
    """A file that modifies a model instead of being one: a LoRA, motion module, VAE, embedding."""
    id: str
    kind: str  # lora | motion-lora | motion-module | vae | textual-inversion
    base: str  # what it applies to, when its tensor names say so (sd1, sdxl, wan, ...)
    path: str


class FamilyAdapter(ABC):
    family: ClassVar[str]
    kind: ClassVar[str]  # "image" or "video"
    default_steps: ClassVar[int] = 30
    default_guidance: ClassVar[float] = 7.5

    def __init__(self, pipe: Any, entry: ModelEntry, device: torch.device, dtype: torch.dtype):
        self.pipe = pipe
        self.entry = entry
        self.device = device
        self.dtype = dtype
        self.scheduler = pipe.scheduler

    # ---- geometry ---------------------------------------------------------------------------
    @property
    @abstractmethod
    def native_size(self) -> tuple[int, int]:
        """(width, height) in pixels the model was trained at."""

    @property
    def native_frames(self) -> int:
        return 1

    decode_tile_px: int | None = None  # None: the family's default tile (set on an instance to change it)

    def decode_tile(self) -> int:
        """Frames with a side above this many pixels are decoded in tiles of this size: the decoder's
        memory grows with the frame's area (and its mid-block attention with the square of it), a
        tile's does not. The native side, at least 512 px (the upscale cascade's VAE tile)."""
        return self.decode_tile_px or max(512, max(self.native_size))

    @property
    def vae_scale_factor(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 8))

    @property
    @abstractmethod
    def latent_channels(self) -> int: ...

    @property
    @abstractmethod
    def denoiser(self) -> nn.Module:
        """The UNet or transformer."""

    # ---- the verbs --------------------------------------------------------------------------
    @abstractmethod
    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: float, batch: int = 1) -> Conditioning: ...

    @abstractmethod
    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Model output (noise or velocity) for `x` at `t`, guidance applied."""

    @abstractmethod
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] (display-referred) -> scaled latents."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1] (display-referred)."""

    def latent_shape(self, batch: int, width: int, height: int, frames: int = 1) -> tuple[int, ...]:
        s = self.vae_scale_factor
        return (batch, self.latent_channels, height // s, width // s)

    def new_scheduler(self, **overrides: Any):
        """A fresh scheduler with its own state (one per window for OSD)."""
        config = dict(self.scheduler.config)
        config.update(overrides)
        return type(self.scheduler).from_config(config)

    def clone_scheduler(self):
        return copy.deepcopy(self.scheduler)

    # ---- where methods patch ----------------------------------------------------------------
    def self_attention_names(self) -> list[str]:
        return [k for k in self.denoiser.attn_processors if k.endswith("attn1.processor") and "motion_modules" not in k]

    def cross_attention_names(self) -> list[str]:
        return [k for k in self.denoiser.attn_processors if k.endswith("attn2.processor") and "motion_modules" not in k]

    def temporal_attention_names(self) -> list[str]:
        return [k for k in self.denoiser.attn_processors if "motion_modules" in k]

    def parameter_bytes(self) -> int:
        total = 0
        for comp in self.pipe.components.values():
            if isinstance(comp, nn.Module):
                total += sum(p.numel() * p.element_size() for p in comp.parameters())
        return total

    def to(self, device: torch.device) -> None:
        self.pipe.to(device)
        self.device = device


# ---- how a family plugs into the registry (families.py lists them) ----
@dataclass(frozen=True)
class TinyModel:
    id: str
    description: str
    build: Callable[[Path], None]  # writes a diffusers folder
    version: int = 1  # bump when the builder changes, so caches rebuild


@dataclass(frozen=True)
class Family:
    name: str
    pipeline_classes: tuple[str, ...]  # model_index.json `_class_name`s that belong to this family
    load: Callable[[ModelEntry, torch.device, torch.dtype], "FamilyAdapter"]
    tiny: tuple[TinyModel, ...] = ()
    single_file: bool = False  # whether bare .safetensors checkpoints of this family are recognised
