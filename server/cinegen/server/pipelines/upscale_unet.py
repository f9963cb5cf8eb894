"""The tailored self-cascade on UNet models (FreeScale / CineScale, ALGORITHMS.md §1a; §1c refine).

One upscaled stage, for a stage size ``S`` and the *reference* size ``R`` (the first stage of
``plan_stages(native, target)``: the native pixel count at the target's aspect):

    x0↑  = encode(bicubic(decode(x0_prev), S))          (or a bicubic latent resize, cheaper)
    ε    ~ N(0, I), one draw for the whole stage
    z_i  = add_noise(x0↑, ε, t_i);   K = steps − ⌊steps·strength⌋   (strength unset: K = ⌊0.3·steps⌋)
    for i = K … steps−1:
        x ← (1 − c_i)·x + c_i·z_i,  c_i = (½(1 + cos(π(T − t_i)/T)))^cosine_scale   (cosine mix)
        dilation = padding = S_w // R_w on down/mid 3×3 convs while i < dilate_tau     (restrained)
        attn1 → G(local windows of R's token grid) + (global − G(global))               (scale fusion)
        x ← scheduler.step(ε_θ(x, t_i), t_i, x)

Plates may carry a region-wise exponent (``matte_cosine_scale``): the plate's matte picks the
exponent per pixel, ``matte_cosine_scale`` where alpha is 1 and ``cosine_scale`` where it is 0
(FreeScale: a higher exponent lets go of the reference sooner, so that region gets more new detail).

Refine mode (I2VGen-XL) is the same stage without the cosine mix: SDEdit from z_K. At or below the
reference size that is all it is (no dilation, no scale fusion: plain SDEdit). Above it, dilation and
scale fusion stay on, because I2VGen-XL refines at its *training* size while here the clip is
refined above the model's: without them the UNet repeats objects at the larger size.
``dilate_tau`` is a step index of the schedule; unset it is ``round(0.7 · steps)`` (FreeScale's 35
of 50). Everything patched (convs, processors) is restored when a stage ends, fails or is cancelled.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..diffusion.cascade import (DEFAULT_COSINE_SCALE, DEFAULT_RENOISE_FRACTION, CascadeHooks,
                                 matte_cosine_scale_map, noised_references, plan_stages, renoise_start_index,
                                 resize_latent, resize_pixels)
from ..diffusion.dilation import DilationSchedule, dilation_targets
from ..diffusion.sampler import DenoiseLoop, LoopCallbacks, scheduler_step_kwargs
from ..diffusion.scale_fusion import install_scale_fusion
from ..diffusion.tiled_vae import tiled_decode, tiled_encode
from ..models.family import Conditioning, FamilyAdapter
from .base import Resolved, seeded_generator
from .image import generate_images

Size = tuple[int, int]
DILATE_FRACTION = 0.7  # FreeScale: dilate_tau = 35 of 50 steps
VAE_FRAMES_PER_CALL = 8  # video frames through the VAE at once: memory grows with frames otherwise
NOISE_SEED_OFFSET = 1  # stage noise and window jitter get their own streams, apart from stage 1's noise
JITTER_SEED_OFFSET = 2


@dataclass(frozen=True)
class CascadeSettings:
    """How upscaled stages run; `resolve_settings` fills the defaults."""
    steps: int
    strength: float | None = None  # None: K = int(0.3 · steps), FreeScale's re-noise point
    cosine_scale: float = DEFAULT_COSINE_SCALE
    dilate_tau: int | None = None  # step index; None: round(0.7 · steps)
    fast: bool = False
    latent_resize: bool = False
    cosine_mix: bool = True  # False for refine mode (plain SDEdit)
    matte_cosine_scale: float | None = None  # plates: the exponent where the matte is 1 (cosine_scale where 0)
    vae_tile: int = 512  # pixels; frames no larger than this go through the VAE whole
    windows_per_batch: int = 64  # scale-fusion windows per attention call
    scale_fusion: bool = True  # False only for ablations (`cinegen bench quality`): plain attention in the stages

    @property
    def start_index(self) -> int:
        """K: the first denoised step index; == steps at strength 0 (nothing is denoised).

        Unset strength: FreeScale's K = int(0.3 · steps). A strength: diffusers' img2img convention
        K = steps − int(steps · strength), as the DiT path uses (0.7 of 50 steps → K = 15 either way).
        """
        if self.strength is None:
            return renoise_start_index(self.steps, DEFAULT_RENOISE_FRACTION)
        return self.steps - min(self.steps, int(self.steps * self.strength + 1e-9))

    @property
    def tau(self) -> int:
        return round(DILATE_FRACTION * self.steps) if self.dilate_tau is None else self.dilate_tau

    @property
    def vae_overlap(self) -> int:
        return max(8, self.vae_tile // 4 // 8 * 8)

    def reduced(self) -> "CascadeSettings":
        """Smaller VAE tiles and attention chunks: the one retry after running out of GPU memory."""
        return dataclasses.replace(self, vae_tile=max(128, self.vae_tile // 2 // 64 * 64),
                                   windows_per_batch=max(1, self.windows_per_batch // 8))


def default_vae_tile(adapter: FamilyAdapter) -> int:
    """Tiles of the native side (at least 512 px): one VAE pass at the size the model was made for."""
    return max(512, max(adapter.native_size))


def pixel_multiple(adapter: FamilyAdapter) -> int:
    """Pixel multiple of intermediate stages: VAE factor × the UNet's latent multiple."""
    levels = len(adapter.denoiser.config.block_out_channels)
    return adapter.vae_scale_factor * 2 ** (levels - 1)


