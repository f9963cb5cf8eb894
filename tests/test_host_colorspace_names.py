"""A plate's colour space as Blender or Nuke name it reaches the server's OCIO config as the same space."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from cinegen.common import color

# Host name -> the built-in (ACES studio) config's name of the same space.
EQUIVALENTS = {
    "Linear Rec.709": "Linear Rec.709 (sRGB)",   # Blender
    "linear": "Linear Rec.709 (sRGB)",           # nuke-default
    "sRGB": "sRGB Encoded Rec.709 (sRGB)",       # both
    "Display P3": "sRGB Encoded P3-D65",         # Blender
    "Non-Color": "Raw",
    "Gamma2.2": "Gamma 2.2 Encoded Rec.709",     # nuke-default
    "ACEScg": "ACEScg",
    "ACES2065-1": "ACES2065-1",
}


@pytest.fixture(autouse=True)
def builtin_config(monkeypatch):
    monkeypatch.delenv("OCIO", raising=False)


@pytest.mark.parametrize("host_name", sorted(EQUIVALENTS))
def test_a_host_name_converts_exactly_like_the_configs_own_name(host_name):
    pixels = np.random.default_rng(0).uniform(0.0, 1.0, (64, 3)).astype(np.float32)
    assert color.resolve_colorspace(host_name) == EQUIVALENTS[host_name]
    np.testing.assert_array_equal(color.to_working_space(pixels, host_name),
                                  color.to_working_space(pixels, EQUIVALENTS[host_name]))


@pytest.mark.parametrize("host_name", ["rec709", "Filmic Log", "AgX Log"])
def test_a_space_with_no_equivalent_is_refused_with_a_sentence(host_name):
    assert color.resolve_colorspace(host_name) is None
    with pytest.raises(color.ColorConfigError, match="has no colour space"):
        color.to_working_space(np.zeros((1, 3), np.float32), host_name)


@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module")
def test_the_blender_names_listed_are_blenders_own():
    import bpy

    names = {item.name for item in bpy.types.ColorManagedInputColorspaceSettings.bl_rna.properties["name"].enum_items}
    for host_name in ("Linear Rec.709", "sRGB", "Display P3", "Non-Color", "Linear DCI-P3 D65", "Rec.1886"):
        assert host_name in names
