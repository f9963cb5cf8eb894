"""The DiT path of the `upscale` pipeline: CineScale on Wan video models (ALGORITHMS.md §1b).

generate: text → base video at the training size (exactly the stock `WanPipeline` computation)
          → each refinement stage: trilinear latent upsample → re-noise x = (1 − σ_K)·x0 + σ_K·ε at step K
            of a fresh schedule with the refinement shift σ' = sσ/(1 + (s − 1)σ) → denoise steps K… with
            NTK-RoPE (θ_axis = 10000·α_axis), self-attention logits scaled by λ = log_N(N·coef), and
            block-tiled self-attention whose far keys are compressed into the training extent.
plate:    (V2V) a clip from the comp, scene-linear → model pixels (the job's display transform forward; the
          output keeps the plate's highlights beyond it, output/plate_highlights.py), resized to the target and encoded
          → refinement stage(s) as above. `refine` is the same computation (I2VGen-XL-style strength).
          --fast / --latent-resize: encode the plate at its own size and upsample the latents instead.
Then decode and write frames. K = steps − ⌊steps·strength⌋ (the diffusers V2V convention; strength 0.7
gives CineScale's step 15 of 50). With α = 1, λ = 1, the stock shift, one tile and target = native,
generate equals `WanPipeline` and plate equals `WanVideoToVideoPipeline` for the same seed (tests).

Defaults from the paper: base-stage shift s = 7 (CineScaleOptions.base_shift; None = the folder's own);
re-noise at step 15 of 50 on Wan 2.1 (strength 0.7) and at steps − 30 on Wan 2.2 (strength 0.6).
Defaults chosen here where the handbook leaves room (unverified): refinement shift 9 up to 5B
parameters, 11 above; spatial α 20 for the first refinement, 25 for later ones; coef from CineScale's
thresholds at the 720p-equivalent token count; tile and near margin = 18×32 and 24 of 45×80, scaled
to the model's training grid; VAE tiling (256 px) above 1280×720.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from cinegen.common.color import DISPLAY_VIEW
from cinegen.common.exr import PlateError, pixel_aspect, read_plate_sequence
from cinegen.common.params import UpscaleParams
from cinegen.common.sequence import FrameRange, SequencePattern

from ..diffusion.dit_attention import (CINESCALE_NEAR_MARGIN, CINESCALE_TILE, WAN_720P_TRAIN_GRID,
                                       attention_scale_factor, cinescale_attention_coef,
                                       install_cinescale_attention)
from ..diffusion.dit_rope import install_ntk_rope
from ..diffusion.noise_shift import latent_upsample, refinement_timesteps, renoise_flow
from ..diffusion.sampler import DenoiseLoop, LoopCallbacks
from ..diffusion.temporal_chunks import default_overlap, predict_in_temporal_windows
from ..errors import InvalidArgument, NotFound
from ..models.family import Conditioning
from ..models.lora import check_lora, job_loras
from ..models.wan import WanAdapter
from ..output import resize_alpha
from ..output.frames import display_transform_for
from ..output.plate_highlights import HighlightCount, ModelPlate, plate_to_model, sink_kwargs
from .base import JobSpec, Resolved, RunContext, StepProgress, seeded_generator
from .upscale_dit_i2v import condition_windows_predict, entry_is_image_to_video, stage_condition

WAN_TEMPORAL_FACTOR = 4  # frames per latent frame of the causal Wan VAE (plus the first)
DEFAULT_STRENGTH = {"generate": 0.7, "plate": 0.7, "refine": 0.6}
# CineScale on Wan 2.2 re-noises at step steps − 30 (30 of 50 steps denoised): strength 0.6 at any step count.
WAN22_STRENGTH = 0.6
CINESCALE_BASE_SHIFT = 7.0  # noise shift s of the base stage (CineScale); refinement stages 9–11
LARGE_MODEL_PARAMETERS = 5e9  # above: 14B-class models, refinement shift 11
AUTO_VAE_TILE, AUTO_VAE_TILE_ABOVE = 256, 1280 * 720


@dataclass(frozen=True)
class CineScaleOptions:
    """Method knobs; None takes the default for the model and stage (module docstring)."""
    base_shift: float | None = CINESCALE_BASE_SHIFT  # None: the model folder's own scheduler shift
    refine_shift: float | None = None
    ntk_alpha: float | None = None  # spatial axes; the frame axis keeps α = 1
    attention_coef: float | None = None
    tile: tuple[int, int] | None = None  # query tile (rows, cols) of latent tokens
    near_margin: int | None = None
    compress_positions: bool = True


@dataclass(frozen=True)
class RefineSettings:
    alphas: tuple[float, float, float]
    attention_scale: float
    shift: float
    tile: tuple[int, int]
    train_grid: tuple[int, int] | None  # None: nothing compressed
    near_margin: int


@dataclass(frozen=True)
class DitStage:
    label: str
    width: int
    height: int
    start_index: int = 0
    refine: RefineSettings | None = None  # None: the base stage, an ordinary generation


def stage_sizes(start: tuple[int, int], target: tuple[int, int], count: int, multiple: int) -> list[tuple[int, int]]:
    """`count` sizes growing geometrically from `start` to exactly `target`, each a multiple of `multiple`."""
    sizes = []
    for k in range(1, count + 1):
        f = k / count
        sizes.append(tuple(round(s ** (1 - f) * t ** f / multiple) * multiple for s, t in zip(start, target)))
    sizes[-1] = target
    return sizes  # type: ignore[return-value]


def refine_settings(adapter: WanAdapter, width: int, height: int, refinement: int,
                    options: CineScaleOptions) -> RefineSettings:
    """CineScale's knobs for refinement stage `refinement` (1-based) at (width, height)."""
    train_rows, train_cols = adapter.training_token_grid
    rows, cols = adapter.token_grid(width, height)
    default_alpha = 20.0 if refinement == 1 else 25.0
    alpha = options.ntk_alpha if options.ntk_alpha is not None else default_alpha
    alphas = (1.0, alpha if rows > train_rows else 1.0, alpha if cols > train_cols else 1.0)
    if options.attention_coef is not None:
        coef = options.attention_coef
    else:  # CineScale's thresholds are for 720p (45×80 tokens); compare at the same ratio to the training size
        ratio = rows * cols / (train_rows * train_cols)
        coef = cinescale_attention_coef(round(ratio * WAN_720P_TRAIN_GRID[0] * WAN_720P_TRAIN_GRID[1]))
    shift = options.refine_shift
    if shift is None:
        shift = 11.0 if adapter.transformer_parameters > LARGE_MODEL_PARAMETERS else 9.0
    tile = options.tile or (max(1, round(train_rows * CINESCALE_TILE[0] / WAN_720P_TRAIN_GRID[0])),
                            max(1, round(train_cols * CINESCALE_TILE[1] / WAN_720P_TRAIN_GRID[1])))
    margin = options.near_margin
    if margin is None:
        margin = round(train_rows * CINESCALE_NEAR_MARGIN / WAN_720P_TRAIN_GRID[0])
    exceeds = rows > train_rows or cols > train_cols
    return RefineSettings(alphas=alphas, attention_scale=attention_scale_factor(train_rows * train_cols, coef),
                          shift=float(shift), tile=tile, near_margin=margin,
                          train_grid=(train_rows, train_cols) if options.compress_positions and exceeds else None)


