"""Trajectory JSON: parsing, artist-facing validation, interpolation, exact coordinate conversions, previews."""

import base64
import io
import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cinegen.common.sequence import FrameRange
from cinegen.common.trajectory_io import (
    COORD_QUANTUM,
    Track,
    TrackPoint,
    Trajectory,
    TrajectoryError,
    dump_trajectory,
    from_normalised,
    interpolate_track,
    interpolate_tracks,
    load_trajectory,
    parse_trajectory,
    to_json,
    to_normalised,
    trajectory_preview_png,
    trajectory_preview_svg,
)


def document(**overrides):
    doc = {
        "origin": "top-left",
        "width": 720,
        "height": 480,
        "tracks": [
            {"name": "ball", "size": 64, "points": [{"frame": 1001, "x": 100, "y": 400},
                                                     {"frame": 1011, "x": 300.5, "y": 200.25}]},
            {"name": "bird", "points": [{"frame": 1005, "x": 600, "y": 50}]},
        ],
    }
    doc.update(overrides)
    return doc


def with_points(points, name="ball"):
    return document(tracks=[{"name": name, "points": points}])


def test_a_valid_document_loads_from_text_and_from_a_file(tmp_path):
    traj = load_trajectory(json.dumps(document()))
    assert traj.width == 720 and traj.height == 480 and traj.origin == "top-left"
    assert [t.name for t in traj.tracks] == ["ball", "bird"]
    assert traj.tracks[0].size == 64.0 and traj.tracks[1].size is None
    assert traj.tracks[0].points[1] == TrackPoint(1011, 300.5, 200.25)
    assert traj.frame_range == (1001, 1011)
    path = tmp_path / "tracks.json"
    dump_trajectory(traj, path)
    assert load_trajectory(path) == traj
    assert load_trajectory(str(path)) == traj


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-700, 1400), st.floats(-400, 900)), min_size=1, max_size=6))
def test_json_dump_and_load_round_trip_exactly(coords):
    points = [{"frame": i, "x": x, "y": y} for i, (x, y) in enumerate(coords)]
    traj = parse_trajectory(with_points(points))
    assert load_trajectory(to_json(traj)) == traj


@pytest.mark.parametrize("doc, words", [
    ([1, 2], ["JSON object"]),
    ({"width": 10, "height": 10}, ["no 'tracks'"]),
    (document(width=0), ["width", "above 0"]),
    (document(height=-480), ["height", "above 0"]),
    (document(width=720.5), ["width", "whole number"]),
    (document(origin="center"), ["origin", "bottom-left"]),
    (document(tracks=[]), ["non-empty"]),
    (document(tracks=[{"points": [{"frame": 1, "x": 1, "y": 1}]}]), ["track 1", "no name"]),
    (document(tracks=[{"name": "a", "points": []}]), ["track 'a'", "no points"]),
    (with_points([{"frame": 1, "x": 1}]), ["track 'ball' point 1", "no y"]),
    (with_points([{"frame": 1, "x": 1, "y": 1}, {"frame": 1, "x": 2, "y": 2}]),
     ["track 'ball'", "two points on frame 1", "keep one"]),
    (with_points([{"frame": 5, "x": 1, "y": 1}, {"frame": 3, "x": 2, "y": 2}]),
     ["track 'ball' point 2", "frame 3", "sort the points"]),
    (with_points([{"frame": 1.5, "x": 1, "y": 1}]), ["whole frame number"]),
    (with_points([{"frame": 1, "x": "12", "y": 1}]), ["x must be a number"]),
    (with_points([{"frame": 1, "x": 5000, "y": 1}]), ["point 1", "x=5000", "far outside the 720×480"]),
    (with_points([{"frame": 1, "x": 1, "y": -900}]), ["y=-900", "far outside"]),
    (document(tracks=[{"name": "a", "size": 0, "points": [{"frame": 1, "x": 1, "y": 1}]}]), ["size"]),
    (document(tracks=[{"name": "a", "points": [{"frame": 1, "x": 1, "y": 1}]},
                      {"name": "a", "points": [{"frame": 1, "x": 1, "y": 1}]}]), ["two tracks are named 'a'"]),
])
def test_validation_errors_name_the_problem(doc, words):
    with pytest.raises(TrajectoryError) as caught:
        parse_trajectory(doc)
    for word in words:
        assert word in str(caught.value)


