"""EXR frames and plates: float values, the header, atomic publication, plate reading, previews."""

from __future__ import annotations

import io
import os
import re
import threading
from fractions import Fraction

import numpy as np
import OpenImageIO as oiio
import pytest
from PIL import Image

from cinegen.common import color, exr
from cinegen.common.exr import ExrMetadata, PlateError
from cinegen.common.sequence import FrameRange, OutputNotWritableError, SequencePattern

OpenEXR = pytest.importorskip("OpenEXR")  # the reference reader, independent of OpenImageIO


@pytest.fixture(autouse=True)
def builtin_config(monkeypatch) -> None:
    monkeypatch.delenv("OCIO", raising=False)


def _metadata(**changes) -> ExrMetadata:
    fields = dict(pipeline="upscale", model="tiny-sd", seed=1234, prompt="café at dusk ✨",
                  job="job-7", params={"steps": 4, "guidance": 7.5, "scale": [2, 2]}, frame=1001,
                  fps=Fraction(24000, 1001))
    fields.update(changes)
    return ExrMetadata(**fields)


def _pixels(height: int = 24, width: int = 40, channels: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-2.0, 2.0, (height, width, channels)).astype(np.float32)


def _listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_pixels_round_trip_at_half_precision_with_negatives_and_highlights(tmp_path) -> None:
    pixels = _pixels()
    pixels[0, 0] = [1000.0, -0.5, 3.25, 1.0]
    pixels[0, 1] = [1e-3, 60000.0, -7.0, 0.0]
    path = tmp_path / "a.1001.exr"
    exr.write_exr_frame(path, pixels, metadata=_metadata())
    read, header = exr.read_exr_frame(path)
    assert read.dtype == np.float32 and read.shape == (24, 40, 4)
    np.testing.assert_allclose(read, pixels, rtol=2.0**-10, atol=1e-4)  # half: 11-bit mantissa
    np.testing.assert_array_equal(read, pixels.astype(np.float16).astype(np.float32))
    assert header["channels"] == ("R", "G", "B", "A") and header["pixel_type"] == "half"


def test_rgb_frames_get_an_opaque_alpha(tmp_path) -> None:
    path = tmp_path / "rgb.1001.exr"
    exr.write_exr_frame(path, _pixels(channels=3), metadata=_metadata())
    read, _ = exr.read_exr_frame(path)
    assert read.shape[2] == 4 and (read[..., 3] == 1.0).all()


def test_header_holds_the_standard_and_cinegen_attributes_for_openexr_itself(tmp_path) -> None:
    path = tmp_path / "h.1001.exr"
    exr.write_exr_frame(path, _pixels(), metadata=_metadata())
    exr_file = OpenEXR.File(str(path), separate_channels=True)
    header = exr_file.header()
    assert set(exr_file.channels()) == {"R", "G", "B", "A"}
    assert {channel.pixels.dtype for channel in exr_file.channels().values()} == {np.dtype(np.float16)}
    assert header["compression"] == OpenEXR.ZIP_COMPRESSION
    np.testing.assert_allclose(header["chromaticities"], color.ACES_AP1.as_floats(), atol=1e-6)
    assert header["framesPerSecond"] == Fraction(24000, 1001)
    assert header["software"].startswith("cinegen ")
    assert re.fullmatch(r"\d{4}:\d\d:\d\d \d\d:\d\d:\d\d", header["capDate"])
    assert "envmap" not in header
    assert header["cinegen:pipeline"] == "upscale" and header["cinegen:model"] == "tiny-sd"
    assert header["cinegen:seed"] == "1234" and header["cinegen:job"] == "job-7"
    assert header["cinegen:prompt"] == "café at dusk ✨"
    assert header["cinegen:params"] == '{"guidance": 7.5, "scale": [2, 2], "steps": 4}'
    assert header["cinegen:colorspace"] == "ACEScg" and header["cinegen:frame"] == "1001"


def test_metadata_read_back_equals_what_was_written(tmp_path) -> None:
    written = _metadata(extra={"shot": "sh010"}, colorspace="ACEScg")
    path = tmp_path / "m.1001.exr"
    exr.write_exr_frame(path, _pixels(), metadata=written)
    _, header = exr.read_exr_frame(path)
    assert ExrMetadata.from_header(header) == written