def plan_dit_stages(adapter: WanAdapter, mode: str, start: tuple[int, int], target: tuple[int, int], stages: int,
                    start_index: int, options: CineScaleOptions) -> list[DitStage]:
    """generate: a base stage at `start` (native), then stages − 1 refinements up to `target`.

    plate: `stages` refinements from the plate size `start` up to `target`.
    """
    plan: list[DitStage] = []
    refinements = stages
    if mode == "generate":
        if stages < 2 and target != start:
            raise InvalidArgument("Upscaling with a Wan model takes at least 2 stages (base video, then refinement "
                                  "at the target size): use --stages 2 or more, or leave it empty.")
        plan.append(DitStage(f"base {start[0]}x{start[1]}", *start))
        refinements = stages - 1 if target != start else 0  # nothing to refine at the same size
    sizes = stage_sizes(start, target, refinements, adapter.size_multiple) if refinements else []
    for k, (w, h) in enumerate(sizes, start=1):
        plan.append(DitStage(f"refine {w}x{h}", w, h, start_index, refine_settings(adapter, w, h, k, options)))
    return plan


# ---- stages ---------------------------------------------------------------------------------------
def _with_shift(adapter: WanAdapter, shift: float | None):
    if shift is None:
        return adapter.new_scheduler()
    key = "flow_shift" if "flow_shift" in adapter.scheduler.config else "shift"
    return adapter.new_scheduler(**{key: float(shift), "use_dynamic_shifting": False})


