"""Why an effect does or does not show: small experiments that isolate one cause.

`empty_view_experiment` tests the toy world's prior behind the repetition rows. Every training picture
holds an object, so a native-size view that shows only sky and ground is, to a toy model, a picture
that has not been finished yet. The cascade's upscaled stages and scale fusion's local windows give the
model such views with the whole prompt ("a red disc"). Here the empty background of each evaluation
scene is re-noised to the cascade's start and denoised with the prompt at the native size, where the
stage is plain cosine-mixed SDEdit (no dilation, no scale fusion): if objects appear at the default
re-noise point and not at the gentle one, the extra objects of the 4x rows are the data's prior at that
re-noise point, not a fault of dilation or fusion.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from ..models.family import FamilyAdapter
from ..pipelines.upscale_unet import CascadeSettings, decode_latents, default_vae_tile, run_cascade
from ..toyworld.world import caption, render
from .metrics import count_objects
from .runs import (GENTLE_COSINE_SCALE, GENTLE_STRENGTH, RunSettings, eval_scenes, salient_params, scene_colours,
                   to_hwc)

EMPTY_VIEW_METHODS = ("defaults", "gentle")
Log = Callable[[str], None]


@dataclass
class EmptyViewCase:
    prompt: str
    seed: int
    counts: dict[str, int]  # objects of the prompt's colours after each EMPTY_VIEW_METHODS stage
    images: dict[str, np.ndarray] = field(repr=False)

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "seed": self.seed, **self.counts}


@dataclass
class EmptyViewResult:
    cases: list[EmptyViewCase]

    def grown_share(self, method: str) -> float:
        """Share of empty views in which at least one object of the prompt's colours appeared."""
        return float(np.mean([c.counts[method] > 0 for c in self.cases])) if self.cases else float("nan")

    def as_dict(self) -> dict:
        return {"views_with_a_new_object": {m: round(self.grown_share(m), 3) for m in EMPTY_VIEW_METHODS},
                "cases": [c.as_dict() for c in self.cases]}


def empty_view_experiment(adapter: FamilyAdapter, s: RunSettings, log: Log = lambda m: None) -> EmptyViewResult:
    w, h = adapter.native_size
    base = CascadeSettings(steps=s.steps, vae_tile=default_vae_tile(adapter))
    variants = {"defaults": base, "gentle": replace(base, strength=GENTLE_STRENGTH, cosine_scale=GENTLE_COSINE_SCALE)}
    cases = []
    for scene, seed in zip(eval_scenes(len(s.seeds)), s.seeds):
        prompt = caption(scene)
        empty = render(replace(scene, objects=()), w, h)
        pixels = torch.from_numpy(empty).permute(2, 0, 1)[None].to(adapter.device, adapter.dtype)
        cond = adapter.encode_prompt(prompt, "", s.guidance)
        params = salient_params(adapter, scene_colours(scene))
        images = {"empty": empty}
        for name, settings in variants.items():
            # one stage at the native size, which is its own reference: no dilation, no scale fusion
            z = run_cascade(adapter, cond, pixels, [(w, h)], (w, h), settings, seed, x0_is_pixels=True)
            images[name] = to_hwc(decode_latents(adapter, z, settings)[0])
        counts = {name: count_objects(images[name], params) for name in variants}
        cases.append(EmptyViewCase(prompt, seed, counts, images))
        log(f"empty view seed {seed} '{prompt}': {counts}")
    return EmptyViewResult(cases)


__all__ = ["EMPTY_VIEW_METHODS", "EmptyViewResult", "empty_view_experiment"]
