"""`trajectory`: video whose subject follows the tracks of a trajectory file (ALGORITHMS.md §3).

Stages: read and check the tracks (file or inline JSON, sized to the output) → send a preview of
them → generate → write frames. Generation depends on the model family:

* `cogvideox` — **Tora**: tracks → flow video (flowmap.py) → VAE latents → motion features, fused
  after every DiT block's `norm1` for the whole denoise (diffusion/tora.py). By default as Tora's
  reference inference: `CogVideoXDPMScheduler` (trailing timesteps) with dynamic CFG, flow latents
  sampled from the VAE posterior (seeded from the job's seed), Gaussian 99 px / σ 10 at any size.
  Departures are options (`ToraInference`: --tora-sampler ddim, --no-dynamic-cfg, --flow-latents
  mode, --flow-kernel scaled). Clips longer than the model's are one clip, denoised in overlapping
  temporal windows, each with its own frames' motion features.
* `animatediff` (any UNet video model) — **training-free (FreeTraj)**: boxes from the tracks and
  their sizes, trajectory-shaped x_T, and fg/bg attention masks for the first steps
  (diffusion/freetraj.py). A track's name, when it is a word of the prompt, names the subject
  whose cross-attention is pushed into the box. A clip longer than the motion module's 16 frames is
  one clip: FreeNoise windows (16 frames every 4) in the motion modules, FreeNoise's re-used noise
  under the track patches, and each window's temporal masks from its own slice of the track.

Track frame numbers are output frame numbers: frame `first_frame + i` is the i-th generated frame.
"""
from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from cinegen.common.params import TrajectoryParams
from cinegen.common.sequence import SequencePattern
from cinegen.common.trajectory_io import (Trajectory, TrajectoryError, interpolate_tracks, load_trajectory,
                                          trajectory_preview_png)

from ..diffusion.flowmap import TORA_GAUSSIAN, flow_video, scaled_gaussian_params
from ..diffusion.freetraj import (AttentionNames, FreeTrajAttention, FreeTrajConfig, FreeTrajGuide, plan_boxes,
                                  subject_token_indices, trajectory_noise)
from ..diffusion.sampler import DenoiseLoop, LoopCallbacks, scheduler_step_kwargs
from ..diffusion.temporal_windows import predict_in_windows, window_spans
from ..diffusion.tora import motion_features, tora_installed, tora_weight_files
from ..errors import FailedPrecondition, InvalidArgument
from ..models.cogvideox import dynamic_guidance
from ..models.family import FamilyAdapter
from .base import JobSpec, Pipeline, Resolved, RunContext, StepProgress, seeded_generator
from .long_video import FREE_NOISE_STRIDE, free_noise, free_noise_latents, free_noise_spans, needs_free_noise

PREVIEW_SIDE = 256
FLOW_SEED_OFFSET = 3  # the flow latents' posterior sample gets its own stream, apart from x_T's


@dataclass(frozen=True)
class ToraInference:
    """How Tora samples; the defaults are its reference inference (diffusers-version/inference.py)."""

    sampler: str = "dpm"  # CogVideoXDPMScheduler, trailing timesteps; "ddim": the folder's DDIM
    dynamic_cfg: bool = True  # CogVideoXPipeline's use_dynamic_cfg
    flow_latents: str = "sample"  # the VAE posterior sampled, as Tora encodes the flow video; "mode"
    flow_kernel: str = "fixed"  # 99 px, σ 10 whatever the size; "scaled" with the frame from 720×480

    @classmethod
    def from_params(cls, params: TrajectoryParams) -> ToraInference:
        sampler, latents, kernel = params.tora_sampler or "dpm", params.flow_latents or "sample", \
            params.flow_kernel or "fixed"
        for name, value, allowed in (("--tora-sampler", sampler, ("dpm", "ddim")),
                                     ("--flow-latents", latents, ("sample", "mode")),
                                     ("--flow-kernel", kernel, ("fixed", "scaled"))):
            if value not in allowed:
                raise InvalidArgument(f"{name} '{value}' is not one of {', '.join(allowed)}.")
        return cls(sampler, bool(params.dynamic_cfg), latents, kernel)


