"""Story YAML: loading, errors with the right line numbers, prompt composition, shot selection."""

import subprocess
import sys
import textwrap

import pytest

from cinegen.common.story_io import Shot, Story, StoryError, compose_shot_prompt, load_story, select_shots

STORY = textwrap.dedent("""\
    title: The Lighthouse
    fps: 23.976
    style: moody 35mm film still, teal and orange
    characters:
      Mira: a tall lighthouse keeper with a red scarf
      Tom: a small boy in a yellow raincoat
    shots:
      - id: sh010
        prompt: Mira climbs the spiral stairs
        frames: 48
        characters: [Mira]
        seed: 7
        continuity: true
      - id: sh020
        prompt: Tom and Mira look out to sea.
        frames: 24
        characters: [Tom, Mira]
      - id: 030
        prompt: the lamp turns
        frames: 12
    """)


def broken(replace_line: int, text: str) -> str:
    """STORY with line ``replace_line`` (1-based) replaced by ``text``."""
    lines = STORY.splitlines()
    lines[replace_line - 1] = text
    return "\n".join(lines) + "\n"


def test_a_story_loads_with_every_field():
    story = load_story(STORY)
    assert story.title == "The Lighthouse" and story.fps == 23.976
    assert story.style == "moody 35mm film still, teal and orange"
    assert list(story.characters) == ["Mira", "Tom"]
    assert [s.id for s in story.shots] == ["sh010", "sh020", "030"]  # `030` stays text, not octal 24
    first = story.shots[0]
    assert first == Shot("sh010", "Mira climbs the spiral stairs", 48, ("Mira",), seed=7, continuity=True)
    assert first.line == 8 and story.shots[2].line == 18
    assert story.shots[1].characters == ("Tom", "Mira") and story.shots[1].seed is None
    assert story.shots[2].continuity is False and story.shots[2].characters == ()
    assert story.total_frames == 84


def test_a_story_loads_from_a_path_and_takes_its_default_title_from_the_file_name(tmp_path):
    path = tmp_path / "lighthouse.yaml"
    path.write_text(STORY.replace("title: The Lighthouse\n", ""))
    for source in (path, str(path)):
        story = load_story(source)
        assert story.title == "lighthouse" and len(story.shots) == 3


def test_a_minimal_story_gets_the_defaults():
    story = load_story("shots:\n  - {id: a, prompt: x, frames: 1}\n")
    assert story == Story(title="story", shots=(Shot("a", "x", 1),), fps=24.0, style="", characters={})


@pytest.mark.parametrize("line, text, expected_line, words", [
    (17, "    characters: [Tom, Ada]", 17, ["shot 'sh020' names character 'Ada'", "known: Mira, Tom"]),
    (14, "  - id: sh010", 14, ["shot id 'sh010' is used twice", "first on line 8"]),
    (10, "    frames: 0", 10, ["shot 'sh010' frames", "above 0"]),
    (10, "    frames: 2.5", 10, ["whole number"]),
    (9, "    prompt:", 9, ["the prompt of shot 'sh010' is empty"]),
    (11, "    characters: {Mira: 1}", 11, ["characters must be a list of names"]),
    (9, "    promt: Mira climbs", 9, ["unknown key 'promt'", "did you mean 'prompt'"]),
    (2, "fps: fast", 2, ["fps must be a number", "'fast'"]),
    (2, "fps: -24", 2, ["fps"]),
    (8, "  - id: sh/010", 8, ["shot id 'sh/010' cannot be used as a file name"]),
    (12, "    seed: -1", 12, ["seed"]),
    (13, "    continuity: maybe", 13, ["continuity must be true or false"]),
    (6, "  Mira: someone else", 6, ["characters has 'Mira' twice", "first on line 5"]),
    (4, "charaters:", 4, ["unknown key 'charaters'", "did you mean 'characters'"]),
    (11, "    characters: [Mira", 12, ["not valid YAML"]),
])
def test_errors_point_at_the_right_line(line, text, expected_line, words):
    with pytest.raises(StoryError) as caught:
        load_story(broken(line, text))
    error = caught.value
    assert error.line == expected_line, str(error)
    assert str(error).startswith(f"story line {expected_line}: ")
    for word in words:
        assert word in str(error)


def test_a_missing_prompt_is_reported_at_the_shots_first_line():
    lines = STORY.splitlines()
    del lines[14]  # line 15, the prompt of sh020 (which starts on line 14)
    with pytest.raises(StoryError) as caught:
        load_story("\n".join(lines))
    assert caught.value.line == 14 and "shot 'sh020' has no prompt" in str(caught.value)


def test_missing_frames_and_missing_id_are_reported_at_the_shot():
    lines = STORY.splitlines()
    del lines[19]  # line 20, `frames: 12` of the third shot (which starts on line 18)
    with pytest.raises(StoryError, match="shot '030' has no frames") as caught:
        load_story("\n".join(lines))
    assert caught.value.line == 18
    with pytest.raises(StoryError, match="has no id") as caught:
        load_story("shots:\n  - prompt: x\n    frames: 3\n")
    assert caught.value.line == 2


