"""SDXL base + refiner as diffusers' "ensemble of experts" (`--refiner MODEL`, `--refiner-split`).

The base denoises the high-noise share of the schedule and hands its latents, still noisy, to the
refiner, which denoises the rest with its own prompt encoding (OpenCLIP bigG only) and aesthetic-score
micro-conditioning. Both build the same schedule for the same step count and cut it where diffusers
does: the timestep `round(T - split * T)` of T training steps; the base keeps the timesteps at or above
it (`denoising_end=split`), the refiner those below (`denoising_start=split`, one more for a second-order
scheduler that would end mid-step). Split 1 is the base alone. The base's VAE decodes: the refiner
ships a copy of the same SDXL VAE.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..diffusion.sampler import DenoiseLoop, LoopCallbacks, scheduler_step_kwargs
from ..errors import InvalidArgument
from ..models.offload import release

DEFAULT_SPLIT = 0.8  # diffusers' documented ensemble-of-experts split: the base takes the first 80 %
_CLASS_KINDS = {"StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl-refiner"}


def sd_kind(entry) -> str:
    """sd1 | sd2 | sdxl | sdxl-refiner for a single file (its tensor names), sdxl | sdxl-refiner | sd for a folder."""
    if entry.source == "single-file":
        return entry.kind
    if not entry.path:  # a built-in tiny model (SD 1.x layout), built on first use
        return "sd"
    try:
        name = json.loads((Path(entry.path) / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError, TypeError):
        name = ""
    return _CLASS_KINDS.get(name, "sd")


def check_refiner_request(registry, base_id: str, refiner_id: str, split: float | None) -> None:
    """At Submit: the refiner needs an SDXL base and an SDXL refiner, and a split in (0, 1]."""
    base = registry.entry(base_id)
    if sd_kind(base) == "sdxl-refiner":
        raise InvalidArgument(f"'{base.id}' is an SDXL refiner: it finishes the picture of an SDXL base model. "
                              f"Pick an SDXL model with --model and pass '{base.id}' as --refiner.")
    if not refiner_id:
        if split is not None:  # it would have nothing to split
            raise InvalidArgument("--refiner-split is where the refiner takes over from the base model; give the "
                                  "refiner with --refiner, or drop --refiner-split.")
        return
    if sd_kind(base) != "sdxl":
        raise InvalidArgument(f"--refiner runs after an SDXL base model, and '{base.id}' is not one "
                              f"({sd_kind(base)}). Pick an SDXL model with --model, or leave --refiner empty.")
    refiner = registry.entry(refiner_id)
    if sd_kind(refiner) != "sdxl-refiner":
        raise InvalidArgument(f"--refiner '{refiner.id}' is not an SDXL refiner ({refiner.family} model, "
                              f"{sd_kind(refiner) if refiner.family == 'sd' else 'not SD'}). Pick an SDXL refiner "
                              "(a file with only the OpenCLIP text encoder, or a StableDiffusionXLImg2ImgPipeline folder).")
    if split is not None and not 0.0 < split <= 1.0:
        raise InvalidArgument(f"--refiner-split {split} is outside (0, 1]: it is the share of the steps the base "
                              f"takes (the default {DEFAULT_SPLIT} leaves the last 20 % to the refiner; 1 = no refiner).")


def split_schedule(scheduler: Any, split: float) -> tuple[int, int]:
    """(steps the base runs, index where the refiner starts) on a scheduler whose timesteps are set."""
    timesteps = scheduler.timesteps
    if not 0.0 < split < 1.0:  # diffusers ignores denoising_end/start outside (0, 1): the base runs all
        return len(timesteps), len(timesteps)
    total = int(scheduler.config.num_train_timesteps)
    cutoff = int(round(total - split * total))
    base = int((timesteps >= cutoff).sum())
    refine = int((timesteps < cutoff).sum())
    if getattr(scheduler, "order", 1) == 2 and refine % 2 == 0:
        refine += 1  # a second-order scheduler must not start between its two evaluations (as stock)
    return base, len(timesteps) - refine


@dataclass
class RefinerStage:
    """The refiner's part of a job: its adapter, its own prompt encoding, the split and the step count."""
    adapter: Any
    cond: Any
    split: float
    steps: int
    base: Any = None  # the base's adapter: under model offload its UNet leaves the device before the refiner's

    @classmethod
    def prepare(cls, adapter, prompt: str, negative_prompt: str, guidance: float, split: float, steps: int,
                base: Any = None):
        cond = adapter.encode_prompt(prompt, negative_prompt, guidance)
        release(adapter)  # model offload: its text encoder would otherwise stay on the device through the base's run
        return cls(adapter, cond, split, steps, base)

    def base_steps(self, scheduler: Any) -> int:
        return split_schedule(scheduler, self.split)[0]

    def run(self, latents: torch.Tensor, generator: torch.Generator | None,
            callbacks: LoopCallbacks | None = None) -> torch.Tensor:
        scheduler = self.adapter.new_scheduler()
        scheduler.set_timesteps(self.steps, device=self.adapter.device)
        start = split_schedule(scheduler, self.split)[1]
        if start >= len(scheduler.timesteps):
            return latents
        loop = DenoiseLoop(scheduler, lambda x, t: self.adapter.predict(x, t, self.cond),
                           callbacks=callbacks or LoopCallbacks(), step_kwargs=scheduler_step_kwargs(scheduler, generator))
        # model offload: two separate chains would leave both UNets on the device; one at a time instead
        if self.base is not None:
            release(self.base)
        try:
            # the base's latents go on as they are (no re-noising: `denoising_start` skips add_noise)
            return loop.run(latents.to(self.adapter.device, self.adapter.dtype), start_index=start)
        finally:
            release(self.adapter)  # room for the base's next batch