# ---- the request's tracks -----------------------------------------------------------------------
def request_trajectory(params: TrajectoryParams) -> Trajectory:
    """The trajectory of a request: inline JSON if given, else the file; problems are INVALID_ARGUMENT."""
    source = params.trajectory_json.strip() or params.trajectory.strip()
    if not source:
        raise InvalidArgument("Give the tracks to follow: --trajectory TRACKS.json (a trajectory file from the "
                              "panel, a Nuke Tracker or a Blender object).")
    try:
        return load_trajectory(source)
    except TrajectoryError as exc:
        raise InvalidArgument(f"Trajectory: {exc}") from exc


def check_trajectory_fits(trajectory: Trajectory, first_frame: int, frames: int | None) -> None:
    """Every track has a path (two points or more), is keyed inside the clip and is on screen somewhere."""
    last = None if frames is None else first_frame + frames - 1
    clip = f"{first_frame}–{last}" if last is not None else f"starting at {first_frame}"
    for track in trajectory.tracks:
        if len(track.points) < 2:
            raise InvalidArgument(f"Track '{track.name}' has only one point (frame {track.points[0].frame}): a path "
                                  "needs at least two points; key the track on another frame.")
        for number, point in enumerate(track.points, start=1):
            if point.frame < first_frame or (last is not None and point.frame > last):
                raise InvalidArgument(
                    f"Track '{track.name}' point {number} is on frame {point.frame}, outside the clip {clip}: set "
                    "--first-frame and --frames to cover the track, or retime it.")
        on_screen = [0 <= p.x < trajectory.width and 0 <= p.y < trajectory.height for p in track.points]
        if not any(on_screen):
            first = track.points[0]
            raise InvalidArgument(
                f"Track '{track.name}' lies outside the {trajectory.width}×{trajectory.height} frame at every point "
                f"(point 1 is at x={first.x:g}, y={first.y:g}): check its width/height and origin (Nuke's Tracker "
                "counts y from the bottom: \"origin\": \"bottom-left\").")


def track_positions(trajectory: Trajectory, first_frame: int, frames: int) -> torch.Tensor:
    """(K, frames, 2) top-left pixel positions on every output frame (held beyond the last key)."""
    return torch.from_numpy(interpolate_tracks(trajectory, (first_frame, first_frame + frames - 1)))


def preview_pixels(trajectory: Trajectory) -> np.ndarray:
    """The tracks drawn over a dark frame, (H, W, 3) in [0, 1], for the panel's first preview."""
    from PIL import Image

    png = trajectory_preview_png(trajectory, max_side=PREVIEW_SIDE)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0


def subject_tokens(adapter: FamilyAdapter, prompt: str, trajectory: Trajectory) -> list[list[int]]:
    """Per track, the prompt-token positions of its name (empty when the name is not in the prompt)."""
    tokenizer = adapter.pipe.tokenizer
    ids = tokenizer(prompt, truncation=True).input_ids  # padding goes after the prompt: positions hold
    return [subject_token_indices(list(ids), list(tokenizer(t.name, add_special_tokens=False).input_ids))
            for t in trajectory.tracks]


# ---- generation ---------------------------------------------------------------------------------
def denoise(adapter: FamilyAdapter, r: Resolved, noise: torch.Tensor, generator: torch.Generator, *,
            hooks: tuple = (), callbacks: LoopCallbacks | None = None) -> torch.Tensor:
    """The stock text-to-video loop from `noise` (x_T before the scheduler's init σ)."""
    cond = adapter.encode_prompt(r.prompt, r.negative_prompt, r.guidance)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(r.steps, device=adapter.device)
    loop = DenoiseLoop(scheduler, lambda x, t: adapter.predict(x, t, cond), hooks=hooks,
                       callbacks=callbacks or LoopCallbacks(), step_kwargs=scheduler_step_kwargs(scheduler, generator))
    return loop.run(noise * scheduler.init_noise_sigma)


