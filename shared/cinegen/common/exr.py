"""Scene-linear OpenEXR frames and plates, through OpenImageIO.

Frames out (DESIGN.md, "Frames on disk"): half float RGBA, ZIP by default (PIZ, DWAA, none), the
standard ``chromaticities`` of the working space, ``framesPerSecond`` (rational), ``software``,
``capDate`` (local time) with ``utcOffset``, ``pixelAspectRatio``, ``envmap`` = latitude-longitude for
panoramas, and the ``cinegen:*`` string attributes that say how the frame was made. A frame is
written under a hidden temporary name in its own folder, synced to disk and renamed onto its final
name (``os.replace`` is atomic on POSIX and Windows), so a reader sees either no file or a complete one.

Plates in: any format OpenImageIO reads. Float files (EXR, HDR, float TIFF) are taken as scene
linear already; integer files (PNG, JPEG, 8/16-bit TIFF) as sRGB-encoded, converted with color.py.
An EXR plate is its display window (the format a Read node shows): a data window inside it (a comp's
bounding box) is placed in it with 0 around, overscan beyond it is cropped off. Of a multi-part EXR,
the first part with colour channels (R, G, B or Y) is read. NaN pixels read as 0 and infinities as
the largest half float (+-65504), so no resize or blend downstream spreads them; 32-bit integer
colour channels (object IDs) are refused.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from fractions import Fraction
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import OpenImageIO as oiio

from cinegen.common import color
from cinegen.common.sequence import (FrameRange, SequencePattern, SequencePatternError,
                                     check_output_writable, compact_frame_list)

COMPRESSIONS = ("zip", "piz", "dwaa", "none")
CINEGEN_PREFIX = "cinegen:"
# OpenImageIO's names for standard EXR attributes it renames on reading.
_OIIO_TO_EXR_NAMES = {"DateTime": "capDate", "FramesPerSecond": "framesPerSecond", "Software": "software"}
_FLOAT_FORMATS = {"half", "float", "double"}
HALF_MAX = 65504.0  # the largest finite half float: a plate's +inf becomes this
UNASSOCIATED = "oiio:UnassociatedAlpha"  # 1 in a header read here: the file's colour is not premultiplied


class ExrWriteError(OSError):
    """A frame could not be written; nothing was left under its final name."""


class ImageReadError(OSError):
    """An image file could not be read; the message names the file."""


class PlateError(ValueError):
    """A plate sequence cannot be used as asked; the message is meant for the artist."""


def software_name() -> str:
    """``"cinegen <version>"`` for the ``software`` attribute."""
    try:
        return f"cinegen {version('cinegen')}"
    except PackageNotFoundError:
        return "cinegen 0.0.0"


@dataclass
class ExrMetadata:
    """What a frame's header says about how it was made."""

    pipeline: str = ""
    model: str = ""
    seed: int | None = None
    prompt: str = ""
    job: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    colorspace: str | None = None  # None: the working space of the active OCIO config
    frame: int | None = None
    fps: float | Fraction | None = None  # sequences only; written as a rational
    latlong: bool = False  # an equirectangular panorama: standard envmap = ENVMAP_LATLONG
    pixel_aspect: float = 1.0  # the standard pixelAspectRatio: an anamorphic plate's squeeze, kept when upscaled
    extra: dict[str, str] = field(default_factory=dict)  # written as cinegen:<key>

    def cinegen_attributes(self) -> dict[str, str]:
        """The ``cinegen:*`` string attributes (empty fields left out)."""
        values = {
            **self.extra,  # first, so an extra key cannot hide a field of its own name
            "pipeline": self.pipeline, "model": self.model, "prompt": self.prompt, "job": self.job,
            "seed": "" if self.seed is None else str(self.seed),
            "params": json.dumps(dict(self.params), sort_keys=True, default=str) if self.params else "",
            "colorspace": self.colorspace or color.working_space_name(),
            "frame": "" if self.frame is None else str(self.frame),
        }
        return {CINEGEN_PREFIX + key: value for key, value in values.items() if value != ""}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> ExrMetadata:
        """Rebuild from a header as :func:`read_exr_frame` returns it."""
        ours = {key[len(CINEGEN_PREFIX):]: str(value) for key, value in header.items()
                if key.startswith(CINEGEN_PREFIX)}
        fps = header.get("framesPerSecond")
        return cls(
            pipeline=ours.pop("pipeline", ""), model=ours.pop("model", ""),
            seed=int(ours.pop("seed")) if "seed" in ours else None,
            prompt=ours.pop("prompt", ""), job=ours.pop("job", ""),
            params=json.loads(ours.pop("params")) if "params" in ours else {},
            colorspace=ours.pop("colorspace", None),
            frame=int(ours.pop("frame")) if "frame" in ours else None,
            fps=None if fps is None else Fraction(*fps) if isinstance(fps, tuple) else Fraction(fps),
            latlong=header.get("envmap") == "latlong",
            pixel_aspect=float(header.get("PixelAspectRatio", 1.0)),
            extra=ours,
        )


