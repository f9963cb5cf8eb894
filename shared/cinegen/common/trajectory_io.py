"""Trajectory files: the JSON an artist (or a host adapter) writes to make an object follow a path.

Format (DESIGN.md "Trajectories")::

    {"origin": "top-left" | "bottom-left", "width": W, "height": H,
     "tracks": [{"name": "ball", "size": 64,
                 "points": [{"frame": 1001, "x": 120.0, "y": 300.5}, ...]}]}

Coordinates are pixels of a W×H image. Nuke's Tracker counts y up from the bottom (``bottom-left``);
Blender's camera view gives normalised bottom-left coordinates (``from_normalised``). The generation
side works top-left (``to_top_left``). Between keys a track is interpolated linearly; before its first
and after its last key it holds still (ALGORITHMS.md §3, "Input").

Positions are kept on a 2⁻²⁴-pixel grid: on that grid ``H − y`` and ``H − (H − y)`` are exact in
binary floating point (for |y|, H < 2²⁹), so origin flips round-trip bit for bit; the grid is far
finer than any tracker.

No torch here (``cinegen.common``); numpy and, for the PNG preview only, Pillow.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence
from xml.sax.saxutils import escape

import numpy as np

from cinegen.common.sequence import FrameRange

Origin = Literal["top-left", "bottom-left"]
ORIGINS: tuple[str, ...] = ("top-left", "bottom-left")
COORD_QUANTUM = 2.0**-24  # pixels; see the module docstring
# A point may lie off-screen (objects enter and leave) but not more than one frame size away.
OFFSCREEN_MARGIN = 1.0


class TrajectoryError(ValueError):
    """A trajectory that cannot be used, with a sentence saying what to fix."""

    def __init__(self, message: str, track: str | None = None, point: int | None = None) -> None:
        super().__init__(message)
        self.track = track
        self.point = point


def snap(value: float) -> float:
    """Round a coordinate to the 2⁻²⁴-pixel grid (exact flips, see module docstring)."""
    return round(value / COORD_QUANTUM) * COORD_QUANTUM


@dataclass(frozen=True)
class TrackPoint:
    frame: int
    x: float
    y: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", snap(float(self.x)))
        object.__setattr__(self, "y", snap(float(self.y)))


@dataclass(frozen=True)
class Track:
    name: str
    points: tuple[TrackPoint, ...]
    size: float | None = None  # box side in pixels; None lets the pipeline choose

    @property
    def first_frame(self) -> int:
        return self.points[0].frame

    @property
    def last_frame(self) -> int:
        return self.points[-1].frame


@dataclass(frozen=True)
class Trajectory:
    width: int
    height: int
    tracks: tuple[Track, ...]
    origin: Origin = "top-left"

    @property
    def frame_range(self) -> tuple[int, int]:
        """First and last keyed frame over all tracks (inclusive)."""
        return (min(t.first_frame for t in self.tracks), max(t.last_frame for t in self.tracks))

    def with_origin(self, origin: Origin) -> Trajectory:
        """The same paths with y counted from the other edge when ``origin`` differs: y' = H − y."""
        if origin not in ORIGINS:
            raise TrajectoryError(f"origin must be one of {', '.join(ORIGINS)}, not {origin!r}")
        if origin == self.origin:
            return self
        flipped = tuple(
            replace(t, points=tuple(TrackPoint(p.frame, p.x, self.height - p.y) for p in t.points))
            for t in self.tracks
        )
        return replace(self, tracks=flipped, origin=origin)

    def to_top_left(self) -> Trajectory:
        return self.with_origin("top-left")

    def to_bottom_left(self) -> Trajectory:
        return self.with_origin("bottom-left")

    def scaled_to(self, width: int, height: int) -> Trajectory:
        """The same paths in pixels of a width×height image (sizes scale by the mean linear factor)."""
        _check_size(width, height)
        sx, sy = width / self.width, height / self.height
        size_scale = math.sqrt(sx * sy)
        tracks = tuple(
            replace(
                t,
                points=tuple(TrackPoint(p.frame, p.x * sx, p.y * sy) for p in t.points),
                size=None if t.size is None else t.size * size_scale,
            )
            for t in self.tracks
        )
        return replace(self, width=width, height=height, tracks=tracks)

    def to_dict(self) -> dict[str, Any]:
        # Eight decimals (±5e-9 px) re-snap to the same grid point on load, so dump → load is exact.
        return {
            "origin": self.origin,
            "width": self.width,
            "height": self.height,
            "tracks": [
                {
                    "name": t.name,
                    "points": [{"frame": p.frame, "x": round(p.x, 8), "y": round(p.y, 8)} for p in t.points],
                    **({} if t.size is None else {"size": t.size}),
                }
                for t in self.tracks
            ],
        }


