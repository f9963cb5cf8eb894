"""Colour conversions: sRGB model pixels <-> the OCIO scene_linear working space, and $OCIO."""

from __future__ import annotations

import copy

import numpy as np
import PyOpenColorIO as OCIO
import pytest

from cinegen.common import color


@pytest.fixture(autouse=True)
def builtin_config(monkeypatch) -> None:
    monkeypatch.delenv("OCIO", raising=False)


def _srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 sRGB inverse EOTF, written out."""
    return np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4)


def test_builtin_working_space_is_the_scene_linear_role_acescg() -> None:
    assert color.config_source() == "ocio://default"
    assert color.working_space_name() == "ACEScg"
    assert color.working_space_name() == color.load_config().getColorSpace("scene_linear").getName()
    assert color.srgb_encoded_space_name() == "sRGB Encoded Rec.709 (sRGB)"


def test_srgb_half_grey_is_linear_0_214_in_the_working_space() -> None:
    grey = np.full((1, 1, 3), 0.5, np.float32)
    linear = color.srgb_display_to_scene_linear(grey)
    assert linear.dtype == np.float32 and linear.shape == (1, 1, 3)
    np.testing.assert_allclose(linear, 0.21404, atol=1e-4)  # neutrals stay neutral in ACEScg


def test_srgb_decoding_matches_the_standard_curve_exactly() -> None:
    ramp = np.linspace(0.0, 1.0, 257, dtype=np.float32)
    rgb = np.stack([ramp, ramp[::-1], ramp], axis=-1)
    linear = color.convert(rgb, "sRGB Encoded Rec.709 (sRGB)", "Linear Rec.709 (sRGB)")
    np.testing.assert_allclose(linear, _srgb_decode(rgb.astype(np.float64)), atol=2e-6)


def test_rec709_red_lands_on_ap1_primaries_mix() -> None:
    red = np.array([[1.0, 0.0, 0.0]], np.float32)
    acescg = color.convert(red, "Linear Rec.709 (sRGB)", "ACEScg")
    np.testing.assert_allclose(acescg, [[0.6131, 0.0702, 0.0206]], atol=1e-3)


def test_srgb_to_linear_and_back_returns_the_input() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.random((32, 48, 3), dtype=np.float32)
    back = color.scene_linear_to_srgb_display(color.srgb_display_to_scene_linear(rgb))
    assert np.abs(back - rgb).max() < 1e-4


def test_values_over_one_and_alpha_survive_the_round_trip() -> None:
    rgba = np.array([[[4.0, 0.5, 1.5, 0.25], [0.0, 2.0, 0.1, 1.0]]], np.float32)
    linear = color.convert(rgba, "ACEScg", "sRGB Encoded Rec.709 (sRGB)")
    np.testing.assert_array_equal(linear[..., 3], rgba[..., 3])
    assert linear[..., :3].max() > 1.0  # not clipped
    back = color.convert(linear, "sRGB Encoded Rec.709 (sRGB)", "ACEScg")
    np.testing.assert_allclose(back, rgba, rtol=1e-4, atol=1e-5)


def test_convert_leaves_its_input_untouched_and_refuses_wrong_shapes() -> None:
    rgb = np.full((2, 2, 3), 0.5, np.float64)
    color.srgb_display_to_scene_linear(rgb)
    assert (rgb == 0.5).all()
    with pytest.raises(ValueError, match="3 or 4 channels"):
        color.convert(np.zeros((2, 2, 2), np.float32), "ACEScg", "ACEScg")


def test_chromaticities_of_known_linear_spaces_and_none_for_others() -> None:
    assert color.chromaticities_of("ACEScg") == color.ACES_AP1
    assert color.chromaticities_of("lin_srgb") == color.REC709  # an alias
    assert color.chromaticities_of("ACES2065-1") == color.ACES_AP0
    assert color.chromaticities_of("sRGB Encoded Rec.709 (sRGB)") is None  # not linear
    assert color.chromaticities_of("Raw") is None  # data: no primaries
    assert color.chromaticities_of("no such space") is None
    assert len(color.REC709.as_floats()) == 8


def _studio_config(tmp_path, scene_linear: str, extra_space: OCIO.ColorSpace | None = None) -> str:
    config = copy.deepcopy(OCIO.Config.CreateFromFile("ocio://default"))
    if extra_space is not None:
        config.addColorSpace(extra_space)
    config.setRole("scene_linear", scene_linear)
    path = tmp_path / "studio.ocio"
    path.write_text(config.serialize())
    return str(path)


def test_ocio_environment_variable_chooses_the_config_and_its_working_space(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OCIO", _studio_config(tmp_path, "Linear Rec.709 (sRGB)"))
    assert color.working_space_name() == "Linear Rec.709 (sRGB)"
    red = color.srgb_display_to_scene_linear(np.array([[1.0, 0.0, 0.0]], np.float32))
    np.testing.assert_allclose(red, [[1.0, 0.0, 0.0]], atol=1e-5)  # no primaries change now
    assert color.chromaticities_of(color.working_space_name()) == color.REC709


def test_an_unknown_studio_name_for_acescg_is_recognised_by_its_transform(tmp_path, monkeypatch) -> None:
    comp_linear = OCIO.ColorSpace(name="comp_lin")
    comp_linear.setTransform(OCIO.ColorSpaceTransform(src="ACEScg", dst="ACES2065-1"),
                             OCIO.COLORSPACE_DIR_TO_REFERENCE)
    monkeypatch.setenv("OCIO", _studio_config(tmp_path, "comp_lin", comp_linear))
    assert color.working_space_name() == "comp_lin"
    assert color.chromaticities_of("comp_lin") == color.ACES_AP1


def test_an_unreadable_ocio_config_is_reported_with_the_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OCIO", str(tmp_path / "missing.ocio"))
    with pytest.raises(color.ColorConfigError, match="could not be loaded.*unset \\$OCIO"):
        color.working_space_name()