def test_latlong_panoramas_carry_the_standard_envmap_attribute(tmp_path) -> None:
    path = tmp_path / "pano.1001.exr"
    exr.write_exr_frame(path, _pixels(16, 32), metadata=_metadata(latlong=True))
    standard = OpenEXR.File(str(path)).header()
    envmap = standard["envmap"]
    assert isinstance(envmap, OpenEXR.Envmap) and envmap == OpenEXR.ENVMAP_LATLONG  # typed, not an int
    assert standard["type"] == OpenEXR.scanlineimage and "tiles" not in standard  # a plain image, one level
    assert "openexr:levelmode" not in standard  # OpenImageIO's writer hint, no attribute of the file
    read, header = exr.read_exr_frame(path)
    assert header["envmap"] == "latlong" and read.shape == (16, 32, 4)
    assert ExrMetadata.from_header(header).latlong


@pytest.mark.parametrize(("name", "expected"), [("piz", "PIZ_COMPRESSION"), ("dwaa", "DWAA_COMPRESSION"),
                                                ("none", "NO_COMPRESSION")])
def test_other_compressions_are_selectable(tmp_path, name: str, expected: str) -> None:
    path = tmp_path / f"{name}.1001.exr"
    exr.write_exr_frame(path, _pixels(), metadata=_metadata(), compression=name)
    assert OpenEXR.File(str(path)).header()["compression"] == getattr(OpenEXR, expected)


def test_unknown_compression_and_wrong_shapes_are_refused_before_writing(tmp_path) -> None:
    with pytest.raises(ValueError, match="Unknown EXR compression 'lzw'"):
        exr.write_exr_frame(tmp_path / "x.exr", _pixels(), metadata=_metadata(), compression="lzw")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) or \(H, W, 4\)"):
        exr.write_exr_frame(tmp_path / "x.exr", np.zeros((4, 4)), metadata=_metadata())
    assert _listing(tmp_path) == []


@pytest.mark.parametrize(("fps", "rational"), [(24, (24, 1)), (25.0, (25, 1)), (23.976, (24000, 1001)),
                                               (23.98, (24000, 1001)), (29.97, (30000, 1001)),
                                               (12.5, (25, 2)), (Fraction(30000, 1001), (30000, 1001))])
def test_fps_is_written_as_an_exact_rational(fps, rational) -> None:
    assert exr.fps_as_rational(fps) == rational


def test_a_failed_write_leaves_neither_the_final_name_nor_a_temporary(tmp_path, monkeypatch) -> None:
    def half_then_fail(path, spec, pixels):
        with open(path, "wb") as handle:
            handle.write(b"v/1\x01" + b"\0" * 100)  # a partial EXR
        raise exr.ExrWriteError("disk full")

    monkeypatch.setattr(exr, "_write_with_oiio", half_then_fail)
    with pytest.raises(exr.ExrWriteError, match="disk full"):
        exr.write_exr_frame(tmp_path / "f.1001.exr", _pixels(), metadata=_metadata())
    assert _listing(tmp_path) == []