def fps_as_rational(fps: float | Fraction) -> tuple[int, int]:
    """24 -> (24, 1); 23.976 -> (24000, 1001): NTSC rates are exact ratios, not decimals."""
    if fps <= 0:
        raise ValueError(f"Frames per second must be positive, not {fps}.")
    if isinstance(fps, Fraction):
        return fps.numerator, fps.denominator
    ntsc_base = round(fps * 1.001)
    # 5e-3 also takes the editorial shorthand 23.98 / 29.97 / 59.94 as the NTSC ratio it stands for.
    if abs(fps - round(fps)) > 1e-6 and abs(fps - ntsc_base * 1000 / 1001) < 5e-3:
        return ntsc_base * 1000, 1001
    exact = Fraction(fps).limit_denominator(1001)
    return exact.numerator, exact.denominator


def write_exr_frame(path: str | os.PathLike[str], rgba: np.ndarray, *, metadata: ExrMetadata,
                    compression: str = "zip", capture_time: datetime | None = None, replace: bool = True) -> None:
    """Write one scene-linear frame atomically: half float RGBA (alpha 1 added to RGB).

    `replace=False`: never over a file that is there when the frame is published (another process
    writing the same sequence); `FileExistsError` then, and nothing of this frame stays."""
    path = os.fspath(path)
    if compression not in COMPRESSIONS:
        raise ValueError(f"Unknown EXR compression '{compression}': use one of {', '.join(COMPRESSIONS)}.")
    pixels = _as_rgba(rgba)
    spec = _frame_spec(pixels.shape[1], pixels.shape[0], metadata, compression, capture_time)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # Hidden, and not ending in .exr: no sequence listing (ours, Nuke's, Blender's) picks it up.
    temporary = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        _write_with_oiio(temporary, spec, pixels)
        _check_readable_exr(temporary)
        _fsync(temporary)
        _publish(temporary, path, replace)
        _fsync_folder(folder)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _publish(temporary: str, path: str, replace: bool) -> None:
    if replace:
        os.replace(temporary, path)
        return
    try:  # a hard link is created only where no file is: the check and the publish are one step
        os.link(temporary, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links (some shares): checked, then renamed
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "File exists", path) from None
        os.replace(temporary, path)
        return
    os.remove(temporary)


def write_exr_sequence(pattern: str | SequencePattern, frames: Iterable[tuple[int, np.ndarray]],
                       metadata: ExrMetadata, *, compression: str = "zip",
                       on_frame_written: Callable[[int, str], None] | None = None) -> list[str]:
    """Write ``(frame, pixels)`` pairs under ``pattern``; returns the paths, in order written."""
    if isinstance(pattern, str):
        pattern = SequencePattern.parse(pattern)
    check_output_writable(pattern)
    written: list[str] = []
    capture_time = datetime.now()  # one capDate for the whole sequence
    for frame, pixels in frames:
        path = pattern.path_for(frame)
        write_exr_frame(path, pixels, metadata=replace(metadata, frame=frame),
                        compression=compression, capture_time=capture_time)
        written.append(path)
        if on_frame_written is not None:
            on_frame_written(frame, path)
    return written


