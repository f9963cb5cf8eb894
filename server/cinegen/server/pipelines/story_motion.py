"""Story motion: a shot's clip between its keyframe and the next one, per video family (ALGORITHMS.md §4).

Every family's generator has one signature (`ShotMotion`): the keyframes come as latents of the
keyframe image model, the clip goes out as pixels (1, 3, F, H, W) in [0, 1].

- **animatediff with SparseCtrl** (a SparseCtrl RGB model installed beside it, models/sparsectrl.py):
  the keyframes are SparseCtrl conditions at their frame indices (frame 0; the last frame for
  continuity), as `AnimateDiffSparseControlNetPipeline`: a clip-long latent holding each keyframe's
  latent at its index, zeros elsewhere, and a mask that is 1 on exactly those frames; the encoder's
  residuals go into the UNet's skips on every step. Nothing is pinned: the model draws the keyframes.
- **animatediff without SparseCtrl** (or `--keyframe-motion pinning`) — latent inpainting of whole
  frames (`FramePinning`): before every step the pinned frames are replaced by their keyframe latent
  noised to that step's t, after the last step by the clean latent.
- A shot longer than AnimateDiff's clip is still one clip: FreeNoise windows in the motion modules (the
  SparseCtrl encoder's too) and FreeNoise's re-used noise (long_video.py), so its far end is denoised
  with its start.
- **wan, image-to-video model** — Wan 2.1 first-last-frame-to-video, as diffusers'
  `WanImageToVideoPipeline(image=first, last_image=last)`: the pixel clip [first, 0, …, 0, last] is
  VAE-encoded into a conditioning latent and concatenated, with a frame mask (1 on the given frames),
  to the noisy latent on every transformer pass; the model draws the frames between.
- **wan, text-to-video model** — pinning adapted to flow matching: before step i the pinned latent
  frames are x_σ = (1 − σ_i)·x0 + σ_i·ε (`renoise_flow`), after the last step x0. The causal VAE
  encodes the first pixel frame alone into latent frame 0, so the keyframe's own latent is exactly
  the clip's first latent frame. The last latent frame stands for 4 pixel frames: it is pinned to the
  next keyframe held over them (so a t2v clip ends on a short hold).
- Wan takes 4k + 1 frames: each clip is made at the next valid count and brought back to the shot's
  length — frames dropped from the tail, or, when the clip ends on the next keyframe (which must stay
  last), re-timed: every output frame is the clip at an evenly spaced time, blended between its two
  nearest frames, so no inner frame is dropped (a jump) and first and last stay exact. Shots longer
  than Wan's clip are one clip too, denoised in overlapping temporal windows of the model's native
  latent length, pyramid-averaged (`diffusion/temporal_windows.py`).
- The keyframe model (`sd`) and Wan never share a VAE: keyframes go through pixels (decode → resize to
  the video size → condition or encode).
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..diffusion.noise_shift import renoise_flow
from ..diffusion.sampler import DenoiseLoop, LoopCallbacks, scheduler_step_kwargs
from ..diffusion.sparse_condition import sparse_condition
from ..diffusion.temporal_windows import predict_in_windows, window_spans
from ..errors import InvalidArgument
from ..models.family import Conditioning, FamilyAdapter
from ..models.sparsectrl import SparseControl
from .base import Resolved, seeded_generator
from .long_video import free_noise, free_noise_latents

MOTION_FAMILIES: tuple[str, ...] = ("animatediff", "wan")


class ShotMotion(Protocol):
    def __call__(self, image_adapter: FamilyAdapter, video_adapter: FamilyAdapter, r: Resolved, first: torch.Tensor,
                 last: torch.Tensor | None, *, shared_vae: bool, callbacks: LoopCallbacks) -> torch.Tensor:
        """(1, 3, r.frames, H, W) in [0, 1] from the image-model latents of the first and (optional) last keyframe."""


# ------------------------------------------------------------------------------------------ keyframes in
def same_vae(a: FamilyAdapter, b: FamilyAdapter) -> bool:
    """Whether two models share one VAE (then keyframe latents go to the video model as they are)."""
    va, vb = a.pipe.vae, b.pipe.vae
    if va is vb:
        return True
    public = lambda config: {k: v for k, v in dict(config).items() if not k.startswith("_")}  # not _name_or_path
    sa, sb = va.state_dict(), vb.state_dict()
    return (public(va.config) == public(vb.config) and sa.keys() == sb.keys()
            and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa))


def keyframe_pixels(image_adapter: FamilyAdapter, latent: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """A keyframe latent of the image model as float pixels (1, 3, height, width) in [0, 1]."""
    image = image_adapter.decode(latent.to(image_adapter.device, image_adapter.dtype)).float()
    if image.dim() == 5:  # a one-frame keyframe of a video model (Wan keyframes)
        image = image[:, :, 0]
    if tuple(image.shape[-2:]) != (height, width):
        image = F.interpolate(image, size=(height, width), mode="bicubic", antialias=True).clamp(0, 1)
    return image


def keyframe_for_video(image_adapter: FamilyAdapter, video_adapter: FamilyAdapter, latent: torch.Tensor,
                       width: int, height: int, shared_vae: bool) -> torch.Tensor:
    """A keyframe as a (1, C, h, w) latent of the video model at (width, height)."""
    s = video_adapter.vae_scale_factor
    if shared_vae and tuple(latent.shape[-2:]) == (height // s, width // s):
        return latent.to(video_adapter.device, video_adapter.dtype)
    encoded = video_adapter.encode(keyframe_pixels(image_adapter, latent, width, height).to(video_adapter.device))
    return encoded[:, :, 0] if encoded.dim() == 5 else encoded  # a causal video VAE: one frame, one latent frame


# ------------------------------------------------------------------------------------------ animatediff
class FramePinning:
    """Latent inpainting of whole frames: frame f of the clip follows `pins[f]` (1, C, h, w).

    before_step: x[:, :, f] ← add_noise(pins[f], ε_f, t) with ε_f the clip's own initial noise at f,
    so the pinned frame sits at exactly the step's noise level; after the last step: the clean latent.
    """

    def __init__(self, scheduler, pins: dict[int, torch.Tensor], noise: torch.Tensor, last_index: int):
        self.scheduler, self.pins, self.noise, self.last_index = scheduler, pins, noise, last_index

    def noised(self, latent: torch.Tensor, noise: torch.Tensor, index: int, t: torch.Tensor) -> torch.Tensor:
        # a 1-D batch of one timestep: Euler-type schedulers (AnimateDiff-SDXL's) index it; DDIM broadcasts it
        return self.scheduler.add_noise(latent, noise, torch.as_tensor(t).reshape(1))

    def before_step(self, index: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        for f, latent in self.pins.items():
            x[:, :, f] = self.noised(latent.to(x), self.noise[:, :, f], index, t)
        return x

    def after_step(self, index: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if index != self.last_index:
            return x
        x = x.clone()
        for f, latent in self.pins.items():
            x[:, :, f] = latent.to(x)
        return x


class FlowFramePinning(FramePinning):
    """`FramePinning` for flow matching: the pinned frames at step i are (1 − σ_i)·pin + σ_i·ε."""

    def noised(self, latent: torch.Tensor, noise: torch.Tensor, index: int, t: torch.Tensor) -> torch.Tensor:
        # the scheduler's σ, not t/1000: flow schedulers may round their timesteps to integers
        return renoise_flow(latent, noise, float(self.scheduler.sigmas[index]))


def generate_pinned_clip(adapter: FamilyAdapter, r: Resolved, pins: dict[int, torch.Tensor], *,
                         callbacks: LoopCallbacks | None = None, sparsectrl: nn.Module | None = None) -> torch.Tensor:
    """(1, C, F, h, w) latents of an `r.frames` clip (AnimateDiff-style video UNet) that follows `pins`
    (frame → (1, C, h, w) latent): pinned frames, or with `sparsectrl` SparseCtrl conditions at those
    frames (no pinning). Noise, prompt and steps as the stock AnimateDiff pipeline draws them."""
    generator = seeded_generator(r.seed)
    cond = adapter.encode_prompt(r.prompt, r.negative_prompt, r.guidance)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(r.steps, device=adapter.device)
    also = (sparsectrl,) if sparsectrl is not None else ()
    with free_noise(adapter, r.frames, also=also) as long:  # longer than the motion module's clip: FreeNoise
        if long:
            noise = free_noise_latents(adapter, r.width, r.height, r.frames, generator)
        else:
            noise = randn_tensor(adapter.latent_shape(1, r.width, r.height, r.frames), generator=generator,
                                 device=adapter.device, dtype=adapter.dtype)
        hooks: tuple = ()
        if sparsectrl is None:
            hooks = (FramePinning(scheduler, pins, noise, last_index=len(scheduler.timesteps) - 1),)
        else:
            condition, mask = sparse_condition(pins, r.frames)
            cond = replace(cond, extra={**cond.extra, "control": SparseControl(sparsectrl, condition, mask)})
        loop = DenoiseLoop(scheduler, lambda x, t: adapter.predict(x, t, cond), hooks=hooks,
                           callbacks=callbacks or LoopCallbacks(),
                           step_kwargs=scheduler_step_kwargs(scheduler, generator))
        return loop.run(noise * scheduler.init_noise_sigma)


def clip_spans(frames: int, clip_length: int) -> list[tuple[int, int]]:
    """[start, stop) of clips covering `frames`, consecutive clips sharing one boundary frame."""
    clip_length = max(2, clip_length)
    spans, start = [], 0
    while True:
        stop = min(frames, start + clip_length)
        spans.append((start, stop))
        if stop == frames:
            return spans
        start = stop - 1


def generate_motion(adapter: FamilyAdapter, r: Resolved, first: torch.Tensor, last: torch.Tensor | None, *,
                    on_step: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], None] | None = None,
                    sparsectrl: nn.Module | None = None) -> torch.Tensor:
    """(1, C, r.frames, h, w): frame 0 follows `first`, the last frame `last` (when given) — pinned, or
    SparseCtrl-conditioned with `sparsectrl`; one clip however long."""
    if r.frames == 1:
        return first.unsqueeze(2)
    pins = {0: first} if last is None else {0: first, r.frames - 1: last}
    return generate_pinned_clip(adapter, r, pins, callbacks=LoopCallbacks(on_step, should_stop),
                                sparsectrl=sparsectrl)


def animatediff_motion(image_adapter: FamilyAdapter, video_adapter: FamilyAdapter, r: Resolved, first: torch.Tensor,
                       last: torch.Tensor | None, *, shared_vae: bool, callbacks: LoopCallbacks,
                       sparsectrl: nn.Module | None = None) -> torch.Tensor:
    to_video = lambda latent: keyframe_for_video(image_adapter, video_adapter, latent, r.width, r.height, shared_vae)
    latents = generate_motion(video_adapter, r, to_video(first), None if last is None else to_video(last),
                              on_step=callbacks.on_step, should_stop=callbacks.should_stop, sparsectrl=sparsectrl)
    return video_adapter.decode(latents)


# ------------------------------------------------------------------------------------------ wan
def wan_frame_count(frames: int, temporal: int = 4) -> int:
    """The smallest k·temporal + 1 ≥ frames: the lengths Wan's causal VAE takes."""
    return (max(frames, 1) + temporal - 2) // temporal * temporal + 1


