"""flowmap: trajectory → sparse flow → Gaussian spread → colour wheel → [−1, 1] (ALGORITHMS.md §3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from cinegen.server.diffusion.flowmap import (
    COLOUR_WHEEL,
    GaussianParams,
    flow_to_color,
    flow_video,
    gaussian_kernel_1d,
    gaussian_spread,
    scaled_gaussian_params,
    sparse_flow,
)


def moving_point(start, step, frames):
    """(1, F, 2) positions of one point moving by ``step`` each frame."""
    t = torch.arange(frames, dtype=torch.float64).unsqueeze(-1)
    return (torch.tensor(start, dtype=torch.float64) + t * torch.tensor(step, dtype=torch.float64)).unsqueeze(0)


def test_sparse_flow_puts_each_step_at_the_previous_position_in_the_next_frame():
    tracks = moving_point((10.5, 20.75), (3.0, -2.0), frames=4)
    flow = sparse_flow(tracks, 4, 48, 64)
    assert flow.shape == (4, 2, 48, 64)
    assert torch.count_nonzero(flow[0]) == 0  # frame 0 has no previous position
    for t in range(1, 4):
        x, y = math.floor(10.5 + 3 * (t - 1)), math.floor(20.75 - 2 * (t - 1))
        assert flow[t, :, y, x].tolist() == [3.0, -2.0]
        assert torch.count_nonzero(flow[t]) == 2  # only that pixel, both components


def test_sparse_flow_skips_positions_outside_the_frame_and_nan():
    nan = float("nan")
    broken = [[-5.0, 3.0], [1.0, 3.0], [nan, 3.0], [2.0, 3.0]]  # off-screen, then into and out of NaN
    steady = [[5.0, 5.0], [6.0, 5.0], [7.0, 5.0], [8.0, 5.0]]
    flow = sparse_flow(torch.tensor([broken, steady], dtype=torch.float64), 4, 8, 10)
    assert not torch.isnan(flow).any()
    assert torch.count_nonzero(flow) == 3  # only the steady track's x steps remain
    for t in range(1, 4):
        assert flow[t, :, 5, 4 + t].tolist() == [1.0, 0.0]


def test_sparse_flow_later_track_wins_on_a_shared_pixel():
    first = moving_point((3.25, 3.75), (1.0, 0.0), 2)
    second = moving_point((3.875, 3.125), (0.0, 2.0), 2)
    flow = sparse_flow(torch.cat([first, second]), 2, 8, 8)
    assert flow[1, :, 3, 3].tolist() == [0.0, 2.0]


def test_sparse_flow_rejects_a_frame_count_that_does_not_match_the_tracks():
    with pytest.raises(ValueError, match="interpolate"):
        sparse_flow(moving_point((1, 1), (1, 1), 5), 6, 8, 8)


@pytest.mark.parametrize("dx,dy", [(4.0, -3.0), (-1.5, 2.5)])
def test_spread_peak_keeps_the_step_and_decays_as_the_stated_gaussian(dx, dy):
    sigma, kernel = 3.0, 21
    tracks = moving_point((20.0, 16.0), (dx, dy), frames=3)
    flow = gaussian_spread(sparse_flow(tracks, 3, 40, 48), kernel, sigma)
    frame = flow[1]  # step 0 → 1 drawn at (x, y) = (20, 16)
    assert frame[:, 16, 20].tolist() == pytest.approx([dx, dy], abs=1e-12)
    peak = frame[0].abs().flatten().argmax()
    assert divmod(int(peak), 48) == (16, 20)
    for ox, oy in [(1, 0), (0, 3), (4, -2), (-7, 5), (10, 10)]:
        r2 = ox * ox + oy * oy
        expected = math.exp(-r2 / (2 * sigma * sigma))
        assert frame[0, 16 + oy, 20 + ox].item() == pytest.approx(dx * expected, rel=1e-9, abs=1e-15)
        assert frame[1, 16 + oy, 20 + ox].item() == pytest.approx(dy * expected, rel=1e-9, abs=1e-15)
    assert frame[0, 16, 20 + kernel // 2 + 1].item() == 0.0  # nothing beyond the kernel


def test_separable_spread_equals_the_full_2d_gaussian_convolution():
    torch.manual_seed(0)
    flow = torch.randn(2, 2, 24, 30, dtype=torch.float64)
    g = gaussian_kernel_1d(9, 2.0, torch.float64)
    full = torch.outer(g, g).view(1, 1, 9, 9)
    expected = F.conv2d(flow.reshape(-1, 1, 24, 30), full, padding=4).reshape(2, 2, 24, 30)
    torch.testing.assert_close(gaussian_spread(flow, 9, 2.0), expected)


def test_gaussian_params_are_toras_at_720x480_and_scale_with_the_frame():
    assert scaled_gaussian_params(720, 480) == GaussianParams(99, 10.0)
    doubled = scaled_gaussian_params(1440, 960)
    assert doubled.sigma == pytest.approx(20.0) and doubled.kernel == 197
    small = scaled_gaussian_params(64, 48)
    assert small.kernel % 2 == 1 and small.kernel >= 3
    assert small.sigma == pytest.approx(10 * math.sqrt(64 / 720 * 48 / 480))


def test_colour_wheel_has_55_hues_starting_red_through_yellow_green_cyan_blue_magenta():
    assert COLOUR_WHEEL.shape == (55, 3)
    wheel = (COLOUR_WHEEL * 255).round().int().tolist()
    assert wheel[0] == [255, 0, 0]  # red
    assert wheel[15] == [255, 255, 0]  # yellow after RY=15
    assert wheel[21] == [0, 255, 0]  # green after YG=6
    assert wheel[25] == [0, 255, 255]  # cyan after GC=4
    assert wheel[36] == [0, 0, 255]  # blue after CB=11
    assert wheel[49] == [255, 0, 255]  # magenta after BM=13


def test_zero_flow_is_white():
    colour = flow_to_color(torch.zeros(3, 2, 5, 7))
    assert colour.shape == (3, 3, 5, 7)
    assert torch.all(colour == 1.0)


def test_direction_sets_hue_and_the_largest_motion_is_fully_saturated():
    flow = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    flow[0, :, 0, 0] = torch.tensor([-1.0, 0.0])  # atan2(0, 1) = 0 → the middle of the wheel
    flow[0, :, 0, 1] = torch.tensor([2.0, 0.0])  # +x: atan2(-0, -2) = ±π → wheel end (red)
    flow[0, :, 0, 2] = torch.tensor([1.0, 0.0])  # same direction, half the magnitude
    colour = flow_to_color(flow)[0, :, 0]
    assert colour[:, 1].tolist() == pytest.approx(COLOUR_WHEEL[0].tolist())  # saturated red
    assert colour[:, 2].tolist() == pytest.approx((1 - 0.5 * (1 - COLOUR_WHEEL[0])).tolist())
    middle = COLOUR_WHEEL[27]  # angle 0 → position (0 + 1) / 2 · 54 = 27 exactly
    assert colour[:, 0].tolist() == pytest.approx((1 - 0.5 * (1 - middle)).tolist())


def test_max_flow_normalises_and_flow_beyond_it_is_darkened():
    flow = torch.tensor([4.0, 0.0]).view(1, 2, 1, 1)
    colour = flow_to_color(flow, max_flow=2.0)[0, :, 0, 0]
    assert colour.tolist() == pytest.approx((COLOUR_WHEEL[0] * 0.75).tolist())


def test_per_frame_normalisation_saturates_every_frame_video_normalisation_does_not():
    flow = torch.zeros(2, 2, 1, 1)
    flow[0, 0] = 1.0
    flow[1, 0] = 4.0
    video_wide = flow_to_color(flow)
    per_frame = flow_to_color(flow, per_frame=True)
    assert torch.allclose(per_frame[0], per_frame[1])
    assert not torch.allclose(video_wide[0], video_wide[1])


def test_flow_video_is_in_minus_one_to_one_with_white_first_frame():
    torch.manual_seed(1)
    tracks = torch.cumsum(torch.randn(2, 6, 2) * 2, dim=1) + torch.tensor([30.0, 20.0])
    video = flow_video(tracks, 6, 40, 64)
    assert video.shape == (6, 3, 40, 64)
    assert video.min() >= -1.0 and video.max() <= 1.0
    assert video.min() < 0.0  # some motion was drawn
    assert torch.all(video[0] == 1.0)  # frame 0 carries no motion: white
