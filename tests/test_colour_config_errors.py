"""A studio $OCIO the server cannot use as asked: refused at Submit, or a failed job saying so, never a
'report it' server error. Configs are built here with PyOpenColorIO."""

from __future__ import annotations

import numpy as np
import PyOpenColorIO as OCIO
import pytest

from cinegen.common.client import RequestRejected, build_request
from cinegen.common.params import CommonParams, UpscaleParams


def _config(path, *, scene_linear: bool = True, srgb: bool = True) -> str:
    """A nuke-default-like config: 'linear' (the reference) and an 'sRGB' curve, one display, one view."""
    config = OCIO.Config.CreateRaw()
    config.setVersion(2, 0)
    config.addColorSpace(OCIO.ColorSpace(name="linear"))
    config.setRole("reference", "linear")
    if scene_linear:
        config.setRole("scene_linear", "linear")
    curve = OCIO.ColorSpace(name="sRGB" if srgb else "gamma24")
    curve.setTransform(OCIO.ExponentTransform(value=[2.4, 2.4, 2.4, 1.0], direction=OCIO.TRANSFORM_DIR_INVERSE),
                       OCIO.COLORSPACE_DIR_FROM_REFERENCE)
    config.addColorSpace(curve)
    config.addDisplayView("sRGB", "sRGB", curve.getName())
    path.write_text(config.serialize())
    return str(path)


def _image_job(tmp_path, **common):
    return build_request("image", CommonParams(prompt="a red disc", seed=1, steps=2, width=64, height=64,
                                               out=str(tmp_path / "out" / "i.####.exr"), **common))


@pytest.mark.parametrize("make, words", [
    (lambda tmp: _config(tmp / "nolinear.ocio", scene_linear=False), "has no 'scene_linear' role"),
    (lambda tmp: str(tmp / "missing.ocio"), "could not be loaded"),
])
def test_a_config_the_server_cannot_use_is_refused_at_submit(client, tmp_path, monkeypatch, make, words):
    monkeypatch.setenv("OCIO", make(tmp_path))
    with pytest.raises(RequestRejected) as refused:
        client.submit(_image_job(tmp_path))
    assert refused.value.code == "FAILED_PRECONDITION" and words in refused.value.message
    assert not (tmp_path / "out").exists()


def test_the_srgb_display_transform_needs_the_config_s_srgb_texture_space_at_submit(client, tmp_path, monkeypatch):
    monkeypatch.setenv("OCIO", _config(tmp_path / "nosrgb.ocio", srgb=False))
    with pytest.raises(RequestRejected) as refused:
        client.submit(_image_job(tmp_path, display_transform="srgb"))
    assert refused.value.code == "FAILED_PRECONDITION" and "no sRGB texture colour space" in refused.value.message
    # the view needs no sRGB space: the same config makes frames
    result = client.run(_image_job(tmp_path))
    assert result.state == "completed", result.message


def test_a_config_problem_met_mid_job_fails_it_as_a_precondition_not_a_server_bug(client, tmp_path, monkeypatch):
    # an 8-bit PNG plate is sRGB-encoded: reading it needs the sRGB texture space, found missing only then
    import OpenImageIO as oiio

    plate = tmp_path / "plate.1001.png"
    out = oiio.ImageOutput.create(str(plate))
    assert out.open(str(plate), oiio.ImageSpec(64, 64, 3, "uint8"))
    assert out.write_image(np.full((64, 64, 3), 128, np.uint8)) and out.close()
    monkeypatch.setenv("OCIO", _config(tmp_path / "nosrgb.ocio", srgb=False))
    common = CommonParams(seed=1, steps=2, out=str(tmp_path / "out" / "up.####.exr"))
    result = client.run(build_request("upscale", common, UpscaleParams(input=str(tmp_path / "plate.####.png"),
                                                                       strength=0.3)))
    assert (result.state, result.code) == ("failed", "FAILED_PRECONDITION"), result.message
    assert "no sRGB texture colour space" in result.message and "report it" not in result.message



def test_a_display_whose_first_view_is_raw_uses_its_first_picture_view(tmp_path, monkeypatch):
    from cinegen.common import color

    # CreateRaw's display "sRGB" lists "Raw" first: through it a picture would be written as if it were linear
    monkeypatch.setenv("OCIO", _config(tmp_path / "rawfirst.ocio"))
    assert color.load_config().getDefaultView("sRGB") == "Raw"
    assert color.sdr_view() == ("sRGB", "sRGB")
    np.testing.assert_allclose(color.display_to_scene_linear(np.full((1, 3), 0.5, np.float32)), 0.5 ** 2.4,
                               rtol=1e-5)


def test_a_display_with_no_picture_view_is_refused_at_submit(client, tmp_path, monkeypatch):
    config = OCIO.Config.CreateRaw()  # one display, one view: Raw
    config.addColorSpace(OCIO.ColorSpace(name="linear"))
    config.setRole("scene_linear", "linear")
    (tmp_path / "rawonly.ocio").write_text(config.serialize())
    monkeypatch.setenv("OCIO", str(tmp_path / "rawonly.ocio"))
    with pytest.raises(RequestRejected) as refused:
        client.submit(_image_job(tmp_path))
    assert refused.value.code == "FAILED_PRECONDITION" and "no view that makes a picture" in refused.value.message


def test_a_config_copied_without_its_lut_files_is_refused_at_submit_naming_the_file(client, tmp_path, monkeypatch):
    config = OCIO.Config.CreateRaw()
    config.addColorSpace(OCIO.ColorSpace(name="linear"))
    config.setRole("scene_linear", "linear")
    film = OCIO.ColorSpace(name="film")
    film.setTransform(OCIO.FileTransform(src="film.spi1d"), OCIO.COLORSPACE_DIR_FROM_REFERENCE)
    config.addColorSpace(film)
    config.addDisplayView("sRGB", "Film", "film")
    config.setActiveViews("Film")
    config.setSearchPath("luts")  # the folder was not copied with config.ocio
    (tmp_path / "noluts.ocio").write_text(config.serialize())
    monkeypatch.setenv("OCIO", str(tmp_path / "noluts.ocio"))
    with pytest.raises(RequestRejected) as refused:
        client.submit(_image_job(tmp_path))
    assert refused.value.code == "FAILED_PRECONDITION" and "film.spi1d" in refused.value.message
