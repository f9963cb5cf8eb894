"""Panorama denoising loop: OSD and PPD steps over a family adapter's scheduler (ALGORITHMS.md §2).

Glue between the pure building blocks (``windows``, ``osd``, ``equirect``) and a real scheduler:

* **Per-region scheduler state.** Every window (or sphere view) steps with its own scheduler
  copy. Stateless schedulers (DDIM) need nothing more; multistep ones (DPM-Solver, UniPC, PNDM)
  keep sample-shaped history (``model_outputs``, ``last_sample``, …). That history lives on the
  *latent grid* (``GridSchedulerState``): a region's copy reads its part of the history from the
  start-of-step grid and writes its new history back, so a latent keeps its own history however
  the windows shift from step to step.
* **Noise levels** (``NoiseLevels``) for the three parametrisations: variance preserving
  (``x = √ᾱ·x0 + √(1−ᾱ)·ε``), variance exploding (``x = x0 + σ·ε``) and flow matching
  (``x = (1−σ)·x0 + σ·ε``). They give the OSD push-back ``level(i+1) → level(i)`` and the
  re-noising of a clean latent to the level before step ``i`` (image conditioning, GMG).
* **Panoramic Projecting Denoise** (``projecting_denoise_step``): like an OSD step, but the
  regions are perspective views of the equirectangular latent (nearest sampling keeps the noise
  Gaussian): view read → push back the already-advanced part → one scheduler step → written back
  onto the sphere pixels it covers.
* ``denoise_panorama``: the step loop — PPD for the first ``projecting_steps`` (sphere), then OSD
  with the grid shifted by ``(i mod 16)·Δ`` — with ``before_step``/``after_step`` hooks,
  progress and cancel between windows.

Latents are kept as ``(B, C, F, H, W)`` (``F = 1`` for one image); ``LatentLayout`` converts a
batch of regions to the model's layout (``(B·F, C, h, w)`` for image models).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .equirect import PITCH_ROWS, perspective_grid, perspective_to_equirect, sample_equirect, sphere_view_plan
from .osd import BlendSchedule, DenoiseCounts, denoise_windows_batched, disjoint_groups, draw_noise, generator_for
from .sampler import LoopCallbacks
from .windows import AxisSpan, Boundary, Window, order_for_batching, overlap_for_step, plan_axis, read_window
from .windows import shift_delta_for, step_offset, write_window

__all__ = [
    "BandRouter", "GridSchedulerState", "LatentLayout", "NoiseLevels", "PanoramaPlan", "RegionPredict", "ViewRegion",
    "WindowRegion", "axis_spans", "band_of_elevation", "denoise_panorama", "projecting_denoise_step",
    "region_band", "sphere_view_regions", "step_windows", "upsample_latent", "view_overlap",
    "view_reads",
]

REGION_ORDERS = ("plan", "disjoint")


# ---- noise levels ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseLevels:
    """Noise level before each step ``0..N-1`` and after the last (``N``) of a set scheduler."""

    kind: str  # "vp" (levels are ᾱ), "ve" or "flow" (levels are σ)
    levels: tuple[float, ...]

    @classmethod
    def for_scheduler(cls, scheduler: Any) -> NoiseLevels:
        config = scheduler.config
        name = type(scheduler).__name__
        if "FlowMatch" in name or config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction":
            return cls("flow", tuple(float(s) for s in scheduler.sigmas))
        if float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0:  # Euler-style: x = x0 + σ·ε
            return cls("ve", tuple(float(s) for s in scheduler.sigmas))
        alphas = scheduler.alphas_cumprod
        timesteps = [int(t) for t in scheduler.timesteps]
        levels = [float(alphas[t]) for t in timesteps]
        if hasattr(scheduler, "final_alpha_cumprod"):  # DDIM/DDPM: t_prev = t − T/N, below 0 = final
            stride = config.num_train_timesteps // scheduler.num_inference_steps
            previous = [t - stride for t in timesteps]
            final = float(scheduler.final_alpha_cumprod)
            after = [float(alphas[p]) if p >= 0 else final for p in previous]
            levels.append(after[-1])
        else:
            levels.append(1.0)
        return cls("vp", tuple(levels))

    @property
    def steps(self) -> int:
        return len(self.levels) - 1

    def noised(self, x0: Tensor, noise: Tensor, index: int) -> Tensor:
        """A clean latent brought to the level before step ``index`` (``index = N``: clean)."""
        level = self.levels[index]
        noise = noise.to(x0.dtype)
        if self.kind == "vp":
            return level**0.5 * x0 + (1.0 - level) ** 0.5 * noise
        if self.kind == "ve":
            return x0 + level * noise
        return (1.0 - level) * x0 + level * noise

    def push_back(self, x: Tensor, noise: Tensor, index: int) -> Tensor:
        """A latent already advanced by step ``index`` (level ``index+1``) moved back to ``index``."""
        high, low = self.levels[index], self.levels[index + 1]
        noise = noise.to(x.dtype)
        if self.kind == "vp":
            keep = high / low
            return keep**0.5 * x + max(0.0, 1.0 - keep) ** 0.5 * noise
        if self.kind == "ve":
            return x + max(0.0, high**2 - low**2) ** 0.5 * noise
        scale = (1.0 - high) / (1.0 - low)
        return scale * x + max(0.0, high**2 - (scale * low) ** 2) ** 0.5 * noise


# ---- regions and layouts ----------------------------------------------------------------------
class Region(Protocol):
    """A part of a ``(..., F, H, W)`` latent a model step sees: gather it, scatter it back."""

    def read(self, full: Tensor) -> Tensor: ...
    def write(self, full: Tensor, part: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class WindowRegion:
    window: Window

    def read(self, full: Tensor) -> Tensor:
        return read_window(full, self.window)

    def write(self, full: Tensor, part: Tensor) -> Tensor:
        return write_window(full, self.window, part)


@dataclass(frozen=True)
class ViewRegion:
    """A perspective view of an equirect latent over a span of frames (nearest sampling)."""

    frames: AxisSpan
    rows: Tensor  # (h, w) equirect row of each view pixel
    cols: Tensor  # (h, w) equirect column of each view pixel
    sphere_index: Tensor  # flat equirect pixels the view covers …
    view_index: Tensor  # … and the flat view pixel each one takes its value from
    band: int = -1  # latitude band of the view (index into PITCH_ROWS); -1 = unknown
    # The pixels the view writes (host_mask) and reads (host_read: nearest sampling may read a pixel
    # it does not write) as packed bit masks on the host: which views depend on which is geometry,
    # decided without reading anything back from the device.
    host_mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    host_read: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def build(cls, frames: AxisSpan, fov: float, yaw: float, pitch: float, view_hw: tuple[int, int],
              sphere_hw: tuple[int, int], device: torch.device, band: int = -1) -> ViewRegion:
        grid = perspective_grid(fov, yaw, pitch, *view_hw, *sphere_hw, dtype=torch.float64)
        rows = torch.floor(grid[..., 1] + 0.5).long().clamp(0, sphere_hw[0] - 1)
        cols = torch.remainder(torch.floor(grid[..., 0] + 0.5).long(), sphere_hw[1])
        # Back-projecting an image of view-pixel numbers tells each sphere pixel its nearest view pixel.
        numbers = torch.arange(view_hw[0] * view_hw[1], dtype=torch.float64).reshape(1, *view_hw)
        nearest, mask = perspective_to_equirect(numbers, fov, yaw, pitch, sphere_hw, mode="nearest")
        sphere_index = mask.flatten().nonzero().squeeze(1)
        view_index = nearest.flatten()[sphere_index].round().long()
        host_mask = np.packbits(mask.flatten().numpy().astype(bool))
        read = np.zeros(sphere_hw[0] * sphere_hw[1], dtype=bool)
        read[(rows * sphere_hw[1] + cols).flatten().numpy()] = True
        return cls(frames, rows.to(device), cols.to(device), sphere_index.to(device), view_index.to(device), band,
                   host_mask, np.packbits(read))

    def read(self, full: Tensor) -> Tensor:
        return full.index_select(-3, self.frames.indices(full.device))[..., self.rows, self.cols]

    def write(self, full: Tensor, part: Tensor) -> Tensor:
        frames = self.frames.indices(full.device)
        chunk = full.index_select(-3, frames)
        flat = chunk.flatten(-2)
        flat[..., self.sphere_index] = part.flatten(-2)[..., self.view_index].to(full.dtype)
        full.index_copy_(full.dim() - 3, frames, flat.reshape(chunk.shape))
        return full


@dataclass(frozen=True)
class LatentLayout:
    """Regions ``(B, C, f, h, w)`` ⇄ one model batch: video models take them as they are, image
    models as ``(B·f, C, h, w)``."""

    video: bool

    def to_model(self, parts: Sequence[Tensor]) -> Tensor:
        if not self.video:
            parts = [p.permute(0, 2, 1, 3, 4).reshape(-1, p.shape[1], *p.shape[-2:]) for p in parts]
        # contiguous: the model must see the same memory layout as a plain call (bit-equal results)
        return torch.cat(list(parts), dim=0).contiguous()

    def from_model(self, x: Tensor, count: int, frames: int) -> list[Tensor]:
        pieces = list(x.chunk(count, dim=0))
        if self.video:
            return pieces
        return [p.reshape(-1, frames, *p.shape[1:]).permute(0, 2, 1, 3, 4) for p in pieces]


# ---- scheduler state on the latent grid ------------------------------------------------------
def _is_sample_shaped(value: Any, shape: tuple[int, ...]) -> bool:
    if isinstance(value, Tensor):
        return tuple(value.shape) == shape
    return isinstance(value, list) and any(isinstance(v, Tensor) and tuple(v.shape) == shape for v in value)


class GridSchedulerState:
    """One scheduler copy per region, with sample-shaped history kept on the latent grid."""

    def __init__(self, scheduler: Any, layout: LatentLayout, latent_shape: tuple[int, ...]):
        self.template = scheduler
        self.layout = layout
        self.latent_shape = latent_shape  # (B, C, F, H, W)
        self.grid: dict[str, Any] = {}  # attribute -> full latent tensor, or list of them (None kept)
        self._next: dict[str, Any] = {}
        self._last: Any = None

    def begin_step(self) -> None:
        self._next, self._last = {}, None

    def end_step(self) -> None:
        if self._last is None:
            return
        self.template = self._last  # counters (step index, solver order) advanced the same in every copy
        # History no longer sample-shaped (e.g. PNDM resets a sum to 0) goes back to the template.
        self.grid = self._next

    def copy_for(self, regions: Sequence[Region]) -> Any:
        scheduler = copy.copy(self.template)
        for name, value in vars(self.template).items():
            if isinstance(value, list):  # multistep schedulers shift their history lists in place
                setattr(scheduler, name, list(value))
        for name, full in self.grid.items():
            setattr(scheduler, name, self._gather(full, regions))
        return scheduler

    def store(self, scheduler: Any, regions: Sequence[Region], sample_shape: tuple[int, ...], frames: int) -> None:
        for name, value in vars(scheduler).items():
            if not _is_sample_shaped(value, sample_shape):
                continue
            if isinstance(value, Tensor):
                target = self._target(name, None, value, self._next.get(name))
                self._next[name] = self._scatter(target, value, regions, frames)
                continue
            targets = self._next.setdefault(name, [None] * len(value))
            targets.extend([None] * (len(value) - len(targets)))
            for j, item in enumerate(value):
                if isinstance(item, Tensor):
                    targets[j] = self._scatter(self._target(name, j, item, targets[j]), item, regions, frames)
        self._last = scheduler

    def _gather(self, full: Any, regions: Sequence[Region]) -> Any:
        if isinstance(full, list):
            return [None if f is None else self._gather(f, regions) for f in full]
        return self.layout.to_model([region.read(full) for region in regions])

    def _target(self, name: str, slot: int | None, item: Tensor, current: Tensor | None = None) -> Tensor:
        if current is not None:
            return current
        old = self.grid.get(name)
        if slot is not None:
            old = old[slot] if isinstance(old, list) and slot < len(old) else None
        # Positions no region writes this step keep their history.
        return old.clone() if isinstance(old, Tensor) else torch.zeros(self.latent_shape, dtype=item.dtype,
                                                                          device=item.device)

    def _scatter(self, target: Tensor, item: Tensor, regions: Sequence[Region], frames: int) -> Tensor:
        for region, part in zip(regions, self.layout.from_model(item, len(regions), frames)):
            region.write(target, part)
        return target


# ---- latitude bands (a prompt per band of the sphere) ----------------------------------------
BandPredict = Callable[[Tensor, Tensor, int], Tensor]  # (model input, t, band) → model output
# (model input, t, the regions of its batch) → model output: per-region conditions (image-to-video)
RegionPredict = Callable[[Tensor, Tensor, Sequence["Region"]], Tensor]


def band_of_elevation(elevation: float) -> int:
    """The latitude band (index into ``PITCH_ROWS``, top first) whose pitch is nearest ``elevation``°."""
    return min(range(len(PITCH_ROWS)), key=lambda band: (abs(PITCH_ROWS[band] - elevation), band))


def region_band(region: Region, latent_height: int) -> int:
    """A sphere view's own band; a window's is the band of its centre row (row 0 is the zenith)."""
    if isinstance(region, ViewRegion):
        return region.band
    rows = region.window.height  # type: ignore[attr-defined]
    centre = (rows.start + (rows.size - 1) / 2.0) % rows.extent
    return band_of_elevation(90.0 - 180.0 * centre / max(1, latent_height - 1))


@dataclass(frozen=True)
class BandRouter:
    """Sends each region's rows of a model batch to the prediction of its latitude band."""

    predict: BandPredict
    latent_height: int

    def __call__(self, x: Tensor, t: Tensor, regions: Sequence[Region]) -> Tensor:
        rows = x.shape[0] // len(regions)  # a region is ``rows`` consecutive batch items (frames of images)
        bands = [region_band(region, self.latent_height) for region in regions]
        out: Tensor | None = None
        for band in sorted(set(bands)):
            index = torch.tensor([k * rows + j for k, b in enumerate(bands) if b == band for j in range(rows)],
                                 device=x.device)
            part = self.predict(x.index_select(0, index), t, band)
            out = torch.empty((x.shape[0], *part.shape[1:]), dtype=part.dtype, device=part.device) if out is None else out
            out.index_copy_(0, index, part)
        return out  # type: ignore[return-value]


