"""The MultiDiffusion peer of the panorama benchmark (Bar-Tal et al. 2023, Eq. 5 and 7), as diffusers'
`StableDiffusionPanoramaPipeline` runs it, with the window and stride as parameters.

Per step: every view (window at `stride`) is cut out, denoised by one scheduler step (views in
batches of `view_batch`, each batch with its own copy of the scheduler's state, as diffusers keeps
`views_scheduler_status`), and every latent becomes the mean of the views covering it. `circular`
wraps views around the width (diffusers' `circular_padding`).

Why not call diffusers' pipeline: its views are fixed at 64×64 latents (`get_views` defaults, not an
argument of `__call__`), so a model with another native size runs at 64² there; and with
`circular_padding` and more than one row of views it crashes (it slices each wrapped view with the
panorama's row range `h_start:h_end` instead of the view's own `0:window`). Views here are
gathered with a wrapped column index instead, so any number of rows works; on the cases diffusers
runs, the test suite checks this loop against diffusers' own.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class View:
    top: int
    left: int  # may run past the right edge when circular


def multidiffusion_views(height: int, width: int, window: tuple[int, int], stride: int, circular: bool) -> list[View]:
    """Views as diffusers' `get_views` lays them out, in latent cells (rows first)."""
    wh, ww = window
    rows = (height - wh) // stride + 1 if height > wh else 1
    if circular:
        cols = width // stride if width > ww else 1
    else:
        cols = (width - ww) // stride + 1 if width > ww else 1
    return [View(r * stride, c * stride) for r in range(rows) for c in range(cols)]


def _columns(view: View, window_width: int, width: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(view.left, view.left + window_width, device=device) % width)


def multidiffusion_denoise(latents: torch.Tensor, scheduler: Any, predict: Predict, *, window: tuple[int, int],
                           stride: int, circular: bool = False, view_batch: int = 1,
                           step_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
    """Denoise (1, C, H, W) `latents` (already scaled by `init_noise_sigma`) over `scheduler.timesteps`.

    `predict(x, t)` gets a batch of views (N, C, wh, ww), classifier-free guidance included."""
    _, _, height, width = latents.shape
    wh, ww = min(window[0], height), min(window[1], width)
    views = multidiffusion_views(height, width, (wh, ww), stride, circular)
    batches = [views[i:i + view_batch] for i in range(0, len(views), view_batch)]
    states = [copy.deepcopy(scheduler.__dict__) for _ in batches]
    columns = {v: _columns(v, ww, width, latents.device) for v in views}
    step_kwargs = step_kwargs or {}
    for t in scheduler.timesteps:
        value = torch.zeros_like(latents)
        count = torch.zeros_like(latents)
        for j, batch in enumerate(batches):
            cut = torch.cat([latents[:, :, v.top:v.top + wh].index_select(3, columns[v]) for v in batch])
            scheduler.__dict__.update(states[j])
            scale = getattr(scheduler, "scale_model_input", None)
            noise = predict(scale(cut, t) if scale else cut, t)
            denoised = scheduler.step(noise, t, cut, **step_kwargs, return_dict=False)[0]
            states[j] = copy.deepcopy(scheduler.__dict__)
            for v, piece in zip(batch, denoised.chunk(len(batch))):
                value[:, :, v.top:v.top + wh].index_add_(3, columns[v], piece)
                count[:, :, v.top:v.top + wh].index_add_(3, columns[v], torch.ones_like(piece))
        latents = torch.where(count > 0, value / count, value)
    return latents


def views_per_step(height: int, width: int, window: tuple[int, int], stride: int, circular: bool) -> int:
    return len(multidiffusion_views(height, width, (min(window[0], height), min(window[1], width)), stride, circular))
