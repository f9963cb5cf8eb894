"""Fixed-seed experiments that show each method works: the pipelines' own functions, no gRPC, no files.

Each experiment runs one method and its baseline on the same seeds and measures both with
`metrics.py` (issue 9 §3):

- repetition: text → 4× the native size directly (`generate_images` at the target) versus the
  self-cascade (`generate_images` at native, then `run_cascade`) at the defaults, with dilation off,
  scale fusion off, both off, and "gentle"; objects counted against the prompt;
- seam: `generate_panorama` as a 360° ring versus a plane of the same size and versus the peer,
  MultiDiffusion's `circular_padding` (`peers.py`, same window, steps and seed); seam ratio of each;
- trajectory: `generate_trajectory_video` with the training-free control on and off, follow error;
- consistency: story keyframes (`generate_keyframe`) with GoldenMem memory versus without.

Prompts come from the toy world's captions (`toyworld.world.caption`), so a model trained on it
knows every word and the expected object count is known. The results keep their pictures for the
side-by-side figures; `as_dict()` gives the numbers only.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from cinegen.common.trajectory_io import Trajectory, parse_trajectory

from ..diffusion.cascade import plan_stages
from ..models.family import FamilyAdapter
from ..pipelines.base import Resolved
from ..pipelines.image import generate_images
from ..pipelines.panorama import PanoramaSettings, decode_panorama_frames, generate_panorama
from ..pipelines.story import MemoryKeyframe, generate_keyframe
from ..pipelines.trajectory import generate_trajectory_video, track_positions
from ..pipelines.upscale_unet import (CascadeSettings, decode_latents, default_vae_tile, pixel_multiple, reference_size,
                                      run_cascade)
from ..toyworld.world import COLOURS, Scene, caption, scene_for
from .metrics import SalientParams, count_objects, follow_error, keyframe_consistency, seam_report
from .peers import multidiffusion_ring, multidiffusion_window

EVAL_WORLD_SEED = 9001  # toy-world scenes whose captions are the prompts (apart from any training seed)
# the cascade at the handbook's defaults; its ablation (restrained dilation off, scale fusion off, both
# off: what is left is the cosine-mixed re-noising alone); and "gentle": less re-noising and a longer pull
# towards the upsampled picture (`cinegen upscale --strength 0.4 --cosine-scale 3`)
CASCADE_VARIANTS = ("cascade", "cascade-no-dilation", "cascade-no-fusion", "cascade-neither", "cascade-gentle")
REPETITION_METHODS = ("native", "direct") + CASCADE_VARIANTS
GENTLE_STRENGTH, GENTLE_COSINE_SCALE = 0.4, 3.0
MIN_OBJECT_FRACTION = 0.005  # of the native picture's area: smaller blobs are speckle, not objects
FIRST_FRAME = 1001
Log = Callable[[str], None]


@dataclass(frozen=True)
class RunSettings:
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    steps: int = 20
    guidance: float = 7.5
    scale: int = 4  # repetition: target side over the native side; seam: panorama width over native
    keyframes: int = 4  # consistency: keyframes per story
    frames: int = 8  # trajectory: clip length
    tora_seeds: tuple[int, ...] = tuple(range(8))  # Tora on a trained CogVideoX: at least 8 seeds
    # consistency: the character's prompt; "" (the unconditional mode the caption dropout trained) leaves colour,
    # shape and count open for memory to keep; toy-image-16 draws nothing for "a disc"
    character: str = ""


def resolved(adapter: FamilyAdapter, prompt: str, seed: int, s: RunSettings, *, width: int | None = None,
             height: int | None = None, frames: int = 1) -> Resolved:
    w, h = adapter.native_size
    return Resolved(prompt, "", adapter.entry.id, seed, s.steps, s.guidance, width or w, height or h, frames,
                    8.0, FIRST_FRAME)


def salient_params(adapter: FamilyAdapter, colours: tuple[str, ...] = tuple(COLOURS)) -> SalientParams:
    """Objects are toy-world palette colours (`colours`, by default any): a small model's sky streaks are
    salient against the background but are no palette colour, so they do not count as objects."""
    w, h = adapter.native_size
    return SalientParams(min_area=max(4, round(MIN_OBJECT_FRACTION * w * h)), colours=colours)


def to_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] → (H, W, 3) float32 numpy."""
    return image.detach().float().cpu().permute(1, 2, 0).numpy()