@dataclass
class RegionStepper:
    """Advance a batch of regions one scheduler step, each with its own scheduler state."""

    state: GridSchedulerState
    predict: Callable[[Tensor, Tensor], Tensor]  # model layout in, model output out (CFG applied)
    step_kwargs: dict[str, Any]
    should_stop: Callable[[], None] | None = None
    bands: BandRouter | RegionPredict | None = None  # (x, t, regions) → output: replaces ``predict``

    def __call__(self, parts: Sequence[Tensor], regions: Sequence[Region], t: Tensor) -> list[Tensor]:
        if self.should_stop:
            self.should_stop()  # cancel between windows, not only between steps
        frames = parts[0].shape[2]
        x = self.state.layout.to_model(parts)
        scheduler = self.state.copy_for(regions)
        model_in = scheduler.scale_model_input(x, t)
        model_output = self.bands(model_in, t, regions) if self.bands else self.predict(model_in, t)
        x_next = scheduler.step(model_output, t, x, **self.step_kwargs, return_dict=False)[0]
        self.state.store(scheduler, regions, tuple(x.shape), frames)
        return self.state.layout.from_model(x_next, len(parts), frames)


# ---- the steps ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PanoramaPlan:
    """Geometry and schedule of one panorama denoise, in latent cells ``(F, H, W)``."""

    latent_size: tuple[int, int, int]
    window: tuple[int, int, int]
    boundary_t: Boundary = Boundary.DOCK
    boundary_h: Boundary = Boundary.DOCK
    boundary_w: Boundary = Boundary.RING
    projecting_steps: int = 0  # sphere: the first steps go through perspective views (PPD)
    explicit_overlap: bool = False  # 0.75 → 0.5 → 0.25 → 0 overlap (costs up to 16× the windows early on)
    blend: BlendSchedule = field(default_factory=BlendSchedule)
    max_batch: int | None = 8  # windows per model call: bounds the denoiser's memory whatever the width
    view_batch: int | None = None  # sphere views per model call (None: max_batch); results do not depend on it
    # Sequential order of the regions of a step: "plan" as planned (raster windows; sphere views by
    # pitch row, then yaw), "disjoint" in groups of pairwise disjoint regions, one model call per group
    # (``disjoint_groups``). Both advance every latent once per step; they differ where regions overlap.
    window_order: str = "plan"
    view_order: str = "disjoint"  # in plan order every view overlaps the one before it: 44 calls a step
    fov: float = 120.0
    multiple: tuple[int, int, int] = (1, 1, 1)  # window sizes in whole denoiser patches (latent cells per patch)