def test_errors_name_the_file_they_come_from(tmp_path):
    path = tmp_path / "story.yaml"
    path.write_text(broken(17, "    characters: [Tom, Ada]"))
    with pytest.raises(StoryError, match=r"^story\.yaml line 17: shot 'sh020' names character 'Ada'"):
        load_story(path)


def test_continuity_on_the_last_shot_is_refused():
    with pytest.raises(StoryError, match="last shot") as caught:
        load_story(STORY + "    continuity: true\n")
    assert caught.value.line == 18


def test_structural_problems_are_reported():
    with pytest.raises(StoryError, match="no `shots:`"):
        load_story("title: x\n")
    with pytest.raises(StoryError, match="empty"):
        load_story("\n")
    with pytest.raises(StoryError, match="shots must be a list"):
        load_story("shots: {}\n")
    with pytest.raises(StoryError, match="file not found"):
        load_story("missing/story.yaml")


def test_files_an_editor_saved_otherwise_are_a_sentence_with_the_line(tmp_path):
    # these raised UnicodeDecodeError, yaml ReaderError and RecursionError (export-job showed tracebacks)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(broken(9, "    prompt: Mira climbs the Br\xfccke stairs").encode("latin-1"))
    with pytest.raises(StoryError, match=r"^latin1\.yaml line 9: byte 0xfc is not UTF-8 text: save the story as UTF-8"):
        load_story(latin1)
    with pytest.raises(StoryError, match="line 9: character U\\+0000 is not allowed") as caught:
        load_story(broken(9, "    prompt: Mira\x00climbs"))
    assert caught.value.line == 9
    with pytest.raises(StoryError, match="nests too deeply"):
        load_story("shots: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(StoryError, match="cannot be read"):
        load_story(tmp_path)  # a folder
    bom_crlf = tmp_path / "windows.yaml"
    bom_crlf.write_bytes(b"\xef\xbb\xbf" + STORY.replace("\n", "\r\n").encode())
    assert load_story(bom_crlf) == load_story(STORY)


def test_fps_can_be_the_exact_ratio_editorial_tools_write():
    assert load_story(broken(2, "fps: 24000/1001")).fps == 24000 / 1001
    assert load_story(broken(2, "fps: 30000 / 1001")).fps == 30000 / 1001
    for bad in ("fps: 24/0", "fps: 2400/1", "fps: 24000/1001/2"):
        with pytest.raises(StoryError, match="line 2: fps must be a number"):
            load_story(broken(2, bad))


def test_shot_ids_that_differ_only_in_case_are_refused():
    # OUT/SH020/ and OUT/sh020/ are one folder on a Windows or macOS disk: the second shot overwrote the first
    with pytest.raises(StoryError, match=r"line 18: shot id 'SH020' differs from 'sh020' \(line 14\) only in") as caught:
        load_story(broken(18, "  - id: SH020"))
    assert caught.value.line == 18
    with pytest.raises(StoryError, match=r"line 18: shot id 'sh020' is used twice \(first on line 14\)"):
        load_story(broken(18, "  - id: sh020"))


def test_composed_prompt_is_style_then_characters_in_shot_order_then_the_shot():
    story = load_story(STORY)
    prompt = compose_shot_prompt(story, story.shots[1])
    assert prompt == ("moody 35mm film still, teal and orange. "
                      "Tom: a small boy in a yellow raincoat. "
                      "Mira: a tall lighthouse keeper with a red scarf. "
                      "Tom and Mira look out to sea.")
    assert compose_shot_prompt(story, story.shots[2]) == "moody 35mm film still, teal and orange. the lamp turns."
    assert compose_shot_prompt(story, story.shots[1]) == prompt  # deterministic


def test_composed_prompt_leaves_out_an_empty_style():
    story = load_story("characters: {A: an owl}\nshots:\n  - {id: s, prompt: flies, frames: 2, characters: [A]}\n")
    assert compose_shot_prompt(story, story.shots[0]) == "A: an owl. flies."


def test_select_shots_keeps_story_order_and_names_unknown_ids():
    story = load_story(STORY)
    assert [s.id for s in select_shots(story, ["030", "sh010"])] == ["sh010", "030"]
    assert select_shots(story, []) == list(story.shots)
    assert select_shots(story, None) == list(story.shots)
    with pytest.raises(StoryError) as caught:
        select_shots(story, ["sh010", "sh099", "sh100"])
    assert "'sh099', 'sh100'" in str(caught.value) and "sh010, sh020, 030" in str(caught.value)
    assert story.shot("sh020") is story.shots[1]


def test_story_and_trajectory_io_do_not_import_torch_or_qt():
    code = ("import sys, cinegen.common.story_io, cinegen.common.trajectory_io; "
            "bad = [m for m in ('torch', 'PySide6', 'PyQt5') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
