"""Colour conversions through OpenColorIO, between model pixels and the scene-linear working space.

Config: the file named by ``$OCIO`` when set, else OCIO's built-in ``ocio://default`` (the ACES CG
config). The **working space** is the config's ``scene_linear`` role, the space a comp works in: with
the built-in config that is ``ACEScg`` (AP1 primaries), which is also the ``scene_linear`` of Nuke's
default OCIO config since Nuke 14; a studio's own ``$OCIO`` brings its own choice. Its name goes in
every EXR header (``cinegen:colorspace``) together with its ``chromaticities``.

Model pixels are display-referred, sRGB-encoded values in [0, 1]. They are converted with the
*sRGB texture* space ("sRGB Encoded Rec.709 (sRGB)": the sRGB inverse EOTF, IEC 61966-2-1, then the
Rec.709 -> working-space primaries matrix), not by inverting a display's view transform: a picture
has no tone curve to undo, the inverse ACES output transform would blow highlights into large scene
values, and the texture path is invertible, so sRGB -> linear -> sRGB returns the input (the CPU
processors are built lossless, which keeps the round trip within ~1e-6). sRGB 0.5 is linear 0.214.

Generated frames can instead go through the **inverse of the config's SDR view transform**
(``display_to_scene_linear(rgb, "view")``: with the built-in config the ACES 2.0 SDR 100-nit view of
the sRGB display): a model's picture is what a display shows, and undoing the view's tone curve gives
back scene light, with highlights far above 1 (display 0.95 -> ~8.3, 1.0 -> 128), which is what an
environment light or a comp's grade needs. The view is invertible: display -> scene -> display
returns the input within 1e-4 (measured on 100 000 random pixels of [0, 1]). ``"srgb"`` is the
texture path above. A plate goes into the model through the job's transform forward
(``scene_linear_to_display``) and comes back through its inverse, so it round-trips; what the
transform cannot carry (the view's top, above 1 for srgb) the server keeps from the plate itself.

Plates in another space (a log DPX, ACES2065-1) are converted from the name the host gives with
``to_working_space``.

Processors are cached per (config, source, destination); conversions are vectorised over numpy.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import PyOpenColorIO as OCIO

BUILTIN_CONFIG = "ocio://default"
WORKING_SPACE_ROLE = "scene_linear"
# The sRGB texture space as different configs spell it (ACES CG/studio configs, nuke-default, Blender).
SRGB_ENCODED_NAMES = ("sRGB Encoded Rec.709 (sRGB)", "srgb_tx", "sRGB - Texture",
                      "Utility - sRGB - Texture", "sRGB")


DISPLAY_VIEW, DISPLAY_SRGB = "view", "srgb"  # the display_to_scene_linear choices (params.DISPLAY_TRANSFORMS)


# PyOpenColorIO's errors: a missing LUT file (a config copied without its luts folder) is not an OCIO.Exception.
_OCIO_ERRORS = (OCIO.Exception, OCIO.ExceptionMissingFile)


class ColorConfigError(RuntimeError):
    """The OCIO config cannot be used as asked; the message names the config and the fix."""


@dataclass(frozen=True)
class Chromaticities:
    """CIE xy of the primaries and white point, as the OpenEXR ``chromaticities`` attribute holds."""

    red: tuple[float, float]
    green: tuple[float, float]
    blue: tuple[float, float]
    white: tuple[float, float]

    def as_floats(self) -> tuple[float, ...]:
        """The 8 floats in the OpenEXR order: red, green, blue, white (x, y each)."""
        return (*self.red, *self.green, *self.blue, *self.white)


_D65 = (0.3127, 0.3290)
_ACES_WHITE = (0.32168, 0.33767)
REC709 = Chromaticities((0.64, 0.33), (0.30, 0.60), (0.15, 0.06), _D65)
ACES_AP1 = Chromaticities((0.713, 0.293), (0.165, 0.830), (0.128, 0.044), _ACES_WHITE)
ACES_AP0 = Chromaticities((0.7347, 0.2653), (0.0, 1.0), (0.0001, -0.0770), _ACES_WHITE)
REC2020 = Chromaticities((0.708, 0.292), (0.170, 0.797), (0.131, 0.046), _D65)
P3_D65 = Chromaticities((0.680, 0.320), (0.265, 0.690), (0.150, 0.060), _D65)
ADOBE_RGB = Chromaticities((0.64, 0.33), (0.21, 0.71), (0.15, 0.06), _D65)

# Linear spaces by the names and aliases configs give them (lower case); the first name is the
# built-in config's, used to recognise a studio space by its transform when its name is unknown.
_LINEAR_SPACES: tuple[tuple[tuple[str, ...], Chromaticities], ...] = (
    (("acescg", "lin_ap1", "lin_ap1_scene", "aces - acescg"), ACES_AP1),
    (("aces2065-1", "aces2065_1", "lin_ap0", "lin_ap0_scene", "aces - aces2065-1"), ACES_AP0),
    (("linear rec.709 (srgb)", "lin_rec709_srgb", "lin_rec709", "lin_srgb", "lin_rec709_scene",
      "utility - linear - srgb", "utility - linear - rec.709", "linear rec.709", "linear"), REC709),
    (("linear rec.2020", "lin_rec2020", "lin_rec2020_scene", "utility - linear - rec.2020"), REC2020),
    (("linear p3-d65", "lin_p3d65", "lin_displayp3", "lin_p3d65_scene", "linear display p3"), P3_D65),
    (("linear adobergb", "lin_adobergb", "lin_adobergb_scene"), ADOBE_RGB),
)


def config_source() -> str:
    """Where the config comes from: ``$OCIO`` when set, else the built-in config."""
    return os.environ.get("OCIO") or BUILTIN_CONFIG


def load_config() -> OCIO.Config:
    """The active OCIO config (cached per ``$OCIO`` value)."""
    return _config_from(config_source())


@functools.lru_cache(maxsize=4)
def _config_from(source: str) -> OCIO.Config:
    try:
        return OCIO.Config.CreateFromFile(source)
    except _OCIO_ERRORS as error:
        raise ColorConfigError(
            f"The OpenColorIO config '{source}' could not be loaded ({error}): fix the file or "
            "unset $OCIO to use the built-in config.") from error


def working_space_name(config: OCIO.Config | None = None) -> str:
    """The scene-linear working space: the canonical name of the config's ``scene_linear`` role."""
    config = config or load_config()
    space = config.getColorSpace(WORKING_SPACE_ROLE)
    if space is None:
        raise ColorConfigError(
            f"The OpenColorIO config '{config_source()}' has no '{WORKING_SPACE_ROLE}' role: add one "
            "naming your comp's linear working space.")
    return space.getName()