def axis_spans(extent: int, size: int, offset: int, boundary: Boundary, overlap: float = 0.0,
               multiple: int = 1) -> list[AxisSpan]:
    """``plan_axis``, except that a ring no longer than the window is one window *rolled* by the
    offset (a ring of one), so the ring's two ends still meet inside the model's view."""
    if Boundary(boundary) is Boundary.RING and 1 < extent <= size:
        return [AxisSpan(offset % extent, extent, extent)]
    return plan_axis(extent, size, offset, boundary, overlap, multiple)


def step_windows(plan: PanoramaPlan, offset: tuple[int, int, int], overlap: float = 0.0) -> list[Window]:
    """The OSD windows of one step (frames-major, then rows, then columns)."""
    boundaries = (plan.boundary_t, plan.boundary_h, plan.boundary_w)
    frames, rows, cols = (axis_spans(n, w, o, b, overlap, m)
                          for n, w, o, b, m in zip(plan.latent_size, plan.window, offset, boundaries, plan.multiple))
    return [Window(f, h, w) for f in frames for h in rows for w in cols]


def view_reads(regions: Sequence[Region]) -> np.ndarray:
    """(K, K) bool: view k reads a latent view j writes (same frames, same sphere pixel), from host
    geometry; regions of unknown extent count as reading every other one."""
    count = len(regions)
    writes = [getattr(r, "host_mask", None) for r in regions]
    reads = [getattr(r, "host_read", None) for r in regions]
    if any(m is None for m in writes + reads):
        return np.ones((count, count), dtype=bool)
    frames = [_span_set(r.frames) for r in regions]  # type: ignore[attr-defined]
    read = np.stack(reads)  # type: ignore[arg-type]
    out = np.zeros((count, count), dtype=bool)
    for j in range(count):
        out[j] = (writes[j][None, :] & read).any(axis=1) & np.array([bool(frames[j] & f) for f in frames])
    return out