# ------------------------------------------------------------------------------------------ parsing
def load_trajectory(source: str | Path) -> Trajectory:
    """Read a trajectory from a file path, or from the JSON text itself (text starts with ``{``)."""
    if isinstance(source, str) and source.lstrip("\ufeff \t\r\n").startswith("{"):
        text = source
    else:
        path = Path(source)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise TrajectoryError(f"trajectory file not found: {path}") from None
        except OSError as e:  # a folder, no permission, ...
            raise TrajectoryError(f"trajectory file {path} cannot be read ({e.strerror or e})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise TrajectoryError(f"trajectory file {path.name} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line "
                                  f"{line}): save it as UTF-8") from None
    try:
        data = json.loads(text.lstrip("\ufeff"))  # a byte-order mark, as some Windows tools write, is no content
    except json.JSONDecodeError as e:
        raise TrajectoryError(
            f"trajectory is not valid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except RecursionError:
        raise TrajectoryError("trajectory nests its JSON too deeply to read") from None
    return parse_trajectory(data)


def parse_trajectory(data: Any) -> Trajectory:
    """Validate a decoded JSON document and build a Trajectory (errors say what to fix)."""
    if not isinstance(data, dict):
        raise TrajectoryError("a trajectory must be a JSON object with origin, width, height and tracks")
    for key in ("width", "height", "tracks"):
        if key not in data:
            raise TrajectoryError(f"the trajectory has no '{key}': add it (width/height are the pixel "
                                  f"size the coordinates refer to; tracks is a list of tracks)")
    origin = data.get("origin", "top-left")
    if origin not in ORIGINS:
        raise TrajectoryError(f"origin must be \"top-left\" or \"bottom-left\" (Nuke's tracker), not {origin!r}")
    width, height = data["width"], data["height"]
    _check_size(width, height)
    tracks_data = data["tracks"]
    if not isinstance(tracks_data, list) or not tracks_data:
        raise TrajectoryError("'tracks' must be a non-empty list of tracks")
    tracks: list[Track] = []
    seen: set[str] = set()
    for index, track_data in enumerate(tracks_data, start=1):
        track = _parse_track(track_data, index, width, height)
        if track.name in seen:
            raise TrajectoryError(f"two tracks are named '{track.name}': give each track its own name",
                                  track=track.name)
        seen.add(track.name)
        tracks.append(track)
    return Trajectory(width=int(width), height=int(height), tracks=tuple(tracks), origin=origin)


def _check_size(width: Any, height: Any) -> None:
    for label, value in (("width", width), ("height", height)):
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value != int(value) or value <= 0):
            raise TrajectoryError(f"{label} must be a whole number of pixels above 0, not {value!r}")


def _parse_track(data: Any, index: int, width: int, height: int) -> Track:
    if not isinstance(data, dict):
        raise TrajectoryError(f"track {index} must be an object with name and points")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise TrajectoryError(f"track {index} has no name: add \"name\": \"...\" so it can be told apart")
    points_data = data.get("points")
    if not isinstance(points_data, list) or not points_data:
        raise TrajectoryError(f"track '{name}' has no points: add a list of {{\"frame\", \"x\", \"y\"}}",
                              track=name)
    size = data.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, float))
                             or not math.isfinite(size) or size <= 0):
        raise TrajectoryError(f"track '{name}' size must be a number of pixels above 0, not {size!r}",
                              track=name)
    points: list[TrackPoint] = []
    for number, point_data in enumerate(points_data, start=1):
        point = _parse_point(point_data, name, number, width, height)
        if points and point.frame == points[-1].frame:
            raise TrajectoryError(f"track '{name}' has two points on frame {point.frame} (points "
                                  f"{number - 1} and {number}): keep one", track=name, point=number)
        if points and point.frame < points[-1].frame:
            raise TrajectoryError(f"track '{name}' point {number} (frame {point.frame}) comes after frame "
                                  f"{points[-1].frame}: frames must increase; sort the points by frame",
                                  track=name, point=number)
        points.append(point)
    return Track(name=name, points=tuple(points), size=None if size is None else float(size))


