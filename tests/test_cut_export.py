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


def _cut_at(tmp_path, fps: float) -> Path:
    record = ShotRecord(shot="sh010", prompt="p", seed=3, model="m", keyframe_model="k", job="j", first_frame=1001,
                        frames=5, fps=fps, keyframes=[0])
    for frame in range(1001, 1006):
        shot_frame_path(tmp_path, "sh010", frame).parent.mkdir(parents=True, exist_ok=True)
        shot_frame_path(tmp_path, "sh010", frame).write_bytes(b"exr")
    return write_story_timeline(tmp_path, "t", fps, [record, MissingShot("sh020", "p", 3, fps)])


def test_an_ntsc_fcpxml_names_its_frame_duration(tmp_path):
    # the writer looks 23.976 up as int(23.976) or 23.98 and wrote frameDuration="" (FCP refuses the file)
    cut = _cut_at(tmp_path, 23.976)
    assert main(["export-cut", str(cut), "--to", "fcpxml"]) == 0
    root = ET.parse(cut.with_suffix(".fcpxml")).getroot()
    assert [f.get("frameDuration") for f in root.iter("format")] == ["1001/24000s"]
    assert root.find(".//sequence").get("tcStart") == "18018/5s"  # 86400 frames of 1001/24000 s


def test_a_drop_frame_edl_starts_at_the_record_start_label(tmp_path):
    # the CMX writer labels 29.97 drop-frame: 01:00:00:00's 108000 frames would read 01:00:03;18
    cut = _cut_at(tmp_path, 29.97)
    for record_start, expected in ((None, "01:00:00;00 01:00:00;05"), ("00:59:58:00", "00:59:58;00 00:59:58;05")):
        assert main(["export-cut", str(cut), "--to", "edl"] + (["--record-start", record_start] if record_start
                                                                 else [])) == 0
        events = [line for line in cut.with_suffix(".edl").read_text().splitlines() if line[:3].isdigit()]
        assert len(events) == 1 and events[0].endswith(expected)


def test_timecode_formats_at_a_rate_without_timecode_say_so(tmp_path, capsys):
    cut = _cut_at(tmp_path, 12.0)
    for to in ("edl", "fcp7"):
        assert main(["export-cut", str(cut), "--to", to]) == 2
        assert "runs at 12 fps" in capsys.readouterr().err
    assert main(["export-cut", str(cut), "--to", "fcpxml"]) == 0
    assert [f.get("frameDuration") for f in ET.parse(cut.with_suffix(".fcpxml")).getroot().iter("format")] == ["1/12s"]


def _foreign_cut(path: Path, *tracks: otio.schema.Track) -> Path:
    timeline = otio.schema.Timeline("other tool", global_start_time=ONE_HOUR)
    timeline.tracks.extend(tracks)
    otio.adapters.write_to_file(timeline, str(path))
    return path


def test_cuts_from_other_tools_export_or_say_why(tmp_path, capsys):
    media = otio.schema.ExternalReference("file:///media/a.mov", available_range=otio.opentime.TimeRange(
        otio.opentime.RationalTime(10, RATE), otio.opentime.RationalTime(6, RATE)))
    track = otio.schema.Track(kind=otio.schema.TrackKind.Video)
    track.append(otio.schema.Clip("whole", media_reference=media))  # no source range: all of its media
    flat = _foreign_cut(tmp_path / "flat.otio", track)
    for to in ("edl", "fcp7", "fcpxml"):
        assert main(["export-cut", str(flat), "--to", to]) == 0, capsys.readouterr().err
    back = otio.adapters.read_from_file(str(flat.with_suffix(".edl")), rate=RATE)
    assert back.find_clips()[0].source_range == media.available_range
    nested = otio.schema.Track(kind=otio.schema.TrackKind.Video)
    nested.append(otio.schema.Stack(name="comp"))
    for tracks, says in (((track, nested), "has 2 video tracks"), ((nested,), "nests 'comp'")):
        assert main(["export-cut", str(_foreign_cut(tmp_path / "x.otio", *tracks)), "--to", "edl"]) == 2
        assert says in capsys.readouterr().err
    bare = tmp_path / "clip.otio"
    otio.adapters.write_to_file(otio.schema.Clip("c"), str(bare))
    assert main(["export-cut", str(bare), "--to", "edl"]) == 2
    assert "not a timeline" in capsys.readouterr().err


