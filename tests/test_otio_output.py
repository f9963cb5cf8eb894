"""The story cut as OpenTimelineIO: opens with the OTIO API and otiostat, one clip per shot whose
ImageSequenceReference resolves to the frames on disk, gaps for missing shots, atomic writes."""
from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import opentimelineio as otio
import pytest

from cinegen.server.output.otio_cut import (
    MissingShot,
    ShotRecord,
    load_shot_record,
    build_story_timeline,
    safe_file_stem,
    save_shot_record,
    slug,
    shot_frame_path,
    timeline_path,
    write_story_timeline,
)


def _record(shot: str, frames: int, *, first: int = 1001, fps: float = 24.0, keyframes=(0,), seed=7) -> ShotRecord:
    return ShotRecord(shot=shot, prompt=f"prompt of {shot}", seed=seed, model="tiny-animatediff",
                      keyframe_model="tiny-sd", job="job-1", first_frame=first, frames=frames, fps=fps,
                      keyframes=list(keyframes), next_keyframe="sh020" if len(keyframes) > 1 else "")


def _fake_frames(out: Path, record: ShotRecord) -> None:
    for frame in range(record.first_frame, record.first_frame + record.frames):
        path = shot_frame_path(out, record.shot, frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"exr")


def _path_of(url: str, otio_file: Path) -> Path:
    """A media URL as a path: file:// URLs as they are, relative URLs from the .otio's folder."""
    parsed = urllib.parse.urlparse(url)
    path = Path(urllib.request.url2pathname(parsed.path))
    return path if parsed.scheme else otio_file.parent / path


@pytest.fixture()
def cut(tmp_path):
    out = tmp_path / "out dir"  # a space on purpose: the file URL must quote it
    records = [_record("sh010", 5, keyframes=(0, 4)), _record("sh020", 3, seed=8), _record("sh030", 7, first=1)]
    for record in records:
        _fake_frames(out, record)
    path = write_story_timeline(out, "The Lighthouse", 24.0, records)
    return out, records, path


def test_timeline_opens_with_one_clip_per_shot_and_the_right_references(cut):
    out, records, path = cut
    assert path == timeline_path(out, "The Lighthouse") == out / "The_Lighthouse.otio"
    timeline = otio.adapters.read_from_file(str(path))
    assert len(timeline.tracks) == 1 and timeline.tracks[0].kind == otio.schema.TrackKind.Video
    clips = list(timeline.find_clips())
    assert [c.name for c in clips] == ["sh010", "sh020", "sh030"]
    for clip, record in zip(clips, records):
        ref = clip.media_reference
        assert isinstance(ref, otio.schema.ImageSequenceReference)
        assert (ref.name_prefix, ref.name_suffix, ref.frame_zero_padding) == (f"{record.shot}.", ".exr", 4)
        assert (ref.start_frame, ref.frame_step, ref.rate) == (record.first_frame, 1, 24.0)
        assert ref.target_url_base == f"{record.shot}/"  # relative to the .otio: the folder can move
        expected = otio.opentime.TimeRange(otio.opentime.RationalTime(record.first_frame, 24),
                                           otio.opentime.RationalTime(record.frames, 24))
        assert ref.available_range == expected and clip.source_range == expected
        assert ref.number_of_images_in_sequence() == record.frames
        meta = clip.metadata["cinegen"]
        assert (meta["prompt"], meta["seed"], meta["model"], meta["job"]) == (record.prompt, record.seed,
                                                                              "tiny-animatediff", "job-1")


def test_every_reference_resolves_to_frames_that_exist(cut):
    out, records, path = cut
    timeline = otio.adapters.read_from_file(str(path))
    for clip in timeline.find_clips():
        ref = clip.media_reference
        paths = [_path_of(ref.target_url_for_image_number(n), path)
                 for n in range(ref.number_of_images_in_sequence())]
        assert all(p.is_file() for p in paths), paths
        assert paths[0].name == f"{clip.name}.{ref.start_frame:04d}.exr"