def stock_noise(adapter: FamilyAdapter, r: Resolved, generator: torch.Generator) -> torch.Tensor:
    return randn_tensor(adapter.latent_shape(1, r.width, r.height, r.frames), generator=generator,
                        device=adapter.device, dtype=adapter.dtype)


def generate_freetraj(adapter: FamilyAdapter, r: Resolved, trajectory: Trajectory, *,
                      callbacks: LoopCallbacks | None = None, config: FreeTrajConfig = FreeTrajConfig(),
                      control: bool = True) -> torch.Tensor:
    """Latents (1, C, F, h, w) on a UNet video model; `control=False` is the stock AnimateDiff run."""
    generator = seeded_generator(r.seed)
    if not control:
        with free_noise(adapter, r.frames) as long:
            noise = free_noise_latents(adapter, r.width, r.height, r.frames, generator) if long else \
                stock_noise(adapter, r, generator)
            return denoise(adapter, r, noise, generator, callbacks=callbacks)
    plan = plan_boxes(track_positions(trajectory, r.first_frame, r.frames), r.width, r.height,
                      [t.size for t in trajectory.tracks])
    shape = adapter.latent_shape(1, r.width, r.height, r.frames)
    # longer than the motion module's clip: one clip in FreeNoise windows, each window's temporal masks from
    # its own frames of the track; x_T's base is FreeNoise's re-used noise, the track patches go over it
    with free_noise(adapter, r.frames) as long:
        base = free_noise_latents(adapter, r.width, r.height, r.frames, generator) if long else None
        noise = trajectory_noise(shape, plan, generator, adapter.device, adapter.dtype, base=base)
        windows = free_noise_spans(r.frames, adapter.native_frames, FREE_NOISE_STRIDE) if long else None
        guide = FreeTrajGuide(plan, (shape[-2], shape[-1]), subject_tokens(adapter, r.prompt, trajectory), config,
                              temporal_windows=windows)
        names = AttentionNames(adapter.self_attention_names(), adapter.temporal_attention_names(),
                               adapter.cross_attention_names())
        hook = FreeTrajAttention(adapter.denoiser, guide, names)
        return denoise(adapter, r, noise, generator, hooks=(hook,), callbacks=callbacks)


def tora_flow_latents(adapter: Any, r: Resolved, trajectory: Trajectory,
                      inference: ToraInference = ToraInference()) -> torch.Tensor:
    """Tracks → flow video over the frames the VAE needs (4k + 1) → (1, F', C, h, w) latents."""
    frames = adapter.decoded_frames(r.frames)
    tracks = track_positions(trajectory, r.first_frame, frames).float()
    spread = TORA_GAUSSIAN if inference.flow_kernel == "fixed" else scaled_gaussian_params(r.width, r.height)
    flow = flow_video(tracks, frames, r.height, r.width, spread=spread)  # (F, 3, H, W) in [−1, 1]
    generator = seeded_generator(r.seed + FLOW_SEED_OFFSET) if inference.flow_latents == "sample" else None
    return adapter.encode((flow.permute(1, 0, 2, 3)[None] + 1) / 2, generator).to(adapter.dtype)