def eval_prompts(count: int) -> list[tuple[str, int]]:
    """(caption, number of objects) of the evaluation scenes."""
    return [(caption(scene), len(scene.objects)) for scene in eval_scenes(count)]


def eval_scenes(count: int) -> list[Scene]:
    return [scene_for(EVAL_WORLD_SEED, i) for i in range(count)]


def scene_colours(scene: Scene) -> tuple[str, ...]:
    return tuple(dict.fromkeys(o.colour for o in scene.objects))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


# ---- repetition: direct at 4× versus the cascade -------------------------------------------------
@dataclass
class RepetitionCase:
    prompt: str
    seed: int
    expected: int
    counts: dict[str, int]  # native, direct, and each cascade variant (REPETITION_METHODS)
    images: dict[str, np.ndarray] = field(repr=False)

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "seed": self.seed, "expected": self.expected, **self.counts}


@dataclass
class RepetitionResult:
    native: tuple[int, int]
    target: tuple[int, int]
    stages: list[tuple[int, int]]
    cases: list[RepetitionCase]

    def mean_abs_error(self, method: str) -> float:
        return _mean([abs(c.counts[method] - c.expected) for c in self.cases])

    def exact_share(self, method: str) -> float:
        return _mean([float(c.counts[method] == c.expected) for c in self.cases])

    def as_dict(self) -> dict:
        methods = REPETITION_METHODS
        return {"native": list(self.native), "target": list(self.target), "stages": [list(s) for s in self.stages],
                "mean_count": {m: round(_mean([c.counts[m] for c in self.cases]), 3) for m in methods},
                "mean_abs_count_error": {m: round(self.mean_abs_error(m), 3) for m in methods},
                "exact_count_share": {m: round(self.exact_share(m), 3) for m in methods},
                "cases": [c.as_dict() for c in self.cases]}


def cascade_variants(settings: CascadeSettings) -> dict[str, CascadeSettings]:
    """The cascade at `settings` and its ablations, by CASCADE_VARIANTS name (dilate_tau 0: no step dilated)."""
    return {"cascade": settings,
            "cascade-no-dilation": replace(settings, dilate_tau=0),
            "cascade-no-fusion": replace(settings, scale_fusion=False),
            "cascade-neither": replace(settings, dilate_tau=0, scale_fusion=False),
            "cascade-gentle": replace(settings, strength=GENTLE_STRENGTH, cosine_scale=GENTLE_COSINE_SCALE)}


def repetition_experiment(adapter: FamilyAdapter, s: RunSettings, log: Log = lambda m: None) -> RepetitionResult:
    native = adapter.native_size
    target = (native[0] * s.scale, native[1] * s.scale)
    stages = plan_stages(native, target, multiple=pixel_multiple(adapter))
    reference = reference_size(adapter, target)
    settings = CascadeSettings(steps=s.steps, vae_tile=default_vae_tile(adapter))
    variants = cascade_variants(settings)
    cases = []
    for scene, seed in zip(eval_scenes(len(s.seeds)), s.seeds):
        prompt, expected = caption(scene), len(scene.objects)
        params = salient_params(adapter, scene_colours(scene))  # the objects the prompt asks for
        r = resolved(adapter, prompt, seed, s, width=stages[0][0], height=stages[0][1])
        x0 = generate_images(adapter, r)
        cond = adapter.encode_prompt(prompt, "", s.guidance)
        latents = {"native": x0, "direct": generate_images(adapter, replace(r, width=target[0], height=target[1]))}
        for name, variant in variants.items():
            latents[name] = run_cascade(adapter, cond, x0, stages[1:], reference, variant, seed)
        images = {name: to_hwc(decode_latents(adapter, z, settings)[0]) for name, z in latents.items()}
        counts = {name: count_objects(image, params) for name, image in images.items()}
        cases.append(RepetitionCase(prompt, seed, expected, counts, images))
        log(f"repetition seed {seed} '{prompt}': expected {expected}, {counts}")
    return RepetitionResult(native, target, stages, cases)


