"""The `cinegen` command line, run in-process (it starts its own in-process server)."""
from __future__ import annotations

import pytest

from cinegen.common.exr import read_exr_frame
from cinegen.server.cli import build_parser, main


def test_generate_image_writes_a_sequence_and_reports_it(tmp_path, capsys):
    out = tmp_path / "shots" / "gen.####.exr"
    code = main(["generate", "image", "--prompt", "a red disc", "--steps", "2", "--frames", "2",
                 "--seed", "11", "--out", str(out), "--no-hf-cache"])
    assert code == 0
    printed = capsys.readouterr()
    assert "gen.####.exr (1001-1002, 2 frames)" in printed.out
    pixels, meta = read_exr_frame(tmp_path / "shots" / "gen.1002.exr")
    assert meta["cinegen:seed"] == "11" and pixels.dtype.name == "float32"
    assert "denoise" in printed.err, "a progress bar with the stage is shown"


@pytest.mark.parametrize("spelling", ["gen.%04d.exr", "gen.$F4.exr"])
def test_other_frame_spellings_are_accepted(tmp_path, spelling):
    code = main(["generate", "image", "--steps", "1", "--out", str(tmp_path / spelling), "--no-hf-cache",
                 "--first-frame", "7"])
    assert code == 0
    assert (tmp_path / "gen.0007.exr").exists()


def test_bad_pattern_is_refused_with_what_to_write(tmp_path, capsys):
    code = main(["generate", "image", "--out", str(tmp_path / "gen.exr"), "--no-hf-cache"])
    assert code == 2
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "####" in err
    assert not list(tmp_path.iterdir())


def test_every_common_option_is_on_every_pipeline():
    parser = build_parser()
    for pipeline in ("image", "upscale", "panorama", "trajectory", "story"):
        args = parser.parse_args(["generate", pipeline, "--prompt", "p", "--negative-prompt", "n", "--model", "m",
                                  "--seed", "1", "--steps", "2", "--guidance", "3", "--width", "64",
                                  "--height", "64", "--frames", "4", "--fps", "25", "--out", "x.####.exr"])
        assert (args.prompt, args.negative_prompt, args.steps, args.fps) == ("p", "n", 2, 25.0)


def test_pipeline_specific_options_parse():
    parser = build_parser()
    args = parser.parse_args(["generate", "upscale", "--input", "plate.####.exr", "--scale", "2", "--strength", "0.4",
                              "--cosine-scale", "1.5", "--dilate-tau", "20", "--fast"])
    assert (args.scale, args.strength, args.cosine_scale, args.dilate_tau, args.fast) == (2.0, 0.4, 1.5, 20, True)
    args = parser.parse_args(["generate", "panorama", "--projection", "ring", "--loop"])
    assert args.projection == "ring" and args.loop
    args = parser.parse_args(["generate", "story", "story.yaml", "--out", "dir", "--shots", "sh010,sh020"])
    assert args.story_file == "story.yaml" and args.shots == ["sh010", "sh020"]


def test_models_and_pipelines_commands_list_what_the_server_has(capsys):
    assert main(["models", "--no-hf-cache"]) == 0
    assert "tiny-sd" in capsys.readouterr().out
    assert main(["pipelines", "--no-hf-cache"]) == 0
    assert "image" in capsys.readouterr().out


def test_demo_writes_half_float_exr_frames_with_metadata(tmp_path):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-hf-cache"]) == 0
    frames = sorted((tmp_path / "demo").rglob("*.exr"))
    assert frames
    _, meta = read_exr_frame(frames[0])
    assert meta["pixel_type"] == "half" and list(meta["channels"]) == ["R", "G", "B", "A"]
    assert meta["cinegen:pipeline"]


def test_a_story_sent_to_a_remote_server_is_read_as_utf8_whatever_the_locale(tmp_path, monkeypatch):
    """--server sends the file's text: it is decoded as UTF-8 as the server would read the file (the shell's
    locale, cp1252 on Windows, garbled it), and a Latin-1 file is a sentence, not a UnicodeDecodeError."""
    from cinegen.server import cli

    story = tmp_path / "story.yaml"
    story.write_bytes("title: Café\nshots:\n  - id: sh010\n    prompt: crème brûlée\n".encode("utf-8"))
    sent = []
    monkeypatch.setattr(cli, "build_request", lambda name, common, params, **kw: sent.append(params) or 1 / 0)
    with pytest.raises(ZeroDivisionError):  # stops before any connection is made
        main(["generate", "story", str(story), "--server", "127.0.0.1:1"])
    assert sent[0].story_yaml.startswith("title: Café") and sent[0].story == ""

    story.write_bytes("title: Caf\xe9\n".encode("latin-1"))
    with pytest.raises(SystemExit) as exc:
        main(["generate", "story", str(story), "--server", "127.0.0.1:1"])
    assert "is not UTF-8 text (byte 0xe9 on line 1): save it as UTF-8" in str(exc.value)


def test_max_frames_is_a_server_option_named_where_frames_are_refused(tmp_path, capsys):
    """A 3000-frame plate was refused by a fixed 2000-frame limit that no flag changed."""
    from cinegen.server.job_client import server_config

    assert server_config(build_parser().parse_args(["generate", "image", "--max-frames", "5000"])).max_frames == 5000
    assert server_config(build_parser().parse_args(["generate", "image"])).max_frames == 2000
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--max-frames", "0"])
    code = main(["generate", "image", "--model", "tiny-sd", "--width", "32", "--height", "32", "--steps", "1",
                 "--max-frames", "2", "--frames", "3", "--out", str(tmp_path / "x.####.exr")])
    assert code == 2
    assert "Frames must be between 1 and 2 (got 3) (`cinegen serve --max-frames N` changes it)" in capsys.readouterr().err
