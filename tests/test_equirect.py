"""Equirectangular ⇄ perspective projection and the 44-view sphere plan of DynamicScaler."""

from __future__ import annotations

import math

import pytest
import torch

from cinegen.server.diffusion.equirect import (
    PITCH_ROWS,
    LatLongSize,
    View,
    equirect_directions,
    equirect_to_perspective,
    perspective_grid,
    perspective_to_equirect,
    sphere_view_plan,
)

EQ_H, EQ_W = 64, 128


def smooth_sphere_function(dirs: torch.Tensor) -> torch.Tensor:
    """A low-order polynomial of the unit direction: smooth everywhere, poles and seam included."""
    x, y, z = dirs.unbind(-1)
    return torch.stack((0.6 * x + 0.3 * y * z + 0.4 * z * z - 0.2 * y, 0.5 * x * y - 0.3 * z), dim=0)


def test_pixel_directions_are_unit_vectors_with_the_poles_on_the_first_and_last_rows():
    dirs = equirect_directions(EQ_H, EQ_W, dtype=torch.float64)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(EQ_H, EQ_W, dtype=torch.float64))
    assert torch.allclose(dirs[0, :, 1], torch.full((EQ_W,), -1.0, dtype=torch.float64))  # Y down: top row is up
    assert torch.allclose(dirs[-1, :, 1], torch.full((EQ_W,), 1.0, dtype=torch.float64))
    centre = dirs[EQ_H // 2, EQ_W // 2]  # lon 0, just below the equator (rows 31|32 straddle lat 0)
    assert centre[0].item() == pytest.approx(0.0, abs=1e-12) and centre[2].item() == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize(
    ("yaw", "pitch", "u", "v"),
    [(0, 0, EQ_W / 2, (EQ_H - 1) / 2), (90, 0, 3 * EQ_W / 4, (EQ_H - 1) / 2), (-90, 0, EQ_W / 4, (EQ_H - 1) / 2),
     (180, 0, 0.0, (EQ_H - 1) / 2), (0, 90, None, 0.0), (0, -90, None, EQ_H - 1.0), (0, 45, EQ_W / 2, (EQ_H - 1) / 4)],
)  # fmt: skip
def test_view_centre_looks_where_yaw_and_pitch_say(yaw, pitch, u, v):
    grid = perspective_grid(120.0, yaw, pitch, 33, 33, EQ_H, EQ_W, dtype=torch.float64)
    centre_u, centre_v = grid[16, 16].tolist()
    if u is not None:
        assert min(abs(centre_u - u), EQ_W - abs(centre_u - u)) == pytest.approx(0.0, abs=1e-6)
    assert centre_v == pytest.approx(v, abs=1e-6)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_yaw0_pitch0_view_centre_shows_a_marker_at_the_equirect_centre(mode):
    equirect = torch.zeros(1, EQ_H, EQ_W)
    equirect[0, EQ_H // 2 - 1 : EQ_H // 2 + 1, EQ_W // 2] = 1.0  # lat 0 lies between rows 31 and 32
    view = equirect_to_perspective(equirect, 120.0, 0.0, 0.0, (33, 33), mode=mode)
    assert view[0, 16, 16].item() == pytest.approx(1.0)
    assert view[0, 16, 16].item() == view.max().item()
    elsewhere = equirect_to_perspective(equirect, 120.0, 90.0, 0.0, (33, 33), mode=mode)
    assert elsewhere.abs().max().item() == 0.0


def test_views_are_not_mirrored():
    equirect = torch.zeros(1, EQ_H, EQ_W)
    equirect[0, 30:34, EQ_W // 2 + 8] = 1.0  # to the right of the view centre (yaw grows to the right)
    equirect[0, 16, EQ_W // 2 - 2 : EQ_W // 2 + 2] = 2.0  # above it (towards the top row)
    view = equirect_to_perspective(equirect, 90.0, 0.0, 0.0, (33, 33), mode="nearest")[0]
    rows, cols = torch.nonzero(view == 1.0, as_tuple=True)
    assert bool((cols > 16).all()) and bool(((rows - 16).abs() <= 2).all())
    rows, cols = torch.nonzero(view == 2.0, as_tuple=True)
    assert bool((rows < 16).all()) and bool(((cols - 16).abs() <= 2).all())


def test_perspective_view_matches_the_function_at_the_view_ray():
    equirect = smooth_sphere_function(equirect_directions(EQ_H, EQ_W, dtype=torch.float64))
    for yaw, pitch in [(0, 0), (180, 10), (-120, 60), (40, -80)]:
        view = equirect_to_perspective(equirect, 90.0, yaw, pitch, (33, 33))
        y, p = math.radians(yaw), math.radians(pitch)
        # Centre ray of the view, written out: forward turned up by pitch, then right by yaw (Y down).
        centre = torch.tensor([[math.cos(p) * math.sin(y), -math.sin(p), math.cos(p) * math.cos(y)]])
        centre = centre.to(torch.float64)
        assert torch.allclose(view[:, 16, 16], smooth_sphere_function(centre)[:, 0], atol=2e-3)


# Measured (bilinear, equirect 64×128, views 64×64, the smooth function above, amplitude ~1):
# mean |error| over covered pixels ≤ 2.5e-4, max ≤ 1.2e-3 (FOV 120, seam view). Bounds leave headroom.
ROUND_TRIP_MEAN = 6e-4
ROUND_TRIP_MAX = 3e-3


@pytest.mark.parametrize("fov", [90.0, 120.0])
@pytest.mark.parametrize(("yaw", "pitch"), [(180.0, 0.0), (0.0, 90.0), (0.0, -90.0), (30.0, 45.0), (-150.0, -60.0)])
def test_equirect_to_perspective_to_equirect_round_trip_is_accurate(yaw, pitch, fov):
    equirect = smooth_sphere_function(equirect_directions(EQ_H, EQ_W))
    view = equirect_to_perspective(equirect, fov, yaw, pitch, (64, 64))
    back, mask = perspective_to_equirect(view, fov, yaw, pitch, (EQ_H, EQ_W))
    assert back.shape == equirect.shape and mask.shape == (EQ_H, EQ_W)
    error = (back - equirect)[:, mask].abs()
    assert error.mean().item() < ROUND_TRIP_MEAN
    assert error.max().item() < ROUND_TRIP_MAX
    assert torch.equal(back[:, ~mask], torch.zeros_like(back[:, ~mask]))
    if yaw == 180.0:
        assert bool(mask[EQ_H // 2, 0]) and bool(mask[EQ_H // 2, -1])  # the view straddles the seam
    if abs(pitch) == 90.0:
        assert bool(mask[0 if pitch > 0 else -1].all())  # the whole pole row


def test_perspective_to_equirect_covers_only_what_the_view_sees():
    view = torch.ones(1, 32, 32)
    _, front = perspective_to_equirect(view, 90.0, 0.0, 0.0, (EQ_H, EQ_W))
    _, back = perspective_to_equirect(view, 90.0, 180.0, 0.0, (EQ_H, EQ_W))
    assert not bool((front & back).any())  # opposite views never share a pixel
    # A 90° square view covers about 1/6 of the sphere; the equirect area weights rows by cos(lat).
    lat = torch.linspace(-math.pi / 2, math.pi / 2, EQ_H)
    weights = lat.cos()[:, None].expand(EQ_H, EQ_W)
    assert (weights[front].sum() / weights.sum()).item() == pytest.approx(1 / 6, rel=0.1)


def test_projection_keeps_leading_dims_and_dtype():
    equirect = torch.randn(2, 4, EQ_H, EQ_W, dtype=torch.float16)
    view = equirect_to_perspective(equirect, 120.0, 10.0, 20.0, (40, 48), mode="nearest")
    assert view.shape == (2, 4, 40, 48) and view.dtype == torch.float16
    back, mask = perspective_to_equirect(view, 120.0, 10.0, 20.0, (EQ_H, EQ_W), mode="nearest")
    assert back.shape == (2, 4, EQ_H, EQ_W) and back.dtype == torch.float16 and mask.dtype == torch.bool


@pytest.mark.parametrize("step", [0, 3, 17])
def test_sphere_plan_has_44_views_that_cover_every_equirect_pixel(step):
    views = sphere_view_plan(step)
    assert len(views) == 44
    per_row = {pitch: sum(v.pitch == pitch for v in views) for pitch in PITCH_ROWS}
    assert per_row == {90.0: 1, 75.0: 6, 60.0: 6, 45.0: 6, 0.0: 6, -45.0: 6, -60.0: 6, -75.0: 6, -90.0: 1}
    assert all(v.fov == 120.0 and PITCH_ROWS[v.band] == v.pitch for v in views)
    covered = torch.zeros(EQ_H, EQ_W, dtype=torch.bool)
    for v in views:
        covered |= perspective_to_equirect(torch.ones(1, 32, 32), v.fov, v.yaw, v.pitch, (EQ_H, EQ_W))[1]
    assert bool(covered.all())


def test_sphere_plan_advances_the_yaw_every_step():
    first, second = sphere_view_plan(0), sphere_view_plan(1, yaw_offset_per_step=6.0)
    assert sorted(v.yaw for v in first if v.pitch == 0.0) == [-180.0, -120.0, -60.0, 0.0, 60.0, 120.0]
    assert sorted(v.yaw for v in second if v.pitch == 0.0) == [-174.0, -114.0, -54.0, 6.0, 66.0, 126.0]
    assert [v.yaw for v in second if abs(v.pitch) == 90.0] == [6.0, 6.0]  # pole views turn too
    # 6°/step brings the 60°-spaced rows back to the same views after 10 steps.
    def row_views(views):
        return sorted((v.pitch, v.yaw) for v in views if abs(v.pitch) != 90.0)

    assert row_views(sphere_view_plan(10)) == row_views(first) != row_views(sphere_view_plan(5))
    assert all(isinstance(v, View) and -180.0 <= v.yaw < 180.0 for v in sphere_view_plan(123))


def test_latlong_size():
    assert LatLongSize.from_width(128) == LatLongSize(64, 128)
    with pytest.raises(ValueError):
        LatLongSize(1, 8)