def _parse_point(data: Any, track: str, number: int, width: int, height: int) -> TrackPoint:
    where = f"track '{track}' point {number}"
    if not isinstance(data, dict):
        raise TrajectoryError(f"{where} must be an object {{\"frame\", \"x\", \"y\"}}", track, number)
    missing = [key for key in ("frame", "x", "y") if key not in data]
    if missing:
        raise TrajectoryError(f"{where} has no {' or '.join(missing)}: every point needs frame, x and y",
                              track, number)
    frame, x, y = data["frame"], data["x"], data["y"]
    if (isinstance(frame, bool) or not isinstance(frame, (int, float)) or not math.isfinite(frame)
            or frame != int(frame)):
        raise TrajectoryError(f"{where}: frame must be a whole frame number, not {frame!r}", track, number)
    for label, value in (("x", x), ("y", y)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TrajectoryError(f"{where} (frame {int(frame)}): {label} must be a number, not {value!r}",
                                  track, number)
    for label, value, extent in (("x", x, width), ("y", y, height)):
        low, high = -OFFSCREEN_MARGIN * extent, (1 + OFFSCREEN_MARGIN) * extent
        if not low <= value <= high:
            raise TrajectoryError(
                f"{where} (frame {int(frame)}) has {label}={value:g}, far outside the {int(width)}×"
                f"{int(height)} frame (allowed {low:g} to {high:g}): check that width/height match the "
                f"image the track was made on and that coordinates are pixels, not 0–1",
                track, number)
    return TrackPoint(int(frame), float(x), float(y))


def to_json(trajectory: Trajectory, indent: int | None = 2) -> str:
    return json.dumps(trajectory.to_dict(), indent=indent)


def dump_trajectory(trajectory: Trajectory, path: str | Path) -> None:
    Path(path).write_text(to_json(trajectory) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------- frames and coords
FrameSpan = FrameRange | tuple[int, int] | range


def frame_numbers(frames: FrameSpan) -> np.ndarray:
    """Frame numbers of a FrameRange or a ``(first, last)`` pair (both inclusive), or a ``range``."""
    if isinstance(frames, range):
        return np.asarray(frames, dtype=np.int64)
    if isinstance(frames, FrameRange):
        first, last = int(frames.first), int(frames.last)
    else:
        first, last = (int(f) for f in frames)  # type: ignore[misc]
    if last < first:
        raise TrajectoryError(f"frame range {first}–{last} is empty: the last frame comes before the first")
    return np.arange(first, last + 1, dtype=np.int64)


def interpolate_track(track: Track, frames: FrameSpan) -> np.ndarray:
    """(N, 2) positions (x, y) on every frame: linear between keys, held before/after them."""
    numbers = frame_numbers(frames).astype(np.float64)
    keys = np.array([p.frame for p in track.points], dtype=np.float64)
    xs = np.array([p.x for p in track.points], dtype=np.float64)
    ys = np.array([p.y for p in track.points], dtype=np.float64)
    return np.stack([np.interp(numbers, keys, xs), np.interp(numbers, keys, ys)], axis=1)


def interpolate_tracks(trajectory: Trajectory, frames: FrameSpan) -> np.ndarray:
    """(K, N, 2) top-left pixel positions of every track on every frame (what flowmap.py takes)."""
    top_left = trajectory.to_top_left()
    return np.stack([interpolate_track(t, frames) for t in top_left.tracks])


def from_normalised(points: Iterable[tuple[int, float, float] | TrackPoint], width: int, height: int,
                    origin: Origin = "bottom-left") -> list[TrackPoint]:
    """Top-left pixel points from normalised (0–1) ones whose origin is ``origin`` (Blender's camera
    view is bottom-left: (0, 0) bottom-left corner, (1, 1) top-right)."""
    _check_size(width, height)
    out = []
    for p in points:
        frame, nx, ny = (p.frame, p.x, p.y) if isinstance(p, TrackPoint) else p
        y = ny * height
        out.append(TrackPoint(int(frame), nx * width, height - y if origin == "bottom-left" else y))
    return out


def to_normalised(points: Iterable[TrackPoint], width: int, height: int,
                  origin: Origin = "bottom-left") -> list[tuple[int, float, float]]:
    """Inverse of ``from_normalised``: (frame, nx, ny) with the given origin."""
    out = []
    for p in points:
        y = height - p.y if origin == "bottom-left" else p.y
        out.append((p.frame, p.x / width, y / height))
    return out


# ---------------------------------------------------------------------------------------- previews
TRACK_COLOURS: tuple[str, ...] = ("#ff4d4d", "#4dd2ff", "#ffd24d", "#7dff4d", "#d24dff", "#ff9f4d",
                                  "#4dffb8", "#ff4da6")


def _colour(index: int) -> str:
    return TRACK_COLOURS[index % len(TRACK_COLOURS)]


def trajectory_preview_svg(trajectory: Trajectory, background_png: bytes | None = None) -> str:
    """An SVG (width×height user units) with each track as a polyline through its keys, a dot per
    key and its name at the start, over an optional first-frame PNG embedded as a data URI."""
    traj = trajectory.to_top_left()
    w, h = traj.width, traj.height
    stroke = max(1.0, min(w, h) / 200)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">']
    if background_png is not None:
        uri = "data:image/png;base64," + base64.b64encode(background_png).decode("ascii")
        parts.append(f'<image href="{uri}" x="0" y="0" width="{w}" height="{h}" '
                     f'preserveAspectRatio="none"/>')
    else:
        parts.append(f'<rect x="0" y="0" width="{w}" height="{h}" fill="#202020"/>')
    for index, track in enumerate(traj.tracks):
        colour = _colour(index)
        coords = " ".join(f"{p.x:.2f},{p.y:.2f}" for p in track.points)
        parts.append(f'<g class="track" data-name="{escape(track.name, {chr(34): "&quot;"})}">')
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                     f'stroke-width="{stroke:.2f}"/>')
        for p in track.points:
            parts.append(f'<circle cx="{p.x:.2f}" cy="{p.y:.2f}" r="{2 * stroke:.2f}" fill="{colour}">'
                         f'<title>frame {p.frame}</title></circle>')
        first = track.points[0]
        parts.append(f'<text x="{first.x + 3 * stroke:.2f}" y="{first.y - 3 * stroke:.2f}" fill="{colour}" '
                     f'font-family="sans-serif" font-size="{8 * stroke:.1f}">{escape(track.name)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


def trajectory_preview_png(trajectory: Trajectory, background_png: bytes | None = None,
                           max_side: int | None = 512) -> bytes:
    """A PNG preview: tracks in distinct colours, a ring at the start, an arrow head at the end,
    scaled so its longer side is at most ``max_side`` (previews are small)."""
    from PIL import Image, ImageDraw  # local: the rest of the module must not need Pillow

    traj = trajectory.to_top_left()
    scale = 1.0 if max_side is None else min(1.0, max_side / max(traj.width, traj.height))
    size = (max(1, round(traj.width * scale)), max(1, round(traj.height * scale)))
    if background_png is not None:
        canvas = Image.open(io.BytesIO(background_png)).convert("RGB").resize(size)
    else:
        canvas = Image.new("RGB", size, (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    line = max(1, round(min(size) / 150))
    for index, track in enumerate(traj.tracks):
        colour = _colour(index)
        xy = [(p.x * scale, p.y * scale) for p in track.points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=line, joint="curve")
        for x, y in xy:
            draw.ellipse((x - line, y - line, x + line, y + line), fill=colour)
        sx, sy = xy[0]
        ring = 3 * line
        draw.ellipse((sx - ring, sy - ring, sx + ring, sy + ring), outline=colour, width=line)
        if len(xy) > 1:
            draw.polygon(_arrow_head(xy, 5 * line), fill=colour)
        draw.text((sx + ring + 2, sy - ring - 10), track.name, fill=colour)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _arrow_head(xy: Sequence[tuple[float, float]], length: float) -> list[tuple[float, float]]:
    (x0, y0), (x1, y1) = xy[-2], xy[-1]
    angle = math.atan2(y1 - y0, x1 - x0)
    left, right = angle + math.radians(150), angle - math.radians(150)
    return [(x1, y1), (x1 + length * math.cos(left), y1 + length * math.sin(left)),
            (x1 + length * math.cos(right), y1 + length * math.sin(right))]
