"""Story and trajectory documents of a request, checked before any pipeline parses them.

Guards the parsers do not have: YAML aliases are refused (a few hundred bytes of nested aliases
expand to gigabytes), nesting too deep for the parser is a sentence instead of a RecursionError,
control characters are named, and the size limits on tracks, points and shots apply. A document
read from the server's disk is never quoted in an error (only where it went wrong, by line).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

from cinegen.common.story_io import Story, StoryError, parse_story_text
from cinegen.common.trajectory_io import Trajectory, TrajectoryError, parse_trajectory

from .errors import InvalidArgument
from .limits import Limits, over


@dataclass
class Origin:
    """Where a document came from: the request itself, or a file on the server (never quoted)."""
    label: str  # "trajectory_json" or "the trajectory file /path"
    server_file: bool = False


def check_trajectory(text: str, origin: Origin, limits: Limits) -> Trajectory:
    text = text.lstrip("\ufeff")  # a byte-order mark (some Windows tools write one) is not content
    if not text.lstrip().startswith("{"):
        raise InvalidArgument(f"{_cap(origin.label)} must be a JSON object ({{\"width\": ..., \"tracks\": [...]}}).")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{_cap(origin.label)} is not valid JSON (line {exc.lineno}, column {exc.colno}"
                              + ("" if origin.server_file else f": {exc.msg}") + ").") from None
    except RecursionError:
        raise InvalidArgument(f"{_cap(origin.label)} nests its JSON too deeply to read.") from None
    try:
        trajectory = parse_trajectory(data)
    except TrajectoryError as exc:
        raise InvalidArgument(f"{_cap(origin.label)} is not a usable trajectory"
                              + (" (open it on the server to see why)." if origin.server_file else f": {exc}")) from None
    except (TypeError, ValueError, OverflowError, RecursionError):  # values of the wrong type deep inside
        raise InvalidArgument(f"{_cap(origin.label)} has values of the wrong type for a trajectory "
                              "(numbers where numbers go, names as text).") from None
    if len(trajectory.tracks) > limits.max_tracks:
        raise over(limits, "max_tracks", "The number of tracks", len(trajectory.tracks))
    points = sum(len(t.points) for t in trajectory.tracks)
    if points > limits.max_points:
        raise over(limits, "max_points", "The number of track points", points)
    return trajectory


def check_story(text: str, origin: Origin, limits: Limits, name: str = "story") -> Story:
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise InvalidArgument(f"{_cap(origin.label)} uses a YAML alias (*name) at line {line}; stories may "
                                      "not use aliases (they can expand without bound). Write the value out.")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        if isinstance(exc, yaml.reader.ReaderError):
            raise InvalidArgument(f"{_cap(origin.label)} contains a character YAML does not allow "
                                  f"(code {_code(exc.character)} at position {exc.position}); remove it.") from None
        problem = "" if origin.server_file else f": {getattr(exc, 'problem', None) or exc}"
        raise InvalidArgument(f"{_cap(origin.label)} is not valid YAML{where}{problem}.") from None
    except RecursionError:
        raise InvalidArgument(f"{_cap(origin.label)} nests its YAML too deeply to read.") from None
    try:
        story = parse_story_text(text, source=name)
    except StoryError as exc:
        if origin.server_file:
            where = f" (line {exc.line})" if exc.line else ""
            raise InvalidArgument(f"{_cap(origin.label)} is not a usable story{where}; open it on the server "
                                  "to see why.") from None
        raise InvalidArgument(str(exc)) from None
    except (yaml.YAMLError, RecursionError, TypeError, ValueError):
        raise InvalidArgument(f"{_cap(origin.label)} is not a usable story.") from None
    if len(story.shots) > limits.max_shots:
        raise over(limits, "max_shots", "The number of shots", len(story.shots))
    return story


def _code(character: object) -> int | str:
    return ord(character) if isinstance(character, str) and len(character) == 1 else str(character)[:8]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
