"""Frame patterns and ranges: spellings, canonical form, files on disk, writable output folders."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cinegen.common.sequence import (FrameRange, OutputNotWritableError, SequencePattern,
                                     SequencePatternError, check_output_writable, compact_frame_list)


@pytest.mark.parametrize("spelling", ["/shots/sh010/sh010.####.exr", "/shots/sh010/sh010.%04d.exr",
                                      "/shots/sh010/sh010.$F4.exr"])
def test_every_spelling_of_four_digit_padding_is_the_same_pattern(spelling: str) -> None:
    pattern = SequencePattern.parse(spelling)
    assert pattern == SequencePattern("/shots/sh010", "sh010.", 4, ".exr")
    assert pattern.path_for(1001) == "/shots/sh010/sh010.1001.exr"
    assert pattern.hash_form() == "/shots/sh010/sh010.####.exr"


@pytest.mark.parametrize(("spelling", "padding"), [
    ("a.#.exr", 1), ("a.######.exr", 6), ("a.%06d.exr", 6), ("a.%d.exr", 1), ("a.$F.exr", 1),
    ("a.$F6.exr", 6), ("a_%010d.exr", 10)])
def test_padding_is_read_from_every_spelling(spelling: str, padding: int) -> None:
    assert SequencePattern.parse(spelling).padding == padding


def test_padding_is_a_minimum_width_and_negative_frames_keep_their_sign() -> None:
    pattern = SequencePattern.parse("out/plate.####.exr")
    assert pattern.path_for(7) == os.path.join("out", "plate.0007.exr")
    assert pattern.path_for(12345) == os.path.join("out", "plate.12345.exr")
    assert pattern.path_for(-5) == os.path.join("out", "plate.-005.exr")


_name_part = st.text(alphabet="abcXYZ019_-. ", max_size=12)


@given(directory=st.sampled_from(["", "rel/dir", "/abs/dir", "/with space/d"]), prefix=_name_part,
       padding=st.integers(1, 9), middle=st.text(alphabet="abc_.", max_size=6),
       extension=st.sampled_from([".exr", ".EXR"]))
def test_hash_form_parses_back_to_the_same_pattern(directory: str, prefix: str, padding: int,
                                                   middle: str, extension: str) -> None:
    pattern = SequencePattern(directory, prefix, padding, middle + extension)
    assert SequencePattern.parse(pattern.hash_form()) == pattern
    printf = os.path.join(directory, f"{prefix}%0{padding}d{middle}{extension}")
    assert SequencePattern.parse(printf) == pattern


def test_a_path_without_frame_token_is_refused_with_the_accepted_spellings() -> None:
    with pytest.raises(SequencePatternError) as caught:
        SequencePattern.parse("/out/x.exr")
    message = str(caught.value)
    assert "'/out/x.exr' has no frame number" in message
    assert "NAME.####.exr" in message and "%04d" in message and "$F4" in message


def test_a_frame_token_in_the_folder_only_is_not_taken_for_the_frame() -> None:
    with pytest.raises(SequencePatternError, match="folder name cannot hold it"):
        SequencePattern.parse("/out/take_####/x.exr")


def test_two_frame_tokens_are_refused_and_both_are_named() -> None:
    with pytest.raises(SequencePatternError, match=r"2 frame numbers \('####' and '%04d'\)"):
        SequencePattern.parse("/out/x.####.%04d.exr")


def test_outputs_must_be_exr_but_plates_may_have_any_extension() -> None:
    with pytest.raises(SequencePatternError, match="must be an OpenEXR sequence ending in '.exr'"):
        SequencePattern.parse("/out/x.####.png")
    plate = SequencePattern.parse("/in/plate.%04d.png", any_extension=True, what="plate")
    assert plate.suffix == ".png" and plate.padding == 4
    with pytest.raises(SequencePatternError, match="The plate '/in/plate.png'"):
        SequencePattern.parse("/in/plate.png", any_extension=True, what="plate")


def test_empty_path_is_refused() -> None:
    with pytest.raises(SequencePatternError, match="No output path"):
        SequencePattern.parse("  ")


def test_houdini_variables_other_than_frame_are_not_frame_tokens() -> None:
    with pytest.raises(SequencePatternError, match="no frame number"):
        SequencePattern.parse("/out/$FPS.exr")


def test_nuke_form_is_hash_path_then_frame_range() -> None:
    pattern = SequencePattern.parse("/shots/sh010/sh010.%04d.exr")
    assert pattern.nuke_form(1001, 1096) == "/shots/sh010/sh010.####.exr 1001-1096"


@pytest.mark.parametrize("text", ["/plates/sh010.####.exr 1001-1096", "/plates/sh010.%04d.dpx 1001"])
def test_a_path_copied_from_nuke_s_file_knob_with_its_range_says_where_the_range_goes(text: str) -> None:
    with pytest.raises(SequencePatternError, match=r"ends in the frame range .*: give the path alone "
                                                   r"\('/plates/sh010\.(####|%04d)\.(exr|dpx)'\)"):
        SequencePattern.parse(text, any_extension=True, what="plate")


def _touch(path: str) -> None:
    with open(path, "wb") as handle:
        handle.write(b"x")


def test_glob_existing_finds_exactly_the_frames_of_the_pattern(tmp_path) -> None:
    for frame in (1001, 1002, 1005):
        _touch(tmp_path / f"sh010.{frame:04d}.exr")
    decoys = ["sh010.01003.exr", "sh010.1004.exr.tmp", ".sh010.1006.exr.tmp-1-ab", "sh020.1007.exr",
              "sh010.1008.png", "sh010.abcd.exr"]
    for name in decoys:
        _touch(tmp_path / name)
    os.mkdir(tmp_path / "sh010.1009.exr")  # a folder is not a frame
    pattern = SequencePattern.parse(str(tmp_path / "sh010.####.exr"))
    assert pattern.glob_existing() == {f: str(tmp_path / f"sh010.{f}.exr") for f in (1001, 1002, 1005)}
    assert pattern.frame_range_on_disk() == FrameRange(1001, 1005)
    assert pattern.missing_frames(FrameRange(1001, 1005)) == [1003, 1004]


def test_no_frame_range_on_disk_when_folder_is_missing_or_empty(tmp_path) -> None:
    assert SequencePattern.parse(str(tmp_path / "nothing/x.####.exr")).frame_range_on_disk() is None
    assert SequencePattern.parse(str(tmp_path / "x.####.exr")).frame_range_on_disk() is None


def test_frame_range_counts_iterates_and_contains_inclusively() -> None:
    frames = FrameRange.parse("1001-1096")
    assert frames == FrameRange(1001, 1096) == FrameRange.from_count(1001, 96)
    assert frames.count == len(frames) == len(list(frames)) == 96
    assert list(FrameRange(-2, 1)) == [-2, -1, 0, 1]
    assert 1001 in frames and 1096 in frames and 1097 not in frames and 1000 not in frames
    assert FrameRange.parse(" 1001 ") == FrameRange(1001, 1001)
    assert FrameRange.parse("-5--1") == FrameRange(-5, -1)


@given(first=st.integers(-10_000, 10_000), count=st.integers(1, 10_000))
def test_frame_range_text_parses_back_to_the_same_range(first: int, count: int) -> None:
    frames = FrameRange.from_count(first, count)
    assert FrameRange.parse(str(frames)) == frames


@pytest.mark.parametrize("text", ["1096-1001", "a-b", "1001..1096", ""])
def test_frame_range_refuses_backwards_or_unreadable_text(text: str) -> None:
    with pytest.raises(ValueError):
        FrameRange.parse(text)


def test_compact_frame_list_joins_runs() -> None:
    assert compact_frame_list([1010, 1003, 1004, 1005, 1004]) == "1003-1005, 1010"
    assert compact_frame_list([7]) == "7"
    assert compact_frame_list([]) == ""


def test_check_output_writable_creates_the_folder_and_leaves_nothing_behind(tmp_path) -> None:
    pattern = SequencePattern.parse(str(tmp_path / "new" / "deeper" / "x.####.exr"))
    check_output_writable(pattern)
    assert os.listdir(tmp_path / "new" / "deeper") == []


def test_check_output_writable_names_the_folder_that_cannot_be_made(tmp_path) -> None:
    _touch(tmp_path / "a_file")
    pattern = SequencePattern.parse(str(tmp_path / "a_file" / "sub" / "x.####.exr"))
    with pytest.raises(OutputNotWritableError) as caught:
        check_output_writable(pattern)
    assert str(tmp_path / "a_file" / "sub") in str(caught.value)
    assert "choose" in str(caught.value)
    with pytest.raises(OutputNotWritableError, match="is a file, not a folder"):
        check_output_writable(SequencePattern.parse(str(tmp_path / "a_file" / "x.####.exr")))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_check_output_writable_refuses_a_read_only_folder(tmp_path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    with pytest.raises(OutputNotWritableError, match="Cannot write into the output folder"):
        check_output_writable(SequencePattern.parse(str(folder / "x.####.exr")))


def test_check_output_writable_reports_a_folder_that_refuses_files(tmp_path, monkeypatch) -> None:
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputNotWritableError) as caught:
        check_output_writable(SequencePattern.parse(str(tmp_path / "x.####.exr")))
    assert f"Cannot write into the output folder '{tmp_path}' (Permission denied)" in str(caught.value)
