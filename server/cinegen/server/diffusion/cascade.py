"""Tailored self-cascade upscaling for UNet models (FreeScale / CineScale, ALGORITHMS.md §1a).

Stage 1 is an ordinary generation at the model's native size. Every later stage starts from the
previous stage's result ``x0↑`` (decoded, resized bicubically, encoded again; or, cheaper, resized
in latent space), draws one noise ``ε`` and uses it for every step:

    z_i = add_noise(x0↑, ε, t_i)                                  (noised reference of step i)
    K   = int(0.3 · steps)                                        (denoising starts from z_K)
    c_i = (0.5 · (1 + cos(π · (T − t_i) / T))) ** cosine_scale    (c = 1 at t = T, 0 at t = 0)
    x   ← (1 − c_i) · x + c_i · z_i                               (before every step i ≥ K)

``cosine_scale`` may be a per-pixel map (plate upscaling: foreground 2–3, background 0.5–1).
Sizes here are ``(width, height)`` in pixels unless a name says ``latent``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

Size = tuple[int, int]

DEFAULT_TRAIN_TIMESTEPS = 1000
DEFAULT_COSINE_SCALE = 2.0
DEFAULT_RENOISE_FRACTION = 0.3


# ----------------------------------------------------------------------------------------------
# Stage plan
# ----------------------------------------------------------------------------------------------


def _round_to_multiple(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def plan_stages(
    native: Size,
    target: Size,
    factor: float = 2.0,
    stages: int | None = None,
    multiple: int = 8,
) -> list[Size]:
    """Stage sizes ``[(w, h), ...]`` from about the native pixel count up to exactly ``target``.

    The first stage keeps the target's aspect ratio at about the native pixel count; each later
    stage grows the side length by at most ``factor`` (stages spaced geometrically, so an exact
    power of ``factor`` gives exactly ×factor per stage); the last stage is ``target``.
    ``stages`` (total count, first stage included) overrides the count. ``multiple`` is the *pixel*
    multiple every stage but the last is rounded to: 8 × the latent multiple the UNet needs
    (SD1.5: 8·8 = 64, SDXL: 8·4 = 32). The target is kept as given (4K UHD's 2160 is no multiple
    of 32; diffusers UNets pad odd sizes), so the caller keeps it a multiple of the VAE factor.
    A target no larger than the first stage gives the single stage ``[target]``.
    """
    native_w, native_h = native
    target_w, target_h = target
    if min(native_w, native_h, target_w, target_h) <= 0:
        raise ValueError(f"sizes must be positive, got native={native} target={target}")
    if factor <= 1.0:
        raise ValueError(f"factor must be > 1, got {factor}")
    if stages is not None and stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")

    aspect = target_w / target_h
    native_area = native_w * native_h
    first_w = math.sqrt(native_area * aspect)
    first_h = first_w / aspect
    growth = math.sqrt(target_w * target_h / (first_w * first_h))

    if stages is None:
        # small epsilon: an exact power of `factor` must not gain a stage to rounding error
        upscales = math.ceil(math.log(growth) / math.log(factor) - 1e-9) if growth > 1.0 else 0
    else:
        upscales = stages - 1
    if upscales <= 0:
        return [(target_w, target_h)]

    per_stage = growth ** (1.0 / upscales)
    plan: list[Size] = []
    for index in range(upscales):
        grow = per_stage**index
        size = (_round_to_multiple(first_w * grow, multiple), _round_to_multiple(first_h * grow, multiple))
        # rounding may clamp a stage onto the next one or past the target: keep the plan increasing
        size = (min(size[0], target_w), min(size[1], target_h))
        if not plan or size != plan[-1]:
            plan.append(size)
    if plan[-1] != (target_w, target_h):
        plan.append((target_w, target_h))
    return plan


# ----------------------------------------------------------------------------------------------
# Re-noising and the cosine mix
# ----------------------------------------------------------------------------------------------


def renoise_start_index(steps: int, fraction: float = DEFAULT_RENOISE_FRACTION) -> int:
    """Index ``K = int(fraction · steps)`` of the first denoised step of an upscaled stage."""
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    return int(fraction * steps)


def cosine_mix_weight(
    t: float | torch.Tensor,
    T: int = DEFAULT_TRAIN_TIMESTEPS,
    cosine_scale: float | torch.Tensor = DEFAULT_COSINE_SCALE,
) -> float | torch.Tensor:
    """``c = (0.5 · (1 + cos(π (T − t) / T))) ** cosine_scale``: 1 at ``t = T``, 0 at ``t = 0``.

    A float ``t`` and float ``cosine_scale`` give a float; any tensor argument gives a tensor
    (a tensor ``cosine_scale`` is a per-pixel exponent map, see ``cosine_mix_weight_map``).
    """
    if isinstance(t, torch.Tensor) or isinstance(cosine_scale, torch.Tensor):
        t_tensor = torch.as_tensor(t, dtype=torch.float64)
        base = 0.5 * (1.0 + torch.cos(math.pi * (T - t_tensor) / T))
        if isinstance(cosine_scale, torch.Tensor):
            return base.to(cosine_scale.device) ** cosine_scale.to(torch.float64)
        return base**cosine_scale
    base = 0.5 * (1.0 + math.cos(math.pi * (T - float(t)) / T))
    return base**cosine_scale


def cosine_mix_weight_map(
    t: float | torch.Tensor, scale_map: torch.Tensor, T: int = DEFAULT_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """Per-pixel weights ``c(t) ** scale_map`` (same shape, dtype and device as ``scale_map``).

    ``scale_map`` must broadcast against the latent it mixes, e.g. ``(H, W)`` or ``(B, 1, H, W)``
    at latent resolution (foreground exponent 2–3, background 0.5–1 for plate upscaling).
    """
    weight = cosine_mix_weight(t, T=T, cosine_scale=scale_map)
    assert isinstance(weight, torch.Tensor)
    return weight.to(dtype=scale_map.dtype)


def matte_cosine_scale_map(
    matte: torch.Tensor, latent: torch.Tensor, outside: float, inside: float
) -> torch.Tensor:
    """A per-pixel exponent for ``latent`` from a matte: ``inside`` where alpha is 1, ``outside``
    where it is 0, linear in between (FreeScale's region-wise cosine scale for plates).

    ``matte`` is ``(H, W)`` or ``(F, H, W)`` in [0, 1] at any resolution; it is area-resized to the
    latent's grid. The map is ``(1, 1, h, w)`` for an image latent ``(B, C, h, w)`` (one frame's
    matte) and ``(1, 1, F, h, w)`` for a clip ``(B, C, F, h, w)``.
    """
    frames = matte.reshape(-1, 1, *matte.shape[-2:]).to(torch.float32)
    alpha = F.interpolate(frames, size=tuple(latent.shape[-2:]), mode="area").clamp(0.0, 1.0)
    exponent = outside + (inside - outside) * alpha  # (F, 1, h, w)
    if latent.ndim == 5:
        if exponent.shape[0] != latent.shape[2]:
            raise ValueError(f"a matte of {exponent.shape[0]} frames for a clip of {latent.shape[2]}")
        exponent = exponent.permute(1, 0, 2, 3).unsqueeze(0)
    elif exponent.shape[0] != 1:
        raise ValueError(f"an image latent takes one frame's matte, got {exponent.shape[0]}")
    return exponent.to(device=latent.device, dtype=latent.dtype)


def cosine_mix(x: torch.Tensor, z: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """``(1 − c) · x + c · z``: pull the latent toward the noised reference by ``c``."""
    if isinstance(c, torch.Tensor):
        c = c.to(device=x.device, dtype=x.dtype)
    return (1.0 - c) * x + c * z


class NoisedReferences:
    """``z_i = scheduler.add_noise(x0_up, ε, t_i)`` for every step ``i``, made on demand.

    Every diffusers ``add_noise`` is affine in ``(x0, ε)`` at a fixed timestep, so the two
    coefficients per step are measured once, up front, and ``z_i = a_i · x0 + b_i · ε`` is built
    only when asked: a list of all references would hold ``steps`` full-size latents (GBs at 8K).
    """

    def __init__(self, x0_up: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, scheduler: Any):
        if x0_up.shape != noise.shape:
            raise ValueError(f"x0_up {tuple(x0_up.shape)} and noise {tuple(noise.shape)} differ in shape")
        self.x0_up = x0_up
        self.noise = noise
        self.timesteps = timesteps
        self._signal, self._noise = _add_noise_coefficients(scheduler, timesteps, x0_up.dtype)

    def __len__(self) -> int:
        return len(self.timesteps)

    def __getitem__(self, step_index: int) -> torch.Tensor:
        a = self._signal[step_index].to(device=self.x0_up.device, dtype=self.x0_up.dtype)
        b = self._noise[step_index].to(device=self.x0_up.device, dtype=self.x0_up.dtype)
        return a * self.x0_up + b * self.noise


def _add_noise_coefficients(
    scheduler: Any, timesteps: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    probe_scheduler = copy.deepcopy(scheduler)
    # k-diffusion style schedulers (Euler, DPM++) read their own step position in add_noise once a
    # loop has started or a begin index is set; a fresh copy makes them look t_i up instead
    for attribute in ("_step_index", "_begin_index"):
        if hasattr(probe_scheduler, attribute):
            setattr(probe_scheduler, attribute, None)
    signal, noise = [], []
    # probing in the latent's dtype makes a_i·x0 + b_i·ε the same arithmetic as add_noise itself
    one, zero = torch.ones(1, dtype=dtype), torch.zeros(1, dtype=dtype)
    for t in timesteps:
        t_batch = t.reshape(1)
        signal.append(probe_scheduler.add_noise(one.clone(), zero.clone(), t_batch).reshape(()))
        noise.append(probe_scheduler.add_noise(zero.clone(), one.clone(), t_batch).reshape(()))
    return torch.stack(signal), torch.stack(noise)


def noised_references(
    x0_up: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, scheduler: Any
) -> NoisedReferences:
    """The noised references ``z_i`` of a stage (one noise draw for all steps), indexable by step."""
    return NoisedReferences(x0_up, noise, timesteps, scheduler)


# ----------------------------------------------------------------------------------------------
# Hooks for the generic denoising loop
# ----------------------------------------------------------------------------------------------


@dataclass
class CascadeHooks:
    """Before-step hook of an upscaled stage: mixes ``x`` toward ``z_i`` for steps ``i ≥ K``.

    ``cosine_scale`` is a float or a per-pixel exponent map broadcastable to the latent.
    The loop starts from ``initial_latent()`` (``z_K``) and skips steps ``< start_index``.
    """

    references: NoisedReferences
    start_index: int
    cosine_scale: float | torch.Tensor = DEFAULT_COSINE_SCALE
    train_timesteps: int = DEFAULT_TRAIN_TIMESTEPS

    def initial_latent(self) -> torch.Tensor:
        return self.references[self.start_index]

    def mix_weight(self, t: float | torch.Tensor) -> float | torch.Tensor:
        t_value = float(t) if isinstance(t, torch.Tensor) else t
        if isinstance(self.cosine_scale, torch.Tensor):
            return cosine_mix_weight_map(t_value, self.cosine_scale, T=self.train_timesteps)
        return cosine_mix_weight(t_value, T=self.train_timesteps, cosine_scale=self.cosine_scale)

    def before_step(self, step_index: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if step_index < self.start_index:
            return x
        return cosine_mix(x, self.references[step_index], self.mix_weight(t))


def cascade_hooks(
    x0_up: torch.Tensor,
    noise: torch.Tensor,
    scheduler: Any,
    steps: int,
    cosine_scale: float | torch.Tensor = DEFAULT_COSINE_SCALE,
    renoise_fraction: float = DEFAULT_RENOISE_FRACTION,
) -> CascadeHooks:
    """Hooks of one upscaled stage over ``scheduler.timesteps`` (``set_timesteps`` already called)."""
    timesteps = scheduler.timesteps
    if len(timesteps) != steps:
        raise ValueError(f"scheduler has {len(timesteps)} timesteps, expected {steps}")
    return CascadeHooks(
        references=noised_references(x0_up, noise, timesteps, scheduler),
        start_index=renoise_start_index(steps, renoise_fraction),
        cosine_scale=cosine_scale,
        train_timesteps=int(scheduler.config.num_train_timesteps),
    )


# ----------------------------------------------------------------------------------------------
# Resizing between stages
# ----------------------------------------------------------------------------------------------


def _resize_frames(frames: torch.Tensor, size: Size, antialias: bool) -> torch.Tensor:
    width, height = size
    if frames.ndim == 4:
        return F.interpolate(
            frames, size=(height, width), mode="bicubic", align_corners=False, antialias=antialias
        )
    if frames.ndim == 5:
        # video (B, C, F, H, W): resize every frame alone
        batch, channels, count = frames.shape[:3]
        flat = frames.permute(0, 2, 1, 3, 4).reshape(batch * count, channels, *frames.shape[-2:])
        flat = _resize_frames(flat, size, antialias)
        return flat.reshape(batch, count, channels, height, width).permute(0, 2, 1, 3, 4)
    raise ValueError(f"expected (B, C, H, W) or (B, C, F, H, W), got shape {tuple(frames.shape)}")


def resize_latent(latents: torch.Tensor, latent_size: Size) -> torch.Tensor:
    """Bicubic resize of a latent to ``latent_size = (w, h)`` latent cells (the cheap ``x0↑``)."""
    return _resize_frames(latents, latent_size, antialias=False)


def resize_pixels(images: torch.Tensor, size: Size, clamp: tuple[float, float] | None = None) -> torch.Tensor:
    """Bicubic, antialiased resize of images to ``size = (w, h)`` pixels (before re-encoding).

    ``clamp`` (e.g. ``(-1, 1)`` for VAE input) removes bicubic overshoot at hard edges.
    """
    resized = _resize_frames(images, size, antialias=True)
    return resized.clamp(*clamp) if clamp is not None else resized


__all__ = [
    "CascadeHooks",
    "NoisedReferences",
    "cascade_hooks",
    "cosine_mix",
    "cosine_mix_weight",
    "cosine_mix_weight_map",
    "matte_cosine_scale_map",
    "noised_references",
    "plan_stages",
    "renoise_start_index",
    "resize_latent",
    "resize_pixels",
]
