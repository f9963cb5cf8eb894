"""Equirectangular ⇄ perspective projection and the sphere view plan, pure torch.

DynamicScaler's Panoramic Projecting Denoise (seed 003; ALGORITHMS.md §2) denoises an
equirectangular latent through perspective views. For a view of ``h × w`` pixels:

    f = 0.5·w / tan(FOV/2),  ray (x, y, f) normalised,  (X, Y, Z) = R_yaw · R_pitch · ray,
    lon = atan2(X, Z),  lat = asin(Y),  v = (lat + π/2)/π · (H − 1)

Conventions (one place, used everywhere below):
* camera frame: x right, y down, z forward; pixel ``(r, c)`` has ``x = c + ½ − w/2``,
  ``y = r + ½ − h/2`` (FOV is horizontal, pixels square).
* world frame: Y points down, so ``lat = asin(Y)`` is −π/2 at the top row (``v = 0``, the "up"
  pole) and +π/2 at the bottom row (``v = H − 1``).
* longitude: column ``u`` is ``lon = 2π·u/W − π``, i.e. ``u = (lon/2π + ½)·W`` taken modulo ``W``.
  (The handbook writes ``lon/2π·(W − 1)``; a period of exactly ``W`` is what makes the seam wrap
  seamlessly, and yaw 0 then looks at the image centre ``u = W/2``.)
* ``yaw`` turns right (towards larger ``u``); ``pitch`` > 0 looks up (towards ``v = 0``).

Sampling wraps in longitude (column indices modulo ``W``) and clamps in latitude.
The inverse (``perspective_to_equirect``) maps every equirect pixel's direction into the camera
frame and samples the view where the direction is in front of the camera and inside the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "LatLongSize",
    "PITCH_ROWS",
    "View",
    "camera_rotation",
    "directions_to_equirect",
    "equirect_directions",
    "equirect_to_perspective",
    "perspective_grid",
    "perspective_to_equirect",
    "sample_equirect",
    "sphere_view_plan",
]

# Pitch rows of the sphere plan, top to bottom; the index is the latitude band (per-band prompts).
PITCH_ROWS = (90.0, 75.0, 60.0, 45.0, 0.0, -45.0, -60.0, -75.0, -90.0)
POLE_PITCH = 90.0


@dataclass(frozen=True)
class LatLongSize:
    """Size of an equirectangular (latitude-longitude) image or latent."""

    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height < 2 or self.width < 1:
            raise ValueError(f"an equirect image needs height >= 2 and width >= 1, got {self}")

    @classmethod
    def from_width(cls, width: int) -> LatLongSize:
        """The usual 2:1 panorama for a given width."""
        return cls(max(2, width // 2), width)


@dataclass(frozen=True)
class View:
    """A perspective view of the sphere: angles in degrees, ``band`` indexes ``PITCH_ROWS``."""

    yaw: float
    pitch: float
    fov: float
    band: int


def camera_rotation(yaw_deg: float, pitch_deg: float, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """``R_yaw · R_pitch``: camera-frame ray → world direction (columns are the camera axes)."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    r_yaw = torch.tensor([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]], dtype=torch.float64)
    # Pitch up tilts the forward axis towards −Y (up, since Y points down).
    r_pitch = torch.tensor([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]], dtype=torch.float64)
    return (r_yaw @ r_pitch).to(dtype=dtype, device=device)


def _focal(fov_deg: float, out_w: int) -> float:
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"a perspective FOV must be in (0, 180) degrees, got {fov_deg}")
    return 0.5 * out_w / math.tan(math.radians(fov_deg) / 2.0)