def view_overlap(regions: Sequence[Region]) -> np.ndarray:
    """(K, K) bool, symmetric: views j and k cannot share a call — one reads what the other writes, or
    both write one latent (kept apart too, so a batch never depends on the order of its writes)."""
    count = len(regions)
    writes = [getattr(r, "host_mask", None) for r in regions]
    if any(m is None for m in writes):
        return np.ones((count, count), dtype=bool)
    frames = [_span_set(r.frames) for r in regions]  # type: ignore[attr-defined]
    write = np.stack(writes)  # type: ignore[arg-type]
    both = np.zeros((count, count), dtype=bool)
    for j in range(count):
        both[j] = (write[j][None, :] & write).any(axis=1) & np.array([bool(frames[j] & f) for f in frames])
    reads = view_reads(regions)
    return both | reads | reads.T


def _span_set(span: AxisSpan) -> set[int]:
    return {(span.start + i) % span.extent for i in range(span.size)}


def _check_views_cover(regions: Sequence[Region], size: tuple[int, ...]) -> None:
    """The views must cover every latent (frames × sphere pixels); checked on host geometry, not the device."""
    masks = [getattr(r, "host_mask", None) for r in regions]
    if not regions or any(m is None for m in masks):
        return
    frames = set().union(*(_span_set(r.frames) for r in regions))  # type: ignore[attr-defined]
    covered = np.unpackbits(np.bitwise_or.reduce(np.stack(masks)), count=size[-2] * size[-1]).astype(bool)
    missing = (size[0] - len(frames)) * covered.size + len(frames) * int((~covered).sum())
    if missing:
        raise ValueError(f"the sphere views leave {missing} latent positions undenoised")