class _ModelInputAsIs:
    """Flow-matching Euler has no `scale_model_input`; the shared loop calls it, Wan uses the latents unchanged."""

    def __init__(self, scheduler) -> None:
        self._scheduler = scheduler

    def __getattr__(self, name: str):
        return getattr(self._scheduler, name)

    def scale_model_input(self, sample: torch.Tensor, *args) -> torch.Tensor:
        return sample


def _loop_scheduler(scheduler):
    return scheduler if hasattr(scheduler, "scale_model_input") else _ModelInputAsIs(scheduler)


def generate_base_latents(adapter: WanAdapter, cond: Conditioning, width: int, height: int, frames: int, steps: int,
                          generator: torch.Generator, callbacks: LoopCallbacks | None = None,
                          shift: float | None = None, image=None) -> torch.Tensor:
    """Stage 1: a video at (width, height), computed as `WanPipeline` (or, with `image`, `WanImageToVideoPipeline`)."""
    scheduler = _with_shift(adapter, shift)
    scheduler.set_timesteps(steps, device=adapter.device)
    shape = adapter.latent_shape(1, width, height, frames)
    latents = randn_tensor(shape, generator=generator, device=adapter.device, dtype=torch.float32)
    if image is not None:
        cond = adapter.with_image_condition(cond, image, latents, frames, width, height)
    loop = DenoiseLoop(_loop_scheduler(scheduler), lambda x, t: adapter.predict(x, t, cond),
                       callbacks=callbacks or LoopCallbacks())
    return loop.run(latents)


@contextlib.contextmanager
def cinescale_installed(adapter: WanAdapter, settings: RefineSettings) -> Iterator[None]:
    """NTK-RoPE and the CineScale self-attention on every transformer; the originals return on exit."""
    with contextlib.ExitStack() as stack:
        for transformer in adapter.denoisers:
            stack.enter_context(install_ntk_rope(transformer, settings.alphas))
            stack.enter_context(install_cinescale_attention(transformer, settings.attention_scale, settings.tile,
                                                            settings.train_grid, settings.near_margin))
        yield