def test_edl_reels_tell_the_shots_apart(tmp_path):
    # reels were the first 8 characters: sq010_sh0010 and sq010_sh0020 were both reel sq010_sh at the same
    # source timecode, so a conform linked both events to one shot
    shots = [_record("sq010_sh0010", 2), _record("sq010_sh0020", 3), _record("sq010_sh0030", 2)]
    for record in shots:
        for frame in range(record.first_frame, record.first_frame + record.frames):
            shot_frame_path(tmp_path, record.shot, frame).parent.mkdir(parents=True, exist_ok=True)
            shot_frame_path(tmp_path, record.shot, frame).write_bytes(b"exr")
    cut = write_story_timeline(tmp_path, "t", RATE, shots)
    assert main(["export-cut", str(cut), "--to", "edl"]) == 0
    back = otio.adapters.read_from_file(str(cut.with_suffix(".edl")), rate=RATE)
    assert [c.metadata["cmx_3600"]["reel"] for c in back.find_clips()] == ["0_sh0010", "0_sh0020", "0_sh0030"]
    timeline = otio.adapters.read_from_file(str(cut))
    timeline.find_clips()[0].metadata["cmx_3600"] = {"reel": "A001C003"}  # a cut read from an EDL keeps its reels
    otio.adapters.write_to_file(timeline, str(cut))
    assert main(["export-cut", str(cut), "--to", "edl"]) == 0
    back = otio.adapters.read_from_file(str(cut.with_suffix(".edl")), rate=RATE)
    assert [c.metadata["cmx_3600"]["reel"] for c in back.find_clips()] == ["A001C003", "0_sh0020", "0_sh0030"]


def test_an_edl_from_editorial_converts_with_its_media_and_record_start(cut, tmp_path):
    # the CMX reader leaves media without an available range (FCP 7 writer: AttributeError) and keeps the
    # record start as the track's negative source start (FCPXML writer: 'computed time range would be invalid')
    path, records = cut
    edl = tmp_path / "from editorial.edl"
    assert main(["export-cut", str(path), "--to", "edl", "--out", str(edl)]) == 0
    for to in ("fcp7", "fcpxml"):
        assert main(["export-cut", str(edl), "--to", to]) == 0
        exported = edl.with_suffix(FORMATS[to][1])
        back = otio.adapters.read_from_file(str(exported), adapter_name=FORMATS[to][0])
        assert _clips(back) == [(r.shot, float(r.frames), RATE) for r in records]
        assert _record_start(back, exported, to) == ONE_HOUR


def test_an_edl_keeps_a_title_with_a_line_break_on_its_title_line(tmp_path):
    # a YAML title can hold a line break: the EDL's second title line was 'Unknown event type' to its reader
    shot = _record("sh010", 3)
    for frame in range(1001, 1004):
        shot_frame_path(tmp_path, "sh010", frame).parent.mkdir(parents=True, exist_ok=True)
        shot_frame_path(tmp_path, "sh010", frame).write_bytes(b"exr")
    cut = write_story_timeline(tmp_path, "Act 1\nDraft 2", RATE, [shot])
    assert main(["export-cut", str(cut), "--to", "edl"]) == 0
    back = otio.adapters.read_from_file(str(cut.with_suffix(".edl")), rate=RATE)
    assert back.name == "Act 1 Draft 2" and _clips(back) == [("sh010", 3.0, RATE)]