def test_validation_errors_carry_the_track_and_point():
    with pytest.raises(TrajectoryError) as caught:
        parse_trajectory(with_points([{"frame": 1, "x": 1, "y": 1}, {"frame": 1, "x": 2, "y": 2}]))
    assert caught.value.track == "ball" and caught.value.point == 2


def test_invalid_json_reports_line_and_column():
    with pytest.raises(TrajectoryError, match=r"line 2 column \d+"):
        load_trajectory('{"width": 10,\n "height": 10 "tracks": []}')


def test_files_from_other_tools_load_or_say_what_to_fix(tmp_path):
    # a BOM was "not valid JSON"; Infinity/NaN sizes and frames, Latin-1 and deep nesting raised OverflowError,
    # ValueError, UnicodeDecodeError and RecursionError instead of a TrajectoryError
    text = json.dumps(with_points([{"frame": 1, "x": 1, "y": 1}]))
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_trajectory(bom) == load_trajectory("\ufeff" + text) == load_trajectory(text)
    from cinegen.server.documents import Origin, check_trajectory  # the server's check of the same text
    from cinegen.server.limits import Limits
    assert check_trajectory("\ufeff" + text, Origin("the trajectory file", True), Limits()) == load_trajectory(text)
    for broken, words in ((text.replace('"width": 720', '"width": Infinity'), "width must be a whole number"),
                          (text.replace('"height": 480', '"height": NaN'), "height must be a whole number"),
                          (text.replace('"frame": 1', '"frame": -Infinity'), "frame must be a whole frame number"),
                          # 100 000 levels: Python 3.13's json reads 5000 without a RecursionError
                          ('{"tracks": ' + "[" * 100_000 + "]" * 100_000 + "}", "too deeply")):
        with pytest.raises(TrajectoryError, match=words):
            load_trajectory(broken)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(text.replace("ball", "Kugel\u00fc").encode("latin-1"))
    with pytest.raises(TrajectoryError, match="latin1.json is not UTF-8 text"):
        load_trajectory(latin1)
    with pytest.raises(TrajectoryError, match="cannot be read"):
        load_trajectory(tmp_path)


def test_points_slightly_off_screen_are_allowed():
    traj = parse_trajectory(with_points([{"frame": 1, "x": -200, "y": 700}]))
    assert traj.tracks[0].points[0].x == -200


def test_interpolation_is_linear_between_keys_and_holds_outside():
    track = Track("a", (TrackPoint(10, 0.0, 100.0), TrackPoint(14, 8.0, 60.0), TrackPoint(16, 8.0, 80.0)))
    positions = interpolate_track(track, (8, 18))
    assert positions.shape == (11, 2)
    expected = [(0, 100), (0, 100), (0, 100), (2, 90), (4, 80), (6, 70), (8, 60), (8, 70), (8, 80), (8, 80), (8, 80)]
    np.testing.assert_array_equal(positions, np.array(expected, dtype=float))
    np.testing.assert_array_equal(interpolate_track(track, FrameRange(8, 18)), positions)
    np.testing.assert_array_equal(interpolate_track(track, range(8, 19)), positions)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.floats(-700, 1400), st.floats(-400, 900)),
                min_size=1, max_size=8, unique_by=lambda p: p[0]))
def test_interpolation_passes_through_every_key(keys):
    keys = sorted(keys)
    track = Track("a", tuple(TrackPoint(*k) for k in keys))
    positions = interpolate_track(track, (0, 50))
    for point in track.points:
        assert tuple(positions[point.frame]) == (point.x, point.y)


def test_interpolate_tracks_returns_top_left_positions_for_every_track():
    traj = parse_trajectory(document(origin="bottom-left"))
    stacked = interpolate_tracks(traj, (1001, 1011))
    assert stacked.shape == (2, 11, 2)
    assert stacked[0, 0].tolist() == [100.0, 480 - 400.0]
    assert stacked[1, 0].tolist() == [600.0, 480 - 50.0]


