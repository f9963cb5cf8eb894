"""Story keyframes from Wan text-to-video models run as image models (one frame, ``num_frames = 1``).

A Wan T2V model asked for one frame draws one image: its causal VAE encodes a single frame into a
single latent frame, and the stock ``WanPipeline(num_frames=1)`` is that model's image pipeline.
Without memory a keyframe is exactly that computation (tests: bit for bit).

GoldenMem memory on a DiT (``diffusion/dit_shared_attention.py``): the earlier keyframes, shrunk to
their golden-memory sizes (snapped to whole 2×2 patches), are the earlier frames of a short video
in RoPE — frame positions 0…K−1, the new keyframe at K — and every self-attention of the keyframe
also attends to their keys and values, written at the same step by a pass of each memory frame
(noised to the step's σ, with its own prompt, no guidance). Wan image-to-video models draw from a
picture, not text, so they cannot make keyframes (refused at Submit).
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from ..diffusion.dit_shared_attention import rope_frame_offset, wan_shared_self_attention
from ..diffusion.goldenmem import build_memory_latents
from ..diffusion.noise_shift import renoise_flow
from ..diffusion.sampler import DenoiseLoop, LoopCallbacks
from ..diffusion.shared_attention import MemoryBank, MemoryWriteHook
from ..errors import InvalidArgument
from .base import Resolved, seeded_generator
from .upscale_dit import _loop_scheduler

__all__ = ["check_wan_keyframes", "generate_wan_keyframe", "keyframe_display", "wan_memory_latents"]


def check_wan_keyframes(adapter: Any, width: int, height: int) -> None:
    if adapter.is_image_to_video:
        raise InvalidArgument(f"'{adapter.entry.id}' is an image-to-video model and keyframes are drawn from text: "
                              "use a Wan text-to-video model or an SD-family model with --model.")
    multiple = adapter.size_multiple
    if width % multiple or height % multiple:
        raise InvalidArgument(f"'{adapter.entry.id}' draws keyframes at sizes that are multiples of {multiple} px; "
                              f"{width}×{height} is not. Set --width/--height to multiples of {multiple}.")


def wan_memory_latents(latents: Sequence[torch.Tensor], patch: int, min_side: int) -> list[torch.Tensor]:
    """GoldenMem latents (C, h, w) of earlier (1, C, 1, h, w) keyframes, oldest → newest, each side a
    whole number of transformer patches (a patch embedding drops what does not fill one)."""
    small = build_memory_latents([latent[0, :, 0] for latent in latents], min_short_side=min_side)
    snapped = []
    for latent in small:
        size = tuple(max(patch, side // patch * patch) for side in latent.shape[-2:])
        if size != tuple(latent.shape[-2:]):
            latent = F.interpolate(latent[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        snapped.append(latent)
    return snapped


def generate_wan_keyframe(adapter: Any, r: Resolved, memory: Sequence[Any], *,
                          callbacks: LoopCallbacks | None = None, min_side: int = 2) -> torch.Tensor:
    """(1, C, 1, h, w) latent of one keyframe: `WanPipeline(num_frames=1)` step for step, with every
    self-attention also attending to the GoldenMem memory of ``memory`` (``.latent``, ``.prompt``; oldest first)."""
    check_wan_keyframes(adapter, r.width, r.height)
    generator = seeded_generator(r.seed)
    cond = adapter.encode_prompt(r.prompt, r.negative_prompt, r.guidance, guidance_2=r.guidance_2)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(r.steps, device=adapter.device)
    noise = randn_tensor(adapter.latent_shape(1, r.width, r.height, 1), generator=generator, device=adapter.device,
                         dtype=torch.float32)
    patch = max(adapter.patch_size[1:])
    small = wan_memory_latents([m.latent for m in memory], patch, max(min_side, patch))
    kept = list(memory)[len(memory) - len(small):]  # GoldenMem drops the oldest first
    callbacks = callbacks or LoopCallbacks()
    if not small:
        return DenoiseLoop(_loop_scheduler(scheduler), lambda x, t: adapter.predict(x, t, cond),
                           callbacks=callbacks).run(noise)
    transformers = adapter.denoisers
    sigmas = {float(t): float(s) for t, s in zip(scheduler.timesteps, scheduler.sigmas)}
    conds = [adapter.encode_prompt(m.prompt, "", 1.0) for m in kept]  # positive only: one pass per frame

    def write_pass(frame: int, c: Any):
        def run(x: torch.Tensor, t: torch.Tensor) -> Any:
            with rope_frame_offset(transformers, frame):  # memory frame j at RoPE frame j
                return adapter.predict(x, t, c)
        return run

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with rope_frame_offset(transformers, len(small)):  # the keyframe after its memory
            return adapter.predict(x, t, cond)

    bank = MemoryBank()
    with contextlib.ExitStack() as stack:
        for transformer in transformers:  # one bank: only one expert runs at a step (Wan 2.2 A14B)
            stack.enter_context(wan_shared_self_attention(transformer, bank))
        hook = MemoryWriteHook(bank, small, [write_pass(j, c) for j, c in enumerate(conds)],
                               noise_to=lambda z, e, t: renoise_flow(z, e, sigmas[float(t)]).unsqueeze(2),
                               model_input=lambda z, t: z, generator=seeded_generator(r.seed + 1))
        return DenoiseLoop(_loop_scheduler(scheduler), predict, hooks=(hook,), callbacks=callbacks).run(noise)


def keyframe_display(adapter: Any, latent: torch.Tensor) -> torch.Tensor:
    """A keyframe latent as (H, W, 3) display pixels in [0, 1] (video VAEs: their one frame)."""
    image = adapter.decode(latent)
    return (image[:, :, 0] if image.dim() == 5 else image)[0].permute(1, 2, 0)