def _region_shape(region: Region, latent: Tensor) -> tuple[int, ...]:
    if isinstance(region, ViewRegion):  # known without gathering anything
        return (*latent.shape[:-3], region.frames.size, *region.rows.shape)
    return tuple(region.read(latent).shape)


def projecting_denoise_step(
    latent: Tensor, regions: Sequence[Region], denoise: Callable[[Tensor, int], Tensor] | None, levels: NoiseLevels,
    step_index: int, blend: BlendSchedule, generator: torch.Generator | None, *,
    denoise_views: Callable[[list[Tensor], list[int]], list[Tensor]] | None = None,
    view_batch: int | None = 1, order: str = "plan",
) -> Tensor:
    """One PPD step: each view read, its already-advanced part pushed back, denoised, written back.

    ``order="disjoint"`` takes the views in groups of pairwise disjoint views (``disjoint_groups``);
    ``denoise_views(parts, indices)`` then gets up to ``view_batch`` views of one group in one call
    (``denoise(x, k)``: one view a call). Which views overlap is host geometry, and the push-back
    noise is drawn up front on the latent's device in view order, so the step never waits on the
    device, and the result does not depend on ``view_batch`` (batching only reorders the sums inside
    the model) as long as the scheduler draws no noise of its own.
    """
    if order not in REGION_ORDERS:
        raise ValueError(f"region order must be one of {REGION_ORDERS}, got {order!r}")
    if view_batch is not None and view_batch < 1:
        raise ValueError(f"view_batch must be >= 1, got {view_batch}")
    if denoise_views is None:
        if denoise is None:
            raise ValueError("give denoise or denoise_views")
        denoise_views, view_batch = (lambda parts, ks: [denoise(parts[0], ks[0])]), 1
    size = tuple(latent.shape[-3:])
    _check_views_cover(regions, size)
    groups = disjoint_groups(view_overlap(regions)) if order == "disjoint" else [[k] for k in range(len(regions))]
    sequence = [k for group in groups for k in group]
    position = {k: i for i, k in enumerate(sequence)}
    reads = view_reads(regions)  # [j, k]: k reads what j writes; pushed back where an earlier view wrote
    pushed_back = {k: any(position[j] < position[k] for j in np.flatnonzero(reads[:, k]) if j != k) for k in sequence}
    generator = generator_for(generator, latent.device)  # one device generator a step, not one a view
    noise = {k: draw_noise(_region_shape(regions[k], latent), latent, generator) for k in sequence if pushed_back[k]}
    advanced = torch.zeros(size, dtype=torch.bool, device=latent.device)
    ratio = blend.ratio(step_index)
    out = latent.clone()
    for group in groups:
        for begin in range(0, len(group), view_batch or len(group)):
            chunk = group[begin:begin + (view_batch or len(group))]
            inputs, earlier, done = [], [], []
            for k in chunk:
                x = regions[k].read(out)
                mask = regions[k].read(advanced) if pushed_back[k] else None
                inputs.append(x if mask is None else torch.where(mask, levels.push_back(x, noise[k], step_index), x))
                earlier.append(x)
                done.append(mask)
            outputs = denoise_views(inputs, list(chunk))
            for k, x_new, x, mask in zip(chunk, outputs, earlier, done):
                if mask is not None and ratio > 0.0:
                    x_new = torch.where(mask, (1.0 - ratio) * x_new + ratio * x, x_new)
                regions[k].write(out, x_new)
                regions[k].write(advanced, torch.ones(x.shape[-3:], dtype=torch.bool, device=latent.device))
    return out


