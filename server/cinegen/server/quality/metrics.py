"""Quality metrics on generated pictures: object count, seam, track following, keyframe consistency.

Issue 9 §3. Every metric is computed on display images in [0, 1], (H, W, 3) or (3, H, W), numpy only
(scipy.ndimage for connected components), so tests can check each against pictures with known answers.

**Salient mask** (the toy world: shapes on a sky/ground gradient that varies only with y):

    background(y) = median over x of image(y, x)        (an object covers less than half of a row)
    d(y, x)       = ‖ image(y, x) − background(y) ‖₂ over RGB
    salient       = d ≥ threshold            or, for a named colour c:  ‖ image − c ‖₂ ≤ tolerance

or, with `colours` (toy-world palette names), the pixels nearest that palette colour and within its
tolerance (`toyworld.measure.colour_mask`) — robust to the streaks a small model paints into the sky.

**Repetition**: objects = 8-connected components of the salient mask with at least `min_area` pixels
(with `colours`: of each named colour's mask, so two touching objects of different colours are two).

**Seam** of a 360° panorama (left and right edge must meet):

    ratio = mean_{y,c} |I[y, W−1] − I[y, 0]|  /  median_j mean_{y,c} |I[y, j+1] − I[y, j]|

≈ 1 when the edge pair looks like any interior pair; ≫ 1 when the edges do not meet.

**Trajectory error**: the centroid of the largest object per frame against the requested track,
through `trajectory_metric.trajectory_error` (a frame with no object counts as a frame diagonal).

**Consistency** of one character across keyframes: colour histograms (4 bins per channel) of the
salient pixels compared by histogram intersection Σ min(p, q), and shape by the fill ratio of the
largest object (area / bounding box: π/4 for a disc, 1 for a square) compared as min/max; each the
mean over all pairs of keyframes. Identical keyframes score 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..toyworld.measure import colour_mask
from ..trajectory_metric import TrajectoryErrorReport, trajectory_error

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class SalientParams:
    threshold: float = 0.2  # RGB distance from the row's background that counts as object
    min_area: int = 4  # pixels; smaller components are speckle, not objects
    colour: tuple[float, float, float] | None = None  # look for this colour instead of "not background"
    colour_tolerance: float = 0.3
    colours: tuple[str, ...] = ()  # toy-world palette names: objects are pixels of these colours, per colour


@dataclass(frozen=True)
class ImageObject:
    area: int  # pixels
    centroid: tuple[float, float]  # (x, y) in top-left pixels, pixel (i, j) covering [i, i+1) × [j, j+1)
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)

    @property
    def fill_ratio(self) -> float:
        """Area over bounding-box area: π/4 ≈ 0.785 for a disc, 1 for an axis-aligned square."""
        x0, y0, x1, y1 = self.bbox
        return self.area / max(1, (x1 - x0) * (y1 - y0))


def as_hwc(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float64 from (H, W, C) or (C, H, W) with C ≤ 4 (alpha dropped), or (H, W)."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 2:
        return a[..., None]
    if a.ndim != 3:
        raise ValueError(f"an image is (H, W, C) or (C, H, W), got shape {a.shape}")
    if a.shape[0] <= 4 and a.shape[-1] > 4:
        a = a.transpose(1, 2, 0)
    return a[..., :3]


# ---- objects --------------------------------------------------------------------------------------
def row_background(image: np.ndarray) -> np.ndarray:
    """(H, C) background estimate: each row's median colour (the gradient varies only with y)."""
    return np.median(as_hwc(image), axis=1)


def salient_mask(image: np.ndarray, params: SalientParams = SalientParams()) -> np.ndarray:
    """(H, W) bool: pixels far from their row's background (or near `params.colour`, or of `params.colours`)."""
    a = as_hwc(image)
    if params.colours:
        return np.logical_or.reduce([colour_mask(a, name, params.colour_tolerance) for name in params.colours])
    if params.colour is not None:
        return np.linalg.norm(a - np.asarray(params.colour, np.float64), axis=-1) <= params.colour_tolerance
    return np.linalg.norm(a - row_background(a)[:, None, :], axis=-1) >= params.threshold


def mask_objects(mask: np.ndarray, min_area: int = 1) -> list[ImageObject]:
    """8-connected components of a boolean (H, W) mask with at least `min_area` pixels, largest first."""
    labels, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
    objects = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        ys, xs = np.nonzero(labels[box] == index)
        if len(xs) < min_area:
            continue
        objects.append(ImageObject(
            area=len(xs), centroid=(float(xs.mean() + box[1].start + 0.5), float(ys.mean() + box[0].start + 0.5)),
            bbox=(box[1].start, box[0].start, box[1].stop, box[0].stop)))
    return sorted(objects, key=lambda o: -o.area)


def find_objects(image: np.ndarray, params: SalientParams = SalientParams()) -> list[ImageObject]:
    """The objects of an image, largest first: components of the salient mask, or of each of `params.colours`."""
    if not params.colours:
        return mask_objects(salient_mask(image, params), params.min_area)
    a = as_hwc(image)
    objects = [o for name in params.colours
               for o in mask_objects(colour_mask(a, name, params.colour_tolerance), params.min_area)]
    return sorted(objects, key=lambda o: -o.area)


