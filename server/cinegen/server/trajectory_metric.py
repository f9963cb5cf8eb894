"""Trajectory error: where did the generated object go, and how far is that from the request?

ALGORITHMS.md §3 ("Metric"): the mean distance in pixels between the requested track and the tracked
position of the generated object. With no tracker model at hand, the object is located per frame as
the centroid of the region that differs most from a reference:

    d(p) = ‖ frame(p) − reference(p) ‖₂ over RGB,
    object = { p : d(p) ≥ threshold · max d },   position = mean of its pixel centres (x + ½, y + ½),

where the reference is the frame's median colour (`reference="frame"`, for an object on a plain
background) or the per-pixel median over all frames (`reference="temporal"`, for a moving object
on a static background). Pixel (i, j) covers [i, i + 1) × [j, j + 1), top-left origin — the
convention of trajectory_io and flowmap — so a disc drawn about (cx, cy) is found at (cx, cy).

numpy only: usable by tests, benchmarks and pipelines alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class LocateParams:
    reference: Literal["frame", "temporal"] = "frame"
    threshold: float = 0.5  # fraction of the frame's largest difference that counts as the object


@dataclass(frozen=True)
class TrajectoryErrorReport:
    mean_px: float
    max_px: float
    per_frame_px: tuple[float, ...]

    def as_dict(self) -> dict:
        return {"mean_px": round(self.mean_px, 3), "max_px": round(self.max_px, 3),
                "per_frame_px": [round(e, 3) for e in self.per_frame_px]}


def _as_fhwc(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, C) float64 from (F, H, W, C), (F, C, H, W) (C ≤ 4 channels) or (F, H, W)."""
    a = np.asarray(frames, dtype=np.float64)
    if a.ndim == 3:
        return a[..., None]
    if a.ndim != 4:
        raise ValueError(f"frames must be (F, H, W, C) or (F, C, H, W), got shape {a.shape}")
    if a.shape[1] <= 4 and a.shape[-1] > 4:
        a = a.transpose(0, 2, 3, 1)
    return a[..., :3]


def difference_maps(frames: np.ndarray, params: LocateParams = LocateParams()) -> np.ndarray:
    """(F, H, W) distance of every pixel from the reference colour(s)."""
    a = _as_fhwc(frames)
    if params.reference == "temporal":
        reference = np.median(a, axis=0, keepdims=True)
    elif params.reference == "frame":
        reference = np.median(a.reshape(a.shape[0], -1, a.shape[-1]), axis=1)[:, None, None, :]
    else:
        raise ValueError(f"reference must be 'frame' or 'temporal', not {params.reference!r}")
    return np.sqrt(((a - reference) ** 2).sum(-1))


def locate_object(frames: np.ndarray, params: LocateParams = LocateParams()) -> np.ndarray:
    """(F, 2) object centre (x, y) in top-left pixels per frame; NaN where a frame equals its reference."""
    d = difference_maps(frames, params)
    f, h, w = d.shape
    ys, xs = np.mgrid[0:h, 0:w]
    out = np.full((f, 2), np.nan)
    for i in range(f):
        peak = d[i].max()
        if peak <= 0:
            continue
        region = d[i] >= params.threshold * peak
        out[i] = (xs[region].mean() + 0.5, ys[region].mean() + 0.5)
    return out


def trajectory_error(located: np.ndarray, requested: np.ndarray,
                     frame_size: tuple[int, int] | None = None) -> TrajectoryErrorReport:
    """Distances between located (F, 2) and requested (F, 2) positions. A frame where nothing was
    found counts as the frame diagonal (`frame_size` = (width, height)) away: a miss is the worst
    error, not a skipped frame; without a frame size it stays NaN."""
    located, requested = np.asarray(located, np.float64), np.asarray(requested, np.float64)
    if located.shape != requested.shape:
        raise ValueError(f"located {located.shape} and requested {requested.shape} positions differ in shape")
    dist = np.linalg.norm(located - requested, axis=-1)
    if frame_size is not None:
        dist = np.where(np.isnan(dist), float(np.hypot(*frame_size)), dist)
    return TrajectoryErrorReport(float(dist.mean()), float(dist.max()), tuple(float(e) for e in dist))


def measure_trajectory_error(frames: np.ndarray, requested: np.ndarray,
                             params: LocateParams = LocateParams()) -> TrajectoryErrorReport:
    """Locate the object in `frames` and compare with the requested (F, 2) top-left pixel track."""
    height, width = _as_fhwc(frames).shape[1:3]
    return trajectory_error(locate_object(frames, params), requested, frame_size=(width, height))


def draw_disc_video(track: np.ndarray, height: int, width: int, radius: float,
                    colour: tuple[float, float, float] = (1.0, 0.1, 0.1),
                    background: tuple[float, float, float] = (0.1, 0.2, 0.8)) -> np.ndarray:
    """(F, H, W, 3) a disc of `radius` px centred on each track point over a plain background:
    a pixel is inside when its centre is within the radius (the toy world's object)."""
    track = np.asarray(track, np.float64)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    video = np.empty((len(track), height, width, 3))
    video[:] = background
    for i, (cx, cy) in enumerate(track):
        video[i][(xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2] = colour
    return video