def reference_size(adapter: FamilyAdapter, target: Size) -> Size:
    """The first stage of the native cascade: scale fusion and dilation measure scale against it."""
    return plan_stages(adapter.native_size, target, multiple=pixel_multiple(adapter))[0]


# ---- pixels <-> latents (tiled for large frames) ------------------------------------------------
def _frames_in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply `fn` to (N, C, H, W) chunks; video (B, C, F, H, W) is folded into frames and back."""
    if x.dim() == 4:
        return torch.cat([fn(x[i:i + VAE_FRAMES_PER_CALL]) for i in range(0, x.shape[0], VAE_FRAMES_PER_CALL)])
    b, c, f = x.shape[:3]
    flat = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, *x.shape[-2:])
    out = _frames_in_chunks(fn, flat)
    return out.reshape(b, f, *out.shape[1:]).permute(0, 2, 1, 3, 4)


def encode_pixels(adapter: FamilyAdapter, images: torch.Tensor, settings: CascadeSettings) -> torch.Tensor:
    """Images in [0, 1] -> scaled latents (posterior mean, as `adapter.encode` without a generator)."""
    vae = adapter.pipe.vae

    def encode(chunk: torch.Tensor) -> torch.Tensor:
        return tiled_encode(vae, (chunk * 2 - 1).to(adapter.device, vae.dtype), tile_px=settings.vae_tile,
                            overlap_px=settings.vae_overlap, mode="mean")

    with torch.no_grad():
        raw = _frames_in_chunks(encode, images)
    return raw.to(adapter.dtype) * vae.config.scaling_factor


def decode_latents(adapter: FamilyAdapter, latents: torch.Tensor, settings: CascadeSettings) -> torch.Tensor:
    """Scaled latents -> images in [0, 1] (what `adapter.decode` gives for frames of one tile)."""
    vae = adapter.pipe.vae
    factor = adapter.vae_scale_factor

    def decode(chunk: torch.Tensor) -> torch.Tensor:
        return tiled_decode(vae, chunk.to(vae.dtype) / vae.config.scaling_factor,
                            tile_latent=settings.vae_tile // factor, overlap_latent=settings.vae_overlap // factor)

    with torch.no_grad():
        images = _frames_in_chunks(decode, latents)
    return (images / 2 + 0.5).clamp(0, 1)


def upscaled_reference(adapter: FamilyAdapter, x0: torch.Tensor, size: Size, settings: CascadeSettings, *,
                       x0_is_pixels: bool = False) -> torch.Tensor:
    """x0↑ at `size`: decode → bicubic → encode (or a latent resize); pixels skip the decode."""
    if settings.latent_resize and not x0_is_pixels:
        s = adapter.vae_scale_factor
        return resize_latent(x0, (size[0] // s, size[1] // s))
    pixels = x0 if x0_is_pixels else decode_latents(adapter, x0, settings)
    return encode_pixels(adapter, resize_pixels(pixels.float(), size, clamp=(0.0, 1.0)), settings)


# ---- stage 1 ------------------------------------------------------------------------------------
def generate_clip(adapter: FamilyAdapter, r: Resolved, *, callbacks: LoopCallbacks | None = None,
                  hooks: tuple = ()) -> torch.Tensor:
    """Latents (1, C, F, h, w) of one clip, denoised like the stock `AnimateDiffPipeline`."""
    generator = seeded_generator(r.seed)
    cond = adapter.encode_prompt(r.prompt, r.negative_prompt, r.guidance)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(r.steps, device=adapter.device)
    shape = adapter.latent_shape(1, r.width, r.height, r.frames)
    latents = randn_tensor(shape, generator=generator, device=adapter.device, dtype=adapter.dtype)
    latents = latents * scheduler.init_noise_sigma
    loop = DenoiseLoop(scheduler, lambda x, t: adapter.predict(x, t, cond), hooks=hooks,
                       callbacks=callbacks or LoopCallbacks(), step_kwargs=scheduler_step_kwargs(scheduler, generator))
    return loop.run(latents)


def generate_native(adapter: FamilyAdapter, r: Resolved, *, callbacks: LoopCallbacks | None = None,
                    hooks: tuple = ()) -> torch.Tensor:
    """Stage 1: images (frames, C, h, w) for image models, one clip (1, C, F, h, w) for video models."""
    if adapter.kind == "video":
        return generate_clip(adapter, r, callbacks=callbacks, hooks=hooks)
    return generate_images(adapter, r, callbacks=callbacks, hooks=hooks)


# ---- one upscaled stage ------------------------------------------------------------------------
@dataclass
class RestrainedDilationHook:
    """`step_context` hook of the denoising loop: dilated down/mid convs for steps i < dilate_tau."""
    unet: torch.nn.Module
    schedule: DilationSchedule

    def __post_init__(self) -> None:
        self.targets = dilation_targets(self.unet)

    def step_context(self, index: int, t: torch.Tensor) -> contextlib.AbstractContextManager:
        return self.schedule.for_step(self.unet, index, self.targets)


def fusion_scale(size: Size, reference: Size) -> tuple[float, float]:
    """(s_h, s_w) of a stage over the reference; an axis below the reference counts as 1."""
    return max(1.0, size[1] / reference[1]), max(1.0, size[0] / reference[0])


@contextlib.contextmanager
def scale_fusion_for_stage(unet: torch.nn.Module, size: Size, reference: Size, settings: CascadeSettings,
                           generator: torch.Generator) -> Iterator[bool]:
    """Scale fusion on every attn1 while the stage runs, when the stage is above the reference."""
    scale = fusion_scale(size, reference)
    if max(scale) <= 1.0 or not settings.scale_fusion:
        yield False
        return
    with install_scale_fusion(unet, scale, fast=settings.fast, jitter=True, generator=generator) as installed:
        for processor in installed.values():
            processor.windows_per_batch = settings.windows_per_batch
        yield True


def refine_stage(adapter: FamilyAdapter, cond: Conditioning, x0_up: torch.Tensor, size: Size, reference: Size,
                 settings: CascadeSettings, *, noise_generator: torch.Generator,
                 jitter_generator: torch.Generator, callbacks: LoopCallbacks | None = None,
                 matte: torch.Tensor | None = None) -> torch.Tensor:
    """Denoise `x0_up` (latents at `size`) from step K with the cosine mix, dilation and scale fusion.

    `matte` ((H, W) or (F, H, W) in [0, 1]) with `settings.matte_cosine_scale` makes the exponent a map."""
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(settings.steps, device=adapter.device)
    # the draw happens even when nothing is denoised, so later stages see the same noise stream
    noise = randn_tensor(x0_up.shape, generator=noise_generator, device=x0_up.device, dtype=x0_up.dtype)
    start = settings.start_index
    if start >= settings.steps:
        return x0_up  # strength 0: the stage keeps its reference
    cosine_scale: float | torch.Tensor = settings.cosine_scale
    if matte is not None and settings.matte_cosine_scale is not None:
        cosine_scale = matte_cosine_scale_map(matte, x0_up, settings.cosine_scale, settings.matte_cosine_scale)
    mix = CascadeHooks(noised_references(x0_up, noise, scheduler.timesteps, scheduler), start,
                       cosine_scale=cosine_scale,
                       train_timesteps=int(scheduler.config.num_train_timesteps))
    schedule = DilationSchedule.for_stage(reference[0], size[0], settings.tau)
    hooks: list = [mix] if settings.cosine_mix else []
    hooks.append(RestrainedDilationHook(adapter.denoiser, schedule))
    loop = DenoiseLoop(scheduler, lambda x, t: adapter.predict(x, t, cond), hooks=hooks,
                       callbacks=callbacks or LoopCallbacks(),
                       step_kwargs=scheduler_step_kwargs(scheduler, noise_generator))
    with scale_fusion_for_stage(adapter.denoiser, size, reference, settings, jitter_generator):
        return loop.run(mix.initial_latent(), start_index=start)


def run_cascade(adapter: FamilyAdapter, cond: Conditioning, x0: torch.Tensor, stages: list[Size],
                reference: Size, settings: CascadeSettings, seed: int, *,
                callbacks_for: Callable[[int], LoopCallbacks] = lambda k: LoopCallbacks(),
                x0_is_pixels: bool = False, matte: torch.Tensor | None = None) -> torch.Tensor:
    """Latents at `stages[-1]`: each stage resizes the previous result and refines it.

    `x0` is the result before `stages[0]`: latents (generate) or [0, 1] pixels (plate, refine).
    Every call with the same seed draws the same noise, so the frames of a plate share it.
    `matte`: the plate's alpha, for a region-wise cosine exponent (`settings.matte_cosine_scale`).
    """
    noise_generator = seeded_generator(seed + NOISE_SEED_OFFSET)
    jitter_generator = seeded_generator(seed + JITTER_SEED_OFFSET)
    for k, size in enumerate(stages):
        x0_up = upscaled_reference(adapter, x0, size, settings, x0_is_pixels=x0_is_pixels and k == 0)
        x0 = refine_stage(adapter, cond, x0_up, size, reference, settings, noise_generator=noise_generator,
                          jitter_generator=jitter_generator, callbacks=callbacks_for(k), matte=matte)
    return x0


__all__ = ["CascadeSettings", "RestrainedDilationHook", "decode_latents", "default_vae_tile", "encode_pixels",
           "fusion_scale", "generate_clip", "generate_native", "pixel_multiple", "reference_size", "refine_stage",
           "run_cascade", "scale_fusion_for_stage", "upscaled_reference"]