def count_objects(image: np.ndarray, params: SalientParams = SalientParams()) -> int:
    return len(find_objects(image, params))


# ---- seam ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeamReport:
    ratio: float  # seam difference / median interior difference
    seam: float  # mean |col[W−1] − col[0]|
    interior_median: float  # median over j of mean |col[j+1] − col[j]|
    interior_share_below: float  # share of interior column pairs that differ less than the seam

    def as_dict(self) -> dict:
        return {"ratio": round(self.ratio, 3), "seam": round(self.seam, 5),
                "interior_median": round(self.interior_median, 5),
                "interior_share_below": round(self.interior_share_below, 3)}


def seam_report(image: np.ndarray, floor: float = 1e-6) -> SeamReport:
    """How well the right edge meets the left one, compared with neighbouring interior columns."""
    a = as_hwc(image)
    if a.shape[1] < 3:
        raise ValueError(f"a seam needs at least 3 columns, got {a.shape[1]}")
    interior = np.abs(a[:, 1:] - a[:, :-1]).mean(axis=(0, 2))
    seam = float(np.abs(a[:, -1] - a[:, 0]).mean())
    median = float(np.median(interior))
    # floor: a perfectly flat picture has no interior differences; its seam is then judged in absolute terms
    return SeamReport(seam / max(median, floor), seam, median, float((interior < seam).mean()))


# ---- trajectory ---------------------------------------------------------------------------------
def locate_largest_object(frames: Sequence[np.ndarray] | np.ndarray,
                          params: SalientParams = SalientParams()) -> np.ndarray:
    """(F, 2) centroid (x, y) of each frame's largest object; NaN where a frame has none."""
    out = np.full((len(frames), 2), np.nan)
    for i, frame in enumerate(frames):
        objects = find_objects(frame, params)
        if objects:
            out[i] = objects[0].centroid
    return out


def follow_error(frames: Sequence[np.ndarray] | np.ndarray, requested: np.ndarray,
                 params: SalientParams = SalientParams()) -> TrajectoryErrorReport:
    """Pixels between the largest object and the requested (F, 2) track; a miss costs a frame diagonal."""
    height, width = as_hwc(frames[0]).shape[:2]
    return trajectory_error(locate_largest_object(frames, params), requested, frame_size=(width, height))


# ---- consistency --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConsistencyReport:
    colour: float  # mean pairwise histogram intersection of the salient pixels, in [0, 1]
    shape: float  # mean pairwise min/max of the largest object's fill ratio, in [0, 1]
    pairs: int
    with_object: int = 0  # keyframes in which an object was found: empty keyframes agree with each other (1)

    def as_dict(self) -> dict:
        return {"colour": round(self.colour, 3), "shape": round(self.shape, 3), "pairs": self.pairs,
                "with_object": self.with_object}


def colour_histogram(image: np.ndarray, mask: np.ndarray | None = None, bins: int = 4) -> np.ndarray:
    """(bins³,) share of the (masked) pixels in each RGB cell; all zeros when no pixel is masked."""
    a = np.clip(as_hwc(image), 0.0, 1.0)
    pixels = a.reshape(-1, 3) if mask is None else a[mask]
    cells = np.minimum((pixels * bins).astype(int), bins - 1)
    flat = (cells[:, 0] * bins + cells[:, 1]) * bins + cells[:, 2]
    counts = np.bincount(flat, minlength=bins ** 3).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


def histogram_intersection(p: np.ndarray, q: np.ndarray) -> float:
    """Σ min(p, q) of two normalised histograms; two empty ones agree (1), one empty agrees with nothing."""
    if not p.any() or not q.any():
        return float(not p.any() and not q.any())
    return float(np.minimum(p, q).sum())


def _ratio_agreement(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return float(a is None and b is None)
    return min(a, b) / max(a, b) if max(a, b) > 0 else 1.0


def keyframe_consistency(images: Sequence[np.ndarray], params: SalientParams = SalientParams(),
                         bins: int = 4) -> ConsistencyReport:
    """How alike the salient objects of `images` are in colour and shape (1 = identical)."""
    histograms, fills = [], []
    for image in images:
        histograms.append(colour_histogram(image, salient_mask(image, params), bins))
        objects = find_objects(image, params)
        fills.append(objects[0].fill_ratio if objects else None)
    pairs = list(combinations(range(len(images)), 2))
    found = sum(f is not None for f in fills)
    if not pairs:
        return ConsistencyReport(1.0, 1.0, 0, found)
    colour = np.mean([histogram_intersection(histograms[i], histograms[j]) for i, j in pairs])
    shape = np.mean([_ratio_agreement(fills[i], fills[j]) for i, j in pairs])
    return ConsistencyReport(float(colour), float(shape), len(pairs), found)


__all__ = ["ConsistencyReport", "ImageObject", "SalientParams", "SeamReport", "as_hwc", "colour_histogram",
           "count_objects", "find_objects", "follow_error", "histogram_intersection", "keyframe_consistency",
           "locate_largest_object", "mask_objects", "row_background", "salient_mask", "seam_report"]
