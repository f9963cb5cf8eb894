"""The story cut as an OpenTimelineIO timeline: `OUT/<title>.otio`, built from the shots on disk.

DESIGN.md "Story files and timelines", HOSTS.md "OpenTimelineIO": one video track; one clip per shot
whose media is an `ImageSequenceReference` over `OUT/<shot>/<shot>.####.exr`; the shot's prompt,
seed, model and job in the clip's metadata under "cinegen"; a marker at every keyframe. A shot that
was never written (or failed) becomes a gap of its length with a red "missing" marker, so the cut
keeps its duration and editorial sees what is absent.

Editorial conventions: the cut's record start is 01:00:00:00 (`record_start`), media URLs are
relative to the `.otio` file (`sh010/`, so the folder can move between machines; `absolute_urls`
for `file://` URLs), and the file is named after a slug of the title (`Tiny_Test.otio`).
`export.py` turns the cut into EDL, FCP 7 XML or FCPXML with the real OTIO adapters.

Each finished shot leaves a small record, `OUT/.cinegen/shots/<shot>.json`; the timeline is always
rebuilt from the records of *all* shots, so re-running one shot rewrites a complete cut. Files are
written atomically (temporary name in the same folder, then rename).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import opentimelineio as otio

from cinegen.common.exr import fps_as_rational

from .temporary import temporary_beside

STATE_DIR = ".cinegen"  # OUT/.cinegen/: what the story pipeline keeps between runs
FRAME_PADDING = 4
STEM_BYTES = 160  # longest file name made from a title, before its suffix
RECORD_START = "01:00:00:00"  # where editorial expects a programme to start
_TIMECODE = re.compile(r"^(\d{2}):(\d{2}):(\d{2}):(\d{2,3})$")  # non-drop HH:MM:SS:FF


@dataclass
class ShotRecord:
    """What a finished shot's folder holds, as written when its last frame landed."""
    shot: str
    prompt: str
    seed: int
    model: str  # the video model that made the frames
    keyframe_model: str
    job: str
    first_frame: int
    frames: int
    fps: float
    keyframes: list[int] = field(default_factory=lambda: [0])  # offsets in the shot that are keyframes
    next_keyframe: str = ""  # the shot whose keyframe is this shot's last frame (continuity), if any


@dataclass
class MissingShot:
    """A shot of the story with no finished frames on disk."""
    shot: str
    prompt: str
    frames: int
    fps: float


def safe_file_stem(title: str) -> str:
    """A story title as a file name: path separators and control characters become '_'; at most
    STEM_BYTES of UTF-8 (file systems take 255 bytes a name, and the writer adds a suffix and a temporary part)."""
    stem = re.sub(r'[\x00-\x1f/\\:*?"<>|]', "_", title).strip().strip(".")
    stem = stem.encode("utf-8")[:STEM_BYTES].decode("utf-8", "ignore").rstrip().rstrip(".")
    return stem or "story"


def slug(title: str, fallback: str = "story") -> str:
    """A title as a portable file name: ASCII letters, digits, '-' and '_'; other runs become one '_'
    (at most STEM_BYTES characters, see safe_file_stem)."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^A-Za-z0-9-]+", "_", ascii_title).strip("_-")[:STEM_BYTES].rstrip("_-") or fallback


def timeline_path(out_dir: Path, title: str) -> Path:
    return Path(out_dir) / f"{slug(title)}.otio"


def shot_folder(out_dir: Path, shot_id: str) -> Path:
    return Path(out_dir) / shot_id


def shot_frame_path(out_dir: Path, shot_id: str, frame: int) -> Path:
    return shot_folder(out_dir, shot_id) / f"{shot_id}.{frame:0{FRAME_PADDING}d}.exr"


def shot_record_path(out_dir: Path, shot_id: str) -> Path:
    return Path(out_dir) / STATE_DIR / "shots" / f"{shot_id}.json"


def write_text_atomically(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_shot_record(out_dir: Path, record: ShotRecord) -> Path:
    return write_text_atomically(shot_record_path(out_dir, record.shot),
                                 json.dumps(dataclasses.asdict(record), indent=2, sort_keys=True))


def forget_shot_record(out_dir: Path, shot_id: str) -> None:
    """Called before a shot is regenerated: until it finishes again, the cut shows it as missing."""
    shot_record_path(out_dir, shot_id).unlink(missing_ok=True)


def load_shot_record(out_dir: Path, shot_id: str) -> ShotRecord | None:
    """The shot's record, or None when there is none or any of its frames is not on disk."""
    try:
        data = json.loads(shot_record_path(out_dir, shot_id).read_text(encoding="utf-8"))
        record = ShotRecord(**{f.name: data[f.name] for f in dataclasses.fields(ShotRecord) if f.name in data})
    except (OSError, ValueError, TypeError):
        return None
    frames = range(record.first_frame, record.first_frame + record.frames)
    if not all(shot_frame_path(out_dir, shot_id, f).is_file() for f in frames):
        return None
    return record