def srgb_encoded_space_name(config: OCIO.Config | None = None) -> str:
    """The config's sRGB texture space (sRGB curve, Rec.709 primaries)."""
    config = config or load_config()
    for name in SRGB_ENCODED_NAMES:
        space = config.getColorSpace(name)
        if space is not None:
            return space.getName()
    raise ColorConfigError(
        f"The OpenColorIO config '{config_source()}' has no sRGB texture colour space (looked for "
        f"{', '.join(SRGB_ENCODED_NAMES)}): add one, or an alias 'srgb_tx' to it.")


def convert(rgb: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Pixels from colour space ``src`` to ``dst`` (names, aliases or roles of the active config).

    ``rgb`` is float ``(..., 3)`` or ``(..., 4)`` (alpha passes through); returns a new float32 array.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim < 1 or rgb.shape[-1] not in (3, 4):  # checked before the processor: a shape error, not OCIO's
        raise ValueError(f"Expected pixels with 3 or 4 channels in the last axis, got shape {rgb.shape}.")
    return _apply(_cpu_processor(config_source(), src, dst), rgb)


@functools.lru_cache(maxsize=64)
def _cpu_processor(source: str, src: str, dst: str) -> OCIO.CPUProcessor:
    config = _config_from(source)
    try:
        processor = config.getProcessor(src, dst)
    except _OCIO_ERRORS as error:
        raise ColorConfigError(
            f"OpenColorIO cannot convert from '{src}' to '{dst}' with the config '{source}' "
            f"({error}).") from error
    # Lossless: the default optimisation approximates pow() to ~2e-5, too coarse for a round trip.
    return processor.getOptimizedCPUProcessor(OCIO.OPTIMIZATION_LOSSLESS)


def srgb_display_to_scene_linear(rgb: np.ndarray) -> np.ndarray:
    """Model output (sRGB-encoded, display-referred, [0, 1]) -> scene-linear working space."""
    return convert(rgb, srgb_encoded_space_name(), working_space_name())


def scene_linear_to_srgb_display(rgb: np.ndarray) -> np.ndarray:
    """Scene-linear working space -> sRGB-encoded values (not clipped: > 1 stays > 1)."""
    return convert(rgb, working_space_name(), srgb_encoded_space_name())


def chromaticities_of(space: str, config: OCIO.Config | None = None) -> Chromaticities | None:
    """Primaries and white of a linear colour space, or ``None`` when it is not a known one.

    Known by name or alias first; otherwise by transform: a space that converts to one of the
    built-in linear spaces as the identity has its chromaticities.
    """
    config = config or load_config()
    color_space = config.getColorSpace(space)
    if color_space is None or color_space.isData():  # data passes any conversion unchanged
        return None
    names = {color_space.getName().lower(), *(alias.lower() for alias in color_space.getAliases())}
    for known_names, chromaticities in _LINEAR_SPACES:
        if names & set(known_names):
            return chromaticities
    for known_names, chromaticities in _LINEAR_SPACES:
        if _is_identity(config, color_space.getName(), known_names[0]):
            return chromaticities
    return None


def _is_identity(config: OCIO.Config, src: str, dst: str) -> bool:
    if config.getColorSpace(dst) is None:
        return False
    probe = np.array([[0.18, 0.5, 0.9], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    try:
        converted = probe.copy()
        config.getProcessor(src, dst).getDefaultCPUProcessor().applyRGB(converted)
    except _OCIO_ERRORS:
        return False
    return bool(np.allclose(converted, probe, atol=1e-4))


# ---------------------------------------------------------------------------------- display <-> scene
def sdr_view(config: OCIO.Config | None = None) -> tuple[str, str]:
    """(display, view) whose inverse turns display-referred pixels into scene light: the config's
    default display and that display's default view (built-in config: sRGB, ACES 2.0 SDR 100 nits), or
    its first view that makes a picture when the default is a data one (Raw, None: a picture through it
    would be written as if it were scene light)."""
    config = config or load_config()
    display = config.getDefaultDisplay()
    view = config.getDefaultView(display) if display else ""
    if not display or not view:
        raise ColorConfigError(
            f"The OpenColorIO config '{config_source()}' has no default display and view: add them, or "
            "choose the srgb display transform.")
    for candidate in dict.fromkeys([view, *config.getViews(display)]):
        if _makes_a_picture(config, display, candidate):
            return display, candidate
    raise ColorConfigError(
        f"The OpenColorIO config '{config_source()}' has no view that makes a picture on its display '{display}' "
        f"(its views pass values through as data: {', '.join(config.getViews(display))}): add one, or choose "
        "the srgb display transform.")


def _makes_a_picture(config: OCIO.Config, display: str, view: str) -> bool:
    space = config.getColorSpace(config.getDisplayViewColorSpaceName(display, view))
    if space is not None and space.isData():
        return False
    try:
        transform = OCIO.DisplayViewTransform(src=working_space_name(config), display=display, view=view)
        return not config.getProcessor(transform).isNoOp()
    except _OCIO_ERRORS:
        return True  # a view that cannot be built is reported by the caller that builds it, with its reason


def display_to_scene_linear(rgb: np.ndarray, transform: str = DISPLAY_VIEW) -> np.ndarray:
    """Display-referred pixels in [0, 1] -> the scene-linear working space.

    ``"view"``: through the inverse SDR view (highlights above 1; inputs clipped to [0, 1], the range
    the view covers); ``"srgb"``: the sRGB texture curve (``srgb_display_to_scene_linear``)."""
    if transform == DISPLAY_SRGB:
        return srgb_display_to_scene_linear(rgb)
    if transform != DISPLAY_VIEW:
        raise ValueError(f"Unknown display transform '{transform}': use '{DISPLAY_VIEW}' or '{DISPLAY_SRGB}'.")
    return _apply(_view_processor(config_source(), inverse=True), np.clip(np.asarray(rgb, np.float32), 0.0, 1.0))


def scene_linear_to_display(rgb: np.ndarray, transform: str = DISPLAY_VIEW) -> np.ndarray:
    """The working space -> display-referred pixels: the SDR view (``"view"``) or the sRGB curve."""
    if transform == DISPLAY_SRGB:
        return scene_linear_to_srgb_display(rgb)
    if transform != DISPLAY_VIEW:
        raise ValueError(f"Unknown display transform '{transform}': use '{DISPLAY_VIEW}' or '{DISPLAY_SRGB}'.")
    return _apply(_view_processor(config_source(), inverse=False), rgb)


# Colour-space names Blender's and Nuke's default configs give plates, and the same space under the names a
# config of the ACES studio kind (OpenColorIO's built-in one) uses. Only exact equivalents are listed: a space
# with no equivalent there (Nuke's `rec709` OETF, Blender's Filmic/AgX Log) is refused with a sentence.
HOST_COLORSPACE_NAMES: dict[str, tuple[str, ...]] = {
    "linear rec.709": ("Linear Rec.709 (sRGB)", "lin_rec709"),          # Blender
    "linear": ("Linear Rec.709 (sRGB)", "lin_rec709"),                  # nuke-default
    "srgb": ("sRGB Encoded Rec.709 (sRGB)", "srgb_tx"),                 # both
    "linear dci-p3 d65": ("Linear P3-D65", "lin_p3d65"),                # Blender
    "display p3": ("sRGB Encoded P3-D65", "srgb_p3d65"),                # Blender: sRGB curve, P3-D65 primaries
    "rec.1886": ("Gamma 2.4 Encoded Rec.709", "g24_rec709"),            # Blender
    "gamma2.2": ("Gamma 2.2 Encoded Rec.709", "g22_rec709"),            # nuke-default
    "gamma1.8": ("Gamma 1.8 Encoded Rec.709", "g18_rec709"),            # nuke-default
    "non-color": ("Raw",),                                              # Blender
    "raw": ("Raw",),                                                    # nuke-default
}


def resolve_colorspace(name: str, config: OCIO.Config | None = None) -> str | None:
    """The config's own name for ``name`` (a name, alias or role, or a Blender/Nuke default-config name with an
    exact equivalent in it); None when the config has no such space."""
    config = config or load_config()
    space = config.getColorSpace(name)
    if space is not None:
        return space.getName()
    for candidate in HOST_COLORSPACE_NAMES.get(name.strip().lower(), ()):
        space = config.getColorSpace(candidate)
        if space is not None:
            return space.getName()
    return None


def to_working_space(rgb: np.ndarray, colorspace: str) -> np.ndarray:
    """Pixels in the config's colour space ``colorspace`` (a name, alias, role or host name) -> the working space."""
    config = load_config()
    resolved = resolve_colorspace(colorspace, config)
    if resolved is None:
        raise ColorConfigError(
            f"The OpenColorIO config '{config_source()}' has no colour space '{colorspace}'. Use one of its "
            f"names (for example {', '.join(list(config.getColorSpaceNames())[:6])}) or set $OCIO on the server "
            "to the config the plate was made with.")
    return convert(rgb, resolved, working_space_name(config))


def check_config(transform: str = DISPLAY_VIEW) -> None:
    """Raise :class:`ColorConfigError` now when the active config cannot turn model pixels into the working
    space through ``transform`` (it does not load, lacks the ``scene_linear`` role, the SDR view or, for
    ``"srgb"``, the sRGB texture space), rather than when the first frame is written."""
    working_space_name()
    if transform == DISPLAY_SRGB:
        srgb_encoded_space_name()
    else:
        _view_processor(config_source(), inverse=True)


def has_colorspace(name: str) -> bool:
    return resolve_colorspace(name) is not None


def _apply(processor: OCIO.CPUProcessor, rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim < 1 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"Expected pixels with 3 or 4 channels in the last axis, got shape {rgb.shape}.")
    out = np.array(rgb, dtype=np.float32, order="C", copy=True)
    if out.shape[-1] == 4:
        processor.applyRGBA(out)
    else:
        processor.applyRGB(out)
    return out


@functools.lru_cache(maxsize=8)
def _view_processor(source: str, inverse: bool) -> OCIO.CPUProcessor:
    config = _config_from(source)
    display, view = sdr_view(config)
    transform = OCIO.DisplayViewTransform(
        src=working_space_name(config), display=display, view=view,
        direction=OCIO.TRANSFORM_DIR_INVERSE if inverse else OCIO.TRANSFORM_DIR_FORWARD)
    try:
        processor = config.getProcessor(transform)
    except _OCIO_ERRORS as error:
        raise ColorConfigError(f"OpenColorIO cannot build the '{view}' view of '{display}' with the config "
                               f"'{source}' ({error}).") from error
    return processor.getOptimizedCPUProcessor(OCIO.OPTIMIZATION_LOSSLESS)
