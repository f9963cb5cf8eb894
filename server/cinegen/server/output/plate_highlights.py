"""Plates in and out of a model without clipping their highlights.

In: a plate's scene-linear pixels become model pixels through the job's display transform run forward
(``color.scene_linear_to_display``: the config's SDR view for ``view``, the sRGB curve for ``srgb``), the
transform whose inverse brings the output back (FrameSink). So plate -> model pixels -> output is a round
trip: through the view, a neutral plate keeps its values up to ~8 (display 0.95) within the view's 1e-4
display error; through srgb up to 1.

Out: beyond what the transform encodes, the model cannot carry the plate (the view compresses 8 -> 128 into
its last 5 % of display; a saturated light clips a channel sooner; srgb clips at 1). There the output takes
the plate's own values, resized to the output (bilinear), blended per pixel by

    w = S((p - k0) / (k1 - k0)) * S(m - 1),    S(x) = x^2 (3 - 2x) on x clipped to [0, 1]
    out = model + w * (plate - model)          (all three channels: the plate's hue is kept)

p: the pixel's brightest channel as the model is shown it (display, before the clip to [0, 1]);
m: its brightest channel in the working space. ``SHOULDER`` holds (k0, k1): view (0.95, 0.99), scene ~8.3
to ~33 on a neutral, where one 8-bit display step is 6 % to 25 % of the scene value; srgb (1, 1.353), scene
1 to 2 (one stop over display white). The second factor is 0 for any value below 1, so a plate inside
[0, 1) is untouched bit for bit (even a saturated ACEScg colour whose sRGB display is above 1 is left to
the model: that is gamut, not a highlight); on a neutral it is 1 long before the view's shoulder.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cinegen.common.color import DISPLAY_SRGB, DISPLAY_VIEW, scene_linear_to_display

# (k0, k1): the display values between which the output goes from the model's to the plate's.
SHOULDER = {DISPLAY_VIEW: (0.95, 0.99), DISPLAY_SRGB: (1.0, 1.055 * 2.0 ** (1 / 2.4) - 0.055)}


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def highlight_weight(linear: np.ndarray, display: np.ndarray, transform: str) -> np.ndarray:
    """(H, W) weight of the plate's own values in the output (the module's rule), float32."""
    k0, k1 = SHOULDER[transform]
    into_shoulder = _smoothstep((display.max(axis=-1) - k0) / (k1 - k0))
    above_one = _smoothstep(linear.max(axis=-1) - 1.0)
    return (into_shoulder * above_one).astype(np.float32)


@dataclass(frozen=True)
class PlateHighlights:
    """A plate frame's values where it is beyond the model's range, and their weight (both at plate size)."""

    linear: np.ndarray  # (H, W, 3) float16 scene-linear (plates are half EXRs: no precision lost)
    weight: np.ndarray  # (H, W) float16 in [0, 1]

    @property
    def pixels(self) -> int:
        return int(np.count_nonzero(self.weight))

    def apply(self, output: np.ndarray) -> np.ndarray:
        """``output`` (H', W', 3 or 4) scene-linear with the plate kept by weight; pixels of weight 0 untouched."""
        height, width = output.shape[:2]
        weight = _resize(self.weight[..., None], width, height)[..., 0]
        hot = weight > 0
        if not hot.any():
            return output
        plate = _resize(self.linear, width, height)
        merged = np.array(output, copy=True)
        model = output[..., :3][hot].astype(np.float32)
        w = weight[hot][:, None]
        merged[..., :3][hot] = (model + w * (plate[hot] - model)).astype(output.dtype)
        return merged


@dataclass(frozen=True)
class ModelPlate:
    """A plate frame as the model sees it, and what the model cannot carry of it."""

    display: np.ndarray  # (H, W, 3) float32 in [0, 1]
    highlights: PlateHighlights | None  # None when no pixel is beyond the range (the output is the model's)
    pixels: int  # of the frame

    @property
    def hot_pixels(self) -> int:
        return 0 if self.highlights is None else self.highlights.pixels


def plate_to_model(linear: np.ndarray, transform: str) -> ModelPlate:
    """Scene-linear (H, W, >=3) -> model pixels through ``transform`` forward, with the highlights kept aside."""
    rgb = np.nan_to_num(np.ascontiguousarray(linear[..., :3], np.float32))
    display = np.nan_to_num(scene_linear_to_display(rgb, transform))
    weight = highlight_weight(rgb, display, transform)
    highlights = None
    if weight.any():
        highlights = PlateHighlights(rgb.astype(np.float16), weight.astype(np.float16))
    return ModelPlate(np.clip(display, 0.0, 1.0), highlights, rgb.shape[0] * rgb.shape[1])


class HighlightCount:
    """Pixels beyond the model's range over a job's plate frames (each frame counted once), for one log line."""

    def __init__(self, transform: str):
        self.transform = transform
        self.hot = self.total = 0
        self.frames: set[int] = set()
        self.hot_frames = 0
        self.peak = 0.0

    def add(self, frame: int, plate: ModelPlate) -> None:
        if frame in self.frames:
            return
        self.frames.add(frame)
        self.total += plate.pixels
        if plate.highlights is not None:
            self.hot += plate.hot_pixels
            self.hot_frames += 1
            self.peak = max(self.peak, float(plate.highlights.linear.max()))

    def message(self, kept: bool = True) -> str | None:
        """The sentence for the artist, or None when nothing was beyond the range; ``kept``: whether the
        output keeps the plate's values there (not where the plate is only a condition the model repaints)."""
        if not self.hot:
            return None
        k0 = SHOULDER[self.transform][0]
        then = ("the output keeps the plate's own values there, blended in over the shoulder" if kept else
                "the model sees them at the top of its range, and repaints them")
        return (f"{self.hot} of {self.total} plate pixels ({100.0 * self.hot / self.total:.2g} %, in "
                f"{self.hot_frames} of {len(self.frames)} frames, up to {self.peak:.4g}) are brighter than the model "
                f"can show through the {self.transform} display transform (display {k0:g} and above); {then}.")


def _resize(hwc: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, C) -> (height, width, C) float32, bilinear (no overshoot, so no negative light)."""
    if hwc.shape[:2] == (height, width):
        return hwc.astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(hwc, np.float32)).permute(2, 0, 1)[None]
    shrink = height < hwc.shape[0] or width < hwc.shape[1]
    resized = torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False,
                                              antialias=shrink)
    return resized[0].permute(1, 2, 0).numpy()


def sink_kwargs(highlights: PlateHighlights | None) -> dict:
    """FrameSink.write's keyword for a frame's kept highlights (none when there are none)."""
    return {} if highlights is None else {"highlights": highlights}


def placed(highlights: PlateHighlights | None, canvas: tuple[int, int], box: tuple[int, int, int, int]
           ) -> PlateHighlights | None:
    """Highlights of an image placed in a larger frame: ``canvas`` (width, height), ``box`` (top, left,
    width, height) in px; weight 0 outside the box."""
    if highlights is None:
        return None
    (width, height), (top, left, w, h) = canvas, box
    linear = np.zeros((height, width, 3), np.float16)
    weight = np.zeros((height, width), np.float16)
    linear[top:top + h, left:left + w] = _resize(highlights.linear, w, h)
    weight[top:top + h, left:left + w] = _resize(highlights.weight[..., None], w, h)[..., 0]
    return PlateHighlights(linear, weight)
