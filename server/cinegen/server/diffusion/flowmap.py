"""Trajectory → flow video, the motion condition of Tora and of cinegen's trajectory pipeline.

ALGORITHMS.md §3 ("Trajectory → flow video"), after Tora (Zhang et al., 2024) and DragNUWA:

1. sparse flow, per track:      flow[t+1, :, y_t, x_t] = p_{t+1} − p_t      (frame 0 stays zero);
2. each frame is convolved with an isotropic Gaussian g(r) = exp(−r² / 2σ²), 99×99, σ = 10 at
   720×480, *not* normalised to unit sum but so that its centre weight is 1 — a lone point keeps
   its displacement at its own pixel and fades to 1/e^½ of it at distance σ;
3. the flow field is drawn with the standard optical-flow colour wheel (Baker et al., "A Database
   and Evaluation Methodology for Optical Flow", Middlebury: 55 hues, RY=15 YG=6 GC=4 CB=11 BM=13
   MR=6), hue = direction, saturation = magnitude / max magnitude, zero flow = white;
4. RGB in [0, 1] → [−1, 1], the range a video VAE encodes.

Pixel convention: pixel (i, j) covers x ∈ [i, i+1), y ∈ [j, j+1), top-left origin, so a position is
placed at (floor(x), floor(y)); positions outside the frame (or NaN) contribute nothing.

Kernel and σ are given for 720×480 (Tora's CogVideoX size); ``scaled_gaussian_params`` scales both
by the geometric mean of the two axis ratios, so a blob covers the same fraction of the frame's area
at any output size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

REFERENCE_SIZE = (720, 480)  # width, height the published kernel/σ belong to


class GaussianParams(NamedTuple):
    kernel: int  # odd side length in pixels
    sigma: float  # pixels


TORA_GAUSSIAN = GaussianParams(kernel=99, sigma=10.0)


def scaled_gaussian_params(width: int, height: int, ref: tuple[int, int] = REFERENCE_SIZE,
                           base: GaussianParams = TORA_GAUSSIAN) -> GaussianParams:
    """``base`` (given for a ``ref`` = (width, height) frame) scaled to a width×height frame by
    s = √((width/ref_w)·(height/ref_h)): σ' = σ·s, kernel' = 2·round(s·(kernel−1)/2) + 1 (odd, ≥ 3)."""
    scale = math.sqrt((width / ref[0]) * (height / ref[1]))
    radius = max(1, round(scale * (base.kernel - 1) / 2))
    return GaussianParams(kernel=2 * radius + 1, sigma=base.sigma * scale)


def sparse_flow(tracks: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """(F, 2, H, W) flow with each track's step p_{t+1} − p_t (x, y) at its frame-t pixel, in frame t+1.

    ``tracks`` is (K, F, 2) top-left pixel positions (x, y) on every frame. Where two tracks share a
    pixel on the same frame, the later track wins."""
    if tracks.ndim != 3 or tracks.shape[-1] != 2:
        raise ValueError(f"tracks must be (K, F, 2) positions, got shape {tuple(tracks.shape)}")
    if tracks.shape[1] != frames:
        raise ValueError(f"tracks have {tracks.shape[1]} frames but {frames} were asked for: "
                         f"interpolate the tracks to every output frame first")
    dtype = tracks.dtype if tracks.is_floating_point() else torch.float32
    flow = torch.zeros(frames, 2, height, width, dtype=dtype, device=tracks.device)
    if frames < 2:
        return flow
    later = torch.arange(1, frames, device=tracks.device)
    for track in tracks.to(dtype):
        step = track[1:] - track[:-1]
        start = track[:-1]
        finite = torch.isfinite(start).all(-1) & torch.isfinite(step).all(-1)
        pixel = torch.floor(torch.nan_to_num(start)).long()
        x, y = pixel[:, 0], pixel[:, 1]
        inside = finite & (x >= 0) & (x < width) & (y >= 0) & (y < height)
        # One point per frame within a track, so these indices never collide.
        flow[later[inside], :, y[inside], x[inside]] = step[inside]
    return flow


def gaussian_kernel_1d(kernel: int, sigma: float, dtype: torch.dtype = torch.float32,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """exp(−d² / 2σ²) for d = −r…r: centre weight 1, so the 2-D outer product is 1 at its centre."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"the Gaussian kernel side must be odd and positive, not {kernel}")
    if sigma <= 0:
        raise ValueError(f"the Gaussian sigma must be above 0, not {sigma}")
    d = torch.arange(kernel, dtype=torch.float64, device=device) - kernel // 2
    return torch.exp(-(d * d) / (2.0 * sigma * sigma)).to(dtype)