def equirect_directions(eq_h: int, eq_w: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Unit world direction ``(X, Y, Z)`` of every equirect pixel, shape ``(eq_h, eq_w, 3)``."""
    size = LatLongSize(eq_h, eq_w)
    lon = torch.arange(size.width, dtype=torch.float64) * (2.0 * math.pi / size.width) - math.pi
    lat = torch.arange(size.height, dtype=torch.float64) * (math.pi / (size.height - 1)) - math.pi / 2.0
    lat, lon = torch.meshgrid(lat, lon, indexing="ij")
    dirs = torch.stack((lat.cos() * lon.sin(), lat.sin(), lat.cos() * lon.cos()), dim=-1)
    return dirs.to(dtype=dtype, device=device)


def directions_to_equirect(dirs: Tensor, eq_h: int, eq_w: int) -> Tensor:
    """Equirect pixel coordinates ``(u, v)`` (``u`` in ``[0, W)``) of unit directions ``(..., 3)``."""
    x, y, z = dirs.unbind(-1)
    lon = torch.atan2(x, z)
    lat = torch.asin(y.clamp(-1.0, 1.0))
    u = torch.remainder((lon / (2.0 * math.pi) + 0.5) * eq_w, eq_w)
    v = (lat + math.pi / 2.0) / math.pi * (eq_h - 1)
    return torch.stack((u, v), dim=-1)


def perspective_grid(
    fov_deg: float,
    yaw_deg: float,
    pitch_deg: float,
    out_h: int,
    out_w: int,
    eq_h: int,
    eq_w: int,
    *,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Tensor:
    """For every pixel of the view, where it samples the equirect image: ``(out_h, out_w, 2)``
    as ``(u, v)`` in equirect pixels (``u`` already reduced modulo ``W``)."""
    focal = _focal(fov_deg, out_w)
    x = torch.arange(out_w, dtype=torch.float64) + 0.5 - out_w / 2.0
    y = torch.arange(out_h, dtype=torch.float64) + 0.5 - out_h / 2.0
    y, x = torch.meshgrid(y, x, indexing="ij")
    rays = torch.stack((x, y, torch.full_like(x, focal)), dim=-1)
    rays = rays / rays.norm(dim=-1, keepdim=True)
    dirs = rays @ camera_rotation(yaw_deg, pitch_deg).T
    return directions_to_equirect(dirs, eq_h, eq_w).to(dtype=dtype, device=device)


def _sample(image: Tensor, x: Tensor, y: Tensor, mode: str, wrap_x: bool) -> Tensor:
    """Sample ``image (..., C, H, W)`` at pixel coordinates ``x, y`` (same shape) → ``(..., C, *x.shape)``."""
    height, width = image.shape[-2:]
    x = x.to(device=image.device, dtype=torch.float64)
    y = y.to(device=image.device, dtype=torch.float64)

    def column(index: Tensor) -> Tensor:
        return torch.remainder(index, width) if wrap_x else index.clamp(0, width - 1)

    def row(index: Tensor) -> Tensor:
        return index.clamp(0, height - 1)

    if mode == "nearest":
        return image[..., row(torch.floor(y + 0.5).long()), column(torch.floor(x + 0.5).long())]
    if mode != "bilinear":
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    x0, y0 = torch.floor(x), torch.floor(y)
    wx, wy = (x - x0).to(image.dtype), (y - y0).to(image.dtype)
    x0, y0 = x0.long(), y0.long()
    c0, c1, r0, r1 = column(x0), column(x0 + 1), row(y0), row(y0 + 1)
    top = image[..., r0, c0] * (1 - wx) + image[..., r0, c1] * wx
    bottom = image[..., r1, c0] * (1 - wx) + image[..., r1, c1] * wx
    return top * (1 - wy) + bottom * wy


def sample_equirect(equirect: Tensor, grid: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample ``equirect (..., C, H, W)`` at a ``(..., 2)`` grid of ``(u, v)``; ``u`` wraps."""
    return _sample(equirect, grid[..., 0], grid[..., 1], mode, wrap_x=True)


def equirect_to_perspective(
    equirect: Tensor,
    fov: float,
    yaw: float,
    pitch: float,
    out_hw: tuple[int, int],
    mode: str = "bilinear",
) -> Tensor:
    """The perspective view ``(..., C, out_h, out_w)`` of an equirect image ``(..., C, H, W)``."""
    eq_h, eq_w = equirect.shape[-2:]
    grid = perspective_grid(
        fov, yaw, pitch, out_hw[0], out_hw[1], eq_h, eq_w, dtype=torch.float64, device=equirect.device
    )
    return sample_equirect(equirect, grid, mode)


def perspective_to_equirect(
    perspective: Tensor,
    fov: float,
    yaw: float,
    pitch: float,
    eq_hw: tuple[int, int],
    mode: str = "bilinear",
) -> tuple[Tensor, Tensor]:
    """Project a view ``(..., C, h, w)`` back onto an equirect grid of ``eq_hw``.

    Returns ``(values (..., C, H, W), mask (H, W))``; ``mask`` marks equirect pixels the view
    covers (direction in front of the camera and inside the image), ``values`` are 0 elsewhere.
    """
    out_h, out_w = perspective.shape[-2:]
    focal = _focal(fov, out_w)
    dirs = equirect_directions(eq_hw[0], eq_hw[1], dtype=torch.float64, device=perspective.device)
    # R is a rotation, so world → camera is Rᵀ: as row vectors, d_cam = d_world · R.
    # as one (H·W, 3) @ (3, 3) product: the batched (H, W, 3) @ (3, 3) matmul in float64 is ~2000× slower
    cam = (dirs.reshape(-1, 3) @ camera_rotation(yaw, pitch, device=perspective.device)).reshape(dirs.shape)
    depth = cam[..., 2]
    in_front = depth > 1e-9
    safe_depth = torch.where(in_front, depth, torch.ones_like(depth))
    x = focal * cam[..., 0] / safe_depth + out_w / 2.0 - 0.5
    y = focal * cam[..., 1] / safe_depth + out_h / 2.0 - 0.5
    tolerance = 1e-6  # pixel centres on the image border count as inside
    inside_x = (x >= -tolerance) & (x <= out_w - 1 + tolerance)
    inside_y = (y >= -tolerance) & (y <= out_h - 1 + tolerance)
    mask = in_front & inside_x & inside_y
    x = torch.where(mask, x, torch.zeros_like(x))
    y = torch.where(mask, y, torch.zeros_like(y))
    values = _sample(perspective, x, y, mode, wrap_x=False)
    return values * mask.to(values.dtype), mask


def sphere_view_plan(
    step: int,
    yaw_offset_per_step: float = 6.0,
    fov: float = 120.0,
    yaws_per_row: int = 6,
) -> list[View]:
    """The 44 views of one Panoramic Projecting Denoise step (with the defaults).

    One view at each pole (pitch ±90°) and ``yaws_per_row`` evenly spaced yaws on each of the
    rows ±75°, ±60°, ±45°, 0°; every yaw is advanced by ``step · yaw_offset_per_step`` so the view
    seams move from step to step (6°/step cycles the 60° spacing in 10 steps).
    """
    offset = step * yaw_offset_per_step
    views = []
    for band, pitch in enumerate(PITCH_ROWS):
        count = 1 if abs(pitch) == POLE_PITCH else yaws_per_row
        for k in range(count):
            # Yaws kept in [-180, 180) so equal views compare equal across steps.
            yaw = (k * 360.0 / count + offset + 180.0) % 360.0 - 180.0
            views.append(View(yaw=yaw, pitch=pitch, fov=fov, band=band))
    return views