def sphere_view_regions(plan: PanoramaPlan, step: int, offset_t: int, device: torch.device) -> list[ViewRegion]:
    """The PPD regions of one step: the sphere plan's views over each temporal window."""
    frames, height, width = plan.latent_size
    spans = axis_spans(frames, plan.window[0], offset_t, plan.boundary_t, multiple=plan.multiple[0])
    views = sphere_view_plan(step, fov=plan.fov)
    return [ViewRegion.build(span, v.fov, v.yaw, v.pitch, plan.window[1:], (height, width), device, v.band)
            for span in spans for v in views]


def denoise_panorama(
    latent: Tensor, scheduler: Any, predict: Callable[[Tensor, Tensor], Tensor], layout: LatentLayout,
    plan: PanoramaPlan, generator: torch.Generator | None, *, start_index: int = 0, hooks: Sequence[Any] = (),
    callbacks: LoopCallbacks | None = None, step_kwargs: dict[str, Any] | None = None,
    record_counts: Callable[[int, DenoiseCounts], None] | None = None, band_predict: BandPredict | None = None,
    region_predict: RegionPredict | None = None,
) -> Tensor:
    """Denoise a ``(B, C, F, H, W)`` latent from step ``start_index`` to the end of the schedule.

    ``scheduler`` has its timesteps set. ``record_counts(step, counts)`` (tests) receives the
    OSD's per-position tallies of every OSD step. ``band_predict(x, t, band)``, when given, is
    called instead of ``predict`` with each region's latitude band (sphere views: their own;
    windows: their centre row's), so each band can have its own prompt. ``region_predict(x, t,
    regions)``, when given, is called instead of both with the regions of each model batch (a
    condition cut per region: image-to-video panoramas); it routes latitude bands itself.
    """
    if region_predict is not None and band_predict is not None:
        raise ValueError("give band_predict or region_predict, not both (region_predict routes the bands)")
    callbacks = callbacks or LoopCallbacks()
    timesteps = scheduler.timesteps
    levels = NoiseLevels.for_scheduler(scheduler)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start_index)  # multistep schedulers index their own state
    state = GridSchedulerState(scheduler, layout, tuple(latent.shape))
    bands = region_predict or (BandRouter(band_predict, latent.shape[-2]) if band_predict else None)
    stepper = RegionStepper(state, predict, dict(step_kwargs or {}), callbacks.should_stop, bands)
    delta = shift_delta_for(plan.window)
    alphas = getattr(scheduler, "alphas_cumprod", torch.ones(1))  # unused: the push-back is ours
    todo = len(timesteps) - start_index
    for done, index in enumerate(range(start_index, len(timesteps))):
        if callbacks.should_stop:
            callbacks.should_stop()
        t = timesteps[index]
        for hook in hooks:
            if hasattr(hook, "before_step"):
                latent = hook.before_step(index, t, latent)
        offset = step_offset(index, delta)
        state.begin_step()
        if index < plan.projecting_steps:
            views = sphere_view_regions(plan, index, offset[0], latent.device)
            latent = projecting_denoise_step(
                latent, views, None, levels, index, plan.blend, generator,
                denoise_views=lambda parts, ks: stepper(parts, [views[k] for k in ks], t),
                view_batch=plan.view_batch or plan.max_batch, order=plan.view_order)
        else:
            overlap = overlap_for_step(index, len(timesteps)) if plan.explicit_overlap else 0.0
            windows = step_windows(plan, offset, overlap)
            if plan.window_order == "disjoint":
                windows = order_for_batching(windows)
            regions = [WindowRegion(w) for w in windows]
            counts = DenoiseCounts.zeros(plan.latent_size, latent.device) if record_counts else None

            def denoise_batch(batch: Tensor, indices: Sequence[int]) -> Tensor:
                parts = stepper(list(batch.chunk(len(indices), dim=0)), [regions[k] for k in indices], t)
                return torch.cat(parts, dim=0)

            latent = denoise_windows_batched(
                latent, t, t, windows, denoise_batch, alphas, index, plan.blend, generator,
                max_batch=plan.max_batch, counts=counts, renoise=lambda x, n: levels.push_back(x, n, index))
            if record_counts and counts is not None:
                record_counts(index, counts)
        state.end_step()
        for hook in hooks:
            if hasattr(hook, "after_step"):
                latent = hook.after_step(index, t, latent)
        if callbacks.on_step:
            callbacks.on_step(done + 1, todo)
    return latent


# ---- global motion guidance ------------------------------------------------------------------
def upsample_latent(latent: Tensor, size_hw: tuple[int, int], wrap_width: bool) -> Tensor:
    """Bilinear resize of ``(B, C, F, h, w)`` to ``size_hw``; ``wrap_width`` interpolates across the
    360° seam (column ``w−1`` next to column ``0``) instead of clamping at it."""
    b, c, f, h, w = latent.shape
    images = latent.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    if wrap_width:
        rows = ((torch.arange(size_hw[0], dtype=torch.float64) + 0.5) * h / size_hw[0] - 0.5).clamp(0, h - 1)
        cols = (torch.arange(size_hw[1], dtype=torch.float64) + 0.5) * w / size_hw[1] - 0.5
        grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1)  # (H, W, 2) as (u, v)
        resized = sample_equirect(images, grid.to(images.device))
    else:
        resized = F.interpolate(images, size=size_hw, mode="bilinear", align_corners=False)
    return resized.reshape(b, f, c, *size_hw).permute(0, 2, 1, 3, 4)
