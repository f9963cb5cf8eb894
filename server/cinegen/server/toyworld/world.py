"""Procedural toy scenes: one or two coloured discs or squares on a sky/ground gradient, with captions.

Everything is drawn analytically (pixel coverage from the signed distance to each shape's edge), so a
scene renders at any size with anti-aliased edges and the same layout; geometry is kept in fractions
of the image side. `scene_for(seed, index)` is a pure function of its arguments: the data set is
deterministic and needs no files.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Saturated colours that stay distinct from the pale sky and the green ground.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "yellow": (0.96, 0.82, 0.10),
    "blue": (0.12, 0.22, 0.88),
    "black": (0.06, 0.06, 0.07),
}
SHAPES: tuple[str, ...] = ("disc", "square")


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    cx: float  # centre, fraction of width
    cy: float  # centre, fraction of height
    radius: float  # disc radius or half the square's side, fraction of the image side


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # left to right, the order the caption names them
    horizon: float  # fraction of height where sky meets ground
    sky_top: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    ground_near: tuple[float, float, float]
    ground_far: tuple[float, float, float]


@dataclass(frozen=True)
class WorldParams:
    two_object_probability: float = 0.35
    radius_range: tuple[float, float] = (0.09, 0.15)
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES


def caption(scene: Scene) -> str:
    """"a red disc", "a blue square and a yellow disc" (objects named left to right)."""
    return " and ".join(f"a {o.colour} {o.shape}" for o in scene.objects)


def _jitter(rng: np.random.Generator, base: tuple[float, float, float], amount: float) -> tuple[float, float, float]:
    return tuple(float(np.clip(c + rng.uniform(-amount, amount), 0, 1)) for c in base)  # type: ignore[return-value]


def random_scene(rng: np.random.Generator, params: WorldParams = WorldParams()) -> Scene:
    count = 2 if rng.random() < params.two_object_probability else 1
    # two objects live in separate halves, so they never overlap and "left to right" is well defined
    x_ranges = [(0.2, 0.8)] if count == 1 else [(0.18, 0.4), (0.6, 0.82)]
    objects = []
    for lo, hi in x_ranges:
        objects.append(SceneObject(
            colour=str(rng.choice(params.colours)), shape=str(rng.choice(params.shapes)),
            cx=float(rng.uniform(lo, hi)), cy=float(rng.uniform(0.22, 0.78)),
            radius=float(rng.uniform(*params.radius_range))))
    return Scene(
        objects=tuple(objects), horizon=float(rng.uniform(0.55, 0.72)),
        sky_top=_jitter(rng, (0.35, 0.55, 0.90), 0.06), sky_horizon=_jitter(rng, (0.78, 0.88, 0.98), 0.04),
        ground_far=_jitter(rng, (0.45, 0.68, 0.30), 0.05), ground_near=_jitter(rng, (0.20, 0.42, 0.14), 0.05))


def scene_for(seed: int, index: int, params: WorldParams = WorldParams()) -> Scene:
    """The `index`-th scene of the data set `seed`: independent of every other index."""
    return random_scene(np.random.default_rng([seed, index]), params)


def render(scene: Scene, width: int, height: int | None = None) -> np.ndarray:
    """Float32 RGB image (height, width, 3) in [0, 1]."""
    height = height or width
    side = min(width, height)
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width
    image = np.empty((height, width, 3), np.float32)
    h = scene.horizon
    sky_t = np.clip(ys / h, 0, 1)[:, None]
    ground_t = np.clip((ys - h) / (1 - h), 0, 1)[:, None]
    sky = (1 - sky_t) * np.array(scene.sky_top) + sky_t * np.array(scene.sky_horizon)
    ground = (1 - ground_t) * np.array(scene.ground_far) + ground_t * np.array(scene.ground_near)
    rows = np.where((ys < h)[:, None], sky, ground).astype(np.float32)
    image[:] = rows[:, None, :]
    px_x = (xs - 0.0)[None, :] * width  # pixel-centre coordinates
    px_y = ys[:, None] * height
    for obj in scene.objects:
        cover = shape_coverage(obj, px_x, px_y, width, height, side)
        image = image * (1 - cover[..., None]) + cover[..., None] * np.array(COLOURS[obj.colour], np.float32)
    return image.astype(np.float32)


def shape_coverage(obj: SceneObject, px_x: np.ndarray, px_y: np.ndarray, width: int, height: int,
                   side: int) -> np.ndarray:
    """Fraction of each pixel inside the shape (a one-pixel linear ramp across the edge)."""
    dx = px_x - obj.cx * width
    dy = px_y - obj.cy * height
    r = obj.radius * side
    if obj.shape == "disc":
        return np.clip(r - np.sqrt(dx * dx + dy * dy) + 0.5, 0, 1)
    return np.clip(r - np.abs(dx) + 0.5, 0, 1) * np.clip(r - np.abs(dy) + 0.5, 0, 1)


def sample(seed: int, index: int, size: int, params: WorldParams = WorldParams()) -> tuple[np.ndarray, str]:
    scene = scene_for(seed, index, params)
    return render(scene, size), caption(scene)


def batch(seed: int, start: int, count: int, size: int,
          params: WorldParams = WorldParams()) -> tuple[np.ndarray, list[str]]:
    """Images (count, 3, size, size) in [0, 1] and their captions, for indices start .. start+count-1."""
    images, captions = [], []
    for i in range(start, start + count):
        img, cap = sample(seed, i, size, params)
        images.append(img.transpose(2, 0, 1))
        captions.append(cap)
    return np.stack(images), captions
