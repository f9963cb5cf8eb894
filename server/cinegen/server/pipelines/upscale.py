"""`upscale`: far above a model's native size, or a plate lifted to a higher resolution (ALGORITHMS.md §1).

Modes, on UNet models (`sd` images, `animatediff` clips; `wan` goes to `upscale_dit`):
- generate: text → native size (stage 1, the stock computation) → self-cascade to the target;
- plate: an EXR sequence → model pixels (the job's display transform) → cascade refinement from the plate
  at `strength`;
  per frame on image models, per clip on video models; frames keep the plate's numbers;
- refine (I2VGen-XL): a clip resized to the target, re-noised to `strength` and denoised (SDEdit,
  no cosine mix); the clip is the model's only guide besides a short prompt.

Defaults: 50 steps on SD models (FreeScale), the model's own elsewhere; target = 2× the base (native
size, or the plate); stages ×2 each; cosine_scale 2.0 (a plate's matte may pick another exponent for
its foreground: --matte-cosine-scale);
strength: generate K = ⌊0.3·steps⌋ (= 0.7), plate 0.5, refine 0.6 (t ≈ 600 of 1000); dilate_tau
= round(0.7·steps) as a step index (FreeScale's 35 of 50); VAE tiles of max(512, native) px.
An `--input` with the default mode means plate mode. Plates are scene-linear: they reach the model
through the job's display transform forward and come back through its inverse (a round trip); beyond
what it encodes, the output keeps the plate's own values (output/plate_highlights.py).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator, TypeVar

import numpy as np
import torch

from cinegen.common.exr import ImageReadError, PlateError, image_size, pixel_aspect, read_plate_sequence
from cinegen.common.params import UpscaleParams
from cinegen.common.sequence import FrameRange, SequencePattern, SequencePatternError

from ..diffusion.cascade import plan_stages
from ..diffusion.sampler import LoopCallbacks
from ..diffusion.temporal_chunks import ClipBlend, default_overlap
from ..errors import InvalidArgument, NotFound, ResourceExhausted
from ..models.family import FamilyAdapter
from ..models.registry import ModelRegistry
from ..output import resize_alpha
from ..output.frames import display_transform_for
from ..output.plate_highlights import HighlightCount, ModelPlate, PlateHighlights, plate_to_model, sink_kwargs
from ..scaleout.units import WorkUnit, clip_chunks, frame_chunks, single_unit
from .base import JobSpec, Pipeline, Resolved, RunContext, StepProgress
from .frame_range import check_frame_range, wanted_indices
from .upscale_unet import (CascadeSettings, decode_latents, default_vae_tile, generate_native, pixel_multiple,
                           reference_size, run_cascade)

Size = tuple[int, int]
T = TypeVar("T")
MAX_SIDE = 16384
DEFAULT_SCALE = 2.0
DEFAULT_STRENGTH = {"generate": None, "plate": 0.5, "refine": 0.6}
CASCADE_STEPS = {"sd": 50}  # FreeScale samples SD/SDXL in 50 steps (dilate_tau 35 of them); others: the model's own


# ---- what a job asks for ------------------------------------------------------------------------
def effective_mode(params: UpscaleParams) -> str:
    mode = params.mode or "generate"
    return "plate" if mode == "generate" and params.input else mode


def resolve_target(base: Size, scale: float | None, width: int | None, height: int | None) -> Size:
    """The output size from --scale, or --width/--height (one alone keeps the base's aspect)."""
    bw, bh = base
    if scale is not None and (width or height):
        raise InvalidArgument("Give either --scale or --width/--height as the target, not both.")
    if width and height:
        return width, height
    if width or height:
        factor = (width / bw) if width else (height / bh)
        other = round((bh if width else bw) * factor / 8) * 8
        return (width, max(8, other)) if width else (max(8, other), height)
    scale = DEFAULT_SCALE if scale is None else scale
    if scale < 1:
        raise InvalidArgument(f"Scale {scale:g} would shrink the picture; upscale needs a scale of 1 or more.")
    w, h = bw * scale, bh * scale
    if abs(w - round(w)) > 1e-6 or abs(h - round(h)) > 1e-6 or round(w) % 8 or round(h) % 8:
        near_w, near_h = max(8, round(w / 8) * 8), max(8, round(h / 8) * 8)
        raise InvalidArgument(f"Scale {scale:g} of {bw}x{bh} gives {w:g}x{h:g} px, which is not a multiple of 8; "
                              f"ask for --width {near_w} --height {near_h} instead, or pick another scale.")
    return round(w), round(h)


@dataclass(frozen=True)
class PlateInfo:
    pattern: SequencePattern
    frames: FrameRange
    size: Size
    pixel_aspect: float = 1.0  # an anamorphic plate's squeeze, written into the output frames


def inspect_plate(text: str, count: int | None = None) -> PlateInfo:
    """Pattern, frame range and size of a plate, checked without reading pixels."""
    if not text:
        raise InvalidArgument("Plate and refine modes need the input frames: --input PLATE.####.exr.")
    try:
        pattern = SequencePattern.parse(text, any_extension=True, what="plate")
    except SequencePatternError as exc:
        raise InvalidArgument(str(exc)) from exc
    on_disk = pattern.glob_existing()
    if not on_disk:
        raise NotFound(f"No frames of the plate '{pattern.hash_form()}' were found: check the folder, the name "
                       "and the frame padding.")
    first = min(on_disk)
    frames = FrameRange(first, first + count - 1 if count else max(on_disk))
    try:
        read_plate_sequence(pattern, frames)  # refuses missing frames before reading any pixels
    except PlateError as exc:
        raise InvalidArgument(str(exc)) from exc
    sizes = {frame: _image_size(on_disk[frame]) for frame in frames}
    size = sizes[first]
    odd = [frame for frame, s in sizes.items() if s != size]
    if odd:
        w, h = sizes[odd[0]]
        raise InvalidArgument(f"Frame {odd[0]} of the plate '{pattern.hash_form()}' is {w}x{h} but frame {first} is "
                              f"{size[0]}x{size[1]}: every frame of a plate must have the same size.")
    return PlateInfo(pattern, frames, size, pixel_aspect(on_disk[first]))


def _image_size(path: str) -> Size:
    """The size the plate is read at (its format, not its bounding box), from the header: checked at Submit."""
    try:
        return image_size(path)
    except ImageReadError as exc:
        raise InvalidArgument(str(exc)) from exc


def native_size_hint(registry: ModelRegistry, model_id: str) -> Size | None:
    """The native size without loading a real model (configs on disk); None when unknown until run."""
    entry = registry.entry(model_id)
    if registry.is_loaded(model_id) or entry.source == "builtin":  # tiny models load in a blink
        return registry.get(model_id).native_size
    try:
        folder = Path(entry.path)
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        side = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        return side, side
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plate_clip_length(registry: ModelRegistry, model_id: str) -> int:
    """Plate frames refined together: 1 on image models, the motion module's clip on video models
    (from the model folder's sidecar, without loading a real model)."""
    entry = registry.entry(model_id)
    if registry.is_loaded(model_id) or entry.source == "builtin":
        adapter = registry.get(model_id)
        return adapter.native_frames if adapter.kind == "video" else 1
    if entry.family != "animatediff":
        return 1
    from ..models.animatediff import NATIVE_FRAMES
    from ..models.toy import read_sidecar

    return int(read_sidecar(Path(entry.path)).get("native_frames") or NATIVE_FRAMES)


@dataclass(frozen=True)
class UpscalePlan:
    mode: str
    target: Size
    stages: list[Size]  # generate: stage 1 (native) first; plate/refine: only refinement stages
    reference: Size
    settings: CascadeSettings
    plate: PlateInfo | None = None


def check_params(params: UpscaleParams, mode: str) -> None:
    if mode not in ("generate", "plate", "refine"):
        raise InvalidArgument(f"Mode '{params.mode}' is not one of generate, plate, refine.")
    s = params.strength
    if s is not None and not 0.0 <= s <= 1.0:
        raise InvalidArgument(f"Strength must be between 0 and 1 (got {s:g}).")
    if s == 0.0 and mode != "plate":
        raise InvalidArgument(f"Strength 0 would leave the picture as it is in {mode} mode; use a value in (0, 1].")
    if params.cosine_scale is not None and params.cosine_scale < 0:
        raise InvalidArgument(f"Cosine scale must be 0 or more (got {params.cosine_scale:g}).")
    if params.matte_cosine_scale is not None and params.matte_cosine_scale < 0:
        raise InvalidArgument(f"Matte cosine scale must be 0 or more (got {params.matte_cosine_scale:g}).")
    if params.matte_cosine_scale is not None and mode != "plate":
        raise InvalidArgument("--matte-cosine-scale reads the plate's matte, so it needs plate mode "
                              "(--input PLATE.####.exr); drop it in generate or refine mode.")
    if params.dilate_tau is not None and params.dilate_tau < 0:
        raise InvalidArgument(f"Dilate tau is a step index, 0 or more (got {params.dilate_tau}).")
    if params.stages is not None and params.stages < 1:
        raise InvalidArgument(f"Stages must be at least 1 (got {params.stages}).")
    if params.vae_tile is not None and (params.vae_tile < 64 or params.vae_tile % 64):
        raise InvalidArgument(f"VAE tile {params.vae_tile} must be a multiple of 64 px, at least 64.")


def check_target(mode: str, base: Size, target: Size, model: str) -> None:
    w, h = target
    if max(w, h) > MAX_SIDE:
        raise InvalidArgument(f"The target {w}x{h} is over the {MAX_SIDE} px this pipeline makes; lower the scale.")
    if mode == "generate" and w * h < base[0] * base[1]:
        raise InvalidArgument(f"The target {w}x{h} is smaller than {model}'s native {base[0]}x{base[1]}; "
                              "upscale only goes up: use the image pipeline at that size.")
    if mode != "generate" and (w < base[0] or h < base[1]):
        raise InvalidArgument(f"The target {w}x{h} is smaller than the input's {base[0]}x{base[1]}; "
                              "upscale only goes up: ask for a scale of 1 or more.")


def plan_upscale(adapter: FamilyAdapter, job: JobSpec, steps: int) -> UpscalePlan:
    p: UpscaleParams = job.params
    c = job.common
    mode = effective_mode(p)
    check_params(p, mode)
    plate = inspect_plate(p.input, c.frames) if mode != "generate" else None
    base = plate.size if plate else adapter.native_size
    target = resolve_target(base, p.scale, c.width, c.height)
    check_target(mode, base, target, adapter.entry.id)
    multiple = pixel_multiple(adapter)
    strength = p.strength if p.strength is not None else DEFAULT_STRENGTH[mode]
    if mode == "generate":
        stages = plan_stages(base, target, stages=p.stages, multiple=multiple)
    elif mode == "plate" and strength > 0:
        # the plate is the first "stage": refinement stages follow it, ×2 each by default
        stages = plan_stages(base, target, stages=None if p.stages is None else p.stages + 1, multiple=multiple)
        stages = stages[1:] or [target]
    else:  # refine, or a plate at strength 0 (only resized, through the VAE once)
        stages = [target]
    settings = CascadeSettings(
        steps=steps, strength=strength, cosine_scale=2.0 if p.cosine_scale is None else p.cosine_scale,
        dilate_tau=p.dilate_tau, fast=p.fast, latent_resize=p.latent_resize,
        cosine_mix=mode != "refine", vae_tile=p.vae_tile or default_vae_tile(adapter),
        matte_cosine_scale=p.matte_cosine_scale)
    return UpscalePlan(mode, target, stages, reference_size(adapter, target), settings, plate)


def stages_note(asked: int | None, plan: UpscalePlan) -> str:
    """A sentence for the job log when --stages cannot be run as asked, else ""."""
    made = len(plan.stages)
    if not asked or asked == made:
        return ""
    sizes = " -> ".join(f"{w}x{h}" for w, h in plan.stages)
    if plan.mode == "refine" or (plan.mode == "plate" and plan.settings.strength == 0):
        what = "refine mode is one pass at the target size" if plan.mode == "refine" else \
            "a plate at strength 0 is only resized"
        return f"upscale: --stages {asked} is not used: {what} ({sizes})."
    if made < asked:  # stage sizes are whole multiples of the UNet's grid: close ones merge
        return (f"upscale: --stages {asked} gives {made} stage(s) ({sizes}): stage sizes are rounded to the "
                "model's grid, and stages closer than one grid step are one.")
    return ""


# ---- running ------------------------------------------------------------------------------------
def run_with_memory_retry(work: Callable[[CascadeSettings], T], settings: CascadeSettings,
                          log: Callable[[str], None]) -> T:
    """Run `work`; after a GPU out-of-memory, once more with smaller VAE tiles and attention chunks."""
    try:
        return work(settings)
    except torch.cuda.OutOfMemoryError:
        pass  # retried outside the handler, so the failed attempt's tensors can be freed first
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    smaller = settings.reduced()
    log(f"GPU out of memory; retrying with VAE tiles of {smaller.vae_tile} px and smaller attention chunks")
    try:
        return work(smaller)
    except torch.cuda.OutOfMemoryError as exc:
        raise ResourceExhausted("The GPU ran out of memory even with smaller VAE tiles. Lower --scale (or "
                                "--width/--height), the frame count, or --vae-tile, or add --fast.") from exc


class CascadeProgress:
    """Progress over work units (stage of a frame or clip), weighted by pixels × denoised steps."""

    def __init__(self, ctx: RunContext, units: list[tuple[str, float]], adapter: FamilyAdapter):
        self.ctx = ctx
        self.on_latent = ctx.latent_preview(adapter)
        self.labels = [label for label, _ in units]
        self.steps = StepProgress(ctx, [max(weight, 1e-6) for _, weight in units])

    def callbacks(self, unit: int) -> LoopCallbacks:
        return LoopCallbacks(self.steps.callback(unit, self.labels[unit]), self.ctx.check_cancel, self.on_latent)


def _stage_label(k: int, count: int, size: Size, prefix: str = "") -> str:
    return f"{prefix}stage {k}/{count}, {size[0]}×{size[1]}"


def plate_display(linear: np.ndarray, transform: str) -> tuple[torch.Tensor, ModelPlate]:
    """Scene-linear (H, W, 3) -> model pixels (1, 3, H, W) in [0, 1] through the job's display transform
    forward (the inverse of the one the output goes back through); and what they cannot carry."""
    plate = plate_to_model(linear, transform)
    return torch.from_numpy(plate.display).permute(2, 0, 1).unsqueeze(0).float(), plate


def plate_clips(plate: PlateInfo, clip_len: int, transform: str
                ) -> Iterator[tuple[list[int], torch.Tensor, list[ModelPlate], list[np.ndarray]]]:
    """(frame numbers, model pixels (1, 3, F, H, W) or (1, 3, H, W) when clip_len is 1, each frame's
    ModelPlate (its highlights), each frame's alpha (H, W); 1 where the plate has none)."""
    frames: list[int] = []
    images: list[torch.Tensor] = []
    alphas: list[np.ndarray] = []
    plates: list[ModelPlate] = []
    for frame, linear in _plate_frames(plate):
        image, seen = plate_display(linear, transform)
        frames.append(frame)
        images.append(image)
        alphas.append(linear[..., 3])
        plates.append(seen)
        if len(frames) == clip_len:
            yield frames, _stack(images, clip_len), plates, alphas
            frames, images, alphas, plates = [], [], [], []
    if frames:
        yield frames, _stack(images, clip_len), plates, alphas


def _plate_frames(plate: PlateInfo) -> Iterator[tuple[int, np.ndarray]]:
    """The plate's frames; one that cannot be read now (cut short on disk, changed since Submit) fails the job
    with its frame and file named, as the artist's to fix, not as a server error."""
    try:
        yield from read_plate_sequence(plate.pattern, plate.frames, keep_alpha=True)
    except PlateError as exc:
        raise InvalidArgument(str(exc)) from exc


def plate_blend(count: int, clip_len: int) -> ClipBlend:
    """The clips a plate is refined in: video clips overlap by a quarter and fade into each other (no cut
    in time every clip_len frames); image models take one frame at a time."""
    return ClipBlend(count, clip_len, default_overlap(clip_len) if count > clip_len else 0)


def _stack(images: list[torch.Tensor], clip_len: int) -> torch.Tensor:
    return images[0] if clip_len == 1 else torch.stack(images, dim=2)


class UpscalePipeline(Pipeline):
    name: ClassVar[str] = "upscale"
    description: ClassVar[str] = ("Generate far above a model's native size, or lift a plate to a higher "
                                  "resolution with new detail (FreeScale/CineScale self-cascade).")
    params_type: ClassVar[type] = UpscaleParams
    families: ClassVar[tuple[str, ...]] = ("sd", "animatediff", "wan")
    frame_ranges: ClassVar[bool] = True

    def validate(self, job: JobSpec, registry: ModelRegistry) -> None:
        self.check_family(job, registry)
        model_id = self.model_id(job, registry)
        if registry.entry(model_id).family == "wan":
            from .upscale_dit import validate_dit_upscale  # the DiT path lives apart (ALGORITHMS.md §1b)

            check_frame_range(job, self.name, False, " on DiT (wan) models")

            validate_dit_upscale(job, registry)
            return
        p: UpscaleParams = job.params
        mode = effective_mode(p)
        check_params(p, mode)
        check_frame_range(job, self.name, mode != "generate", " in generate mode")
        if mode != "generate":
            plate = inspect_plate(p.input, job.common.frames)
            first = job.common.first_frame if job.common.first_frame is not None else plate.frames.first
            wanted_indices(job, first, plate.frames.count)  # a --frame-range outside the plate: now, not mid-job
            check_target(mode, plate.size, resolve_target(plate.size, p.scale, job.common.width,
                                                          job.common.height), model_id)
            return
        native = native_size_hint(registry, model_id)
        if native is not None:
            check_target(mode, native, resolve_target(native, p.scale, job.common.width, job.common.height),
                         model_id)

    def work_units(self, job: JobSpec, registry: ModelRegistry, *, chunk: int, workers: int) -> list[WorkUnit]:
        """Plates: frame chunks on image models (each frame refined alone), chunks of whole clips at clip
        starts on video models (units.clip_chunks); generate mode and DiT (wan) plates: one unit.

        A DiT plate cannot be cut and stay the same numbers: its windows are blended every step, so a
        frame's value after K steps depends on latents up to K·(window − overlap) frames away; Wan's VAE
        is causal in time (a latent frame depends on every frame before it); the windows' positions and
        the noise are drawn for the whole clip. A chunk would have to compute the whole clip."""
        p: UpscaleParams = job.params
        model_id = self.model_id(job, registry)
        if registry.entry(model_id).family == "wan" or effective_mode(p) == "generate":
            return single_unit()
        plate = inspect_plate(p.input, job.common.frames)
        first = job.common.first_frame if job.common.first_frame is not None else plate.frames.first
        frames = FrameRange.from_count(first, plate.frames.count)
        clip_len = plate_clip_length(registry, model_id)
        if clip_len <= 1:
            return frame_chunks(frames, chunk)
        # the clips of _from_plate; a plan from a wrong clip length would still be exact, only slower
        blend = plate_blend(frames.count, clip_len)
        return clip_chunks(frames, blend.starts, blend.window, workers)

    def resolve(self, job: JobSpec, adapter: FamilyAdapter) -> Resolved:
        r = super().resolve(job, adapter)
        if job.common.steps is None and adapter.family in CASCADE_STEPS:
            r = dataclasses.replace(r, steps=CASCADE_STEPS[adapter.family])
        return r

    def run(self, ctx: RunContext) -> list[str]:
        adapter = ctx.model(self.model_id(ctx.job, ctx.registry))  # with the job's LoRAs, off after run
        if adapter.family == "wan":
            from .upscale_dit import run_dit_upscale

            return run_dit_upscale(ctx, adapter, self.resolve(ctx.job, adapter), ctx.job.params)
        r = self.resolve(ctx.job, adapter)
        plan = plan_upscale(adapter, ctx.job, r.steps)
        note = stages_note(ctx.job.params.stages, plan)
        if note:
            ctx.log(note)
        r = dataclasses.replace(r, width=plan.target[0], height=plan.target[1])
        if ctx.job.common.first_frame is None and plan.plate is not None:
            r = dataclasses.replace(r, first_frame=plan.plate.frames.first)  # frames keep the plate's numbers
        if plan.plate is None:
            return self._generate(ctx, adapter, r, plan)
        return self._from_plate(ctx, adapter, r, plan)

    # ---- generate: text -> native -> cascade --------------------------------------------------
    def _generate(self, ctx: RunContext, adapter: FamilyAdapter, r: Resolved, plan: UpscalePlan) -> list[str]:
        video = adapter.kind == "video"
        if video and r.frames > getattr(adapter, "max_frames", r.frames):
            raise InvalidArgument(f"{adapter.entry.id} makes clips of at most {adapter.max_frames} frames "
                                  f"(asked for {r.frames}); lower --frames.")
        s, stages = plan.settings, plan.stages
        items = 1 if video else r.frames
        per_item = r.frames if video else 1
        todo = s.steps - s.start_index
        units = [(_stage_label(1, len(stages), stages[0]), r.frames * stages[0][0] * stages[0][1] * s.steps)]
        for n in range(items):
            prefix = f"image {n + 1}/{items} " if items > 1 else ""
            units += [(_stage_label(k + 2, len(stages), size, prefix), per_item * size[0] * size[1] * todo)
                      for k, size in enumerate(stages[1:])]
        progress = CascadeProgress(ctx, units, adapter)
        sink = ctx.frame_sink(SequencePattern.parse(ctx.job.common.out), r)
        native = dataclasses.replace(r, width=stages[0][0], height=stages[0][1])
        latents = generate_native(adapter, native, callbacks=progress.callbacks(0))
        cond = adapter.encode_prompt(r.prompt, r.negative_prompt, r.guidance)
        for n in range(items):
            x0 = latents if video else latents[n:n + 1]
            base_unit = 1 + n * (len(stages) - 1)

            def work(settings: CascadeSettings, x0: torch.Tensor = x0, base_unit: int = base_unit) -> torch.Tensor:
                out = run_cascade(adapter, cond, x0, stages[1:], plan.reference, settings, r.seed,
                                  callbacks_for=lambda k: progress.callbacks(base_unit + k))
                return decode_latents(adapter, out, settings)

            images = run_with_memory_retry(work, s, ctx.log)
            self._write(ctx, sink, images, list(range(n * per_item, (n + 1) * per_item)))
        return list(sink.written)

    # ---- plate / refine: frames in -> cascade refinement ------------------------------------------
    def _from_plate(self, ctx: RunContext, adapter: FamilyAdapter, r: Resolved, plan: UpscalePlan) -> list[str]:
        plate = plan.plate
        assert plate is not None
        clip_len = adapter.native_frames if adapter.kind == "video" else 1
        count = plate.frames.count
        blend = plate_blend(count, clip_len)
        # a --frame-range chunk refines every clip holding one of its frames, as a full run does
        wanted = wanted_indices(ctx.job, r.first_frame, count)
        needed = [n for n, start in enumerate(blend.starts)
                  if start < wanted.stop and start + blend.window > wanted.start]
        todo = max(plan.settings.steps - plan.settings.start_index, 0)
        what = "clip" if clip_len > 1 else "frame"
        units = [(_stage_label(k + 1, len(plan.stages), size, f"{plan.mode} {what} {n + 1}/{len(blend.starts)} "),
                  blend.window * size[0] * size[1] * todo) for n in needed for k, size in enumerate(plan.stages)]
        progress = CascadeProgress(ctx, units, adapter)
        sink = ctx.frame_sink(SequencePattern.parse(ctx.job.common.out), r, pixel_aspect=plate.pixel_aspect)
        cond = adapter.encode_prompt(r.prompt, r.negative_prompt, r.guidance)
        transform = display_transform_for(ctx.job.common.display_transform, True)
        counted = HighlightCount(transform)
        mattes: dict[int, np.ndarray] = {}
        kept: dict[int, PlateHighlights | None] = {}  # each frame's highlights, until the frame is written
        for order, n in enumerate(needed):
            first = plate.frames.first + blend.starts[n]
            clip_plate = dataclasses.replace(plate, frames=FrameRange(first, first + blend.window - 1))
            _, pixels, seen, alphas = next(plate_clips(clip_plate, clip_len, transform))
            ctx.check_cancel()
            base_unit = order * len(plan.stages)
            for offset, alpha in enumerate(alphas):
                mattes.setdefault(blend.starts[n] + offset, alpha)
                kept.setdefault(blend.starts[n] + offset, seen[offset].highlights)
                counted.add(blend.starts[n] + offset, seen[offset])

            matte = torch.from_numpy(np.stack(alphas)) if plan.settings.matte_cosine_scale is not None else None

            def work(settings: CascadeSettings, pixels: torch.Tensor = pixels, base_unit: int = base_unit,
                     matte: torch.Tensor | None = matte):
                out = run_cascade(adapter, cond, pixels.to(adapter.device), plan.stages, plan.reference, settings,
                                  r.seed, callbacks_for=lambda k: progress.callbacks(base_unit + k), x0_is_pixels=True,
                                  matte=matte)
                return decode_latents(adapter, out, settings)

            images = run_with_memory_retry(work, plan.settings, ctx.log)
            frames = images[0].transpose(0, 1) if images.dim() == 5 else images  # (F, 3, H, W)
            ready = blend.add(n, frames)
            if ready:
                indices = [index for index, _ in ready]
                self._write(ctx, sink, torch.stack([image for _, image in ready]), indices,
                            [mattes.pop(index) for index in indices], wanted,
                            [kept.pop(index) for index in indices])
        message = counted.message()
        if message:  # once per job, over every plate frame read
            ctx.log(message)
        return list(sink.written)

    @staticmethod
    def _write(ctx: RunContext, sink, images: torch.Tensor, indices: list[int],
               alphas: list[np.ndarray] | None = None, keep: range | None = None,
               highlights: list | None = None) -> None:
        """Images (N, 3, H, W) or one clip (1, 3, F, H, W) -> frames `indices` of the sequence, with the
        plate's alpha of each frame resized to the output, and its highlights kept, when given."""
        frames = images[0].permute(1, 0, 2, 3) if images.dim() == 5 else images
        for i, (index, image) in enumerate(zip(indices, frames)):
            ctx.check_cancel()
            if keep is not None and index not in keep:
                continue  # computed with its clip, written by the chunk that holds it
            ctx.preview(index, image.permute(1, 2, 0).float().cpu().numpy())
            alpha = None if alphas is None else resize_alpha(alphas[i], image.shape[-1], image.shape[-2])
            sink.write(index, image, alpha=alpha, **sink_kwargs(highlights[i] if highlights else None))