# ------------------------------------------------------------------------------------------ timeline
def cut_rate(fps: float) -> float:
    """The rate the cut is timed at: the EXR header's rational (23.976 -> 24000/1001, as OTIO's
    SMPTE rates, the CMX/FCP adapters and editorial expect; 23.976 itself has no timecode)."""
    numerator, denominator = fps_as_rational(fps)
    return numerator / denominator


def _range(start: int, duration: int, rate: float) -> otio.opentime.TimeRange:
    return otio.opentime.TimeRange(otio.opentime.RationalTime(start, rate),
                                   otio.opentime.RationalTime(duration, rate))


def shot_clip(out_dir: Path, record: ShotRecord, *, absolute_urls: bool = False) -> otio.schema.Clip:
    rate = cut_rate(record.fps)
    available = _range(record.first_frame, record.frames, rate)
    folder = shot_folder(out_dir, record.shot)
    # relative to the .otio, which lives in out_dir: the cut and its shots move together
    base = folder.resolve().as_uri() + "/" if absolute_urls else urllib.parse.quote(record.shot) + "/"
    reference = otio.schema.ImageSequenceReference(
        target_url_base=base,
        name_prefix=f"{record.shot}.", name_suffix=".exr", start_frame=record.first_frame, frame_step=1,
        rate=rate, frame_zero_padding=FRAME_PADDING, available_range=available)
    clip = otio.schema.Clip(name=record.shot, media_reference=reference, source_range=available,
                            metadata={"cinegen": {"prompt": record.prompt, "seed": record.seed, "model": record.model,
                                                  "keyframe_model": record.keyframe_model, "job": record.job}})
    for offset in record.keyframes:
        own = offset == 0
        name = f"keyframe {record.shot}" if own else f"keyframe {record.next_keyframe or 'next'} (continuity)"
        clip.markers.append(otio.schema.Marker(
            name=name, marked_range=_range(record.first_frame + offset, 0, rate),
            color=otio.schema.MarkerColor.GREEN if own else otio.schema.MarkerColor.CYAN,
            metadata={"cinegen": {"keyframe": record.shot if own else record.next_keyframe}}))
    return clip


def missing_gap(shot: MissingShot) -> otio.schema.Gap:
    gap = otio.schema.Gap(name=shot.shot, source_range=_range(0, shot.frames, cut_rate(shot.fps)),
                          metadata={"cinegen": {"missing": True, "prompt": shot.prompt}})
    gap.markers.append(otio.schema.Marker(name=f"missing {shot.shot}", marked_range=_range(0, 0, cut_rate(shot.fps)),
                                          color=otio.schema.MarkerColor.RED))
    return gap


def build_story_timeline(out_dir: Path, title: str, fps: float, shots: Sequence[ShotRecord | MissingShot], *,
                         record_start: str = RECORD_START, absolute_urls: bool = False) -> otio.schema.Timeline:
    """One video track, the shots in story order: a clip per finished shot, a gap per missing one.
    Every item is timed at the cut's rate: a shot made before the story's fps changed keeps its frames
    (its record says the rate it was made at) instead of landing between frames of the others."""
    track = otio.schema.Track(name="cinegen", kind=otio.schema.TrackKind.Video)
    for shot in shots:
        timed = dataclasses.replace(shot, fps=fps)
        track.append(shot_clip(out_dir, timed, absolute_urls=absolute_urls) if isinstance(shot, ShotRecord)
                     else missing_gap(timed))
    timeline = otio.schema.Timeline(name=title, global_start_time=start_time(record_start, cut_rate(fps)),
                                    metadata={"cinegen": {"story": title, "fps": fps, "record_start": record_start,
                                                          "missing": [s.shot for s in shots
                                                                      if isinstance(s, MissingShot)]}})
    timeline.tracks.append(track)
    return timeline


def start_time(timecode: str, fps: float) -> otio.opentime.RationalTime:
    """A record start as a time: "01:00:00:00" (SMPTE, non-drop) at the cut's rate."""
    try:
        return otio.opentime.from_timecode(timecode, fps)
    except ValueError as exc:  # OTIO raises ValueError on a malformed timecode
        problem = exc
    # OTIO counts timecode only at SMPTE rates; a 12 or 15 fps animatic counts its own frames per second
    match = _TIMECODE.match(timecode.strip())
    if match and not otio.opentime.RationalTime.is_valid_timecode_rate(fps):
        hours, minutes, seconds, frames = (int(part) for part in match.groups())
        if minutes < 60 and seconds < 60 and frames < math.ceil(fps):
            return otio.opentime.RationalTime(((hours * 60 + minutes) * 60 + seconds) * fps + frames, fps)
    raise ValueError(f"'{timecode}' is not a timecode HH:MM:SS:FF at {fps:g} fps ({problem}).") from None


def write_story_timeline(out_dir: Path, title: str, fps: float, shots: Sequence[ShotRecord | MissingShot], *,
                         record_start: str = RECORD_START, absolute_urls: bool = False) -> Path:
    """Write `OUT/<slug of title>.otio` atomically; returns its path."""
    timeline = build_story_timeline(out_dir, title, fps, shots, record_start=record_start,
                                    absolute_urls=absolute_urls)
    return write_text_atomically(timeline_path(out_dir, title),
                                 otio.adapters.write_to_string(timeline, adapter_name="otio_json"))