def test_cut_duration_is_the_sum_of_shot_lengths_and_keyframes_are_marked(cut):
    _, records, path = cut
    timeline = otio.adapters.read_from_file(str(path))
    assert timeline.duration() == otio.opentime.RationalTime(sum(r.frames for r in records), 24)
    sh010 = timeline.find_clips()[0]
    marks = sorted(m.marked_range.start_time.value for m in sh010.markers)
    assert marks == [1001, 1005], "own keyframe at the first frame, the next shot's at the last"
    assert [m.name for m in sh010.markers] == ["keyframe sh010", "keyframe sh020 (continuity)"]


def _otiostat() -> str:
    """otiostat comes with opentimelineio; beside this interpreter when its venv's bin is not on PATH."""
    beside = Path(sys.executable).with_name("otiostat")
    return str(beside) if beside.exists() else (shutil.which("otiostat") or "otiostat")


def test_otiostat_reads_the_timeline(cut):
    _, _, path = cut
    result = subprocess.run([_otiostat(), str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "parsed: True" in result.stdout and "number of clips: 3" in result.stdout


def test_a_missing_shot_is_a_gap_of_its_length_with_a_marker(tmp_path):
    records = [_record("sh010", 4), MissingShot("sh020", "prompt of sh020", 6, 24.0), _record("sh030", 2)]
    for record in (records[0], records[2]):
        _fake_frames(tmp_path, record)
    timeline = otio.adapters.read_from_file(str(write_story_timeline(tmp_path, "t", 24.0, records)))
    items = list(timeline.tracks[0])
    assert [type(i).__name__ for i in items] == ["Clip", "Gap", "Clip"]
    gap = items[1]
    assert gap.name == "sh020" and gap.duration() == otio.opentime.RationalTime(6, 24)
    assert gap.metadata["cinegen"]["missing"] is True and gap.markers[0].name == "missing sh020"
    assert timeline.duration().value == 12 and list(timeline.metadata["cinegen"]["missing"]) == ["sh020"]


def test_shot_records_round_trip_and_need_every_frame_on_disk(tmp_path):
    record = _record("sh010", 3, keyframes=(0, 2))
    save_shot_record(tmp_path, record)
    assert load_shot_record(tmp_path, "sh010") is None, "no frames yet: the shot counts as missing"
    _fake_frames(tmp_path, record)
    assert load_shot_record(tmp_path, "sh010") == record
    shot_frame_path(tmp_path, "sh010", 1002).unlink()
    assert load_shot_record(tmp_path, "sh010") is None
    assert load_shot_record(tmp_path, "sh999") is None


def test_rewriting_replaces_the_file_and_leaves_no_temporary_files(cut):
    out, records, path = cut
    write_story_timeline(out, "The Lighthouse", 24.0, records[:2])
    assert len(list(otio.adapters.read_from_file(str(path)).find_clips())) == 2
    assert sorted(p.name for p in out.iterdir()) == ["The_Lighthouse.otio", "sh010", "sh020", "sh030"]


def test_titles_become_safe_file_names():
    assert safe_file_stem("The Lighthouse") == "The Lighthouse"
    assert safe_file_stem("a/b\\c: d?") == "a_b_c_ d_"
    assert safe_file_stem("  ..  ") == "story"
    assert slug("The Lighthouse") == "The_Lighthouse" and slug("Tiny Test") == "Tiny_Test"
    assert slug("Café: act 2/3 — dawn?") == "Cafe_act_2_3_dawn"
    assert slug(" ... ") == "story"


def test_a_long_title_still_makes_file_names_the_disk_takes(tmp_path):
    # 255 bytes a name: a 200-word title failed the run at its very end (OSError: File name too long)
    for title in ("A " * 200, "Ü" * 200):
        assert write_story_timeline(tmp_path, title, 24.0, [MissingShot("sh010", "p", 2, 24.0)]).is_file()
        assert 0 < len(safe_file_stem(title).encode()) <= 160 and 0 < len(slug(title)) <= 160
        (tmp_path / f"{safe_file_stem(title)}.keyframes.png").write_bytes(b"png")
    assert safe_file_stem("Ü" * 200) == "Ü" * 80  # cut between characters, not inside one


def test_the_cut_starts_at_one_hour_unless_asked_otherwise(cut, tmp_path):
    _, records, path = cut
    timeline = otio.adapters.read_from_file(str(path))
    assert otio.opentime.to_timecode(timeline.global_start_time, 24) == "01:00:00:00"
    assert timeline.global_start_time == otio.opentime.RationalTime(86400, 24)
    zero = build_story_timeline(tmp_path, "t", 25.0, [_record("sh010", 3, fps=25.0)], record_start="00:00:10:00")
    assert zero.global_start_time == otio.opentime.RationalTime(250, 25)
    with pytest.raises(ValueError, match="not a timecode"):
        build_story_timeline(tmp_path, "t", 24.0, [], record_start="one hour")


def test_the_cut_moves_with_its_folder_and_absolute_urls_are_an_option(cut, tmp_path):
    out, records, path = cut
    moved = tmp_path / "elsewhere"
    shutil.move(str(out), moved)
    timeline = otio.adapters.read_from_file(str(moved / path.name))
    for clip in timeline.find_clips():
        ref = clip.media_reference
        assert _path_of(ref.target_url_for_image_number(0), moved / path.name).is_file()
    absolute = build_story_timeline(moved, "t", 24.0, records, absolute_urls=True)
    ref = absolute.find_clips()[0].media_reference
    assert ref.target_url_base == (moved / "sh010").resolve().as_uri() + "/"


def test_an_ntsc_story_is_timed_at_the_exact_ratio_and_starts_at_one_hour(tmp_path):
    # story files say 23.976 (story_io's own example); OTIO has timecode only for 24000/1001
    record = _record("sh010", 4, fps=23.976)
    _fake_frames(tmp_path, record)
    timeline = otio.adapters.read_from_file(str(write_story_timeline(tmp_path, "t", 23.976, [record])))
    clip = timeline.find_clips()[0]
    assert clip.media_reference.rate == clip.source_range.duration.rate == 24000 / 1001
    assert otio.opentime.to_timecode(timeline.global_start_time) == "01:00:00:00"
    assert timeline.global_start_time == otio.opentime.RationalTime(86400, 24000 / 1001)


def test_a_rate_without_smpte_timecode_still_starts_at_one_hour(tmp_path):
    timeline = build_story_timeline(tmp_path, "t", 12.0, [MissingShot("sh010", "p", 6, 12.0)])
    assert timeline.global_start_time == otio.opentime.RationalTime(3600 * 12, 12)
    ten = build_story_timeline(tmp_path, "t", 15.0, [], record_start="00:00:10:14")
    assert ten.global_start_time == otio.opentime.RationalTime(164, 15)
    with pytest.raises(ValueError, match="not a timecode"):
        build_story_timeline(tmp_path, "t", 12.0, [], record_start="00:00:00:12")  # frame 12 of 0-11


def test_a_shot_made_at_an_earlier_fps_is_timed_at_the_cuts_rate(tmp_path):
    # the story went from 24 to 25 fps and only sh020 was re-run: sh010's 5 frames must not end between frames
    records = [_record("sh010", 5, fps=24.0), _record("sh020", 3, fps=25.0), MissingShot("sh030", "p", 2, 24.0)]
    for record in records[:2]:
        _fake_frames(tmp_path, record)
    timeline = build_story_timeline(tmp_path, "t", 25.0, records)
    items = list(timeline.tracks[0])
    assert [i.range_in_parent().start_time for i in items] == [otio.opentime.RationalTime(v, 25) for v in (0, 5, 8)]
    assert {i.duration().rate for i in items} == {i.media_reference.rate for i in items[:2]} == {25.0}
