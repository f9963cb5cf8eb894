"""`cinegen export-cut`: the story cut through the real OTIO adapters (CMX 3600 EDL, FCP 7 XML, FCPXML),
each result read back by the same adapter: clip count, each clip's duration and rate equal the cut's,
the record start is 01:00:00:00, and every media reference names the first frame of its sequence."""
from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ET
from fractions import Fraction
import urllib.request
from pathlib import Path

import opentimelineio as otio
import pytest

from cinegen.server.cli import main
from cinegen.server.output.cut_export import FORMATS
from cinegen.server.output.otio_cut import MissingShot, ShotRecord, shot_frame_path, write_story_timeline

RATE = 24.0
ONE_HOUR = otio.opentime.RationalTime(86400, RATE)


def _record(shot: str, frames: int, first: int = 1001) -> ShotRecord:
    return ShotRecord(shot=shot, prompt=f"prompt of {shot}", seed=3, model="tiny-animatediff", keyframe_model="tiny-sd",
                      job="job-1", first_frame=first, frames=frames, fps=RATE, keyframes=[0])


@pytest.fixture()
def cut(tmp_path):
    out = tmp_path / "story out"  # a space: URLs must be quoted
    shots = [_record("sh010", 5), MissingShot("sh020", "absent", 4, RATE), _record("sh030", 3, first=1),
             _record("sh040", 7)]
    for record in shots:
        if isinstance(record, ShotRecord):
            for frame in range(record.first_frame, record.first_frame + record.frames):
                path = shot_frame_path(out, record.shot, frame)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"exr")
    return write_story_timeline(out, "Tiny Test", RATE, shots), [s for s in shots if isinstance(s, ShotRecord)]


def _clips(timeline) -> list[tuple[str, float, float]]:
    return [(c.name, c.source_range.duration.value, c.source_range.duration.rate) for c in timeline.find_clips()]


@pytest.mark.parametrize("to", ["edl", "fcp7", "fcpxml"])
def test_each_format_reads_back_with_the_cuts_clips_durations_and_rates(cut, to, capsys):
    path, records = cut
    assert path.name == "Tiny_Test.otio"
    assert main(["export-cut", str(path), "--to", to]) == 0
    exported = path.with_suffix(FORMATS[to][1])
    assert capsys.readouterr().out.strip() == str(exported)
    original = otio.adapters.read_from_file(str(path))
    back = otio.adapters.read_from_file(str(exported), adapter_name=FORMATS[to][0])
    assert _clips(back) == _clips(original) == [(r.shot, float(r.frames), RATE) for r in records]
    for clip, record in zip(back.find_clips(), records):
        url = clip.media_reference.target_url
        frame = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        assert frame == shot_frame_path(path.parent, record.shot, record.first_frame).resolve() and frame.is_file()
    assert _record_start(back, exported, to) == ONE_HOUR
    assert back.tracks[0].duration() == original.tracks[0].duration()  # the missing shot's hole included


def _record_start(timeline, exported: Path, to: str) -> otio.opentime.RationalTime:
    """Where each format keeps the record start: FCP 7 in the timeline, CMX as the first record-in
    (the reader puts it in the track's source range), FCPXML in `<sequence tcStart>`."""
    if to == "fcp7":
        return timeline.global_start_time
    if to == "edl":
        return -timeline.tracks[0].source_range.start_time
    tc_start = ET.parse(exported).getroot().find(".//sequence").get("tcStart")
    return otio.opentime.RationalTime(float(Fraction(tc_start.rstrip("s")) * int(RATE)), RATE)


def test_the_edl_records_from_one_hour_and_keeps_the_missing_shots_hole(cut):
    path, _ = cut
    out = path.with_suffix(".edl")
    assert main(["export-cut", str(path), "--to", "edl", "--out", str(out)]) == 0
    events = [line.split() for line in out.read_text().splitlines() if line[:3].isdigit()]
    assert [e[1] for e in events] == ["sh010", "sh030", "sh040"]  # reel names are the shots
    assert [(e[-2], e[-1]) for e in events] == [("01:00:00:00", "01:00:00:05"), ("01:00:00:09", "01:00:00:12"),
                                                ("01:00:00:12", "01:00:00:19")]  # sh020's 4 frames stay a hole


def test_another_record_start_and_a_portable_otio(cut, tmp_path):
    path, _ = cut
    out = tmp_path / "zero.xml"
    assert main(["export-cut", str(path), "--to", "fcp7", "--out", str(out), "--record-start", "00:00:00:00"]) == 0
    assert otio.adapters.read_from_file(str(out)).global_start_time.value == 0
    copy = tmp_path / "copy.otio"
    assert main(["export-cut", str(path), "--to", "otio", "--out", str(copy)]) == 0
    ref = next(iter(otio.adapters.read_from_file(str(copy)).find_clips())).media_reference
    assert ref.target_url_base == (path.parent / "sh010").resolve().as_uri() + "/"  # absolute: no folder beside it
    assert main(["export-cut", str(path), "--to", "edl", "--record-start", "one hour"]) == 2
