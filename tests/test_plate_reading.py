"""Plates as comps and renderers write them: bounding boxes, overscan, multi-part files, integer IDs,
NaN/Inf pixels. Each file is built here with OpenImageIO (a few dozen pixels)."""

from __future__ import annotations

import numpy as np
import OpenImageIO as oiio
import pytest

from cinegen.common import color, exr
from cinegen.common.exr import ImageReadError


@pytest.fixture(autouse=True)
def builtin_config(monkeypatch) -> None:
    monkeypatch.delenv("OCIO", raising=False)


def _write(path, parts) -> str:
    """``parts``: (pixels H x W x C, channel names, format, data origin (x, y), display (x, y, w, h) or None)."""
    specs = []
    for pixels, names, fmt, origin, display in parts:
        spec = oiio.ImageSpec(pixels.shape[1], pixels.shape[0], pixels.shape[2], fmt)
        spec.channelnames = names
        spec.x, spec.y = origin
        if display is not None:
            spec.full_x, spec.full_y, spec.full_width, spec.full_height = display
        specs.append(spec)
    out = oiio.ImageOutput.create(str(path))
    assert out.open(str(path), tuple(specs)), out.geterror()
    for index, (pixels, *_rest) in enumerate(parts):
        if index:
            assert out.open(str(path), specs[index], "AppendSubimage"), out.geterror()
        assert out.write_image(np.ascontiguousarray(pixels)), out.geterror()
    assert out.close()
    return str(path)