@settings(max_examples=200, deadline=None)
@given(st.floats(-1000, 2000), st.floats(-1000, 2000), st.integers(1, 8192))
def test_origin_flips_round_trip_exactly(x, y, height):
    y = max(-height, min(2 * height, y))
    x = max(-720, min(1440, x))
    traj = Trajectory(720, height, (Track("a", (TrackPoint(1, x, y),)),), origin="bottom-left")
    top = traj.to_top_left()
    assert top.origin == "top-left"
    assert top.tracks[0].points[0].y == height - traj.tracks[0].points[0].y
    assert top.to_bottom_left() == traj
    assert top.to_bottom_left().to_top_left() == top


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1), st.integers(16, 8192), st.integers(16, 8192))
def test_normalised_to_pixels_and_back_round_trips_within_float_precision(nx, ny, width, height):
    (point,) = from_normalised([(7, nx, ny)], width, height, origin="bottom-left")
    (frame, bx, by) = to_normalised([point], width, height, origin="bottom-left")[0]
    assert frame == 7
    # Pixels sit on the 2^-24 px grid, so the error is at most half a grid step, in units of the frame.
    assert abs(bx - nx) <= COORD_QUANTUM / width + 1e-15
    assert abs(by - ny) <= COORD_QUANTUM / height + 1e-15


def test_blender_normalised_corners_land_on_the_right_pixels():
    corners = from_normalised([(1, 0.0, 0.0), (2, 1.0, 1.0), (3, 0.5, 0.25)], 1920, 1080)
    assert [(p.x, p.y) for p in corners] == [(0.0, 1080.0), (1920.0, 0.0), (960.0, 810.0)]
    top_left = from_normalised([(1, 0.5, 0.25)], 1920, 1080, origin="top-left")
    assert (top_left[0].x, top_left[0].y) == (960.0, 270.0)


def test_scaling_to_the_output_size_scales_positions_and_sizes():
    traj = parse_trajectory(document())
    half = traj.scaled_to(360, 240)
    assert half.width == 360 and half.height == 240
    assert half.tracks[0].points[1] == TrackPoint(1011, 150.25, 100.125)
    assert half.tracks[0].size == 32.0
    stretched = traj.scaled_to(1440, 480)
    assert stretched.tracks[0].points[0] == TrackPoint(1001, 200.0, 400.0)
    assert stretched.tracks[0].size == pytest.approx(64 * math.sqrt(2))


def test_scaling_commutes_with_the_origin_flip():
    traj = parse_trajectory(document(origin="bottom-left"))
    assert traj.scaled_to(360, 240).to_top_left() == traj.to_top_left().scaled_to(360, 240)


def test_svg_preview_draws_every_track_with_a_dot_per_key_and_its_name():
    traj = parse_trajectory(document(origin="bottom-left"))
    svg = trajectory_preview_svg(traj)
    assert svg.startswith("<svg") and 'viewBox="0 0 720 480"' in svg
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 3
    assert ">ball</text>" in svg and ">bird</text>" in svg
    assert 'points="100.00,80.00 300.50,279.75"' in svg  # drawn top-left


def test_svg_preview_embeds_the_background_and_escapes_names():
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(png, format="PNG")
    traj = parse_trajectory(document(tracks=[{"name": "<a&b>", "points": [{"frame": 1, "x": 1, "y": 1}]}]))
    svg = trajectory_preview_svg(traj, background_png=png.getvalue())
    uri = re.search(r'href="data:image/png;base64,([^"]+)"', svg).group(1)
    assert base64.b64decode(uri) == png.getvalue()
    assert "&lt;a&amp;b&gt;" in svg and "<a&b>" not in svg


def test_png_preview_is_small_and_draws_the_tracks_in_distinct_colours():
    traj = parse_trajectory(document())
    image = Image.open(io.BytesIO(trajectory_preview_png(traj, max_side=360))).convert("RGB")
    assert image.size == (360, 240)
    colours = {c for _, c in image.getcolors(360 * 240) if c != (32, 32, 32)}
    assert {(0xFF, 0x4D, 0x4D), (0x4D, 0xD2, 0xFF)} <= colours  # first two track colours


def test_png_preview_draws_over_the_given_first_frame():
    png = io.BytesIO()
    Image.new("RGB", (72, 48), (0, 90, 0)).save(png, format="PNG")
    traj = parse_trajectory(document())
    image = Image.open(io.BytesIO(trajectory_preview_png(traj, png.getvalue(), max_side=None))).convert("RGB")
    assert image.size == (720, 480)
    assert image.getpixel((5, 5)) == (0, 90, 0)
