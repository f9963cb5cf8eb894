"""Image-conditioned panoramas on Wan image-to-video models: the input image is the panorama's first frame.

The DynamicScaler windows are the I2V model's own inputs, so the image conditions the model the way
`WanImageToVideoPipeline` does, per window, instead of being pasted into the latent:

1. The input is resized to the panorama's size and quantised to 8 bits (the stock pipeline takes a
   PIL image); that is the first frame.
2. The stock I2V condition is built **once** for the whole panorama: the VAE latent of
   ``[first frame, 0, …, 0]`` and the frame mask (1 on frame 0), ``(1, 4 + C, F', h, w)``.
3. Every OSD window and every sphere view reads its part of the condition with its own ``read``
   (``diffusion/region_condition.py``) — wrapped across the 360° seam, nearest-sampled for views —
   and the model takes ``[x | condition]`` as on a plain I2V call.
4. Wan 2.1 I2V also attends to CLIP image tokens: each region gets the tokens of *its* pixels (the
   8×8 pixel blocks under the latent cells it reads), encoded once per distinct crop. Models with
   no image projection (``image_dim`` unset, e.g. the tiny I2V model) take none.
5. Global motion guidance's low-resolution pass has its own condition, of the first frame at its size.

With one window covering the panorama this is the stock I2V pipeline, bit for bit (tests).
``keep_first_frame`` also pins latent frame 0 to the condition's (re-noised before each step, clean
after the last): the causal VAE encodes the first frame alone into latent frame 0, so frame 0 of the
result is then the VAE's image of the input (as Wan 2.2 TI2V keeps it), not what the model redraws.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..diffusion.panorama_denoise import LatentLayout, NoiseLevels, region_band
from ..diffusion.region_condition import region_condition, region_pixels
from ..errors import InvalidArgument
from ..models.family import Conditioning, FamilyAdapter
from ..models.wan import as_pil_image

__all__ = ["KeepFirstFrame", "WanImagePanorama", "first_frame", "is_wan_image_to_video"]

# CLIP tokens kept per distinct crop: OSD windows repeat as the offsets cycle (16 steps); sphere views
# change every projecting step. Wan 2.1's 257×1280 tokens are 1.3 MB each: at most ~170 MB kept.
CLIP_CACHE_ENTRIES = 128


def is_wan_image_to_video(adapter: FamilyAdapter) -> bool:
    return adapter.family == "wan" and bool(getattr(adapter, "is_image_to_video", False))


def first_frame(image: Tensor, width: int, height: int) -> Tensor:
    """The input (3, h, w) in [0, 1] as the panorama's first frame: resized to width × height
    (bicubic, antialiased) and quantised to 8 bits, the values of the PIL image the stock I2V
    pipeline is given."""
    if tuple(image.shape[-2:]) != (height, width):
        image = F.interpolate(image[None].float(), size=(height, width), mode="bicubic", antialias=True,
                              align_corners=False)[0].clamp(0, 1)
    return torch.from_numpy(np.asarray(as_pil_image(image), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


@dataclass
class KeepFirstFrame:
    """Latent frame 0 kept at the condition's latent of the first frame: re-noised to each step's level
    and set before the step, the clean latent set after the last."""

    clean: Tensor  # (1, C, 1, h, w)
    noise: Tensor  # (1, C, 1, h, w): the panorama's own initial noise there
    levels: NoiseLevels

    def before_step(self, index: int, t: Tensor, x: Tensor) -> Tensor:
        x = x.clone()
        x[:, :, :1] = self.levels.noised(self.clean, self.noise, index).to(x.dtype)
        return x

    def after_step(self, index: int, t: Tensor, x: Tensor) -> Tensor:
        if index != self.levels.steps - 1:
            return x
        x = x.clone()
        x[:, :, :1] = self.clean.to(x.dtype)
        return x


@dataclass
class RegionImageCondition:
    """``(x, t, regions) → output`` for one panorama size: each region's crop of the condition and
    the CLIP tokens of its pixels, the prompt of its latitude band (when bands are given)."""

    adapter: Any  # WanAdapter
    condition: Tensor  # (1, 4 + C, F', h, w)
    pixels: Tensor  # (3, H, W) first frame
    prompt_for_band: Callable[[int], Conditioning]
    banded: bool
    layout: LatentLayout = field(default_factory=lambda: LatentLayout(video=True))
    _tokens: OrderedDict[tuple, Tensor] = field(default_factory=OrderedDict)

    def region_condition(self, regions: Sequence[Any]) -> Tensor:
        return region_condition(self.condition, regions, self.layout)

    def region_image(self, region: Any):
        """The PIL image of the region's pixels (what its CLIP tokens are of)."""
        cell = self.adapter.vae_scale_factor
        return as_pil_image(region_pixels(self.pixels, region, cell, self.condition.shape[2]))

    def clip_tokens(self, region: Any) -> Tensor:
        image = self.region_image(region)
        key = (image.size, image.tobytes())  # windows repeat as the offsets cycle: one encoding per crop
        if key in self._tokens:
            self._tokens.move_to_end(key)
            return self._tokens[key]
        tokens = self._tokens[key] = self.adapter.clip_image_embeds(image)
        if len(self._tokens) > CLIP_CACHE_ENTRIES:
            self._tokens.popitem(last=False)  # the least recently used crop
        return tokens

    def __call__(self, x: Tensor, t: Tensor, regions: Sequence[Any]) -> Tensor:
        condition = self.region_condition(regions)
        tokens = torch.cat([self.clip_tokens(r) for r in regions]) if self.adapter.takes_clip_image else None
        height = self.condition.shape[-2]
        bands = [region_band(r, height) for r in regions] if self.banded else [-1] * len(regions)
        out: Tensor | None = None
        for band in sorted(set(bands)):
            rows = [k for k, b in enumerate(bands) if b == band]
            whole = len(rows) == len(regions)  # one band: the batch as it is (the stock call's tensors)
            pick = (lambda v: v) if whole else (lambda v: v[rows])
            cond = self.prompt_for_band(band)
            extra = {**cond.extra, "condition": pick(condition)}
            if tokens is not None:
                extra["image_embeds"] = pick(tokens)
            part = self.adapter.predict(pick(x), t, dataclasses.replace(cond, extra=extra))
            if whole:
                return part
            if out is None:
                out = torch.empty((x.shape[0], *part.shape[1:]), dtype=part.dtype, device=part.device)
            out[rows] = part
        return out  # type: ignore[return-value]