def refine_latents(adapter: WanAdapter, cond: Conditioning, latents: torch.Tensor, stage: DitStage, steps: int,
                   generator: torch.Generator, callbacks: LoopCallbacks | None = None) -> torch.Tensor:
    """One refinement stage: upsample to the stage size, re-noise to σ_K of a fresh shifted schedule, denoise K…"""
    settings = stage.refine
    assert settings is not None, "the base stage is not a refinement"
    size = (stage.height // adapter.vae_scale_factor, stage.width // adapter.vae_scale_factor)
    x0 = latents if tuple(latents.shape[-2:]) == size else latent_upsample(latents, size)
    schedule = refinement_timesteps(adapter.scheduler, steps, stage.start_index, settings.shift, device=adapter.device)
    noise = randn_tensor(tuple(x0.shape), generator=generator, device=adapter.device, dtype=torch.float32)
    x = renoise_flow(x0.float(), noise, schedule.sigmas[0])  # the tensor σ: the stock add_noise arithmetic
    loop = DenoiseLoop(_loop_scheduler(schedule.scheduler), temporal_windows_predict(adapter, cond),
                       callbacks=callbacks or LoopCallbacks())
    with cinescale_installed(adapter, settings):
        return loop.run(x, start_index=stage.start_index)


def temporal_windows_predict(adapter: WanAdapter, cond: Conditioning):
    """The model on a clip longer than it was trained on: overlapping windows of its native latent
    frames, blended every step (no seam in time, one window's activations in memory)."""
    window = adapter.latent_frames(adapter.native_frames)
    overlap = default_overlap(window)
    if "condition" in cond.extra:  # image-to-video: each window takes its own frames of the condition
        return condition_windows_predict(adapter, cond, window, overlap)
    return lambda v, t: predict_in_temporal_windows(lambda z, u: adapter.predict(z, u, cond), v, t, window, overlap)


# ---- plates ---------------------------------------------------------------------------------------
def read_plate_clip(pattern: str, frames: int | None = None, alphas: list[np.ndarray] | None = None,
                    transform: str = DISPLAY_VIEW, plates: list[ModelPlate] | None = None) -> torch.Tensor:
    """A plate as model pixels in [0, 1], (1, 3, F, H, W), through the display transform forward (the one
    the output goes back through, inverted); the first `frames` frames when given. Each frame's alpha
    (H, W; 1 where the plate has none) is appended to `alphas`, its ModelPlate (the highlights the
    model cannot carry, output/plate_highlights.py) to `plates`, when lists are given."""
    try:
        range_on_disk = SequencePattern.parse(pattern, any_extension=True, what="plate").frame_range_on_disk()
        wanted = FrameRange.from_count(range_on_disk.first, frames) if (frames and range_on_disk) else None
        pixels = []
        for _, rgba in read_plate_sequence(pattern, wanted, keep_alpha=True):
            seen = plate_to_model(rgba, transform)  # clipped to the VAE's [0, 1]; the excess kept aside
            pixels.append(seen.display)
            if alphas is not None:
                alphas.append(rgba[..., 3])
            if plates is not None:
                plates.append(seen)
    except (PlateError, ValueError) as exc:
        raise InvalidArgument(str(exc)) from exc
    clip = torch.from_numpy(np.stack(pixels)).float()  # F, H, W, 3
    return clip.permute(3, 0, 1, 2).unsqueeze(0).contiguous()


def resize_clip(clip: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bicubic resize of every frame of (1, 3, F, H, W) pixels, kept in [0, 1]."""
    if clip.shape[-2:] == (height, width):
        return clip
    frames = clip[0].permute(1, 0, 2, 3)
    resized = F.interpolate(frames, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return resized.clamp(0, 1).permute(1, 0, 2, 3).unsqueeze(0)


def encode_plate(adapter: WanAdapter, clip: torch.Tensor, width: int, height: int, fast: bool,
                 vae_tile: int | None) -> torch.Tensor:
    """Latents of the plate at the first stage size: pixels resized then encoded, or (fast) encoded then resized."""
    if fast:  # encode at the plate's own size (VAE needs multiples of its factor), upsample in latent space
        s = adapter.vae_scale_factor
        small = resize_clip(clip, clip.shape[-1] // s * s, clip.shape[-2] // s * s)
        with adapter.vae_tiling(vae_tile):
            latents = adapter.encode(small)
        return latent_upsample(latents, (height // s, width // s))
    with adapter.vae_tiling(vae_tile):
        return adapter.encode(resize_clip(clip, width, height))


# ---- the pipeline path ----------------------------------------------------------------------------
def dit_target_size(m: int, common, params: UpscaleParams, base: tuple[int, int], plate: bool = False
                    ) -> tuple[int, int]:
    """--width/--height when given (checked), else base × scale (default 2) rounded to the size multiple ``m``;
    a plate (``plate``) is never made smaller: a target below it is refused, a scale rounds up to it."""
    if common.width or common.height:
        def derived(length: int, ratio: float) -> int:  # the side not given, at the plate's aspect
            nearest = round(length * ratio / m) * m
            return max(nearest, -(-length // m) * m) if plate else nearest  # never rounded below the plate
        width = common.width or derived(base[0], common.height / base[1])
        height = common.height or derived(base[1], common.width / base[0])
        check_wan_size(width, height, m)
        if plate and (width < base[0] or height < base[1]):
            raise InvalidArgument(f"The target {width}x{height} is smaller than the input's {base[0]}x{base[1]}; "
                                  "upscale only goes up: ask for a scale of 1 or more.")
        return width, height
    scale = params.scale or 2.0

    def side(length: int) -> int:
        nearest = max(m, round(length * scale / m) * m)
        return max(nearest, -(-length // m) * m) if plate else nearest  # a 40 px plate at scale 1: 48, not 32
    return side(base[0]), side(base[1])


def dit_mode(params: UpscaleParams, image_to_video: bool = False) -> str:
    """The mode asked for; a plate given with the default mode means plate mode (as on UNet models),
    except on an image-to-video model, where generate starts from the input's first frame."""
    mode = params.mode or "generate"
    return "plate" if mode == "generate" and params.input and not image_to_video else mode


def is_wan_2_2(adapter: WanAdapter) -> bool:
    """Wan 2.2: two experts (A14B, a boundary timestep) or per-token timesteps (TI2V 5B)."""
    config = adapter.pipe.config
    return getattr(adapter.pipe, "transformer_2", None) is not None or bool(config.get("expand_timesteps"))


def default_strength(adapter: WanAdapter, mode: str) -> float:
    """Refinement strength when none is asked: CineScale's step 15 of 50 on Wan 2.1, steps − 30 on Wan 2.2."""
    if mode != "refine" and is_wan_2_2(adapter):
        return WAN22_STRENGTH
    return DEFAULT_STRENGTH.get(mode, 0.7)


def start_index_for(steps: int, strength: float) -> int:
    denoised = min(int(steps * strength), steps)
    if denoised < 1:
        raise InvalidArgument(f"A strength of {strength} leaves no step of {steps} to denoise: "
                              f"raise --strength to at least {1 / steps:.2f} or use more --steps.")
    return steps - denoised


def run_dit_upscale(ctx: RunContext, adapter: WanAdapter, resolved: Resolved, params: UpscaleParams,
                    options: CineScaleOptions | None = None) -> list[str]:
    """Generate or refine a Wan video at the target size and write its frames; returns the written paths."""
    with ctx.loras_on(adapter):  # the job's LoRAs (already on when the pipeline got the model from ctx.model)
        return _run_dit_upscale(ctx, adapter, resolved, params, options)


def _run_dit_upscale(ctx: RunContext, adapter: WanAdapter, resolved: Resolved, params: UpscaleParams,
                     options: CineScaleOptions | None) -> list[str]:
    options = options or CineScaleOptions()
    i2v = adapter.is_image_to_video  # the first frame conditions every stage (upscale_dit_i2v.py)
    mode = dit_mode(params, i2v)
    alphas: list[np.ndarray] = []  # the plate's mattes, carried to the output frames
    plates: list = []  # each frame's ModelPlate as read, then its highlights, kept in the output frames
    transform = display_transform_for(ctx.job.common.display_transform, True)
    strength = params.strength if params.strength is not None else default_strength(adapter, mode)
    start_index = start_index_for(resolved.steps, strength)
    generator = seeded_generator(resolved.seed)
    if mode == "generate":
        frames, clip = resolved.frames, None
        start = adapter.native_size
        first = read_plate_clip(params.input, 1, transform=transform)[0, :, 0] if i2v else None
    else:
        clip = read_plate_clip(params.input, ctx.job.common.frames, alphas, transform, plates)
        counted = HighlightCount(transform)
        for frame, seen in enumerate(plates):
            counted.add(frame, seen)
        if counted.message():
            ctx.log(counted.message())
        plates[:] = [seen.highlights for seen in plates]  # only what the writer needs (not the display copy)
        frames, start = clip.shape[2], (clip.shape[-1], clip.shape[-2])
        first = clip[0, :, 0] if i2v else None
    check_wan_frames(frames, "video" if clip is None else "plate")
    target = dit_target_size(adapter.size_multiple, ctx.job.common, params, start, plate=clip is not None)
    stages = params.stages or (2 if mode == "generate" else 1)
    plan = plan_dit_stages(adapter, "generate" if clip is None else "plate", start, target, stages, start_index,
                           options)
    vae_tile = params.vae_tile or (AUTO_VAE_TILE if target[0] * target[1] > AUTO_VAE_TILE_ABOVE else None)

    weights = [(resolved.steps - s.start_index) * s.width * s.height for s in plan]
    progress = StepProgress(ctx, [0.05 * sum(weights), *weights, 0.15 * sum(weights)])
    ctx.log(f"DiT upscale ({mode}): {' -> '.join(s.label for s in plan)}, {frames} frames, {resolved.steps} steps")
    cond = adapter.encode_prompt(resolved.prompt, resolved.negative_prompt, resolved.guidance,
                                 guidance_2=resolved.guidance_2)
    latents = None
    if clip is not None:
        ctx.progress("encode plate", 0, 1, 0.0)
        latent_first = params.fast or getattr(params, "latent_resize", False)
        latents = encode_plate(adapter, clip, plan[0].width, plan[0].height, latent_first, vae_tile)
    for index, stage in enumerate(plan, start=1):
        callbacks = LoopCallbacks(progress.callback(index, stage.label), ctx.check_cancel,
                                  ctx.latent_preview(adapter))
        if stage.refine is None:
            latents = generate_base_latents(adapter, cond, stage.width, stage.height, frames, resolved.steps,
                                            generator, callbacks, options.base_shift, image=first)
        else:
            own = cond if first is None else stage_condition(adapter, cond, first, frames, stage.width, stage.height)
            latents = refine_latents(adapter, own, latents, stage, resolved.steps, generator, callbacks)
    squeeze = pixel_aspect(_first_plate_file(params.input)) if clip is not None else 1.0
    return write_video(ctx, adapter, latents, resolved, vae_tile, progress, len(plan) + 1, alphas,
                       plates, pixel_aspect=squeeze)


def _first_plate_file(pattern: str) -> str:
    on_disk = SequencePattern.parse(pattern, any_extension=True, what="plate").glob_existing()
    return next(iter(on_disk.values()))  # the clip was just read from these frames: there is one


def write_video(ctx: RunContext, adapter: WanAdapter, latents: torch.Tensor, resolved: Resolved,
                vae_tile: int | None, progress: StepProgress, stage_index: int,
                alphas: list[np.ndarray] | None = None, highlights: list | None = None,
                pixel_aspect: float = 1.0) -> list[str]:
    ctx.check_cancel()
    ctx.progress("decode", 0, 1, progress.starts[stage_index])
    with adapter.vae_tiling(vae_tile):
        video = adapter.decode(latents)[0]  # 3, F, H, W
    sink = ctx.frame_sink(SequencePattern.parse(ctx.job.common.out), resolved, pixel_aspect=pixel_aspect)
    frames = video.shape[1]
    ctx.preview(0, video[:, 0].permute(1, 2, 0).float().cpu().numpy())
    for i in range(frames):
        ctx.check_cancel()
        alpha = resize_alpha(alphas[i], video.shape[-1], video.shape[-2]) if alphas else None
        sink.write(i, video[:, i], alpha=alpha, **sink_kwargs(highlights[i] if highlights else None))
        progress.callback(stage_index, "write frames")(i + 1, frames)
    return list(sink.written)


# ---- request checks -------------------------------------------------------------------------------
def check_wan_frames(frames: int, what: str = "video") -> None:
    """Wan's causal VAE takes 4k + 1 frames; otherwise say which counts are nearest."""
    if frames >= 1 and (frames - 1) % WAN_TEMPORAL_FACTOR == 0:
        return
    lower = max(1, (frames - 1) // WAN_TEMPORAL_FACTOR * WAN_TEMPORAL_FACTOR + 1)
    upper = lower + WAN_TEMPORAL_FACTOR
    nearest = "1" if frames < 1 else (f"{lower} or {upper}" if lower < frames else str(upper))
    raise InvalidArgument(f"Wan models take 4k+1 frames (1, 5, 9, ..., 81); the {what} has {frames}. "
                          f"Use {nearest} frames (--frames).")


def check_wan_size(width: int | None, height: int | None, multiple: int) -> None:
    """Pixel sizes must be multiples of VAE factor × patch; otherwise name the nearest valid sizes."""
    wrong = [(name, value) for name, value in (("width", width), ("height", height)) if value and value % multiple]
    if not wrong:
        return
    hints = ", ".join(f"--{name} {max(multiple, value // multiple * multiple)} or "
                      f"{(value // multiple + 1) * multiple}" for name, value in wrong)
    raise InvalidArgument(f"Wan models need sizes that are multiples of {multiple} pixels (VAE factor x patch "
                          f"size); {', '.join(f'{n} {v}' for n, v in wrong)} is not. Use {hints}.")


def plate_frame_count(pattern: str) -> int:
    """Frames of the plate from its first to its last frame on disk (nothing is read)."""
    try:
        frames = SequencePattern.parse(pattern, any_extension=True, what="plate").frame_range_on_disk()
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc
    if frames is None:
        raise NotFound(f"No frames of the plate '{pattern}' were found: check the folder, the name and the padding.")
    return frames.count


def _size_multiple_of(folder: str) -> int:
    """VAE factor × patch from a model folder's configs without loading it (16 for Wan 2.1, 32 for Wan 2.2 5B)."""
    factor, patch = 8, 2
    with contextlib.suppress(OSError, ValueError, TypeError, IndexError, KeyError):
        factor = int(json.loads((Path(folder) / "vae" / "config.json").read_text()).get("scale_factor_spatial") or 8)
    with contextlib.suppress(OSError, ValueError, TypeError, IndexError, KeyError):
        patch = int(json.loads((Path(folder) / "transformer" / "config.json").read_text())["patch_size"][1])
    return factor * patch


def validate_dit_upscale(job: JobSpec, registry) -> None:
    """Request checks for a Wan model, before anything runs (INVALID_ARGUMENT / NOT_FOUND with the fix)."""
    common, params = job.common, job.params
    entry = registry.entry(common.model or registry.default_model(("wan",)))
    if entry.family != "wan":
        raise InvalidArgument(f"The DiT upscale path runs on Wan models; '{entry.id}' is a {entry.family} model.")
    i2v = entry_is_image_to_video(registry, entry)
    mode = dit_mode(params, i2v)
    if mode not in DEFAULT_STRENGTH:
        raise InvalidArgument(f"Unknown upscale mode '{mode}': use generate, plate or refine.")
    if params.scale is not None and (common.width or common.height):
        raise InvalidArgument("Give either --scale or --width/--height as the target, not both.")
    unused = [flag for flag, value in (("--cosine-scale", params.cosine_scale), ("--dilate-tau", params.dilate_tau),
                                       ("--matte-cosine-scale", params.matte_cosine_scale)) if value is not None]
    if params.fast and dit_mode(params, i2v) == "generate":  # on a plate it encodes first (latent_first)
        unused.append("--fast")
    if unused:  # FreeScale's UNet knobs: the DiT path has neither a cosine mix nor convolutions to dilate
        raise InvalidArgument(f"{' and '.join(unused)} {'tunes' if len(unused) == 1 else 'tune'} FreeScale's UNet "
                              "cascade (SD and AnimateDiff models); CineScale on Wan re-noises the upsampled video "
                              f"instead and would ignore {'it' if len(unused) == 1 else 'them'}: drop "
                              f"{'it' if len(unused) == 1 else 'them'}, or pick an SD or AnimateDiff model.")
    multiple = _size_multiple_of(entry.path) if entry.path else 16
    check_wan_size(common.width, common.height, multiple)
    if mode == "generate":
        if i2v and not params.input:
            raise InvalidArgument(f"'{entry.id}' is an image-to-video model: give the video's first frame with "
                                  "--input FRAME.####.exr (an image sequence; its first frame is used).")
        if i2v:
            plate_frame_count(params.input)  # NOT_FOUND with the fix when the image is not there
        if common.frames is not None:
            check_wan_frames(common.frames)
        if params.stages == 1 and not (common.width or common.height) and (params.scale or 2.0) > 1.0:
            raise InvalidArgument("Upscaling with a Wan model takes at least 2 stages (base video, then refinement "
                                  "at the target size): use --stages 2 or more, or leave it empty.")
    else:
        if not params.input:
            raise InvalidArgument(f"The {mode} mode needs a plate: --input PLATE.####.exr.")
        count = plate_frame_count(params.input)
        if common.frames and common.frames > count:
            raise InvalidArgument(f"The plate has {count} frames; --frames {common.frames} asks for more.")
        from .upscale import inspect_plate  # the UNet path's checks (no import circle: upscale imports us late)

        plate = inspect_plate(params.input, common.frames)  # a missing frame, a frame of another size: now
        dit_target_size(multiple, common, params, plate.size, plate=True)  # a target below the plate: now
        check_wan_frames(common.frames or count, "plate")
    for spec in job_loras(common, params):  # files now; whether they fit the model: Pipeline.check_loras
        check_lora(spec, "wan")
    if params.strength is not None and common.steps:
        start_index_for(common.steps, params.strength)
