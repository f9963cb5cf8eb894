"""The model families cinegen knows: how to recognise, load and build a tiny one of each.

A family slots in by adding one `Family` to `FAMILIES`; nothing else in the server changes.
"""
from __future__ import annotations

from typing import Callable

from .family import Family, TinyModel

__all__ = ["Family", "TinyModel", "FAMILY_FACTORIES", "all_families"]


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
