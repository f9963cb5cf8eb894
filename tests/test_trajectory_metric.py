"""The trajectory metric finds a moving object and measures its distance from the requested track."""
from __future__ import annotations

import numpy as np
import pytest

from cinegen.server.trajectory_metric import (LocateParams, draw_disc_video, locate_object,
                                              measure_trajectory_error, trajectory_error)


def _track(frames: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    start, end = rng.uniform(10, 20, 2), rng.uniform(44, 54, 2)
    return np.linspace(start, end, frames)  # sub-pixel positions


@pytest.mark.parametrize("reference", ["frame", "temporal"])
def test_a_moving_disc_is_located_within_one_pixel(reference):
    track = _track()
    video = draw_disc_video(track, 64, 64, radius=6)
    located = locate_object(video, LocateParams(reference=reference))
    assert np.abs(located - track).max() < 1.0


def test_a_disc_on_pixel_centres_that_follows_the_track_perfectly_has_zero_error():
    track = np.floor(_track()) + 0.5  # centres of pixels: the disc is symmetric on the grid
    report = measure_trajectory_error(draw_disc_video(track, 64, 64, radius=5), track)
    assert report.mean_px == pytest.approx(0.0, abs=1e-9) and report.max_px == pytest.approx(0.0, abs=1e-9)


def test_the_error_is_the_mean_distance_in_pixels():
    track = _track()
    shifted = track + np.array([3.0, 4.0])
    assert trajectory_error(shifted, track).mean_px == pytest.approx(5.0)
    half = track.copy()
    half[::2] += np.array([6.0, 8.0])
    report = trajectory_error(half, track)
    assert report.mean_px == pytest.approx(5.0) and report.max_px == pytest.approx(10.0)


def test_channel_first_frames_give_the_same_positions():
    track = _track(seed=1)
    video = draw_disc_video(track, 48, 64, radius=4)
    np.testing.assert_allclose(locate_object(video.transpose(0, 3, 1, 2)), locate_object(video))


def test_the_temporal_reference_sees_through_a_static_textured_background():
    track = _track(seed=2)
    texture = np.random.default_rng(3).uniform(0, 1, (64, 64, 3))
    video = draw_disc_video(track, 64, 64, radius=6)
    disc = np.all(video == (1.0, 0.1, 0.1), axis=-1)
    video = np.where(disc[..., None], video, texture)  # the disc over a busy, still plate
    located = locate_object(video, LocateParams(reference="temporal"))
    assert np.abs(located - track).max() < 1.0


def test_a_frame_where_nothing_differs_counts_as_a_miss_of_the_frame_diagonal():
    track = _track(frames=3)
    video = draw_disc_video(track, 30, 40, radius=4)
    video[1] = video[1].reshape(-1, 3)[0]  # frame 1: background only
    report = measure_trajectory_error(video, track)
    assert np.isnan(locate_object(video)[1]).all()
    assert report.per_frame_px[1] == pytest.approx(50.0)  # √(40² + 30²)