def _ramp(height: int, width: int) -> np.ndarray:
    """RGBA where each pixel's red is its column and green its row (exact in half)."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([cols, rows, np.full_like(cols, 0.25), np.full_like(cols, 0.5)], axis=-1)


RGBA = ("R", "G", "B", "A")


def test_a_bounding_box_inside_the_format_is_placed_in_the_format_with_black_around_it(tmp_path) -> None:
    # Nuke writes the node's bbox as the data window: a 20x10 element at (8, 4) of a 64x32 format.
    path = _write(tmp_path / "bbox.1001.exr", [(_ramp(10, 20), RGBA, "half", (8, 4), (0, 0, 64, 32))])
    plate = exr.read_image(path, keep_alpha=True)
    assert plate.shape == (32, 64, 4)
    np.testing.assert_array_equal(plate[4:14, 8:28], _ramp(10, 20))
    outside = np.ones((32, 64), bool)
    outside[4:14, 8:28] = False
    assert not plate[outside].any()  # colour and alpha 0 outside the box, as Nuke shows it
    assert exr.image_size(path) == (64, 32)


def test_overscan_is_cropped_to_the_format(tmp_path) -> None:
    # 4 px of overscan on every side (a negative data-window origin) around a 64x32 format.
    path = _write(tmp_path / "over.1001.exr", [(_ramp(40, 72), RGBA, "half", (-4, -4), (0, 0, 64, 32))])
    plate = exr.read_image(path, keep_alpha=True)
    assert plate.shape == (32, 64, 4)
    np.testing.assert_array_equal(plate, _ramp(40, 72)[4:36, 4:68])
    assert exr.image_size(path) == (64, 32)
    pixels, _ = exr.read_exr_frame(path)
    assert pixels.shape == (32, 64, 4)


def test_a_display_window_that_does_not_start_at_zero_keeps_its_own_origin(tmp_path) -> None:
    path = _write(tmp_path / "shifted.exr", [(_ramp(6, 8), RGBA, "half", (12, 7), (10, 5, 16, 12))])
    plate = exr.read_image(path, keep_alpha=True)
    assert plate.shape == (12, 16, 4)
    np.testing.assert_array_equal(plate[2:8, 2:10], _ramp(6, 8))


@pytest.mark.parametrize("ext", ["tif", "dpx"])
def test_a_tiff_or_dpx_with_position_offsets_is_read_whole_at_its_own_size(tmp_path, ext) -> None:
    # OpenImageIO turns a TIFF's XPosition into a 13x9 "display window" and keeps a DPX's offsets beside an
    # 8x6 one; Nuke's Read shows the 8x6 picture: only OpenEXR has a display window
    pixels = np.full((6, 8, 3), 200, np.uint8)
    path = _write(tmp_path / f"offset.1001.{ext}", [(pixels, ("R", "G", "B"), "uint8", (5, 3), (5, 3, 8, 6))])
    plate = exr.read_image(path)
    assert plate.shape == (6, 8, 3) and exr.image_size(path) == (8, 6)
    np.testing.assert_allclose(plate, np.broadcast_to(plate[0, 0], plate.shape))  # no black border, nothing cut
    assert plate.min() > 0.1


def test_the_picture_part_of_a_multi_part_exr_is_read_not_a_depth_part_before_it(tmp_path) -> None:
    depth = np.full((6, 8, 1), 7.0, np.float32)
    path = _write(tmp_path / "parts.exr", [(depth, ("Z",), "float", (0, 0), None),
                                           (_ramp(6, 8), RGBA, "half", (0, 0), None)])
    np.testing.assert_array_equal(exr.read_image(path, keep_alpha=True), _ramp(6, 8))


def test_32_bit_integer_colour_channels_are_refused_not_read_as_near_black(tmp_path) -> None:
    ids = np.arange(6 * 8 * 3, dtype=np.uint32).reshape(6, 8, 3)
    path = _write(tmp_path / "ids.exr", [(ids, ("R", "G", "B"), "uint", (0, 0), None)])
    with pytest.raises(ImageReadError, match=r"ids\.exr.*32-bit integer.*half or float"):
        exr.read_image(path)
    with pytest.raises(ImageReadError, match="32-bit integer"):  # from the header alone, as Submit checks
        exr.image_size(path)


def test_nan_and_infinite_plate_pixels_become_black_and_the_brightest_half(tmp_path) -> None:
    pixels = np.full((4, 4, 4), 0.5, np.float32)
    pixels[0, 0, :3] = np.nan
    pixels[0, 1, :3] = np.inf
    pixels[0, 2, :3] = -np.inf
    pixels[0, 3, 3] = np.nan  # a NaN matte too
    path = _write(tmp_path / "bad.exr", [(pixels, RGBA, "half", (0, 0), None)])
    plate = exr.read_image(path, keep_alpha=True)
    assert np.isfinite(plate).all()
    np.testing.assert_array_equal(plate[0, 0, :3], 0.0)
    np.testing.assert_array_equal(plate[0, 1, :3], 65504.0)  # half's largest: still the brightest light
    np.testing.assert_array_equal(plate[0, 2, :3], -65504.0)
    assert plate[0, 3, 3] == 0.0
    np.testing.assert_array_equal(plate[1:], 0.5)


def test_upscale_checks_a_plate_at_submit_by_its_format_and_refuses_integer_ids(tmp_path) -> None:
    from cinegen.server.errors import InvalidArgument
    from cinegen.server.pipelines.upscale import inspect_plate

    for frame in (1001, 1002):
        _write(tmp_path / f"bbox.{frame}.exr", [(_ramp(10, 20), RGBA, "half", (8, 4), (0, 0, 64, 32))])
    assert inspect_plate(str(tmp_path / "bbox.####.exr")).size == (64, 32)  # the bbox is 20x10
    _write(tmp_path / "ids.1001.exr", [(np.zeros((6, 8, 3), np.uint32), ("R", "G", "B"), "uint", (0, 0), None)])
    with pytest.raises(InvalidArgument, match="32-bit integer"):
        inspect_plate(str(tmp_path / "ids.####.exr"))


def test_a_plate_frame_that_cannot_be_converted_from_its_colour_space_is_named_for_the_artist(tmp_path) -> None:
    from cinegen.common.params import UpscaleParams
    from cinegen.server.errors import InvalidArgument
    from cinegen.server.plate_colour import converted_params

    for frame in (1001, 1002):
        _write(tmp_path / f"aces.{frame}.exr", [(_ramp(6, 8), RGBA, "half", (0, 0), None)])
    whole = (tmp_path / "aces.1002.exr").read_bytes()
    (tmp_path / "aces.1002.exr").write_bytes(whole[:len(whole) // 2])  # the header reads, the pixels not
    params = UpscaleParams(input=str(tmp_path / "aces.####.exr"), input_colorspace="ACES2065-1")
    with pytest.raises(InvalidArgument, match=r"^Frame 1002 of the plate '.*aces\.####\.exr' could not be read"):
        converted_params(params, tmp_path / "job")


def test_an_anamorphic_plate_s_pixel_aspect_is_read_and_written_as_the_standard_attribute(tmp_path) -> None:
    OpenEXR = pytest.importorskip("OpenEXR")  # the reference reader
    spec = oiio.ImageSpec(8, 6, 4, "half")
    spec.attribute("PixelAspectRatio", 2.0)  # a 2x anamorphic squeeze, as a camera plate carries it
    out = oiio.ImageOutput.create(str(tmp_path / "ana.exr"))
    assert out.open(str(tmp_path / "ana.exr"), spec) and out.write_image(_ramp(6, 8)) and out.close()
    assert exr.pixel_aspect(tmp_path / "ana.exr") == 2.0
    assert exr.pixel_aspect(_write(tmp_path / "square.exr", [(_ramp(6, 8), RGBA, "half", (0, 0), None)])) == 1.0
    exr.write_exr_frame(tmp_path / "up.exr", _ramp(12, 16), metadata=exr.ExrMetadata(pixel_aspect=2.0))
    assert OpenEXR.File(str(tmp_path / "up.exr")).header()["pixelAspectRatio"] == 2.0
    _, header = exr.read_exr_frame(tmp_path / "up.exr")
    assert exr.ExrMetadata.from_header(header).pixel_aspect == 2.0
    exr.write_exr_frame(tmp_path / "plain.exr", _ramp(12, 16), metadata=exr.ExrMetadata())
    assert OpenEXR.File(str(tmp_path / "plain.exr")).header()["pixelAspectRatio"] == 1.0


def test_a_png_s_straight_alpha_is_premultiplied_in_linear_light_as_an_exr_plate_is(tmp_path) -> None:
    from PIL import Image

    from cinegen.common import color

    Image.fromarray(np.full((4, 4, 4), [128, 64, 255, 128], np.uint8), "RGBA").save(tmp_path / "edge.png")
    plate = exr.read_image(tmp_path / "edge.png", keep_alpha=True)
    straight = color.srgb_display_to_scene_linear(np.array([[128, 64, 255]], np.float32) / 255)
    alpha = 128 / 255
    np.testing.assert_allclose(plate[0, 0, 3], alpha, atol=1e-6)
    # OpenImageIO alone multiplies the sRGB-encoded values, which darkens a half-transparent edge about 2x
    np.testing.assert_allclose(plate[0, 0, :3], straight[0] * alpha, rtol=1e-4, atol=1e-6)


def test_a_png_plate_converted_from_its_colour_space_is_premultiplied_after_the_conversion(tmp_path) -> None:
    from PIL import Image

    from cinegen.common import color
    from cinegen.common.params import UpscaleParams
    from cinegen.server.plate_colour import converted_params

    Image.fromarray(np.full((4, 4, 4), [128, 64, 255, 128], np.uint8), "RGBA").save(tmp_path / "edge.1001.png")
    params = UpscaleParams(input=str(tmp_path / "edge.####.png"), input_colorspace="sRGB Encoded P3-D65")
    converted = converted_params(params, tmp_path / "job")
    pixels, _ = exr.read_exr_frame(converted.input.replace("####", "1001"))
    straight = color.to_working_space(np.array([[128, 64, 255]], np.float32) / 255, "sRGB Encoded P3-D65")
    np.testing.assert_allclose(pixels[0, 0, :3], straight[0] * 128 / 255, rtol=2e-3, atol=1e-4)  # a half copy


def _layered(path, names, values) -> str:
    pixels = np.broadcast_to(np.asarray(values, np.float32), (4, 4, len(names))).copy()
    return _write(path, [(pixels, tuple(names), "float", (0, 0), None)])


CRYPTO = ("CryptoObject00.R", "CryptoObject00.G", "CryptoObject00.B", "CryptoObject00.A")
CRYPTO_VALUES = (3.1e-5, 0.7, 1.2e-3, 0.3)  # object IDs and coverage ranks, not colour


def test_a_cryptomatte_layer_s_alpha_is_not_taken_for_the_beauty_s_matte(tmp_path) -> None:
    path = _layered(tmp_path / "rgb_crypto.exr", ("R", "G", "B", *CRYPTO), (0.5, 0.25, 0.125, *CRYPTO_VALUES))
    np.testing.assert_array_equal(exr.read_image(path, keep_alpha=True)[0, 0], [0.5, 0.25, 0.125, 1.0])


@pytest.mark.parametrize("beauty", ["beauty", "ViewLayer.Combined", "rgba"])
def test_of_layers_only_the_beauty_layer_is_the_picture_with_its_own_alpha(tmp_path, beauty) -> None:
    names = (*CRYPTO, *(f"{beauty}.{c}" for c in "RGBA"), "ViewLayer.Depth.Z")
    path = _layered(tmp_path / "layers.exr", names, (*CRYPTO_VALUES, 0.5, 0.25, 0.125, 0.75, 9.0))
    np.testing.assert_array_equal(exr.read_image(path, keep_alpha=True)[0, 0], [0.5, 0.25, 0.125, 0.75])


def test_layers_with_no_picture_among_them_are_refused_naming_them(tmp_path) -> None:
    names = (*(f"diffuse.{c}" for c in "RGB"), *(f"specular.{c}" for c in "RGB"))
    path = _layered(tmp_path / "aovs.exr", names, (0.1, 0.2, 0.3, 0.4, 0.5, 0.6))
    with pytest.raises(ImageReadError, match=r"aovs\.exr.*diffuse, specular.*rgba"):
        exr.read_image(path)
    with pytest.raises(ImageReadError, match="diffuse, specular"):
        exr.image_size(path)


def test_the_colour_space_copy_of_a_plate_takes_the_picture_s_channels_not_a_cryptomatte_s(tmp_path) -> None:
    from cinegen.common.params import UpscaleParams
    from cinegen.server.plate_colour import converted_params

    _layered(tmp_path / "rc.1001.exr", ("R", "G", "B", *CRYPTO), (0.5, 0.25, 0.125, *CRYPTO_VALUES))
    converted = converted_params(UpscaleParams(input=str(tmp_path / "rc.####.exr"), input_colorspace="ACES2065-1"),
                                 tmp_path / "job")
    pixels, _ = exr.read_exr_frame(converted.input.replace("####", "1001"))
    expected = color.to_working_space(np.array([[0.5, 0.25, 0.125]], np.float32), "ACES2065-1")[0]
    np.testing.assert_allclose(pixels[0, 0], [*expected, 1.0], rtol=2e-3)  # a half copy; no alpha in the plate


def test_a_colour_space_plate_is_converted_only_for_the_frames_the_job_reads(client, tmp_path) -> None:
    from cinegen.common.client import build_request
    from cinegen.common.params import CommonParams, UpscaleParams

    for frame in range(1001, 1007):
        _write(tmp_path / f"long.{frame}.exr", [(np.full((64, 64, 4), 0.18, np.float32), RGBA, "half", (0, 0), None)])
    whole = (tmp_path / "long.1005.exr").read_bytes()
    (tmp_path / "long.1005.exr").write_bytes(whole[:len(whole) // 2])  # beyond the two frames asked for
    common = CommonParams(model="tiny-sd", steps=2, frames=2, out=str(tmp_path / "up" / "u.####.exr"))
    params = UpscaleParams(input=str(tmp_path / "long.####.exr"), scale=1.0, strength=0.0,
                           input_colorspace="ACES2065-1")
    result = client.run(build_request("upscale", common, params))
    assert result.state == "completed", result.message
    assert sorted(p.rsplit("/", 1)[1] for p in result.outputs) == ["u.1001.exr", "u.1002.exr"]
