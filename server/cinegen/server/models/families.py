"""The model families cinegen knows: how to recognise, load and build a tiny one of each.

A family slots in by adding one `Family` to `FAMILIES`; nothing else in the server changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .family import FamilyAdapter, ModelEntry


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
    load: Callable[[ModelEntry, torch.device, torch.dtype], FamilyAdapter]
    tiny: tuple[TinyModel, ...] = ()
    single_file: bool = False  # whether bare .safetensors checkpoints of this family are recognised


def _sd() -> Family:
    from .sd import SD_PIPELINE_CLASSES, build_tiny_sd, load_sd
    from .toy import toy_models

    return Family("sd", SD_PIPELINE_CLASSES, load_sd,
                  tiny=(TinyModel("tiny-sd", "Tiny Stable Diffusion (random weights, 64 px, for tests and the demo)",
                                  build_tiny_sd, version=1),) + toy_models(),
                  single_file=True)


def _animatediff() -> Family:
    from .animatediff import ANIMATEDIFF_PIPELINE_CLASSES, build_tiny_animatediff, load_animatediff
    from .toy import toy_video_models

    return Family("animatediff", ANIMATEDIFF_PIPELINE_CLASSES, load_animatediff,
                  tiny=(TinyModel("tiny-animatediff", "Tiny AnimateDiff video model (random weights, 64 px, "
                                  "16 frames)", build_tiny_animatediff, version=1),) + toy_video_models())


def _cogvideox() -> Family:
    from .cogvideox import cogvideox_family

    return cogvideox_family()


def _wan() -> Family:
    from .wan import wan_family

    return wan_family()


# Each entry is a factory so a family's heavy imports happen only when the registry starts.
FAMILY_FACTORIES: list[Callable[[], Family]] = [_sd, _animatediff, _wan, _cogvideox]


def all_families() -> dict[str, Family]:
    out = {}
    for factory in FAMILY_FACTORIES:
        fam = factory()
        out[fam.name] = fam
    return out