def _as_rgba(rgba: np.ndarray) -> np.ndarray:
    # Half pixels stay half: OpenImageIO then stores them as they are, with no float -> half pass.
    dtype = np.float16 if np.asarray(rgba).dtype == np.float16 else np.float32
    pixels = np.asarray(rgba, dtype=dtype)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"A frame is an (H, W, 3) or (H, W, 4) array, not shape {pixels.shape}.")
    if pixels.shape[2] == 3:
        alpha = np.ones(pixels.shape[:2] + (1,), dtype=dtype)
        pixels = np.concatenate([pixels, alpha], axis=2)
    return np.ascontiguousarray(pixels)


def _frame_spec(width: int, height: int, metadata: ExrMetadata, compression: str,
                capture_time: datetime | None) -> oiio.ImageSpec:
    spec = oiio.ImageSpec(width, height, 4, "half")
    spec.channelnames = ("R", "G", "B", "A")
    spec.attribute("compression", compression)
    chromaticities = color.chromaticities_of(metadata.colorspace or color.working_space_name())
    if chromaticities is not None:
        spec.attribute("chromaticities", oiio.TypeDesc("float[8]"), chromaticities.as_floats())
    if metadata.fps is not None:
        spec.attribute("framesPerSecond", oiio.TypeRational, fps_as_rational(metadata.fps))
    spec.attribute("software", software_name())
    spec.attribute("PixelAspectRatio", float(metadata.pixel_aspect))  # OpenImageIO's name for pixelAspectRatio
    # OpenImageIO writes its DateTime as the standard capDate, which is local time; utcOffset says which
    # (UTC == local + utcOffset), so frames rendered on machines in other zones compare.
    captured = capture_time or datetime.now()
    spec.attribute("DateTime", captured.strftime("%Y:%m:%d %H:%M:%S"))
    local_offset = captured.astimezone().utcoffset()
    if local_offset is not None:
        spec.attribute("utcOffset", 0.0 - local_offset.total_seconds())  # 0.0 -: no "-0" at UTC
    if metadata.latlong:
        # OpenImageIO writes envmap=ENVMAP_LATLONG for this (still a scanline image of one level).
        spec.attribute("textureformat", "LatLong Environment")
    for name, value in metadata.cinegen_attributes().items():
        spec.attribute(name, value)
    return spec


def _write_with_oiio(path: str, spec: oiio.ImageSpec, pixels: np.ndarray) -> None:
    output = oiio.ImageOutput.create("openexr")  # by format name: the temporary name has no .exr
    if output is None:
        raise ExrWriteError(f"OpenImageIO has no OpenEXR writer ({oiio.geterror()}).")
    ok = output.open(path, spec) and output.write_image(pixels)
    ok = output.close() and ok
    if not ok:
        raise ExrWriteError(f"Could not write the EXR frame '{path}': {output.geterror()}")


def _check_readable_exr(path: str) -> None:
    # OpenImageIO can report success for a file it left empty; never publish one.
    image = oiio.ImageInput.open(path)
    if image is None:
        raise ExrWriteError(f"The EXR frame just written to '{path}' cannot be read back: "
                            f"{oiio.geterror()}")
    image.close()


def _fsync(path: str) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _fsync_folder(folder: str) -> None:
    if os.name != "posix":  # folders cannot be opened for fsync on Windows
        return
    _fsync(folder)


