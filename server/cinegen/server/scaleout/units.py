"""How a job splits into independent work units, for a farm (OpenJD steps) or a Ray cluster.

- story: the keyframes first, as one unit (they are sequential through GoldenMem), then one unit per
  shot (its motion, from the keyframes on disk), then the cut (contact sheet and timeline);
- image sequences and plate upscales: chunks of frames (`--frame-range`), each doing the work of a
  full run for the batches or clips that hold its frames, so the chunks add up to the full run;
  plates refined in overlapping clips (video models) split at clip starts, a chunk per worker
  (`clip_chunks`): every boundary costs one clip computed twice, so there are as few as the workers need;
- everything else (panorama, trajectory, generated upscales, DiT plates): one unit.
Each pipeline declares its split (`Pipeline.work_units`) from these; a unit is the job with a few options
changed; no torch here (the exporter runs on any workstation).
"""
from __future__ import annotations

from dataclasses import dataclass

from cinegen.common.sequence import FrameRange
from cinegen.common.story_io import Story, select_shots

DEFAULT_CHUNK = 4  # frames per chunk: the image pipeline denoises in batches of 4, so chunks never share one


@dataclass(frozen=True)
class WorkUnit:
    name: str  # unique within the job: "keyframes", "sh010", "timeline", "frames 1001-1004", "all"
    after: tuple[str, ...] = ()  # units that must be finished first
    stage: str = ""  # story: keyframes | motion | timeline
    shots: tuple[str, ...] = ()  # story: the shots this unit makes
    frame_range: str = ""  # FIRST-LAST, or empty for the whole sequence
    weight: float = 1.0  # share of the job's work, for progress


def story_units(story: Story, shot_ids: list[str] | tuple[str, ...] = ()) -> list[WorkUnit]:
    selected = select_shots(story, list(shot_ids))
    ids = tuple(shot.id for shot in selected)
    units = [WorkUnit("keyframes", stage="keyframes", shots=ids, weight=2.5 * len(ids))]
    units += [WorkUnit(shot.id, after=("keyframes",), stage="motion", shots=(shot.id,), weight=float(shot.frames))
              for shot in selected]
    units.append(WorkUnit("timeline", after=ids, stage="timeline", shots=ids, weight=0.1))
    return units


def frame_chunks(frames: FrameRange, chunk: int) -> list[WorkUnit]:
    """Chunks of `chunk` frames counted from the first frame (so they line up with the pipeline's
    batches of 4); `chunk` 0 or a sequence that fits in one chunk = one unit."""
    if chunk <= 0 or frames.count <= chunk:
        return [WorkUnit("all", weight=float(frames.count))]
    units = []
    for first in range(frames.first, frames.last + 1, chunk):
        last = min(first + chunk - 1, frames.last)
        units.append(WorkUnit(f"frames {first}-{last}", frame_range=f"{first}-{last}", weight=float(last - first + 1)))
    return units


def clip_chunks(frames: FrameRange, starts: list[int], window: int, parts: int) -> list[WorkUnit]:
    """A sequence refined in overlapping clips of `window` frames (clip k covers frames starts[k] ..
    starts[k] + window - 1 of it, counted from 0), split into at most `parts` chunks of whole clips.

    A chunk writes the frames from its first clip's start to the next chunk's first clip's start: the
    frames the full run hands out once those clips are blended (ClipBlend). It refines every clip touching
    them, its own and the one (or, before a last clip flush with the end, two) whose tail fades into its
    first frames, so each of its frames is blended from the same clips, in the same order, as in the full
    run. A frame in an overlap needs both clips, whole (motion attends over the clip): a boundary anywhere
    costs at least one clip twice, and one at a clip start costs the fewest. Of the splits into 1 ..
    `parts` chunks, the one whose busiest chunk refines the fewest clips (then the fewest chunks)."""
    best = [WorkUnit("all", weight=float(len(starts) * window))]
    for count in range(2, min(parts, len(starts)) + 1):
        units = _clip_split(frames, starts, window, count)
        if max(u.weight for u in units) < max(u.weight for u in best):
            best = units
    return best


def _clip_split(frames: FrameRange, starts: list[int], window: int, parts: int) -> list[WorkUnit]:
    """`parts` chunks of clips, the first ones a clip longer where they do not divide evenly (the first
    chunk refines no clip twice)."""
    sizes = [len(starts) // parts + (1 if k < len(starts) % parts else 0) for k in range(parts)]
    units, a = [], 0
    for size in sizes:
        b = a + size
        begin, end = starts[a], starts[b] if b < len(starts) else frames.count
        refined = sum(1 for s in starts if s < end and s + window > begin)
        first, last = frames.first + begin, frames.first + end - 1
        units.append(WorkUnit(f"frames {first}-{last}", frame_range=f"{first}-{last}", weight=float(refined * window)))
        a = b
    return units


def single_unit() -> list[WorkUnit]:
    return [WorkUnit("all")]


def check_order(units: list[WorkUnit]) -> None:
    """Every unit comes after the units it waits for (a plan a scheduler can run front to back)."""
    seen: set[str] = set()
    for unit in units:
        missing = [name for name in unit.after if name not in seen]
        if missing or unit.name in seen:
            raise ValueError(f"unit {unit.name} waits for {missing} that are not planned before it")
        seen.add(unit.name)
