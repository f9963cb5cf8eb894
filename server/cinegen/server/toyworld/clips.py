"""Toy-world clips: the scenes of `world.py` with their objects moving along straight or curved paths.

A clip is one scene (background, colours, shapes, sizes) whose object centres follow a path per
object: a straight segment from a start to an end point, or a quadratic Bézier through a control
point pushed sideways off that segment (a curve). Positions are in fractions of the frame, eased
linearly in time (constant speed along the parameter), and every path stays inside the frame with a
margin of the object's radius, so an object never leaves the picture. `clip_for(seed, index)` is a
pure function of its arguments, like `world.scene_for`.

The caption is the scene's caption (the motion is not named): the toy-video model learns motion in
its temporal layers only, on top of the frozen toy-image model and its text encoder.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .world import Scene, WorldParams, caption, random_scene, render


@dataclass(frozen=True)
class ClipParams:
    frames: int = 8
    static_probability: float = 0.1  # some clips hold still, so stillness stays a possible answer
    curve_probability: float = 0.3
    min_travel: float = 0.15  # fraction of the side between start and end of a moving object
    curve_bend: tuple[float, float] = (0.1, 0.25)  # sideways offset of the Bézier control point
    world: WorldParams = WorldParams()


@dataclass(frozen=True)
class Clip:
    scene: Scene  # the first frame
    paths: np.ndarray  # (objects, frames, 2) centre (x, y) in fractions of the frame, top-left origin

    @property
    def frames(self) -> int:
        return int(self.paths.shape[1])

    def scene_at(self, frame: int) -> Scene:
        objects = tuple(replace(o, cx=float(self.paths[k, frame, 0]), cy=float(self.paths[k, frame, 1]))
                        for k, o in enumerate(self.scene.objects))
        return replace(self.scene, objects=objects)


def _path(rng: np.random.Generator, x_range: tuple[float, float], y_range: tuple[float, float], frames: int,
          params: ClipParams) -> np.ndarray:
    lo, hi = np.array([x_range[0], y_range[0]]), np.array([x_range[1], y_range[1]])
    start = rng.uniform(lo, hi)
    if rng.random() < params.static_probability:
        return np.repeat(start[None], frames, axis=0)
    for _ in range(100):  # draw until the object travels far enough (the region allows it)
        end = rng.uniform(lo, hi)
        if np.linalg.norm(end - start) >= params.min_travel:
            break
    t = np.linspace(0.0, 1.0, frames)[:, None]
    if rng.random() >= params.curve_probability:
        return (1 - t) * start + t * end
    direction = end - start
    normal = np.array([-direction[1], direction[0]]) / max(float(np.linalg.norm(direction)), 1e-9)
    control = (start + end) / 2 + normal * rng.uniform(*params.curve_bend) * rng.choice([-1.0, 1.0])
    control = np.clip(control, lo, hi)  # a control point inside the box keeps the whole curve inside it
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t ** 2 * end


def random_clip(rng: np.random.Generator, params: ClipParams = ClipParams()) -> Clip:
    scene = random_scene(rng, params.world)
    paths = []
    for k, obj in enumerate(scene.objects):
        margin = obj.radius + 0.02
        if len(scene.objects) == 1:
            x_range = (margin, 1 - margin)
        else:  # two objects keep to their halves, so the caption's left-to-right order holds on every frame
            x_range = (margin, 0.5 - margin) if k == 0 else (0.5 + margin, 1 - margin)
        paths.append(_path(rng, x_range, (margin, 1 - margin), params.frames, params))
    return Clip(scene, np.stack(paths).astype(np.float64))


def clip_for(seed: int, index: int, params: ClipParams = ClipParams()) -> Clip:
    """The `index`-th clip of the data set `seed`: independent of every other index."""
    return random_clip(np.random.default_rng([seed, index, 7]), params)


def render_clip(clip: Clip, size: int) -> np.ndarray:
    """Float32 frames (F, size, size, 3) in [0, 1]."""
    return np.stack([render(clip.scene_at(f), size) for f in range(clip.frames)])


def clip_batch(seed: int, start: int, count: int, size: int,
               params: ClipParams = ClipParams()) -> tuple[np.ndarray, list[str]]:
    """Clips (count, F, 3, size, size) in [0, 1] and their captions, for indices start .. start+count-1."""
    clips = [clip_for(seed, i, params) for i in range(start, start + count)]
    return (np.stack([render_clip(c, size).transpose(0, 3, 1, 2) for c in clips]),
            [caption(c.scene) for c in clips])