def read_exr_frame(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Pixels (float32, H x W x C, channels as stored: R, G, B, A first) and the header; colour as stored,
    not premultiplied when the header has ``oiio:UnassociatedAlpha`` 1 (a PNG's straight alpha)."""
    path = os.fspath(path)
    image = _open_image(path)
    try:
        spec = image.spec()
        pixels = _read_display_window(image, spec, path)
        header = {_OIIO_TO_EXR_NAMES.get(a.name, a.name): a.value for a in spec.extra_attribs}
    finally:
        image.close()
    header["channels"] = tuple(spec.channelnames)
    header["pixel_type"] = str(spec.format)
    if header.pop("textureformat", None) == "LatLong Environment":
        header["envmap"] = "latlong"
    return pixels, header


def read_image(path: str | os.PathLike[str], *, keep_alpha: bool = False) -> np.ndarray:
    """A plate image as scene-linear float32, H x W x 3 (x 4 with ``keep_alpha``; alpha 1 if none)."""
    path = os.fspath(path)
    image = _open_image(path)
    try:
        spec = image.spec()
        pixels = _read_display_window(image, spec, path)
    finally:
        image.close()
    rgb, alpha = _rgb_and_alpha(pixels, spec, path)
    # not a picture value: NaN would turn every pixel a resize or blend touches into NaN, inf into inf
    rgb = np.nan_to_num(rgb, nan=0.0, posinf=HALF_MAX, neginf=-HALF_MAX)
    alpha = np.nan_to_num(alpha, nan=0.0, posinf=HALF_MAX, neginf=-HALF_MAX)
    if _colour_format(spec, path) not in _FLOAT_FORMATS:
        rgb = color.srgb_display_to_scene_linear(rgb)
    if spec.get_int_attribute(UNASSOCIATED, 0) == 1:  # PNG, TGA, most TIFFs: premultiplied in linear, as EXR is
        rgb = rgb * alpha
    return np.concatenate([rgb, alpha], axis=2) if keep_alpha else rgb


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of the picture :func:`read_image` reads (its display window), from the header alone;
    raises :class:`ImageReadError` for a file it would refuse."""
    path = os.fspath(path)
    image = _open_image(path)
    try:
        spec = image.spec()
        _colour_format(spec, path)
        width, height, _, _ = _display_window(image, spec)
        return width, height
    finally:
        image.close()


def pixel_aspect(path: str | os.PathLike[str]) -> float:
    """The picture's pixel aspect ratio (2.0 for a 2x anamorphic plate; 1.0 when the file does not say)."""
    path = os.fspath(path)
    image = _open_image(path)
    try:
        value = image.spec().get_float_attribute("PixelAspectRatio", 1.0)
    finally:
        image.close()
    return value if np.isfinite(value) and value > 0 else 1.0


def _open_image(path: str) -> oiio.ImageInput:
    """The file open at its first part with colour channels (a multi-part EXR may start with depth or IDs)."""
    if not os.path.isfile(path):
        raise ImageReadError(f"There is no file '{path}'.")
    # straight alpha as stored: OpenImageIO would premultiply the sRGB-encoded values (dark edges)
    config = oiio.ImageSpec()
    config.attribute(UNASSOCIATED, 1)
    image = oiio.ImageInput.open(path, config)
    if image is None:
        raise ImageReadError(f"Could not read '{path}': {oiio.geterror() or 'unknown format'}.")
    if not _has_colour(image.spec()):
        part = 1
        while image.seek_subimage(part, 0):
            if _has_colour(image.spec()):
                return image
            part += 1
        image.seek_subimage(0, 0)  # none has: the first part, read as greyscale
    return image


def _has_colour(spec: oiio.ImageSpec) -> bool:
    layers = _layers(spec.channelnames)
    return bool(_rgb_layers(layers)) or "Y" in layers.get("", {})


# Where the picture is among layers: Nuke's rgba (no prefix, or "rgba."), a renderer's beauty, Blender's Combined.
_PICTURE_LAYERS = ("", "rgba", "beauty", "combined")


def _layers(names: Sequence[str]) -> dict[str, dict[str, int]]:
    """{layer: {channel (upper case): index}}; "diffuse.R" is channel R of layer diffuse, "R" of layer ""."""
    layers: dict[str, dict[str, int]] = {}
    for index, name in enumerate(names):
        layer, _, channel = name.rpartition(".")
        layers.setdefault(layer, {}).setdefault(channel.upper(), index)
    return layers


def _rgb_layers(layers: dict[str, dict[str, int]]) -> list[str]:
    return [layer for layer, channels in layers.items() if {"R", "G", "B"} <= channels.keys()]


def _picture_layer(layers: dict[str, dict[str, int]]) -> str | None:
    """The layer with the picture: a known name first, else the only one with R, G, B; None if none or unsure."""
    with_rgb = _rgb_layers(layers)
    for wanted in _PICTURE_LAYERS:
        for layer in with_rgb:
            if layer.rpartition(".")[2].lower() == wanted:
                return layer
    return with_rgb[0] if len(with_rgb) == 1 else None


def _display_window(image: oiio.ImageInput, spec: oiio.ImageSpec) -> tuple[int, int, int, int]:
    """(width, height, x, y) of the display window; the data window when a format has none.

    OpenEXR's only: OpenImageIO makes one up from a TIFF's XPosition or a DPX's offsets (a 13x9 frame of
    black around an 8x6 TIFF, an 8x6 DPX cropped to its overlap), which Nuke's Read ignores."""
    if image.format_name() != "openexr" or spec.full_width < 1 or spec.full_height < 1:
        return spec.width, spec.height, spec.x, spec.y
    return spec.full_width, spec.full_height, spec.full_x, spec.full_y


def _read_display_window(image: oiio.ImageInput, spec: oiio.ImageSpec, path: str) -> np.ndarray:
    """The open part's pixels (float32, H x W x C) over its display window: 0 where there is no data."""
    pixels = image.read_image(image.current_subimage(), 0, 0, spec.nchannels, "float")
    if pixels is None:
        raise ImageReadError(f"Could not read the pixels of '{path}': {image.geterror()}")
    pixels = np.ascontiguousarray(pixels, dtype=np.float32).reshape(spec.height, spec.width, spec.nchannels)
    width, height, x, y = _display_window(image, spec)
    if (width, height, x, y) == (spec.width, spec.height, spec.x, spec.y):
        return pixels
    # Nuke's reading: outside the bounding box every channel is 0; overscan is cut off at the format
    framed = np.zeros((height, width, spec.nchannels), np.float32)
    left, right = max(x, spec.x), min(x + width, spec.x + spec.width)
    top, bottom = max(y, spec.y), min(y + height, spec.y + spec.height)
    if left < right and top < bottom:
        framed[top - y:bottom - y, left - x:right - x] = \
            pixels[top - spec.y:bottom - spec.y, left - spec.x:right - spec.x]
    return framed


def _channels(names: Sequence[str]) -> tuple[list[int], int]:
    """Indices of the colour channels (R, G, B of the picture layer; or the one grey channel) and of that
    layer's alpha (-1 when none: a cryptomatte's or other AOV's A is no matte of the picture). No colour
    channels when several layers have R, G, B and none is known as the picture."""
    layers = _layers(names)
    layer = _picture_layer(layers)
    if layer is not None:
        own = layers[layer]
        return [own[name] for name in "RGB"], own.get("A", own.get("ALPHA", -1))
    if _rgb_layers(layers):
        return [], -1
    main = layers.get("", {})
    alpha_index = main.get("A", main.get("ALPHA", -1))
    if "Y" in main:
        return [main["Y"]], alpha_index
    # greyscale of another name (one channel, or one + A): the one value goes in all three channels
    return [index for index in range(len(names)) if index != alpha_index][:1], alpha_index


def _picture_channels(names: Sequence[str], path: str) -> tuple[list[int], int]:
    """`_channels`, refusing a file with none (the message names the file and what to do)."""
    colour, alpha_index = _channels(names)
    if not colour and _rgb_layers(_layers(names)):
        raise ImageReadError(
            f"'{path}' has no main R, G, B channels but several layers with them "
            f"({', '.join(sorted(_rgb_layers(_layers(names))))}): shuffle the one to use into rgba (or name it "
            "beauty) and write the plate again.")
    if not colour:
        raise ImageReadError(f"'{path}' has no colour channels (channels: {', '.join(names)}).")
    return colour, alpha_index


def _colour_format(spec: oiio.ImageSpec, path: str) -> str:
    """How the colour channels are stored ("half", "uint8"...); refuses 32-bit integers."""
    colour, _ = _picture_channels(spec.channelnames, path)
    formats = spec.channelformats or (spec.format,) * spec.nchannels  # empty when all channels share one
    stored = str(formats[colour[0]])
    if stored == "uint":
        raise ImageReadError(f"'{path}' stores its colour in 32-bit integer channels (object IDs or masks, not a "
                             "picture): give a plate with half or float channels.")
    return stored


def _rgb_and_alpha(pixels: np.ndarray, spec: oiio.ImageSpec, path: str) -> tuple[np.ndarray, np.ndarray]:
    _colour_format(spec, path)
    return picture_rgb_and_alpha(pixels, spec.channelnames, path)


def picture_rgb_and_alpha(pixels: np.ndarray, names: Sequence[str], path: str = "") -> tuple[np.ndarray, np.ndarray]:
    """RGB (H, W, 3; grey repeated) and alpha (H, W, 1; 1 when none) of pixels with channels ``names``, chosen
    as a plate is read: the picture layer's R, G, B and A, never an AOV's (:class:`ImageReadError` if unsure)."""
    colour, alpha_index = _picture_channels(names, path)
    rgb = pixels[..., colour] if len(colour) == 3 else np.repeat(pixels[..., colour], 3, axis=2)
    alpha = pixels[..., alpha_index:alpha_index + 1] if alpha_index >= 0 else np.ones_like(rgb[..., :1])
    return np.ascontiguousarray(rgb), np.ascontiguousarray(alpha)


def read_plate_sequence(pattern: str | SequencePattern, frames: FrameRange | None = None, *,
                        keep_alpha: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame, scene-linear pixels)`` for every frame of a plate, checked before the first is read.

    Raises :class:`PlateError` at once when the pattern has no frame token, no frame is on disk, or
    frames of ``frames`` are missing; while iterating, when a file is unreadable or changes size.
    """
    if isinstance(pattern, str):
        try:
            pattern = SequencePattern.parse(pattern, any_extension=True, what="plate")
        except SequencePatternError as error:
            raise PlateError(str(error)) from error
    on_disk = pattern.glob_existing()
    shown = pattern.hash_form()
    if not on_disk:
        raise PlateError(f"No frames of the plate '{shown}' were found: check the folder, the name "
                         "and the frame padding.")
    frames = frames or FrameRange(min(on_disk), max(on_disk))
    missing = [frame for frame in frames if frame not in on_disk]
    if missing:
        raise PlateError(f"The plate '{shown}' is missing {len(missing)} of its {frames.count} frames "
                         f"({frames}): {compact_frame_list(missing)}. Render or copy them, or choose "
                         "a frame range that exists.")
    return _plate_frames(on_disk, frames, shown, keep_alpha)


def _plate_frames(on_disk: dict[int, str], frames: FrameRange, shown: str,
                  keep_alpha: bool) -> Iterator[tuple[int, np.ndarray]]:
    first_shape: tuple[int, ...] | None = None
    for frame in frames:
        try:
            pixels = read_image(on_disk[frame], keep_alpha=keep_alpha)
        except OSError as error:  # ImageReadError included
            raise PlateError(f"Frame {frame} of the plate '{shown}' could not be read: {error}") from error
        first_shape = first_shape or pixels.shape
        if pixels.shape != first_shape:
            raise PlateError(
                f"Frame {frame} of the plate '{shown}' is {pixels.shape[1]}x{pixels.shape[0]} but frame "
                f"{frames.first} is {first_shape[1]}x{first_shape[0]}: every frame of a plate must "
                "have the same size.")
        yield frame, pixels


def srgb_preview_png(image: np.ndarray, max_side: int = 256, *, scene_linear: bool = True) -> bytes:
    """A small sRGB PNG of a frame (its longer side at most ``max_side``) for previews."""
    from io import BytesIO

    from PIL import Image

    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"A preview needs an (H, W, 3) or (H, W, 4) image, not shape {pixels.shape}.")
    rgb = _box_shrink(pixels[..., :3], max_side)  # average before the curve: light adds linearly
    if scene_linear:
        rgb = color.scene_linear_to_srgb_display(rgb)
    rgb8 = np.clip(np.nan_to_num(rgb) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    picture = Image.fromarray(rgb8, "RGB")
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _box_shrink(rgb: np.ndarray, max_side: int) -> np.ndarray:
    factor = max(rgb.shape[0], rgb.shape[1]) // max(max_side, 1)
    if factor < 2:
        return rgb
    height, width = (rgb.shape[0] // factor) * factor, (rgb.shape[1] // factor) * factor
    blocks = rgb[:height, :width].reshape(height // factor, factor, width // factor, factor, 3)
    return blocks.mean(axis=(1, 3))
