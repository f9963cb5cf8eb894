"""`panorama`: wide pictures, 360° rings and spheres, long and looping video (DynamicScaler, seed 003).

ALGORITHMS.md §2. The method, stage by stage:

1. **Plan** (in latent cells): windows of the model's native size; the width wraps for ``ring`` and
   ``sphere`` (360°), the frames wrap for ``--loop`` and are pinned at both ends otherwise (long
   video); ``sphere`` is equirectangular 2:1 and its first ~15/48 steps denoise through 44
   perspective views (Panoramic Projecting Denoise).
2. **Global motion guidance** (on by default, ``--guidance-scale-down N``, 2 as the reference's
   ``upscale_factor``; 1 = off): the whole panorama at 1/N size through the same denoiser, its clean
   result upsampled (across the seam for 360°), re-noised to step ``⌊15/48·steps⌋`` of the full-size
   schedule (the reference: step 15 of 48), where the full-size run starts. Skipped when the panorama
   is one window already.
3. **Offset Shifting Denoiser** at full size: each latent advanced once per step
   (``diffusion/panorama_denoise.py``), with explicit window overlap 0.75 → 0.5 → 0.25 → 0 over four
   equal parts of the schedule (``--no-early-overlap`` turns it off). A sphere may have a prompt per
   latitude band (``--band-prompts``, zenith first): each view of the projecting steps and each
   window after them is denoised with the prompt of its band. On AnimateDiff with a SparseCtrl RGB
   model installed, an ``--input`` image is the first frame as a SparseCtrl condition, each window
   given its crop (panorama_sparsectrl.py). On a Wan image-to-video model it is the panorama's first
   frame, given as the I2V condition, each window and view its crop (panorama_i2v.py). Otherwise an
   ``--input`` image is encoded, placed at the centre
   (shrunk to fit), and kept: before each step its latent is re-noised to the step's level and
   pasted; after the last, the clean latent is pasted.
4. **Decode** frame by frame; for 360° the latent is padded with the columns from across the seam
   and the padding cropped after decoding, so the decoder sees no edge at the seam. Sphere frames
   carry the standard ``envmap`` latlong attribute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from cinegen.common.color import DISPLAY_VIEW
from cinegen.common.exr import ImageReadError, image_size, read_image
from cinegen.common.params import PanoramaParams
from cinegen.common.sequence import SequencePattern

from ..diffusion.equirect import PITCH_ROWS
from ..diffusion.osd import BlendSchedule, DenoiseCounts
from ..diffusion.panorama_denoise import LatentLayout, NoiseLevels, PanoramaPlan, denoise_panorama, upsample_latent
from ..diffusion.sampler import LoopCallbacks, scheduler_step_kwargs
from ..diffusion.windows import Boundary
from ..errors import InvalidArgument
from ..models.family import FamilyAdapter
from ..models.registry import ModelRegistry
from ..output.frames import display_transform_for
from ..output.plate_highlights import HighlightCount, ModelPlate, PlateHighlights, placed, plate_to_model, sink_kwargs
from .base import JobSpec, Pipeline, Resolved, RunContext, StepProgress, seeded_generator
from .panorama_i2v import WanImagePanorama, is_wan_image_to_video
from .panorama_sparsectrl import SparseCtrlPanorama, input_sparsectrl
from .upscale_dit import check_wan_frames

PROJECTIONS = ("plane", "ring", "sphere")
PROJECTING_FRACTION = 15 / 48  # PPD steps of the sphere, as in the reference schedule
GMG_START_FRACTION = 15 / 48  # the reference re-noises the upsampled pass to step 15 of 48 and goes on from there
GMG_SCALE_DOWN = 2.0  # the reference's upscale_factor: the low-resolution pass at half size
MAX_BAND_PROMPTS = len(PITCH_ROWS)  # one per pitch row of the sphere views, as the reference's phi_prompt_dict
BLEND_FRACTION = 0.4  # K of the OSD blend r_i = r_max(1 − i/K): 20 of 50 steps in the reference
WRAP_PAD_CELLS = 8  # latent columns borrowed from across the seam when decoding 360° panoramas
# Latent cells (frames × rows × columns) per denoiser call: batches of windows and sphere views stay
# bounded whatever the panorama's width (one SD 1.5 window on a CPU, where bigger batches gain little;
# on a GPU 16 per 24 GiB of free memory, see `cells_per_call`; at least one window).
CELLS_PER_CALL = {"cpu": 64 * 64, "cuda": 16 * 64 * 64}
GPU_GIB_PER_BUDGET = 24  # free GPU memory that `CELLS_PER_CALL["cuda"]` is sized for (SD 1.5, half, with CFG)


@dataclass(frozen=True)
class PanoramaSettings:
    """The panorama's own options, checked."""

    projection: str = "plane"
    loop: bool = False
    scale_down: float | None = GMG_SCALE_DOWN  # GMG factor; None = off
    input_path: str = ""
    early_overlap: bool = True  # explicit window overlap 0.75 → 0.5 → 0.25 → 0 over the schedule
    band_prompts: tuple[str, ...] = ()  # sphere: prompts from the zenith down to the nadir ("-" = the prompt)
    keep_first_frame: bool = False  # Wan I2V: latent frame 0 pinned to the input's (panorama_i2v.py)
    # OSD window order: "plan" (the reference's raster order) or "disjoint" (overlapping windows
    # regrouped into disjoint sets, each one model call; see PanoramaPlan.window_order)
    window_order: str = "plan"
    view_order: str = "disjoint"  # sphere views: "disjoint" (one call per disjoint set) or "plan" (PanoramaPlan)
    view_batch: int = 0  # sphere views per model call; 0 = automatic (cells_per_call)

    @classmethod
    def from_params(cls, params: PanoramaParams) -> PanoramaSettings:
        projection = (params.projection or "plane").lower()
        if projection not in PROJECTIONS:
            raise InvalidArgument(f"Projection '{params.projection}' is not one of {', '.join(PROJECTIONS)}.")
        scale = params.guidance_scale_down
        if scale is not None and not 1.0 <= scale <= 8.0:
            raise InvalidArgument(f"--guidance-scale-down must be between 1 and 8 (got {scale:g}); "
                                  "1 turns global motion guidance off.")
        bands = tuple(p.strip() for p in params.band_prompts)
        if bands and projection != "sphere":
            raise InvalidArgument("--band-prompts gives a prompt per latitude band of a sphere panorama; use "
                                  "--projection sphere, or drop --band-prompts.")
        if len(bands) > MAX_BAND_PROMPTS:
            raise InvalidArgument(f"--band-prompts takes at most {MAX_BAND_PROMPTS} prompts (one per latitude "
                                  f"row of the sphere views, zenith first); got {len(bands)}.")
        orders = {}
        for name, default in (("window_order", "plan"), ("view_order", "disjoint")):
            order = (getattr(params, name, "") or default).strip().lower()  # "" = an old client: the default
            if order not in ("plan", "disjoint"):
                raise InvalidArgument(f"{name.replace('_', ' ').capitalize()} '{order[:24]}' is not one of plan, "
                                      "disjoint.")
            orders[name] = order
        view_batch = int(getattr(params, "view_batch", 0) or 0)
        if not 0 <= view_batch <= 64:
            raise InvalidArgument(f"Views per call must be between 0 (automatic) and 64; got {view_batch}.")
        if projection != "sphere" and (view_batch or orders["view_order"] != "disjoint"):
            raise InvalidArgument("--view-order and --view-batch set how a sphere's perspective views are denoised; "
                                  "use --projection sphere, or drop them.")
        return cls(projection, bool(params.loop), scale if scale and scale > 1.0 else None, params.input,
                   bool(params.early_overlap), bands, bool(params.keep_first_frame), view_batch=view_batch, **orders)

    @property
    def wraps(self) -> bool:
        return self.projection in ("ring", "sphere")

    def band_prompt(self, band: int, prompt: str) -> str:
        """The prompt of latitude band ``band`` (index into PITCH_ROWS): the bands are split evenly
        over the prompts given, zenith first (3 prompts: sky, horizon, ground); "" or "-" = ``prompt``."""
        if not self.band_prompts:
            return prompt
        own = self.band_prompts[band * len(self.band_prompts) // len(PITCH_ROWS)]
        return prompt if own in ("", "-") else own


def check_request(adapter: FamilyAdapter, r: Resolved, s: PanoramaSettings) -> None:
    """INVALID_ARGUMENT for what the panorama cannot do, said so that the artist can fix it."""
    native, native_frames = adapter.native_size, adapter.native_frames
    multiple = int(getattr(adapter, "size_multiple", adapter.vae_scale_factor))  # DiT patches: VAE × patch
    if s.projection == "sphere" and r.width != 2 * r.height:
        raise InvalidArgument(f"A sphere panorama is equirectangular (360°×180°), so its width must be twice its "
                              f"height; got {r.width}×{r.height}. Try --width {2 * r.height} --height {r.height}.")
    if r.width < native[0] or r.height < native[1]:
        raise InvalidArgument(f"{r.width}×{r.height} is smaller than one window of this model ({native[0]}×"
                              f"{native[1]} px). Ask for at least that size, or use the image pipeline.")
    if r.width % multiple or r.height % multiple:
        raise InvalidArgument(f"Width and height must be multiples of {multiple} for this model "
                              f"(got {r.width}×{r.height}).")
    if int(getattr(adapter, "temporal_scale_factor", 1)) > 1:  # a causal video VAE decodes 4k + 1 frames only
        check_wan_frames(r.frames, "panorama")
    if s.loop and adapter.kind != "video":
        raise InvalidArgument("--loop makes a looping video, and this is an image model. Pick a video model "
                              "with --model (see `cinegen models`), or drop --loop.")
    if s.loop and r.frames < native_frames:
        raise InvalidArgument(f"A looping video needs at least one window of {native_frames} frames (this model's "
                              f"clip length); got {r.frames}. Ask for --frames {native_frames} or more.")
    if is_wan_image_to_video(adapter) and not s.input_path:
        raise InvalidArgument(f"'{adapter.entry.id}' is an image-to-video model: give the panorama's first frame "
                              "with --input, or pick a text-to-video model with --model.")
    if s.keep_first_frame and not (is_wan_image_to_video(adapter) or adapter.family == "animatediff"):
        raise InvalidArgument("--keep-first-frame keeps the input as the first frame of a Wan image-to-video or "
                              "AnimateDiff panorama; pick such a model with --model, or drop --keep-first-frame.")
    if s.keep_first_frame and not s.input_path:
        raise InvalidArgument("--keep-first-frame keeps the input image as the first frame: give it with --input, "
                              "or drop --keep-first-frame.")
    if s.input_path and not Path(s.input_path).is_file():
        raise InvalidArgument(f"There is no input image '{s.input_path}'. Give the path of an image the server "
                              "can read (upload it first when the server is remote).")
    if s.input_path:
        try:
            image_size(s.input_path)  # the header: a file it cannot read is refused now, not mid-job
        except ImageReadError as exc:
            raise InvalidArgument(str(exc)) from exc


def latent_frames(adapter: FamilyAdapter, frames: int) -> int:
    """Latent frames of a clip (video VAEs may compress time); image models: one per frame."""
    if adapter.kind != "video":
        return frames
    width, height = adapter.native_size
    return int(adapter.latent_shape(1, width, height, frames)[2])


def patch_cells(adapter: FamilyAdapter) -> int:
    """Latent cells per denoiser patch along height and width (1 for UNets, 2 for Wan's 2×2 patches)."""
    return max(1, int(getattr(adapter, "size_multiple", adapter.vae_scale_factor)) // adapter.vae_scale_factor)


def cells_per_call(device: torch.device) -> int:
    """Latent cells per denoiser call on ``device``: fixed on a CPU, scaled by free memory on a GPU.
    The results do not depend on it (batches only group regions already in their sequential order)."""
    if device.type != "cuda":
        return CELLS_PER_CALL.get(device.type, CELLS_PER_CALL["cpu"])
    free, _total = torch.cuda.mem_get_info(device)
    return max(CELLS_PER_CALL["cpu"], int(CELLS_PER_CALL["cuda"] * free / (GPU_GIB_PER_BUDGET << 30)))


def panorama_plan(adapter: FamilyAdapter, r: Resolved, s: PanoramaSettings, *, width: int | None = None,
                  height: int | None = None) -> PanoramaPlan:
    """Windows, boundaries and schedule for a panorama of ``width × height`` px (default: ``r``'s)."""
    scale = adapter.vae_scale_factor
    frames = latent_frames(adapter, r.frames)
    window_frames = min(latent_frames(adapter, adapter.native_frames), frames) if adapter.kind == "video" else 1
    window = (window_frames, adapter.native_size[1] // scale, adapter.native_size[0] // scale)
    budget = cells_per_call(adapter.device)
    return PanoramaPlan(
        latent_size=(frames, (height or r.height) // scale, (width or r.width) // scale), window=window,
        boundary_t=Boundary.RING if s.loop else Boundary.DOCK, boundary_h=Boundary.DOCK,
        boundary_w=Boundary.RING if s.wraps else Boundary.DOCK,
        projecting_steps=round(r.steps * PROJECTING_FRACTION) if s.projection == "sphere" else 0,
        explicit_overlap=s.early_overlap, blend=BlendSchedule(steps=max(1, round(r.steps * BLEND_FRACTION))),
        window_order=s.window_order, view_order=s.view_order,
        max_batch=max(1, budget // math.prod(window)), view_batch=s.view_batch or max(1, budget // math.prod(window)),
        multiple=(1, patch_cells(adapter), patch_cells(adapter)))


# ---- image conditioning ------------------------------------------------------------------------
@dataclass
class KeepInput:
    """Keeps an encoded image in its place: re-noised to each step's level and pasted before the
    step, the clean latent pasted after the last (the input is kept, the rest grows around it)."""

    clean: torch.Tensor  # (1, C, 1, h, w)
    noise: torch.Tensor  # (1, C, F, h, w): the panorama's own initial noise there
    top: int
    left: int
    levels: NoiseLevels

    def _paste(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        h, w = values.shape[-2:]
        x[..., self.top:self.top + h, self.left:self.left + w] = values.to(x.dtype)
        return x

    def before_step(self, index: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._paste(x, self.levels.noised(self.clean, self.noise, index))

    def after_step(self, index: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._paste(x, self.clean.expand_as(self.noise)) if index == self.levels.steps - 1 else x


def place_input(image: torch.Tensor, width: int, height: int, multiple: int = 8) -> tuple[torch.Tensor, int, int]:
    """The input (3, h, w) in [0, 1] shrunk to fit, sizes and offsets snapped to ``multiple`` px (one
    latent cell), centred: (image, top, left) in px."""
    _, h, w = image.shape
    fit = min(1.0, width / w, height / h)
    new_h = max(multiple, int(h * fit) // multiple * multiple)
    new_w = max(multiple, int(w * fit) // multiple * multiple)
    if (new_h, new_w) != (h, w):
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", antialias=True,
                              align_corners=False)[0].clamp(0, 1)
    return image, (height - new_h) // 2 // multiple * multiple, (width - new_w) // 2 // multiple * multiple


def encode_input(adapter: FamilyAdapter, image: torch.Tensor, frames: int = 1) -> torch.Tensor:
    """(3, h, w) in [0, 1] → (1, C, 1, h/8, w/8) latent; on a video VAE that compresses time (Wan) the
    latent of the image held still over `frames` frames, (1, C, F', h/8, w/8): its first latent frame
    stands for one frame and the others for four, so one frame's latent would not fit them."""
    batch = image[None].to(adapter.device, adapter.dtype)
    if adapter.kind != "video":
        return adapter.encode(batch).unsqueeze(2)
    if int(getattr(adapter, "temporal_scale_factor", 1)) > 1 and frames > 1:
        return adapter.encode(batch.unsqueeze(2).expand(-1, -1, frames, -1, -1).contiguous())
    return adapter.encode(batch.unsqueeze(2))


def read_input_image(path: str, transform: str = DISPLAY_VIEW, plates: list[ModelPlate] | None = None) -> torch.Tensor:
    """An image file as model pixels (3, H, W) in [0, 1], through the display transform forward (the output
    comes back through its inverse); its ModelPlate (highlights beyond the model) appended to `plates`."""
    try:
        linear = read_image(path)
    except ImageReadError as exc:  # the header read at Submit, the pixels do not (cut short, changed since)
        raise InvalidArgument(f"The input image could not be read: {exc}") from exc
    seen = plate_to_model(linear, transform)
    if plates is not None:
        plates.append(seen)
    return torch.from_numpy(seen.display).permute(2, 0, 1)


# ---- generation --------------------------------------------------------------------------------
StageStep = Callable[[str, int, int], None]  # (stage label, steps done, steps to do)


def _initial_noise(adapter: FamilyAdapter, layout: LatentLayout, frames: int, width: int, height: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Noise drawn as the family's stock pipeline draws it, as (1, C, F, h, w)."""
    if adapter.kind == "video":
        shape = adapter.latent_shape(1, width, height, frames)
    else:  # image models: one image per frame, as num_images_per_prompt
        shape = adapter.latent_shape(frames, width, height)
    noise = randn_tensor(shape, generator=generator, device=adapter.device, dtype=adapter.dtype)
    return layout.from_model(noise, 1, frames)[0]


def _keep_input(clean: torch.Tensor | None, top: int, left: int, noise: torch.Tensor, levels: NoiseLevels,
                scale: tuple[float, float] = (1.0, 1.0)) -> list[KeepInput]:
    if clean is None:
        return []
    if scale != (1.0, 1.0):  # the low-resolution pass keeps a shrunk copy at the shrunk place
        size = (max(1, round(clean.shape[-2] * scale[0])), max(1, round(clean.shape[-1] * scale[1])))
        clean = torch.stack([F.interpolate(clean[:, :, f], size=size, mode="area") for f in range(clean.shape[2])],
                            dim=2)
        top, left = round(top * scale[0]), round(left * scale[1])
    h, w = clean.shape[-2:]
    top, left = min(top, noise.shape[-2] - h), min(left, noise.shape[-1] - w)
    return [KeepInput(clean, noise[..., top:top + h, left:left + w], top, left, levels)]


def generate_panorama(
    adapter: FamilyAdapter, r: Resolved, s: PanoramaSettings, *, input_image: torch.Tensor | None = None,
    on_step: StageStep | None = None, should_stop: Callable[[], None] | None = None, hooks: tuple = (),
    record_counts: Callable[[int, DenoiseCounts], None] | None = None, sparsectrl: Any = None,
) -> torch.Tensor:
    """The denoised panorama latent, (1, C, F, h, w). ``sparsectrl``: on AnimateDiff, a SparseCtrl RGB
    model the input conditions (frame 0, per window) instead of being pasted (panorama_sparsectrl.py)."""
    generator = seeded_generator(r.seed)
    layout = LatentLayout(video=adapter.kind == "video")
    cond = adapter.encode_prompt(r.prompt, r.negative_prompt, r.guidance)
    band_predict = _band_predict(adapter, r, s) if s.band_prompts else None
    plan = panorama_plan(adapter, r, s)
    noise = _initial_noise(adapter, layout, r.frames, r.width, r.height, generator)
    clean_input, top, left, i2v = None, 0, 0, None
    if input_image is not None and is_wan_image_to_video(adapter):  # the I2V model's condition, per window
        i2v = WanImagePanorama(adapter, input_image, r.frames, _band_conditions(adapter, r, s, cond),
                               bool(s.band_prompts))
    elif input_image is not None and sparsectrl is not None and adapter.family == "animatediff":
        i2v = SparseCtrlPanorama(adapter, sparsectrl, input_image, r.frames, _band_conditions(adapter, r, s, cond),
                                 bool(s.band_prompts))
    elif input_image is not None:
        cell = adapter.vae_scale_factor
        placed, top_px, left_px = place_input(input_image, r.width, r.height, cell)
        clean_input, top, left = encode_input(adapter, placed, r.frames), top_px // cell, left_px // cell

    def run(plan: PanoramaPlan, x: torch.Tensor, start: int, label: str, keep: Callable,
            renoise: bool = False) -> torch.Tensor:
        """``renoise``: ``x`` is a clean latent (GMG's upsampled result) brought to step ``start``'s level,
        also at step 0 (few steps); otherwise ``x`` is the initial noise."""
        scheduler = adapter.new_scheduler()
        scheduler.set_timesteps(r.steps, device=adapter.device)
        levels = NoiseLevels.for_scheduler(scheduler)
        if renoise:
            x = levels.noised(x, noise, start)
        else:
            x = x * getattr(scheduler, "init_noise_sigma", 1.0)
        step = (lambda done, todo: on_step(label, done, todo)) if on_step else None
        region_predict = i2v.at(*_pixel_size(adapter, plan)) if i2v is not None else None
        return denoise_panorama(
            x, scheduler, lambda z, t: adapter.predict(z, t, cond), layout, plan, generator, start_index=start,
            hooks=(*keep(levels), *hooks), callbacks=LoopCallbacks(step, should_stop),
            step_kwargs=scheduler_step_kwargs(scheduler, generator), record_counts=record_counts,
            band_predict=None if region_predict else band_predict, region_predict=region_predict)

    def keeping(at: PanoramaPlan, own_noise: torch.Tensor, ratio: tuple[float, float] = (1.0, 1.0)) -> Callable:
        """The hooks that keep the input at one size: pasted, or on Wan I2V (asked for) its frame 0."""
        if i2v is None:
            return lambda lv: _keep_input(clean_input, top, left, own_noise, lv, ratio)
        if not s.keep_first_frame:
            return lambda lv: []
        return lambda lv: [i2v.keep_first_frame(*_pixel_size(adapter, at), own_noise, lv)]

    low_plan = global_motion_plan(adapter, r, s)
    if low_plan is None:
        return run(plan, noise, 0, "denoise", keeping(plan, noise))
    low_noise = _initial_noise(adapter, layout, r.frames, low_plan.latent_size[2] * adapter.vae_scale_factor,
                               low_plan.latent_size[1] * adapter.vae_scale_factor, generator)
    ratio = (low_plan.latent_size[1] / plan.latent_size[1], low_plan.latent_size[2] / plan.latent_size[2])
    low = run(low_plan, low_noise, 0, "global motion (low resolution)", keeping(low_plan, low_noise, ratio))
    upsampled = upsample_latent(low, plan.latent_size[1:], wrap_width=s.wraps)
    start = min(r.steps - 1, int(r.steps * GMG_START_FRACTION))
    return run(plan, upsampled, start, "denoise", keeping(plan, noise), renoise=True)


def _pixel_size(adapter: FamilyAdapter, plan: PanoramaPlan) -> tuple[int, int]:
    """(width, height) in px of a plan's latent."""
    return plan.latent_size[2] * adapter.vae_scale_factor, plan.latent_size[1] * adapter.vae_scale_factor


def _band_conditions(adapter: FamilyAdapter, r: Resolved, s: PanoramaSettings, cond: Any) -> Callable:
    """``band → Conditioning``: each latitude band's prompt encoded once (``cond`` without bands)."""
    encoded: dict[str, Any] = {}

    def conditioning(band: int) -> Any:
        if not s.band_prompts:
            return cond
        prompt = s.band_prompt(band, r.prompt)
        if prompt not in encoded:
            encoded[prompt] = adapter.encode_prompt(prompt, r.negative_prompt, r.guidance)
        return encoded[prompt]
    return conditioning


def _band_predict(adapter: FamilyAdapter, r: Resolved, s: PanoramaSettings) -> Callable:
    """``(x, t, band) → output`` with each latitude band's prompt, each prompt encoded once."""
    encoded: dict[str, Any] = {}

    def predict(x: torch.Tensor, t: torch.Tensor, band: int) -> torch.Tensor:
        prompt = s.band_prompt(band, r.prompt)
        if prompt not in encoded:
            encoded[prompt] = adapter.encode_prompt(prompt, r.negative_prompt, r.guidance)
        return adapter.predict(x, t, encoded[prompt])
    return predict


def global_motion_plan(adapter: FamilyAdapter, r: Resolved, s: PanoramaSettings) -> PanoramaPlan | None:
    """The low-resolution pass of global motion guidance; None when GMG is off or the panorama is
    no larger than one window at the shrunk size (nothing to guide)."""
    if s.scale_down is None:
        return None
    plan = panorama_plan(adapter, r, s)
    low = _low_resolution_plan(adapter, r, s, plan)
    return None if low.latent_size == plan.latent_size else low


def _low_resolution_plan(adapter: FamilyAdapter, r: Resolved, s: PanoramaSettings,
                         plan: PanoramaPlan) -> PanoramaPlan:
    scale, (_, window_h, window_w), (_, full_h, full_w) = s.scale_down, plan.window, plan.latent_size
    cells = patch_cells(adapter)  # the shrunk size must stay in whole patches, as the full one is

    def shrunk(full: int, window: int) -> int:
        return max(min(window, full), max(1, round(full / scale / cells)) * cells)

    height = shrunk(full_h, window_h)
    width = 2 * height if s.projection == "sphere" else shrunk(full_w, window_w)
    px = adapter.vae_scale_factor
    return panorama_plan(adapter, r, s, width=width * px, height=height * px)


# ---- decoding ----------------------------------------------------------------------------------
def decode_panorama_frames(adapter: FamilyAdapter, latent: torch.Tensor, wrap: bool) -> Iterator[torch.Tensor]:
    """The frames of a (1, C, F, h, w) latent as (3, H, W) in [0, 1]. ``wrap`` decodes 360°
    panoramas with columns from across the seam on both sides, then crops them."""
    pad = min(WRAP_PAD_CELLS, latent.shape[-1]) if wrap else 0
    if pad:
        latent = torch.cat([latent[..., -pad:], latent, latent[..., :pad]], dim=-1)
    crop = pad * adapter.vae_scale_factor
    if latent_frames(adapter, 9) != 9:
        clips = [adapter.decode(latent)[0].transpose(0, 1)]  # time-compressing VAE: the clip in one go
    else:
        clips = (_decode(adapter, latent[:, :, f]) for f in range(latent.shape[2]))
    for clip in clips:
        for image in clip:
            yield image[..., crop:image.shape[-1] - crop] if crop else image


def _decode(adapter: FamilyAdapter, z: torch.Tensor) -> torch.Tensor:
    """One frame; the adapters decode frames above their native size in tiles (bounded memory)."""
    if adapter.kind == "video":
        return adapter.decode(z.unsqueeze(2))[:, :, 0]
    return adapter.decode(z)


@dataclass
class LatentPreview:
    """Frame 0's linear RGB projection after each step, as often as the context shows previews."""

    on_latent: Callable[[torch.Tensor], None]

    def after_step(self, index: int, t: Any, x: torch.Tensor) -> torch.Tensor:
        self.on_latent(x)
        return x


def _kept_highlights(adapter: FamilyAdapter, r: Resolved, seen: list[ModelPlate], image: torch.Tensor | None,
                     sparsectrl: Any) -> PlateHighlights | None:
    """The input's highlights beyond the model, where the input is pasted and kept (not as an I2V or
    SparseCtrl condition, which the model repaints); reported once (plate_highlights.py)."""
    if not seen or image is None or is_wan_image_to_video(adapter) or (
            sparsectrl is not None and adapter.family == "animatediff"):
        return None
    placed_image, top, left = place_input(image, r.width, r.height, adapter.vae_scale_factor)
    h, w = placed_image.shape[-2:]
    return placed(seen[0].highlights, (r.width, r.height), (top, left, w, h))


# ---- the pipeline ------------------------------------------------------------------------------
class PanoramaPipeline(Pipeline):
    name: ClassVar[str] = "panorama"
    description: ClassVar[str] = ("Panoramas of any size from native-size windows (DynamicScaler): wide pictures, "
                                  "seamless 360° rings, full spheres (equirectangular), long or looping video.")
    params_type: ClassVar[type] = PanoramaParams
    families: ClassVar[tuple[str, ...]] = ("sd", "animatediff", "wan")

    def validate(self, job: JobSpec, registry: ModelRegistry) -> None:
        self.check_family(job, registry)
        settings = PanoramaSettings.from_params(job.params)
        model_id = self.model_id(job, registry)
        # The window size needs the model; tiny and already-loaded models are checked now, others when run.
        if registry.is_loaded(model_id) or registry.entry(model_id).source == "builtin":
            adapter = registry.get(model_id)
            check_request(adapter, self.resolve(job, adapter), settings)

    def run(self, ctx: RunContext) -> list[str]:
        adapter = ctx.model(self.model_id(ctx.job, ctx.registry))  # with the job's LoRAs, off after run
        r = self.resolve(ctx.job, adapter)
        s = PanoramaSettings.from_params(ctx.job.params)
        check_request(adapter, r, s)
        transform, seen = display_transform_for(ctx.job.common.display_transform, True), []
        image = read_input_image(s.input_path, transform, seen) if s.input_path else None
        sparsectrl = input_sparsectrl(ctx, adapter) if image is not None else None
        kept = _kept_highlights(adapter, r, seen, image, sparsectrl)
        if seen:  # once per job
            counted = HighlightCount(transform)
            counted.add(0, seen[0])
            if counted.message(kept is not None):
                ctx.log(counted.message(kept is not None))
        weights = [0.3, 0.6, 0.1] if global_motion_plan(adapter, r, s) else [0.0, 0.9, 0.1]
        progress = StepProgress(ctx, weights)
        stages = {"global motion (low resolution)": progress.callback(0, "global motion (low resolution)"),
                  "denoise": progress.callback(1, "denoise")}
        preview = LatentPreview(ctx.latent_preview(adapter))
        latent = generate_panorama(adapter, r, s, input_image=image, should_stop=ctx.check_cancel,
                                   on_step=lambda label, done, todo: stages[label](done, todo), hooks=(preview,),
                                   sparsectrl=sparsectrl)
        sink = ctx.frame_sink(SequencePattern.parse(ctx.job.common.out), r,
                              envmap_latlong=s.projection == "sphere")
        for frame, image_out in enumerate(decode_panorama_frames(adapter, latent, wrap=s.wraps)):
            ctx.check_cancel()
            ctx.preview(frame, image_out.permute(1, 2, 0).float().cpu().numpy())
            sink.write(frame, image_out, **sink_kwargs(kept))
            ctx.progress("write frames", frame + 1, r.frames, 0.9 + 0.1 * (frame + 1) / r.frames)
        return list(sink.written)
