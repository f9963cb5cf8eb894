"""One colour space under the names different OCIO configs give it, to tag a host's Read with the file's space.

cinegen writes the server config's name (`cinegen:colorspace`): "ACEScg" with OCIO's built-in config or an
OCIO v2 ACES config, "ACES - ACEScg" when the server's $OCIO is an ACES 1.x config. A host's project may
use the other kind: Nuke 13's aces_1.2 lists "ACES - ACEScg", Nuke 14+'s cg/studio configs "ACEScg". Only
exact equivalents are listed (same primaries, same encoding), so a match never changes the colours.
"""
from __future__ import annotations

from typing import Iterable

EQUIVALENT_NAMES: tuple[tuple[str, ...], ...] = (
    # OCIO v2 ACES configs, ACES 1.x configs (OCIO v1), OCIO v2 aliases, nuke-default
    ("ACEScg", "ACES - ACEScg", "lin_ap1"),
    ("ACES2065-1", "ACES - ACES2065-1", "lin_ap0"),
    ("ACEScct", "ACES - ACEScct", "acescct_ap1"),
    ("ACEScc", "ACES - ACEScc", "acescc_ap1"),
    ("Linear Rec.709 (sRGB)", "Utility - Linear - sRGB", "lin_rec709", "linear"),
    ("Linear Rec.2020", "Utility - Linear - Rec.2020", "lin_rec2020"),
    ("Raw", "Utility - Raw", "raw"),
)


def equivalent_names(space: str) -> tuple[str, ...]:
    """`space` first, then its other spellings (case-insensitive lookup); just `space` when none are known."""
    key = space.strip().casefold()
    for names in EQUIVALENT_NAMES:
        if key in (n.casefold() for n in names):
            return (space, *(n for n in names if n.casefold() != key))
    return (space,)


def name_in(space: str, available: Iterable[str]) -> str:
    """The name `available` (a host's list of its config's spaces) has for `space`, or "" when it has none."""
    listed = {name.casefold(): name for name in available}
    for candidate in equivalent_names(space):
        if candidate.casefold() in listed:
            return listed[candidate.casefold()]
    return ""
