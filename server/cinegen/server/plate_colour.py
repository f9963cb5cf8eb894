"""Plates in the colour space the host says they are in: converted to the working space before a job runs.

The host sends the plate's OCIO name (`input_colorspace`, from a Read node's `colorspace` knob or a
Blender image's colour space). Pipelines read plates as working-space linear (float files) or sRGB
(integer files); a log DPX or an ACES2065-1 EXR would be misread. So before the job runs, the server
reads each frame's stored values, converts them with OpenColorIO from that space to the working space
and writes them (half float EXR, alpha kept) into the job's own folder; the job then reads that copy.
Half float keeps about 3 significant digits (relative error <= 2**-11), well below what the model sees.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cinegen.common import color
from cinegen.common.exr import (UNASSOCIATED, ExrMetadata, ImageReadError, picture_rgb_and_alpha, read_exr_frame,
                               write_exr_frame)
from cinegen.common.sequence import SequencePattern, SequencePatternError

from .errors import FailedPrecondition, InvalidArgument

COLORSPACE_FIELD, INPUT_FIELD = "input_colorspace", "input"


def check_plate_colorspace(params: Any) -> None:
    """Refuse at Submit a plate colour space the server's OCIO config does not have."""
    space = getattr(params, COLORSPACE_FIELD, "")
    if space and not color.has_colorspace(space):
        try:
            color.to_working_space(np.zeros((1, 3), np.float32), space)
        except color.ColorConfigError as exc:
            raise InvalidArgument(str(exc)) from None


def check_colour_config(display_transform: str) -> None:
    """Refuse at Submit a job the server's OCIO config cannot colour (``color.check_config``): a setup problem."""
    try:
        color.check_config(display_transform or color.DISPLAY_VIEW)
    except color.ColorConfigError as exc:
        raise FailedPrecondition(str(exc)) from None


def needs_conversion(params: Any) -> bool:
    space = getattr(params, COLORSPACE_FIELD, "")
    if not space or not getattr(params, INPUT_FIELD, ""):
        return False
    config = color.load_config()
    return color.resolve_colorspace(space, config) != color.working_space_name(config)


def converted_params(params: Any, folder: Path, log: Callable[[str], None] = lambda text: None,
                     frames: int | None = None) -> Any:
    """`params` with its input replaced by a working-space copy in `folder` (unchanged when none is needed);
    `frames`: the job's frame count, which the plate pipelines read from the plate's first frame on disk
    (only those are converted; all when None)."""
    if not needs_conversion(params):
        return params
    space, source = getattr(params, COLORSPACE_FIELD), getattr(params, INPUT_FIELD)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        pattern = SequencePattern.parse(source, any_extension=True, what="plate")
    except SequencePatternError:  # one image, no frame number
        pattern = None
    if pattern is None:
        files = {0: source}
        new_input = str(folder / (Path(source).stem + ".exr"))
        _convert_file(source, new_input, space, f"The input image '{source}'")
    else:
        files = pattern.glob_existing()
        if frames and files:
            last = min(files) + frames - 1
            files = {frame: path for frame, path in files.items() if frame <= last}
        # the same file name and padding, so frame numbers and the pipeline's checks stay as they were
        out = SequencePattern.parse(str(folder / f"{pattern.prefix}{'#' * pattern.padding}.exr"))
        for frame, path in files.items():
            _convert_file(path, out.path_for(frame), space, f"Frame {frame} of the plate '{pattern.hash_form()}'")
        new_input = out.hash_form()
    log(f"plate converted from {space} to {color.working_space_name()} ({len(files)} frame(s))")
    return dataclasses.replace(params, **{INPUT_FIELD: new_input, COLORSPACE_FIELD: ""})


def remove_converted(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _convert_file(source: str, target: str, space: str, shown: str) -> None:
    try:
        pixels, header = read_exr_frame(source)  # OpenImageIO: stored values, integers scaled to [0, 1]
        # the channels a plate is read from: the picture layer's, not a cryptomatte's or another AOV's
        rgb, alpha = picture_rgb_and_alpha(pixels, header["channels"], source)
    except ImageReadError as exc:  # cut short on disk, changed since Submit, no picture: the artist's to fix
        raise InvalidArgument(f"{shown} could not be read: {exc}") from exc
    linear = color.to_working_space(np.ascontiguousarray(rgb), space)
    if header.get(UNASSOCIATED) == 1:  # straight alpha (PNG): premultiplied once linear, as the EXR copy must be
        linear = linear * alpha
    write_exr_frame(target, np.concatenate([linear, alpha], axis=2), metadata=ExrMetadata(), compression="none")