@dataclass
class WanImagePanorama:
    """The first frame of a panorama on a Wan I2V model, conditioned per region at every size it runs at."""

    adapter: Any  # WanAdapter
    image: Tensor  # (3, h, w) input in [0, 1]
    frames: int  # pixel frames of the clip
    prompt_for_band: Callable[[int], Conditioning]
    banded: bool = False
    _sizes: dict[tuple[int, int], RegionImageCondition] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if getattr(self.adapter.pipe.config, "expand_timesteps", False):
            raise InvalidArgument("Image-conditioned panoramas on Wan 2.2 TI2V (expand_timesteps) models are not "
                                  "supported yet; use a Wan 2.1 image-to-video model.")

    def at(self, width: int, height: int) -> RegionImageCondition:
        """The region predictor for a panorama of width × height px (the condition encoded once per size)."""
        if (width, height) not in self._sizes:
            pixels = first_frame(self.image, width, height)
            shape = self.adapter.latent_shape(1, width, height, self.frames)
            rows = torch.zeros(shape, dtype=torch.float32, device=self.adapter.device)  # only its shape is used
            condition = self.adapter.image_condition_latent(as_pil_image(pixels), rows, self.frames, width, height)
            self._sizes[(width, height)] = RegionImageCondition(self.adapter, condition, pixels,
                                                                self.prompt_for_band, self.banded)
        return self._sizes[(width, height)]

    def keep_first_frame(self, width: int, height: int, noise: Tensor, levels: NoiseLevels) -> KeepFirstFrame:
        condition = self.at(width, height).condition
        channels = self.adapter.latent_channels  # after the mask channels
        return KeepFirstFrame(condition[:, -channels:, :1], noise[:, :, :1], levels)
