"""Read the attributes of an OpenEXR header in plain Python (hosts' Pythons may lack OpenImageIO).

OpenEXR file layout (openexr.com, "OpenEXR File Layout"): magic number 20000630 (little-endian
int32), a 4-byte version field, then attributes ``name\\0 type\\0 size:int32 value[size]`` until an
empty name. Only the first part's header is read. ``string`` values are the bytes themselves (no
terminator); ``int`` and ``float`` are 4-byte little-endian; ``rational`` is int32/uint32; ``box2i``
(data and display windows) is four int32 (xMin, yMin, xMax, yMax); ``chromaticities`` is eight
floats (x, y of red, green, blue, white); other types are returned as raw bytes.
"""
from __future__ import annotations

import os
import struct
from fractions import Fraction
from typing import Any

EXR_MAGIC = 20000630
MAX_HEADER_BYTES = 1 << 20  # a header is kilobytes; stop before reading a damaged file's pixels


class NotAnExrFile(ValueError):
    pass


def read_exr_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header's attributes by name (``{"cinegen:colorspace": "ACEScg", ...}``)."""
    with open(path, "rb") as f:
        data = f.read(MAX_HEADER_BYTES)
    if len(data) < 8 or struct.unpack_from("<i", data, 0)[0] != EXR_MAGIC:
        raise NotAnExrFile(f"'{os.fspath(path)}' is not an OpenEXR file.")
    attributes: dict[str, Any] = {}
    offset = 8
    while offset < len(data):
        name, offset = _cstring(data, offset)
        if not name:
            return attributes
        kind, offset = _cstring(data, offset)
        (size,) = struct.unpack_from("<i", data, offset)
        offset += 4
        raw = data[offset:offset + size]
        offset += size
        attributes[name] = _decode(kind, raw)
    raise NotAnExrFile(f"The header of '{os.fspath(path)}' is damaged or truncated.")


def _cstring(data: bytes, offset: int) -> tuple[str, int]:
    end = data.index(b"\0", offset)
    return data[offset:end].decode("utf-8", "replace"), end + 1


def _decode(kind: str, raw: bytes) -> Any:
    if kind == "string":
        return raw.decode("utf-8", "replace")
    if kind == "int" and len(raw) == 4:
        return struct.unpack("<i", raw)[0]
    if kind == "float" and len(raw) == 4:
        return struct.unpack("<f", raw)[0]
    if kind == "double" and len(raw) == 8:
        return struct.unpack("<d", raw)[0]
    if kind == "box2i" and len(raw) == 16:
        return struct.unpack("<4i", raw)  # xMin, yMin, xMax, yMax (inclusive)
    if kind == "chromaticities" and len(raw) == 32:
        return struct.unpack("<8f", raw)  # CIE xy of red, green, blue, white
    if kind == "rational" and len(raw) == 8:
        numerator, denominator = struct.unpack("<iI", raw)
        return Fraction(numerator, denominator) if denominator else None
    return raw


def exr_colorspace(path: str | os.PathLike[str]) -> str:
    """The colour space a cinegen frame was written in (``cinegen:colorspace``), or "" when unknown."""
    try:
        value = read_exr_header(path).get("cinegen:colorspace", "")
    except (OSError, ValueError):
        return ""
    return value if isinstance(value, str) else ""
