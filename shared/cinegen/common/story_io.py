"""Story files: the YAML shot list a previz supervisor writes (DESIGN.md "Story files and timelines").

Example::

    title: The Lighthouse
    fps: 24              # or 23.976, or 24000/1001
    style: moody 35mm film still, teal and orange
    characters:
      Mira: a tall lighthouse keeper with a red scarf
      Tom: a small boy in a yellow raincoat
    shots:
      - id: sh010
        prompt: Mira climbs the spiral stairs
        frames: 48
        characters: [Mira]
        seed: 7              # optional
        continuity: true     # optional: the next shot's keyframe conditions this shot's last frame

Errors carry the line they are about (``StoryError.line``, 1-based) and read
"story.yaml line 14: shot 'sh020' names character 'Mira' that is not in characters (known: Tom)".
The YAML is composed into a node tree first (``yaml.SafeLoader.get_single_node``): nodes keep
their start marks, which map every key and value back to its line.

Prompt composition (Captain Cinema's "top-down" keyframes need the same descriptions in every shot
so a character looks the same across the film; ALGORITHMS.md §4): see ``compose_shot_prompt``.

No torch here (``cinegen.common``).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

DEFAULT_FPS = 24.0
MAX_FPS = 240.0
# Shot ids become folder and file names (OUT/<shot>/<shot>.####.exr): letters, digits, _ and -.
SHOT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
STORY_KEYS = ("title", "fps", "style", "characters", "shots")
SHOT_KEYS = ("id", "prompt", "frames", "characters", "seed", "continuity")


class StoryError(ValueError):
    """A story file that cannot be used; ``line`` (1-based) is where the problem is, if known."""

    def __init__(self, message: str, line: int | None = None, source: str = "story") -> None:
        where = source if line is None else f"{source} line {line}"
        super().__init__(f"{where}: {message}")
        self.line = line
        self.source = source
        self.reason = message


@dataclass(frozen=True)
class Shot:
    id: str
    prompt: str
    frames: int
    characters: tuple[str, ...] = ()
    seed: int | None = None
    continuity: bool = False  # True: the next shot's keyframe is this shot's last-frame condition
    line: int | None = field(default=None, compare=False)  # where the shot starts in its file


@dataclass(frozen=True)
class Story:
    title: str
    shots: tuple[Shot, ...]
    fps: float = DEFAULT_FPS
    style: str = ""
    characters: dict[str, str] = field(default_factory=dict)  # name → description, file order

    @property
    def total_frames(self) -> int:
        return sum(shot.frames for shot in self.shots)

    def shot(self, shot_id: str) -> Shot:
        return select_shots(self, [shot_id])[0]


# ------------------------------------------------------------------------------------------ loading
def load_story(source: str | Path) -> Story:
    """Read a story from a ``.yaml``/``.yml`` path or from the YAML text itself."""
    name = "story"
    if isinstance(source, Path) or ("\n" not in source and (source.lower().endswith((".yaml", ".yml"))
                                                          or Path(source).is_file())):
        path = Path(source)
        name = path.name
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise StoryError(f"file not found: {path}", source=str(path)) from None
        except OSError as e:  # a folder, no permission, ...
            raise StoryError(f"cannot be read ({e.strerror or e})", source=str(path)) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise StoryError(f"byte 0x{raw[e.start]:02x} is not UTF-8 text: save the story as UTF-8 (an editor's "
                             f"encoding setting; Latin-1 and UTF-16 files are not read)",
                             line=raw[:e.start].count(b"\n") + 1, source=name) from None
    else:
        text = source
    return parse_story_text(text, source=name, default_title=Path(name).stem if name != "story" else "story")


def parse_story_text(text: str, source: str = "story", default_title: str = "story") -> Story:
    """Parse and validate story YAML; ``source`` names it in error messages."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as e:  # the reader refuses NUL and other control characters up front
        code = f"U+{e.character:04X}" if isinstance(e.character, int) else repr(e.character)
        raise StoryError(f"character {code} is not allowed in YAML: remove it",
                         line=text[:e.position].count("\n") + 1, source=source) from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as e:
            raise _yaml_error(e, source) from None
        return _StoryReader(loader, source).read(root, default_title)
    except RecursionError:  # the composer and constructor recurse once per nesting level
        raise StoryError("the YAML nests too deeply to read (thousands of levels of [ or {)", source=source) from None
    finally:
        loader.dispose()


