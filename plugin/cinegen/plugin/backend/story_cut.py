"""Where each shot of a story sits in its cut: the story's `.otio` read as plain JSON (a host's Python
may lack OpenTimelineIO).

The server writes one video track, the shots in story order: a clip per finished shot (its media an
image sequence in the shot's folder, named relative to the .otio) and a gap per missing one, every
item timed at the cut's rate, so a shot starts where the durations before it end.
"""
from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def shot_offsets(otio_path: str | os.PathLike[str]) -> dict[str, int]:
    """Each finished shot's folder (absolute, normalised) -> frames from the cut's start to the shot.

    Empty when the file can't be read as such a cut: the host then places the shots as it would any result."""
    try:
        timeline = json.loads(Path(otio_path).read_text(encoding="utf-8"))
        track = next(t for t in timeline["tracks"]["children"] if t.get("kind", "Video") == "Video")
        offsets, position = {}, 0
        for item in track["children"]:
            folder = _sequence_folder(item, Path(otio_path).parent)
            if folder:
                offsets[folder] = position
            position += round(item["source_range"]["duration"]["value"])
        return offsets
    except (OSError, ValueError, KeyError, TypeError, StopIteration, AttributeError):
        return {}


def _sequence_folder(item: dict[str, Any], base: Path) -> str:
    """The folder of a clip's image sequence ("" for a gap or another kind of media)."""
    if not str(item.get("OTIO_SCHEMA", "")).startswith("Clip"):
        return ""
    references = item.get("media_references") or {}  # Clip.2; Clip.1 has one media_reference
    reference = references.get(item.get("active_media_reference_key", "DEFAULT_MEDIA")) or item.get("media_reference")
    url = (reference or {}).get("target_url_base") or ""
    if not url:
        return ""
    if url.startswith("file:"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    else:  # relative to the .otio: the cut and its shots move together
        path = base / urllib.parse.unquote(url)
    return os.path.normpath(path)
