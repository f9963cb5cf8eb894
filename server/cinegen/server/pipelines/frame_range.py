"""`--frame-range FIRST-LAST`: a run that writes only some frames of a sequence (a farm or cluster chunk).

Pipelines whose frames are independent given the seed (images in batches, plate frames or clips) do
the same work as a full run for every batch or clip that holds a wanted frame, and write only the
wanted frames: the chunks of a sequence, run anywhere, add up to the full run's frames.
"""
from __future__ import annotations

from cinegen.common.sequence import FrameRange

from ..errors import InvalidArgument
from .base import JobSpec


def parse_frame_range(text: str) -> FrameRange | None:
    """The range of `--frame-range` (None when empty); INVALID_ARGUMENT when malformed."""
    if not text.strip():
        return None
    try:
        return FrameRange.parse(text.strip())
    except ValueError as exc:
        raise InvalidArgument(f"--frame-range: {exc}") from exc


def requested_range(job: JobSpec) -> FrameRange | None:
    return parse_frame_range(job.common.frame_range)


def check_frame_range(job: JobSpec, pipeline_name: str, supported: bool, why: str = "") -> None:
    """INVALID_ARGUMENT for a malformed range, or a range asked of a pipeline that cannot chunk."""
    if requested_range(job) is not None and not supported:
        raise InvalidArgument(f"The {pipeline_name} pipeline cannot write part of a sequence{why}; "
                              "leave --frame-range empty (frame ranges are for image and plate upscale).")


def wanted_indices(job: JobSpec, first_frame: int, count: int) -> range:
    """0-based indices of the sequence's frames this run writes: all, or those of --frame-range."""
    wanted = requested_range(job)
    if wanted is None:
        return range(count)
    start, stop = max(0, wanted.first - first_frame), min(count, wanted.last - first_frame + 1)
    if start >= stop:
        raise InvalidArgument(f"The frame range {wanted.first}-{wanted.last} is outside the sequence "
                              f"{first_frame}-{first_frame + count - 1}; pick frames inside it.")
    return range(start, stop)
