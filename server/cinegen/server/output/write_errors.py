"""A frame the disk would not take: a sentence saying what to do (free space, fix permissions), not a crash.

OpenImageIO reports a failed write without the OS error number, so a full disk is also recognised by
the room left beside the frame once its temporary file is gone: less than the frame's raw size.
"""
from __future__ import annotations

import errno
import os
import shutil

from ..errors import FailedPrecondition, ResourceExhausted, UserError

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS}
HEADER_ROOM = 64 << 10  # bytes an EXR header and its offset table may add to the raw pixels


def frame_write_error(error: OSError, path: str, raw_bytes: int) -> UserError:
    """The job's error for frame `path` failing with `error`; `raw_bytes`: its uncompressed pixel size."""
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    detail = error.strerror or str(error)
    again = ("then submit again (with --overwrite, or 'Overwrite' in the panel, to replace the frames already "
             "written; they are complete).")
    if error.errno in _FULL or (error.errno is None and _free_bytes(folder) < raw_bytes + HEADER_ROOM):
        return ResourceExhausted(f"The disk holding {folder} is full: frame {name} could not be written. Free "
                                 f"space there or choose another output folder, {again}")
    if error.errno in _REFUSED:
        return FailedPrecondition(f"Frame {name} could not be written into {folder} ({detail}): fix the "
                                  f"folder's permissions or choose another output folder, {again}")
    return FailedPrecondition(f"Frame {name} could not be written into {folder} ({detail}). Check that disk "
                              f"or share, {again}")


def _free_bytes(folder: str) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62  # cannot tell: not called full