def test_a_failed_rewrite_keeps_the_previous_complete_frame(tmp_path, monkeypatch) -> None:
    path = tmp_path / "f.1001.exr"
    exr.write_exr_frame(path, _pixels(seed=1), metadata=_metadata())
    before = path.read_bytes()
    monkeypatch.setattr(exr, "_write_with_oiio", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        exr.write_exr_frame(path, _pixels(seed=2), metadata=_metadata())
    assert path.read_bytes() == before and _listing(tmp_path) == ["f.1001.exr"]


def test_an_empty_file_reported_as_written_is_never_published(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(exr, "_write_with_oiio", lambda path, spec, pixels: open(path, "wb").close())
    with pytest.raises(exr.ExrWriteError, match="cannot be read back"):
        exr.write_exr_frame(tmp_path / "f.1001.exr", _pixels(), metadata=_metadata())
    assert _listing(tmp_path) == []


def test_the_final_name_appears_only_after_the_pixels_are_complete(tmp_path, monkeypatch) -> None:
    final = tmp_path / "f.1001.exr"
    seen_during_write: list[tuple[str, bool]] = []
    real_write = exr._write_with_oiio

    def observed_write(path, spec, pixels):
        real_write(path, spec, pixels)
        seen_during_write.append((path, final.exists()))

    monkeypatch.setattr(exr, "_write_with_oiio", observed_write)
    exr.write_exr_frame(final, _pixels(), metadata=_metadata())
    [(temporary, final_existed)] = seen_during_write
    assert not final_existed
    assert os.path.dirname(temporary) == str(tmp_path)  # same folder: the rename cannot copy
    assert os.path.basename(temporary).startswith(".f.1001.exr.tmp-")
    assert not temporary.endswith(".exr")
    assert _listing(tmp_path) == ["f.1001.exr"]


def test_a_concurrent_reader_only_ever_sees_complete_frames(tmp_path) -> None:
    final = tmp_path / "busy.1001.exr"
    versions = [np.full((256, 256, 4), value, np.float32) for value in (0.25, 0.75)]
    done = threading.Event()
    partial_reads: list[str] = []

    def reader() -> None:
        while not done.is_set():
            if not final.exists():
                continue
            try:
                pixels, _ = exr.read_exr_frame(final)
            except exr.ImageReadError as error:
                if final.exists():  # a vanished file is fine; an unreadable one is not
                    partial_reads.append(str(error))
                continue
            if not any(np.array_equal(pixels, version) for version in versions):
                partial_reads.append("mixed pixels")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for index in range(20):
            exr.write_exr_frame(final, versions[index % 2], metadata=_metadata(), compression="none")
    finally:
        done.set()
        thread.join()
    assert partial_reads == []


def test_write_exr_sequence_numbers_frames_and_reports_each(tmp_path) -> None:
    reported: list[tuple[int, str]] = []
    frames = [(frame, _pixels(8, 8, seed=frame)) for frame in (1001, 1002, 1003)]
    paths = exr.write_exr_sequence(str(tmp_path / "seq" / "sh010.%04d.exr"), frames, _metadata(),
                                   on_frame_written=lambda frame, path: reported.append((frame, path)))
    pattern = SequencePattern.parse(str(tmp_path / "seq" / "sh010.####.exr"))
    assert paths == [pattern.path_for(f) for f in (1001, 1002, 1003)]
    assert reported == list(zip((1001, 1002, 1003), paths))
    assert _listing(tmp_path / "seq") == ["sh010.1001.exr", "sh010.1002.exr", "sh010.1003.exr"]
    for frame, path in zip((1001, 1002, 1003), paths):
        assert exr.read_exr_frame(path)[1]["cinegen:frame"] == str(frame)


def test_write_exr_sequence_refuses_an_unwritable_folder_before_any_frame(tmp_path) -> None:
    (tmp_path / "a_file").write_bytes(b"x")
    with pytest.raises(OutputNotWritableError):
        exr.write_exr_sequence(str(tmp_path / "a_file" / "x.####.exr"), [(1001, _pixels())], _metadata())


def _write_png(path, value: int, size=(8, 6)) -> None:
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8), "RGB").save(path)


def test_png_plates_are_converted_from_srgb_and_exr_plates_are_kept(tmp_path) -> None:
    _write_png(tmp_path / "p.png", 128)
    linear = exr.read_image(tmp_path / "p.png")
    assert linear.shape == (6, 8, 3)
    np.testing.assert_allclose(linear, 0.21586, atol=2e-4)  # sRGB 128/255 in the working space
    pixels = _pixels(6, 8)
    exr.write_exr_frame(tmp_path / "p.exr", pixels, metadata=_metadata())
    np.testing.assert_array_equal(exr.read_image(tmp_path / "p.exr"),
                                  pixels[..., :3].astype(np.float16).astype(np.float32))
    with_alpha = exr.read_image(tmp_path / "p.exr", keep_alpha=True)
    np.testing.assert_array_equal(with_alpha[..., 3], pixels[..., 3].astype(np.float16))


def test_greyscale_images_fill_all_three_channels(tmp_path) -> None:
    Image.fromarray(np.full((4, 5), 255, np.uint8), "L").save(tmp_path / "g.png")
    rgb = exr.read_image(tmp_path / "g.png", keep_alpha=True)
    assert rgb.shape == (4, 5, 4)
    np.testing.assert_allclose(rgb, 1.0, atol=1e-4)


def _plate(tmp_path, frames, size=(8, 6)) -> str:
    for frame in frames:
        _write_png(tmp_path / f"plate.{frame:04d}.png", frame % 256, size)
    return str(tmp_path / "plate.####.png")