def _yaml_error(error: yaml.YAMLError, source: str) -> StoryError:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        detail = error.problem or error.context
        if error.problem and error.context:
            detail = f"{error.problem} ({error.context})"
        return StoryError(f"not valid YAML: {detail}",
                          line=None if mark is None else mark.line + 1, source=source)
    return StoryError(f"not valid YAML: {error}", source=source)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _StoryReader:
    """Walks the composed node tree, building values and raising errors at the node's line."""

    def __init__(self, loader: yaml.SafeLoader, source: str) -> None:
        self.loader = loader
        self.source = source

    def fail(self, message: str, node: yaml.Node | None) -> StoryError:
        return StoryError(message, line=None if node is None else _line(node), source=self.source)

    def value(self, node: yaml.Node) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            raise _yaml_error(e, self.source) from None

    def text(self, node: yaml.Node) -> str:
        # Raw scalar text: `id: 010` stays "010" instead of YAML 1.1's octal 8.
        return node.value if isinstance(node, yaml.ScalarNode) else str(self.value(node))

    def mapping(self, node: yaml.Node, what: str, allowed: Iterable[str] | None) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(f"{what} must be a mapping of `key: value` lines", node)
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.text(key_node)
            if key in entries:
                raise self.fail(f"{what} has '{key}' twice (first on line {_line(entries[key][0])}): "
                                f"keep one", key_node)
            if allowed is not None and key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(allowed)})"
                raise self.fail(f"{what} has an unknown key '{key}'{hint}", key_node)
            entries[key] = (key_node, value_node)
        return entries

    def string(self, node: yaml.Node, what: str, allow_empty: bool = False) -> str:
        value = self.value(node)
        if value is None:
            if allow_empty:
                return ""
            raise self.fail(f"{what} is empty: write it out", node)
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise self.fail(f"{what} must be text, not {type(value).__name__}", node)
        text = self.text(node).strip()
        if not text and not allow_empty:
            raise self.fail(f"{what} is empty: write it out", node)
        return text

    def read(self, root: yaml.Node | None, default_title: str) -> Story:
        if root is None:
            raise StoryError("the story is empty: it needs at least `shots:`", line=1, source=self.source)
        top = self.mapping(root, "the story", STORY_KEYS)
        title = self.string(top["title"][1], "title") if "title" in top else default_title
        fps = self.fps(top["fps"][1]) if "fps" in top else DEFAULT_FPS
        style = self.string(top["style"][1], "style", allow_empty=True) if "style" in top else ""
        characters = self.characters(top["characters"][1]) if "characters" in top else {}
        if "shots" not in top:
            raise StoryError("the story has no `shots:` list: add at least one shot", line=1, source=self.source)
        shots = self.shots(top["shots"][1], characters)
        return Story(title=title, shots=shots, fps=fps, style=style, characters=characters)

    def fps(self, node: yaml.Node) -> float:
        value = self.value(node)
        ratio = re.fullmatch(r"\s*(\d{1,9})\s*/\s*(\d{1,9})\s*", value) if isinstance(value, str) else None
        if ratio and int(ratio[2]) > 0:  # 24000/1001, as ffprobe and editorial tools write NTSC rates
            value = int(ratio[1]) / int(ratio[2])
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not 0 < value <= MAX_FPS):
            raise self.fail(f"fps must be a number of frames per second between 0 and {MAX_FPS:g} "
                            f"(e.g. 24, 23.976 or 24000/1001), not {self.text(node)!r}", node)
        return float(value)

    def characters(self, node: yaml.Node) -> dict[str, str]:
        if isinstance(node, yaml.ScalarNode) and self.value(node) is None:
            return {}
        entries = self.mapping(node, "characters", None)
        return {name: self.string(value_node, f"the description of character '{name}'")
                for name, (_, value_node) in entries.items()}

    def shots(self, node: yaml.Node, characters: dict[str, str]) -> tuple[Shot, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail("shots must be a list of shots, each starting with `- id: ...`", node)
        shots: list[Shot] = []
        first_seen: dict[str, Shot] = {}
        for shot_node in node.value:
            shot = self.shot(shot_node, characters)
            # casefold: on Windows and macOS disks SH010/ and sh010/ are one folder, and the shots overwrite each other
            earlier = first_seen.get(shot.id.casefold())
            if earlier is not None and earlier.id == shot.id:
                raise self.fail(f"shot id '{shot.id}' is used twice (first on line {earlier.line}): "
                                f"give every shot its own id", shot_node)
            if earlier is not None:
                raise self.fail(f"shot id '{shot.id}' differs from '{earlier.id}' (line {earlier.line}) only in "
                                f"upper/lower case, and Windows and macOS disks take them for the same folder: "
                                f"give every shot its own id", shot_node)
            first_seen[shot.id.casefold()] = shot
            shots.append(shot)
        if shots[-1].continuity:
            raise self.fail(f"shot '{shots[-1].id}' asks for continuity but it is the last shot: "
                            f"there is no next keyframe; remove `continuity: true`", node.value[-1])
        return tuple(shots)

    def shot(self, node: yaml.Node, characters: dict[str, str]) -> Shot:
        entries = self.mapping(node, "a shot", SHOT_KEYS)
        if "id" not in entries:
            raise self.fail("a shot has no id: add `id: sh010` (letters, digits, _ and -)", node)
        id_node = entries["id"][1]
        shot_id = self.string(id_node, "a shot id")
        if not SHOT_ID_PATTERN.match(shot_id):
            raise self.fail(f"shot id '{shot_id}' cannot be used as a file name: use letters, digits, "
                            f"_ and - only (at most 64), starting with a letter or digit", id_node)
        what = f"shot '{shot_id}'"
        if "prompt" not in entries:
            raise self.fail(f"{what} has no prompt: add `prompt: ...` describing the shot", node)
        prompt = self.string(entries["prompt"][1], f"the prompt of {what}")
        if "frames" not in entries:
            raise self.fail(f"{what} has no frames: add `frames: 48` (its length in frames)", node)
        frames_node = entries["frames"][1]
        frames = self.value(frames_node)
        if isinstance(frames, bool) or not isinstance(frames, int) or frames <= 0:
            raise self.fail(f"{what} frames must be a whole number above 0, not {self.text(frames_node)!r}",
                            frames_node)
        names = self.shot_characters(entries["characters"][1], what, characters) if "characters" in entries else ()
        seed = None
        if "seed" in entries:
            seed_node = entries["seed"][1]
            seed = self.value(seed_node)
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
                raise self.fail(f"{what} seed must be a whole number from 0, not {self.text(seed_node)!r}",
                                seed_node)
        continuity = False
        if "continuity" in entries:
            continuity_node = entries["continuity"][1]
            continuity = self.value(continuity_node)
            if not isinstance(continuity, bool):
                raise self.fail(f"{what} continuity must be true or false, not {self.text(continuity_node)!r}",
                                continuity_node)
        return Shot(id=shot_id, prompt=prompt, frames=frames, characters=names, seed=seed,
                    continuity=continuity, line=_line(node))

    def shot_characters(self, node: yaml.Node, what: str, characters: dict[str, str]) -> tuple[str, ...]:
        if isinstance(node, yaml.MappingNode):
            raise self.fail(f"{what} characters must be a list of names, e.g. [Mira, Tom]", node)
        items = [node] if isinstance(node, yaml.ScalarNode) else node.value
        names: list[str] = []
        for item in items:
            if isinstance(item, yaml.ScalarNode) and self.value(item) is None:
                continue
            name = self.string(item, f"a character name in {what}")
            if name not in characters:
                known = ", ".join(characters) if characters else "none defined"
                raise self.fail(f"{what} names character '{name}' that is not in characters (known: {known})",
                                item)
            if name not in names:
                names.append(name)
        return tuple(names)


# ------------------------------------------------------------------------------------------ using
def compose_shot_prompt(story: Story, shot: Shot) -> str:
    """The prompt a shot's keyframe is generated from, in this fixed order:
    the story's style, then each of the shot's characters as "Name: description" in the order the
    shot lists them, then the shot's own prompt. Empty parts are left out; each part ends with a
    full stop and parts are joined by single spaces."""
    parts = [story.style]
    parts += [f"{name}: {story.characters[name]}" for name in shot.characters]
    parts.append(shot.prompt)
    return " ".join(_sentence(part) for part in parts if part.strip())


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?")) else text + "."


def select_shots(story: Story, ids: Iterable[str] | None) -> list[Shot]:
    """The shots with these ids, in story order (all shots when ``ids`` is empty or None)."""
    wanted = [i.strip() for i in ids or () if i.strip()]
    if not wanted:
        return list(story.shots)
    known = {shot.id for shot in story.shots}
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise StoryError(f"no shot named {', '.join(repr(i) for i in unknown)} in '{story.title}' "
                         f"(shots: {', '.join(shot.id for shot in story.shots)})", source="shots")
    return [shot for shot in story.shots if shot.id in set(wanted)]