# ---- seam: ring versus plane panoramas and MultiDiffusion's circular padding --------------------
SEAM_METHODS = ("plane", "ring", "multidiffusion")
@dataclass
class SeamCase:
    prompt: str
    seed: int
    ratios: dict[str, float]  # SEAM_METHODS
    images: dict[str, np.ndarray] = field(repr=False)

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "seed": self.seed, **{k: round(v, 3) for k, v in self.ratios.items()}}


@dataclass
class SeamResult:
    size: tuple[int, int]

    window: tuple[int, int]  # MultiDiffusion's (window, stride) in latent cells; the ring's window is the same
    cases: list[SeamCase]

    def median_ratio(self, method: str) -> float:
        return float(np.median([c.ratios[method] for c in self.cases]))

    def below_share(self, method: str, other: str) -> float:
        return _mean([float(c.ratios[method] < c.ratios[other]) for c in self.cases])

    def as_dict(self) -> dict:
        return {"size": list(self.size), "multidiffusion_window_stride": list(self.window),
                "median_seam_ratio": {p: round(self.median_ratio(p), 3) for p in SEAM_METHODS},
                "ring_below_plane_share": round(self.below_share("ring", "plane"), 3),
                "ring_below_multidiffusion_share": round(self.below_share("ring", "multidiffusion"), 3),
                "cases": [c.as_dict() for c in self.cases]}


def seam_experiment(adapter: FamilyAdapter, s: RunSettings, log: Log = lambda m: None) -> SeamResult:
    native = adapter.native_size
    size = (native[0] * s.scale, native[1])
    cases = []
    for (prompt, _), seed in zip(eval_prompts(len(s.seeds)), s.seeds):
        r = resolved(adapter, prompt, seed, s, width=size[0], height=size[1])
        images, ratios = {}, {}
        for projection in ("plane", "ring"):
            latent = generate_panorama(adapter, r, PanoramaSettings(projection=projection))
            frame = next(iter(decode_panorama_frames(adapter, latent, wrap=projection == "ring")))
            images[projection] = to_hwc(frame)
            ratios[projection] = seam_report(images[projection]).ratio
        images["multidiffusion"] = multidiffusion_ring(adapter, r)
        ratios["multidiffusion"] = seam_report(images["multidiffusion"]).ratio
        cases.append(SeamCase(prompt, seed, ratios, images))
        log(f"seam seed {seed} '{prompt}': {ratios}")
    return SeamResult(size, multidiffusion_window(adapter), cases)


# ---- trajectory: training-free control on versus off ------------------------------------------
def diagonal_track(width: int, height: int, frames: int, name: str = "disc") -> Trajectory:
    """An object a quarter of the frame wide crossing it from top-left to bottom-right."""
    mx, my = width / 4, height / 4
    return parse_trajectory({"width": width, "height": height, "tracks": [{
        "name": name, "size": min(width, height) / 4,
        "points": [{"frame": FIRST_FRAME, "x": mx, "y": my},
                   {"frame": FIRST_FRAME + frames - 1, "x": width - mx, "y": height - my}]}]})


@dataclass
class TrajectoryCase:
    prompt: str
    seed: int
    errors: dict[str, float]  # off, on (mean px)
    videos: dict[str, list[np.ndarray]] = field(repr=False)

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "seed": self.seed, **{k: round(v, 2) for k, v in self.errors.items()}}


@dataclass
class TrajectoryResult:
    size: tuple[int, int]
    frames: int
    requested: np.ndarray
    cases: list[TrajectoryCase]

    def mean_error(self, control: str) -> float:
        return _mean([c.errors[control] for c in self.cases])

    def as_dict(self) -> dict:
        return {"size": list(self.size), "frames": self.frames,
                "mean_error_px": {k: round(self.mean_error(k), 2) for k in self.cases[0].errors},
                "cases": [c.as_dict() for c in self.cases]}


def trajectory_experiment(adapter: FamilyAdapter, s: RunSettings, log: Log = lambda m: None) -> TrajectoryResult:
    width, height = adapter.native_size
    trajectory = diagonal_track(width, height, s.frames)
    requested = track_positions(trajectory, FIRST_FRAME, s.frames)[0].numpy()
    params = salient_params(adapter, ("red",))
    cases = []
    for seed in s.seeds:
        prompt = "a red disc"  # the track's name is a word of the prompt: FreeTraj steers its tokens
        r = resolved(adapter, prompt, seed, s, frames=s.frames)
        errors, videos = {}, {}
        for label, control in (("off", False), ("on", True)):
            video = generate_trajectory_video(adapter, r, trajectory, control=control)
            videos[label] = [to_hwc(video[:, f]) for f in range(video.shape[1])]
            errors[label] = follow_error(videos[label], requested, params).mean_px
        cases.append(TrajectoryCase(prompt, seed, errors, videos))
        log(f"trajectory seed {seed}: error {errors} px")
    return TrajectoryResult((width, height), s.frames, requested, cases)


