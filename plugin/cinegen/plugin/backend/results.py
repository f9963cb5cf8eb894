"""What came back: a finished job's files as `ResultSequence`s, each with the colour space its EXR
header names (read in plain Python, so hosts without OpenImageIO get it too)."""
from __future__ import annotations

import dataclasses
from typing import Iterable

from ..model.outputs import ResultSequence, group_sequences
from .exr_header import exr_colorspace


def with_file_colorspace(result: ResultSequence) -> ResultSequence:
    return dataclasses.replace(result, colorspace=exr_colorspace(result.first_file))


def results_from_outputs(outputs: Iterable[str], *, job_id: str = "", pipeline: str = "", seed: int | None = None,
                         model: str = "", prompt: str = "", source: str = "") -> list[ResultSequence]:
    return [with_file_colorspace(ResultSequence(pattern=pattern, frames=frames, pipeline=pipeline, job_id=job_id,
                                                seed=seed, model=model, prompt=prompt, source=source))
            for pattern, frames in group_sequences(outputs)]