def cut_to_length(clip: torch.Tensor, frames: int, keep_last: bool) -> torch.Tensor:
    """(B, 3, F', H, W) → F = `frames`: the first ones, or (`keep_last`) the clip re-timed to `frames`."""
    if keep_last:
        return retime(clip, frames)
    return clip[:, :, :frames]


def retime(clip: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, C, F', H, W) → `frames` frames at evenly spaced times from the first to the last, each the linear
    blend of the two nearest source frames: first and last exact, constant speed kept (no jump where a frame
    would be dropped); with at most 3 surplus frames every source frame contributes when frames > 4."""
    count = clip.shape[2]
    if frames == count:
        return clip
    if frames == 1:
        return clip[:, :, :1]
    times = torch.arange(frames, dtype=torch.float64) * (count - 1) / (frames - 1)
    below = times.floor().long().clamp(max=count - 1)
    above = (below + 1).clamp(max=count - 1)
    weight = (times - below.double()).to(clip.dtype).to(clip.device).view(1, 1, -1, 1, 1)
    below, above = below.to(clip.device), above.to(clip.device)
    return clip[:, :, below] * (1 - weight) + clip[:, :, above] * weight


def _wan_start(adapter, r: Resolved) -> tuple[torch.Generator, Conditioning, Any, torch.Tensor]:
    """Generator, prompt, scheduler and float32 noise drawn as the stock Wan pipelines draw them."""
    generator = seeded_generator(r.seed)
    cond = adapter.encode_prompt(r.prompt, r.negative_prompt, r.guidance, guidance_2=r.guidance_2)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(r.steps, device=adapter.device)
    noise = randn_tensor(adapter.latent_shape(1, r.width, r.height, r.frames), generator=generator,
                         device=adapter.device, dtype=torch.float32)
    return generator, cond, scheduler, noise


def conditioning_image(pixels: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] → the 8-bit RGB image the stock I2V pipeline is given.

    Wan 2.1 I2V/FLF2V models also see the frames through CLIP, whose processor rescales by 1/255:
    float tensors in [0, 1] would reach it as near-black images; PIL images do not.
    """
    rgb = (pixels[0].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(rgb, mode="RGB")


def windowed_predict(adapter, cond: Conditioning, latent_frames: int, window: int | None) -> Callable:
    """`adapter.predict` over the whole latent, or (a clip longer than the model's) over temporal windows
    of `window` latent frames every `window // 2`, pyramid-averaged; an image condition is cut the same way."""
    spans = window_spans(latent_frames, window, max(1, window // 2)) if window else [(0, latent_frames)]
    condition = cond.extra.get("condition")

    def one(x: torch.Tensor, t: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
        if condition is None or span == (0, latent_frames):
            return adapter.predict(x, t, cond)
        return adapter.predict(x, t, replace(cond, extra={**cond.extra, "condition": condition[:, :, span[0]:span[1]]}))
    return lambda x, t: predict_in_windows(x, t, one, spans, frame_dim=2)


def wan_flf2v_clip(adapter, r: Resolved, first: torch.Tensor, last: torch.Tensor | None, *,
                   callbacks: LoopCallbacks | None = None, window: int | None = None) -> torch.Tensor:
    """(1, C, F', h, w) latents of an image-to-video Wan clip from pixels first (and last) (1, 3, H, W):
    `WanImageToVideoPipeline(image=first, last_image=last)` on their 8-bit images, step for step
    (`window`: latent frames per temporal window for a clip longer than the model's)."""
    _, cond, scheduler, noise = _wan_start(adapter, r)
    cond = adapter.with_image_condition(cond, conditioning_image(first), noise, r.frames, r.width, r.height,
                                        last_image=None if last is None else conditioning_image(last))
    loop = DenoiseLoop(scheduler, windowed_predict(adapter, cond, noise.shape[2], window),
                       callbacks=callbacks or LoopCallbacks())
    return loop.run(noise)


def held_frame_latent(adapter, frame: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w): the latent frame of `frame` (1, 3, H, W) held still over one temporal block."""
    held = frame.unsqueeze(2).repeat(1, 1, 1 + adapter.temporal_scale_factor, 1, 1)
    return adapter.encode(held)[:, :, -1]


def wan_pinned_clip(adapter, r: Resolved, first: torch.Tensor, last: torch.Tensor | None, *,
                    callbacks: LoopCallbacks | None = None, window: int | None = None) -> torch.Tensor:
    """(1, C, F', h, w) latents of a text-to-video Wan clip with latent frame 0 pinned to `first`
    (pixels, encoded alone) and, if given, the last latent frame to `last` held."""
    generator, cond, scheduler, noise = _wan_start(adapter, r)
    pins = {0: adapter.encode(first)[:, :, 0]}
    if last is not None:
        pins[noise.shape[2] - 1] = held_frame_latent(adapter, last)
    pinning = FlowFramePinning(scheduler, pins, noise, last_index=len(scheduler.timesteps) - 1)
    loop = DenoiseLoop(scheduler, windowed_predict(adapter, cond, noise.shape[2], window), hooks=(pinning,),
                       callbacks=callbacks or LoopCallbacks(), step_kwargs=scheduler_step_kwargs(scheduler, generator))
    return loop.run(noise)  # flow matching starts from pure noise (σ = 1)


def wan_motion(image_adapter: FamilyAdapter, video_adapter: FamilyAdapter, r: Resolved, first: torch.Tensor,
               last: torch.Tensor | None, *, shared_vae: bool, callbacks: LoopCallbacks) -> torch.Tensor:
    """A shot on Wan: FLF2V on image-to-video models, flow pinning on text-to-video ones (see the docstring)."""
    multiple = video_adapter.size_multiple
    if r.width % multiple or r.height % multiple:
        raise InvalidArgument(f"'{video_adapter.entry.id}' makes video at sizes that are multiples of {multiple} px; "
                              f"{r.width}×{r.height} is not. Set --width/--height to multiples of {multiple}.")
    start = keyframe_pixels(image_adapter, first, r.width, r.height).to(video_adapter.device)
    end = None if last is None else keyframe_pixels(image_adapter, last, r.width, r.height).to(video_adapter.device)
    if r.frames == 1:
        return start.unsqueeze(2)
    temporal = video_adapter.temporal_scale_factor
    longest = max(1 + temporal, (video_adapter.native_frames - 1) // temporal * temporal + 1)
    make_clip = wan_flf2v_clip if video_adapter.is_image_to_video else wan_pinned_clip
    # longer than the model's clip: still one clip, denoised in overlapping windows of its native latent length
    window = video_adapter.latent_frames(longest) if r.frames > longest else None
    latents = make_clip(video_adapter, replace(r, frames=wan_frame_count(r.frames, temporal)), start, end,
                        callbacks=callbacks, window=window)
    return cut_to_length(video_adapter.decode(latents), r.frames, keep_last=end is not None)


def motion_for_family(video_adapter: FamilyAdapter, sparsectrl: nn.Module | None = None) -> ShotMotion:
    """The first/last-frame motion generator of a video family (`sparsectrl`: AnimateDiff's keyframes as
    SparseCtrl conditions instead of pinned latents)."""
    if video_adapter.family == "animatediff":
        return partial(animatediff_motion, sparsectrl=sparsectrl)
    if video_adapter.family == "wan":
        return wan_motion
    raise InvalidArgument(f"The story pipeline cannot make motion on '{video_adapter.entry.id}' "
                          f"({video_adapter.family}) yet; pick a {' or '.join(MOTION_FAMILIES)} model "
                          "with --video-model.")