def test_plate_sequences_yield_every_frame_in_order(tmp_path) -> None:
    pattern = _plate(tmp_path, range(1001, 1005))
    frames = list(exr.read_plate_sequence(pattern))
    assert [frame for frame, _ in frames] == [1001, 1002, 1003, 1004]
    expected = color.srgb_display_to_scene_linear(np.full((6, 8, 3), (1003 % 256) / 255, np.float32))
    np.testing.assert_allclose(frames[2][1], expected, atol=1e-6)
    assert [f for f, _ in exr.read_plate_sequence(pattern, FrameRange(1002, 1003))] == [1002, 1003]


def test_missing_plate_frames_are_listed_compactly_before_anything_is_read(tmp_path) -> None:
    pattern = _plate(tmp_path, [1001, 1002, 1005, 1006, 1008])
    with pytest.raises(PlateError) as caught:
        exr.read_plate_sequence(pattern, FrameRange(1001, 1010))  # raises without iterating
    assert str(caught.value).startswith(
        f"The plate '{pattern}' is missing 5 of its 10 frames (1001-1010): 1003-1004, 1007, 1009-1010.")


def test_a_plate_with_no_frames_on_disk_or_no_frame_token_is_explained(tmp_path) -> None:
    with pytest.raises(PlateError, match="No frames of the plate .* were found"):
        exr.read_plate_sequence(str(tmp_path / "nothing.####.exr"))
    with pytest.raises(PlateError, match="has no frame number"):
        exr.read_plate_sequence(str(tmp_path / "plate.png"))


def test_an_unreadable_plate_frame_is_named(tmp_path) -> None:
    pattern = _plate(tmp_path, [1001, 1002, 1003])
    (tmp_path / "plate.1002.png").write_bytes(b"not a png at all")
    frames = exr.read_plate_sequence(pattern)
    assert next(frames)[0] == 1001
    with pytest.raises(PlateError, match=r"Frame 1002 of the plate .* could not be read: .*plate\.1002\.png"):
        next(frames)


def test_a_plate_frame_of_another_size_is_refused(tmp_path) -> None:
    pattern = _plate(tmp_path, [1001])
    _plate(tmp_path, [1002], size=(10, 6))
    with pytest.raises(PlateError, match="Frame 1002 .* is 10x6 but frame 1001 is 8x6"):
        list(exr.read_plate_sequence(pattern))


def test_preview_is_a_small_srgb_png_of_the_frame(tmp_path) -> None:
    linear = np.full((300, 600, 4), 0.21404, np.float32)  # sRGB 0.5 in ACEScg
    png = exr.srgb_preview_png(linear, max_side=128)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    picture = Image.open(io.BytesIO(png))
    assert picture.size == (128, 64) and picture.mode == "RGB"
    assert np.abs(np.asarray(picture).astype(int) - 128).max() <= 1
    display = exr.srgb_preview_png(np.full((10, 20, 3), 0.5, np.float32), scene_linear=False)
    assert np.abs(np.asarray(Image.open(io.BytesIO(display))).astype(int) - 128).max() <= 1


def test_oiio_sees_a_half_rgba_zip_frame(tmp_path) -> None:
    path = tmp_path / "o.1001.exr"
    exr.write_exr_frame(path, _pixels(), metadata=_metadata())
    image = oiio.ImageInput.open(str(path))
    spec = image.spec()
    image.close()
    assert str(spec.format) == "half" and tuple(spec.channelnames) == ("R", "G", "B", "A")
    assert spec.get_string_attribute("compression") == "zip"


def test_capdate_is_local_time_and_utc_offset_says_which(tmp_path, monkeypatch) -> None:
    import time
    from datetime import datetime

    monkeypatch.setenv("TZ", "EST+5")  # POSIX: five hours behind UTC, no zone files needed
    time.tzset()
    try:
        exr.write_exr_frame(tmp_path / "t.exr", _pixels(), metadata=_metadata(),
                            capture_time=datetime(2026, 12, 1, 9, 30, 0))
        header = OpenEXR.File(str(tmp_path / "t.exr")).header()
        monkeypatch.setenv("TZ", "UTC0")
        time.tzset()
        exr.write_exr_frame(tmp_path / "utc.exr", _pixels(), metadata=_metadata())
        at_utc = OpenEXR.File(str(tmp_path / "utc.exr")).header()["utcOffset"]
        assert at_utc == 0.0 and str(at_utc) == "0.0"  # not -0.0, which exrheader shows as "-0"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert header["capDate"] == "2026:12:01 09:30:00"
    assert header["utcOffset"] == 5 * 3600.0  # OpenEXR: UTC == local time + utcOffset