def gaussian_spread(flow: torch.Tensor, kernel: int = TORA_GAUSSIAN.kernel,
                    sigma: float = TORA_GAUSSIAN.sigma) -> torch.Tensor:
    """Convolve every (H, W) plane of ``flow`` (…, H, W) with the centre-1 isotropic Gaussian.

    exp(−(dx²+dy²)/2σ²) = exp(−dx²/2σ²)·exp(−dy²/2σ²), so one 1×k pass and one k×1 pass
    (2k multiply-adds per pixel instead of k²) give exactly the 2-D filter; borders are zero-padded."""
    *lead, height, width = flow.shape
    weights = gaussian_kernel_1d(kernel, sigma, flow.dtype, flow.device)
    planes = flow.reshape(-1, 1, height, width)
    radius = kernel // 2
    planes = F.conv2d(planes, weights.view(1, 1, 1, kernel), padding=(0, radius))
    planes = F.conv2d(planes, weights.view(1, 1, kernel, 1), padding=(radius, 0))
    return planes.reshape(*lead, height, width)


def _colour_wheel() -> torch.Tensor:
    """(55, 3) RGB in [0, 1]: Middlebury's wheel, each ramp step floor(255·i/n)/255 as in colorcode.cpp."""
    lengths = (15, 6, 4, 11, 13, 6)  # R→Y, Y→G, G→C, C→B, B→M, M→R
    full = (0, 1, 1, 2, 2, 0)  # the channel held at 1 along each segment
    ramp = ((1, 1), (0, -1), (2, 1), (1, -1), (0, 1), (2, -1))  # (channel, up +1 / down −1)
    rows = []
    for n, hold, (channel, direction) in zip(lengths, full, ramp):
        for i in range(n):
            colour = [0.0, 0.0, 0.0]
            colour[hold] = 1.0
            up = math.floor(255 * i / n) / 255
            colour[channel] = up if direction > 0 else 1.0 - up
            rows.append(colour)
    return torch.tensor(rows, dtype=torch.float64)


COLOUR_WHEEL = _colour_wheel()


def flow_to_color(flow: torch.Tensor, max_flow: float | None = None, per_frame: bool = False) -> torch.Tensor:
    """(F, 2, H, W) flow → (F, 3, H, W) RGB in [0, 1] on the colour wheel, zero flow white.

    Magnitudes are divided by ``max_flow`` when given, else by the largest magnitude in the whole
    video (``per_frame=True``: in each frame, as image-by-image visualisers do); beyond 1 the colour is
    darkened to 75 % as in the Middlebury code. A video with no motion is all white."""
    work = torch.float64 if flow.dtype == torch.float64 else torch.float32  # half is too coarse for hue
    u, v = flow[:, 0].to(work), flow[:, 1].to(work)
    radius = torch.sqrt(u * u + v * v)
    if max_flow is not None:
        if max_flow <= 0:
            raise ValueError(f"max_flow must be above 0, not {max_flow}")
        scale = torch.full((flow.shape[0], 1, 1), float(max_flow), dtype=work, device=flow.device)
    elif per_frame:
        scale = radius.flatten(1).amax(1).view(-1, 1, 1)
    else:
        scale = radius.amax().expand(flow.shape[0]).reshape(-1, 1, 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    u, v, radius = u / scale, v / scale, radius / scale
    wheel = COLOUR_WHEEL.to(device=flow.device, dtype=work)
    count = wheel.shape[0]
    angle = torch.atan2(-v, -u) / math.pi  # in [−1, 1]
    position = (angle + 1) / 2 * (count - 1)
    k0 = torch.floor(position).long().clamp(0, count - 1)
    k1 = (k0 + 1) % count
    fraction = (position - k0).unsqueeze(-1)
    colour = (1 - fraction) * wheel[k0] + fraction * wheel[k1]  # (F, H, W, 3)
    r = radius.unsqueeze(-1)
    colour = torch.where(r <= 1, 1 - r * (1 - colour), colour * 0.75)
    return colour.permute(0, 3, 1, 2).to(flow.dtype if flow.is_floating_point() else torch.float32)


def flow_video(tracks: torch.Tensor, frames: int, height: int, width: int,
               spread: GaussianParams | None = None, max_flow: float | None = None,
               per_frame: bool = False) -> torch.Tensor:
    """Tracks (K, F, 2) top-left pixels → (F, 3, H, W) flow video in [−1, 1] (steps 1–4 above).
    ``spread`` defaults to Tora's 99/σ10 scaled to this size (``scaled_gaussian_params``)."""
    spread = spread or scaled_gaussian_params(width, height)
    flow = gaussian_spread(sparse_flow(tracks, frames, height, width), spread.kernel, spread.sigma)
    return flow_to_color(flow, max_flow=max_flow, per_frame=per_frame) * 2 - 1