def tora_experiment(adapter: FamilyAdapter, s: RunSettings, log: Log = lambda m: None) -> TrajectoryResult:
    """Tora on a CogVideoX model (its trained extractor and fusers on versus off, the same DiT, seeds and
    noise): the trajectory experiment at the model's own clip length, over `s.tora_seeds`. Beside the red
    disc's error, the same videos' error for the largest object of any palette colour (`off_any_colour`,
    `on_any_colour`): it still measures placement when a small model paints the disc in the wrong colour."""
    result = trajectory_experiment(adapter, replace(s, seeds=s.tora_seeds, frames=adapter.native_frames),
                                   lambda message: log(message.replace("trajectory", "tora", 1)))
    any_colour = salient_params(adapter)
    for case in result.cases:
        for label in ("off", "on"):
            case.errors[f"{label}_any_colour"] = follow_error(case.videos[label], result.requested, any_colour).mean_px
    return result


# ---- consistency: story keyframes with and without memory --------------------------------------
@dataclass
class ConsistencyCase:
    seed: int
    scores: dict[str, dict]  # off / on -> ConsistencyReport.as_dict()
    keyframes: dict[str, list[np.ndarray]] = field(repr=False)

    def as_dict(self) -> dict:
        return {"seed": self.seed, **self.scores}


@dataclass
class ConsistencyResult:
    prompt: str
    keyframes: int
    cases: list[ConsistencyCase]

    def mean(self, memory: str, what: str) -> float:
        return _mean([c.scores[memory][what] for c in self.cases])

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "keyframes_per_story": self.keyframes,
                "mean_colour_consistency": {m: round(self.mean(m, "colour"), 3) for m in ("off", "on")},
                "mean_shape_consistency": {m: round(self.mean(m, "shape"), 3) for m in ("off", "on")},
                "keyframes_with_an_object": {m: sum(c.scores[m]["with_object"] for c in self.cases)
                                             for m in ("off", "on")},
                "keyframes_total": self.keyframes * len(self.cases),
                "cases": [c.as_dict() for c in self.cases]}


def story_keyframes(adapter: FamilyAdapter, r: Resolved, count: int, memory_on: bool) -> list[torch.Tensor]:
    """Keyframes of one story as the story pipeline makes them: shot k has seed r.seed + k and (with
    memory) attends to every earlier keyframe through GoldenMem."""
    memory: list[MemoryKeyframe] = []
    latents = []
    for k in range(count):
        latent = generate_keyframe(adapter, replace(r, seed=r.seed + k), memory if memory_on else [])
        memory.append(MemoryKeyframe(latent, r.prompt))
        latents.append(latent)
    return latents


def consistency_experiment(adapter: FamilyAdapter, s: RunSettings, log: Log = lambda m: None) -> ConsistencyResult:
    params = salient_params(adapter)
    cases = []
    for seed in s.seeds:
        # stories apart by more than their length, so no two share a keyframe seed
        r = resolved(adapter, s.character, seed * 100, s)
        scores, keyframes = {}, {}
        for label, memory_on in (("off", False), ("on", True)):
            latents = story_keyframes(adapter, r, s.keyframes, memory_on)
            keyframes[label] = [to_hwc(adapter.decode(z)[0]) for z in latents]
            scores[label] = keyframe_consistency(keyframes[label], params).as_dict()
        cases.append(ConsistencyCase(seed * 100, scores, keyframes))
        log(f"consistency story seed {seed * 100}: {scores}")
    return ConsistencyResult(s.character, s.keyframes, cases)


__all__ = ["ConsistencyResult", "RepetitionResult", "RunSettings", "SeamResult", "TrajectoryResult",
           "consistency_experiment", "diagonal_track", "eval_prompts", "eval_scenes", "repetition_experiment",
           "seam_experiment", "story_keyframes", "tora_experiment", "trajectory_experiment"]