def denoise_cogvideox(adapter: Any, r: Resolved, noise: torch.Tensor, generator: torch.Generator,
                      inference: ToraInference, callbacks: LoopCallbacks | None = None,
                      features: list[torch.Tensor] | None = None) -> torch.Tensor:
    """`CogVideoXPipeline`'s loop with the sampler and guidance of `inference` (the stock call with
    `use_dynamic_cfg` and the DPM scheduler, for the defaults), Tora's motion `features` fused when given.

    A clip longer than the model's (49 frames: 13 latent frames) is still one clip: each step predicts
    windows of the native latent length every half window, each with its frames' motion features,
    pyramid-averaged (diffusion/temporal_windows.py)."""
    cond = adapter.encode_prompt(r.prompt, r.negative_prompt, r.guidance)
    scheduler = adapter.sampling_scheduler(inference.sampler)
    scheduler.set_timesteps(r.steps, device=adapter.device)
    window = adapter.latent_frames(adapter.native_frames)
    spans = window_spans(noise.shape[1], window, max(1, window // 2))

    def window_predict(x: torch.Tensor, t: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
        guided = cond if not inference.dynamic_cfg else dataclasses.replace(
            cond, guidance=dynamic_guidance(r.guidance, t, r.steps))
        if features is None:
            return adapter.predict(x, t, guided)
        with tora_installed(adapter.denoiser, adapter.tora, [f[span[0]:span[1]] for f in features]):
            return adapter.predict(x, t, guided)

    loop = DenoiseLoop(scheduler, lambda x, t: predict_in_windows(x, t, window_predict, spans, frame_dim=1),
                       callbacks=callbacks or LoopCallbacks(), step_kwargs=dict(eta=0.0, generator=generator))
    return loop.run(noise * scheduler.init_noise_sigma)


def generate_tora(adapter: Any, r: Resolved, trajectory: Trajectory, *, callbacks: LoopCallbacks | None = None,
                  control: bool = True, inference: ToraInference = ToraInference()) -> torch.Tensor:
    """Latents (1, F', C, h, w) on a CogVideoX model with Tora's motion guidance installed."""
    generator = seeded_generator(r.seed)
    noise = stock_noise(adapter, r, generator)
    if not control:
        return denoise_cogvideox(adapter, r, noise, generator, inference, callbacks)
    if adapter.tora is None:
        raise FailedPrecondition(f"Model '{adapter.entry.id}' has no Tora weights: put Tora's diffusers transformer "
                                 "(Tora_T2V_diffusers) or a tora/ folder of its weights beside the model.")
    features = motion_features(adapter.tora, tora_flow_latents(adapter, r, trajectory, inference))
    return denoise_cogvideox(adapter, r, noise, generator, inference, callbacks, features)


def generate_trajectory_video(adapter: FamilyAdapter, r: Resolved, trajectory: Trajectory, *,
                              callbacks: LoopCallbacks | None = None, control: bool = True,
                              inference: ToraInference = ToraInference()) -> torch.Tensor:
    """(3, F, H, W) frames in [0, 1] following `trajectory` (already in output pixels)."""
    if adapter.family == "cogvideox":
        latents = generate_tora(adapter, r, trajectory, callbacks=callbacks, control=control, inference=inference)
        return adapter.decode(latents)[0, :, :r.frames]
    latents = generate_freetraj(adapter, r, trajectory, callbacks=callbacks, control=control)
    return adapter.decode(latents)[0]


def check_no_tora_options(inference: ToraInference, model_id: str) -> None:
    """The Tora sampling options mean nothing to the training-free path: refused, not ignored."""
    default = ToraInference()
    changed = [flag for flag, field in (("--tora-sampler", "sampler"), ("--no-dynamic-cfg", "dynamic_cfg"),
                                        ("--flow-latents", "flow_latents"), ("--flow-kernel", "flow_kernel"))
               if getattr(inference, field) != getattr(default, field)]
    if changed:
        raise InvalidArgument(f"{', '.join(changed)} {'sets' if len(changed) == 1 else 'set'} how Tora samples on "
                              f"CogVideoX models; '{model_id}' follows the tracks training-free (FreeTraj) and would "
                              "ignore it: drop it, or pick a CogVideoX model with --model.")


def check_geometry(adapter: FamilyAdapter, r: Resolved) -> None:
    if adapter.family == "cogvideox":
        step = adapter.vae_scale_factor * int(adapter.denoiser.config.patch_size)
        if r.width % step or r.height % step:
            w, h = max(step, r.width // step * step), max(step, r.height // step * step)
            raise InvalidArgument(f"CogVideoX needs width and height in multiples of {step} px "
                                  f"(got {r.width}×{r.height}); try {w}×{h}.")
        return
    limit = getattr(adapter, "max_frames", None)
    if limit is not None and r.frames > limit and not needs_free_noise(adapter, r.frames):
        raise InvalidArgument(f"'{adapter.entry.id}' makes at most {limit} frames in one clip (asked {r.frames}); "
                              f"lower --frames.")


# ---- the pipeline -------------------------------------------------------------------------------
class TrajectoryPipeline(Pipeline):
    name: ClassVar[str] = "trajectory"
    description: ClassVar[str] = ("Video whose subject follows tracked paths (--trajectory TRACKS.json): Tora on "
                                  "CogVideoX, training-free FreeTraj on AnimateDiff.")
    params_type: ClassVar[type] = TrajectoryParams
    families: ClassVar[tuple[str, ...]] = ("animatediff", "cogvideox")

    def validate(self, job: JobSpec, registry) -> None:
        self.check_family(job, registry)
        trajectory = request_trajectory(job.params)
        ToraInference.from_params(job.params)  # refuses unknown sampler/latent/kernel names at Submit
        c = job.common
        check_trajectory_fits(trajectory, c.first_frame if c.first_frame is not None else 1001, c.frames)
        model_id = self.model_id(job, registry)
        entry = registry.entry(model_id)
        if entry.family == "cogvideox" and entry.source != "builtin" and not tora_weight_files(entry.path):
            raise FailedPrecondition(f"Model '{entry.id}' has no Tora weights: put Tora's diffusers transformer "
                                     "(Tora_T2V_diffusers) or a tora/ folder of its weights beside the model.")
        if entry.family != "cogvideox":
            check_no_tora_options(ToraInference.from_params(job.params), entry.id)
        # The clip's default length and the frame grid need the model; tiny and loaded ones are checked now.
        if registry.is_loaded(model_id) or entry.source == "builtin":
            adapter = registry.get(model_id)
            r = self.resolve(job, adapter)
            check_trajectory_fits(trajectory, r.first_frame, r.frames)
            check_geometry(adapter, r)

    def run(self, ctx: RunContext) -> list[str]:
        adapter = ctx.model(self.model_id(ctx.job, ctx.registry))  # with the job's LoRAs, off after run
        r = self.resolve(ctx.job, adapter)
        trajectory = request_trajectory(ctx.job.params)
        check_trajectory_fits(trajectory, r.first_frame, r.frames)
        check_geometry(adapter, r)
        trajectory = trajectory.to_top_left().scaled_to(r.width, r.height)
        ctx.preview(0, preview_pixels(trajectory))
        method = "Tora" if adapter.family == "cogvideox" else "FreeTraj (training-free)"
        ctx.log(f"{len(trajectory.tracks)} track(s), {method} on {adapter.entry.id}")
        sink = ctx.frame_sink(SequencePattern.parse(ctx.job.common.out), r)
        progress = StepProgress(ctx, [0.85, 0.15])
        callbacks = LoopCallbacks(progress.callback(0, "denoise"), ctx.check_cancel, ctx.latent_preview(adapter))
        video = generate_trajectory_video(adapter, r, trajectory, callbacks=callbacks,
                                          inference=ToraInference.from_params(ctx.job.params))
        for i in range(r.frames):
            ctx.check_cancel()
            frame = video[:, i]
            ctx.preview(i, frame.permute(1, 2, 0).float().cpu().numpy())
            sink.write(i, frame)
            ctx.progress("write frames", i + 1, r.frames, 0.85 + 0.15 * (i + 1) / r.frames)
        return list(sink.written)
