"""Noise shifting and two-stage re-noising for flow-matching DiTs (CineScale on Wan, ALGORITHMS.md §1b).

Flow matching interpolates x_σ = (1 − σ)·x0 + σ·ε. A larger image needs more noise to destroy the
same structure, so the schedule is shifted towards σ = 1:

    σ' = s·σ / (1 + (s − 1)·σ)

(the `flow_shift` of diffusers' `UniPCMultistepScheduler` and the `shift` of
`FlowMatchEulerDiscreteScheduler`); base stage s = 7, refinement s = 9 (1.3B) to 11 (14B).

Two-stage generation: the base video's latents are upsampled (trilinear), re-noised to the σ of
step `start_index` (15 of 50) of a fresh schedule built with the refinement shift, and denoised
over the rest of that schedule (`refinement_timesteps`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_utils import SchedulerMixin


def shift_sigmas(sigmas: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """σ' = s·σ / (1 + (s − 1)·σ): fixes 0 and 1, identity for s = 1, increasing in σ for s > 0."""
    if shift <= 0:
        raise ValueError(f"the noise shift must be positive, got {shift}.")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def renoise_flow(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x_σ = (1 − σ)·x0 + σ·ε; σ is a number or one value per batch item."""
    if isinstance(sigma, torch.Tensor) and sigma.ndim > 0:
        sigma = sigma.to(x0.device, x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return (1 - sigma) * x0 + sigma * noise


def latent_upsample(
    latents: torch.Tensor, size: tuple[int, int] | tuple[int, int, int], mode: str = "trilinear"
) -> torch.Tensor:
    """Resize video latents (B, C, F, H, W) to size (H, W) — frames kept — or (F, H, W); computed in float32."""
    if latents.ndim != 5:
        raise ValueError(f"expected video latents (B, C, F, H, W), got shape {tuple(latents.shape)}.")
    target = (latents.shape[2], *size) if len(size) == 2 else tuple(size)
    # Interpolating in float32 keeps half-precision latents from losing the small values of the resize.
    options = {"align_corners": False} if mode in ("linear", "bilinear", "bicubic", "trilinear") else {}
    resized = F.interpolate(latents.float(), size=target, mode=mode, **options)
    return resized.to(latents.dtype)


@dataclass(frozen=True)
class RefinementSchedule:
    """The tail of a fresh shifted schedule: the scheduler (begin index set) and what the loop steps over."""

    scheduler: SchedulerMixin
    timesteps: torch.Tensor  # timesteps[start_index:] of the fresh schedule
    sigmas: torch.Tensor  # sigmas[start_index:], ending with the terminal σ
    start_sigma: float  # σ to re-noise the upsampled latents to


def refinement_timesteps(
    scheduler: SchedulerMixin | type[SchedulerMixin],
    steps: int = 50,
    start_index: int = 15,
    shift: float = 9.0,
    config: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> RefinementSchedule:
    """Build a fresh `steps`-step schedule with the refinement `shift` and keep its steps from `start_index` on.

    `scheduler` is a scheduler (its config is reused) or a scheduler class with `config`. Works with
    diffusers' `UniPCMultistepScheduler` (flow sigmas, `flow_shift`) and `FlowMatchEulerDiscreteScheduler`
    (`shift`); dynamic shifting is turned off because the shift is given explicitly.
    """
    if not 0 <= start_index < steps:
        raise ValueError(f"start_index must lie in [0, {steps}), got {start_index}.")
    scheduler_class = scheduler if isinstance(scheduler, type) else type(scheduler)
    base_config = dict(config if config is not None else ({} if isinstance(scheduler, type) else scheduler.config))
    overrides: dict[str, Any] = {"use_dynamic_shifting": False}
    init_parameters = inspect.signature(scheduler_class.__init__).parameters
    if "flow_shift" in init_parameters:
        if not base_config.get("use_flow_sigmas", False):
            raise ValueError(f"{scheduler_class.__name__} needs use_flow_sigmas=True to run a flow-matching schedule.")
        overrides["flow_shift"] = float(shift)
    elif "shift" in init_parameters:
        overrides["shift"] = float(shift)
    else:
        raise TypeError(f"{scheduler_class.__name__} has no flow-matching shift (flow_shift or shift).")
    fresh = scheduler_class.from_config({**base_config, **overrides})
    fresh.set_timesteps(steps, device=device)
    fresh.set_begin_index(start_index)
    return RefinementSchedule(
        scheduler=fresh,
        timesteps=fresh.timesteps[start_index:],
        sigmas=fresh.sigmas[start_index:],
        start_sigma=float(fresh.sigmas[start_index]),
    )
