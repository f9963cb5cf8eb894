"""Files to and from a server that does not share this machine's disk.

Before submitting, every path parameter that names files here (a plate ``PLATE.####.exr``, a
trajectory JSON, an image) is uploaded with `Upload` into one server-side asset folder and the
parameter is rewritten to the server's path. After the job, each output is fetched with
`Download` into the local, versioned output folder, frame number for frame number.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterable

from cinegen.common.client import GeneratorClient
from cinegen.common.proto import generator_pb2 as pb
from cinegen.common.sequence import SequencePattern, SequencePatternError

from ..model.forms import COMMON_GROUP

TransferReport = Callable[[str, str], None]  # (state "uploading"/"downloading", stage text)


def local_files(value: str) -> list[str]:
    """The files on this machine a path value names: every frame of a sequence pattern, or one file."""
    if not value:
        return []
    try:
        pattern = SequencePattern.parse(value, any_extension=True, what="input")
    except SequencePatternError:
        return [value] if os.path.isfile(value) else []
    return list(pattern.glob_existing().values())


def _remote_basename(path: str) -> str:
    return re.split(r"[\\/]", path)[-1]  # the server may use either separator


def stage_inputs(client: GeneratorClient, request: pb.JobRequest, fields: Iterable[tuple[str, str]],
                 report: TransferReport = lambda state, stage: None) -> dict[str, str]:
    """Upload the local files named by `fields` ((group, name) pairs) and point the request at the
    server's copies. Returns {field name: server path}."""
    which = request.WhichOneof("params")
    rewritten: dict[str, str] = {}
    for group, name in fields:
        target = request.common if group == COMMON_GROUP else getattr(request, which) if which else None
        if target is None or name not in target.DESCRIPTOR.fields_by_name:
            continue
        value = getattr(target, name)
        files = local_files(value)
        if not files:
            continue
        reply: pb.UploadReply | None = None
        for index, path in enumerate(files, start=1):
            report("uploading", f"uploading {name} {index}/{len(files)}")
            reply = client.upload_file(path, asset_id=reply.asset_id if reply else "")
        assert reply is not None
        remote_folder = reply.path[: len(reply.path) - len(Path(files[-1]).name)]  # keeps the server's separator
        remote_value = remote_folder + os.path.basename(value)
        setattr(target, name, remote_value)
        rewritten[name] = remote_value
    return rewritten


def fetch_outputs(client: GeneratorClient, remote_outputs: list[str], remote_out: str, local_out: str,
                  report: TransferReport = lambda state, stage: None) -> list[str]:
    """Download a job's outputs; frames of the `remote_out` pattern land on the same frame of `local_out`."""
    remote_name = _remote_basename(remote_out)
    try:
        remote = SequencePattern.parse(remote_name, any_extension=True)
        frame_of = re.compile(re.escape(remote.prefix) + r"(-?\d+)" + re.escape(remote.suffix) + r"\Z")
        local: SequencePattern | None = SequencePattern.parse(local_out, any_extension=True)
        local_folder = local.directory
    except SequencePatternError:  # a folder output (story): keep the file names
        frame_of, local, local_folder = None, None, local_out
    written = []
    for index, path in enumerate(remote_outputs, start=1):
        report("downloading", f"downloading {index}/{len(remote_outputs)}")
        name = _remote_basename(path)
        match = frame_of.match(name) if frame_of else None
        destination = local.path_for(int(match.group(1))) if match and local else os.path.join(local_folder, name)
        written.append(str(client.download(path, destination)))
    return written
