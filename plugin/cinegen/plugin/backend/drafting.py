"""From form values to a `JobDraft`: the job id, the versioned output, the request, what to upload.

With a shared disk the server writes straight into the new version folder here. Without one it
writes into `remote_output_dir/<job id>/` on its own disk, and the frames are downloaded into the
version folder afterwards; path parameters naming local files are uploaded before submitting.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from cinegen.common.connection import ConnectionSettings

from ..model.forms import OUTPUT_FIELD, FieldSpec, request_from_values
from ..model.outputs import safe_name, versioned_output
from .job_runner import JobDraft


@dataclass(frozen=True)
class DraftPlace:
    """Where a job's frames go on this machine, and the version folder claimed for them (if any)."""
    local_output: str
    claimed_folder: str = ""


def plan_output(values: Mapping[str, Any], *, settings: ConnectionSettings, output_root: str | Path,
                name: str, folder_output: bool = False) -> DraftPlace:
    """The artist's own output path when given, else a freshly claimed version folder.

    `folder_output` (the pipeline's `output_is_folder`, e.g. story): the version folder itself is the output.
    """
    typed = str(values.get(OUTPUT_FIELD) or "").strip()
    if typed:
        return DraftPlace(typed)
    root = output_root if settings.shared_disk else (settings.download_dir or output_root)
    local = versioned_output(root, safe_name(name))
    folder = os.path.dirname(local)
    return DraftPlace(folder if folder_output else local, folder)


def make_draft(pipeline: str, fields: Iterable[FieldSpec], values: Mapping[str, Any], *, job_id: str,
               settings: ConnectionSettings, place: DraftPlace, client: str = "", source: str = "") -> JobDraft:
    fields = list(fields)
    # a remote server writes into its own folder; the frames come back to place.local_output
    out = place.local_output if settings.shared_disk else \
        posixpath.join(settings.remote_output_dir, job_id, os.path.basename(place.local_output))
    request = request_from_values(pipeline, fields, {**values, OUTPUT_FIELD: out}, job_id=job_id, client=client)
    uploads = tuple((f.group, f.name) for f in fields if f.type == "path" and f.name != OUTPUT_FIELD)
    return JobDraft(request, local_output=place.local_output, upload_fields=uploads, source=source)


def release_folder(folder: str) -> None:
    """Give back a version folder a job never wrote to (only removed while empty)."""
    if folder:
        try:
            os.rmdir(folder)
        except OSError:
            pass
