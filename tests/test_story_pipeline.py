"""The story pipeline: pinned first/last frames, shot planning, the contact sheet, and the whole run
through gRPC and the CLI on tiny models (re-running one shot, bad stories, a failing shot)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import opentimelineio as otio
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from cinegen.common.client import RequestRejected, build_request
from cinegen.common.exr import read_exr_frame
from cinegen.common.params import CommonParams, StoryParams
from cinegen.common.story_io import load_story
from cinegen.server.output.contact_sheet import BACKGROUND, MISSING, ContactTile, render_contact_sheet, write_contact_sheet
from cinegen.server.pipelines.base import Resolved
from cinegen.server.pipelines.story import (
    FramePinning,
    StoryRun,
    clip_spans,
    generate_keyframe,
    generate_motion,
    keyframe_for_video,
    keyframes_to_generate,
    same_vae,
)

STORY = """\
title: The Lighthouse
fps: 24
style: moody film still
characters:
  Mira: a keeper with a red scarf
  Tom: a boy in a yellow raincoat
shots:
  - id: sh010
    prompt: Mira climbs the stairs
    frames: 4
    characters: [Mira]
    continuity: true
  - id: sh020
    prompt: Tom waits at the top
    frames: 4
    characters: [Tom, Mira]
  - id: sh030
    prompt: the lamp turns over the sea
    frames: 3
"""


def _resolved(**kw) -> Resolved:
    base = dict(prompt="a keeper climbs", negative_prompt="", model="tiny-animatediff", seed=5, steps=2,
                guidance=7.5, width=64, height=64, frames=4, fps=24.0, first_frame=1001)
    base.update(kw)
    return Resolved(**base)


@pytest.fixture(scope="module")
def models(registry):
    return registry.get("tiny-sd"), registry.get("tiny-animatediff")


@pytest.fixture(scope="module")
def keyframes(models):
    sd, _ = models
    return [generate_keyframe(sd, _resolved(model="tiny-sd", frames=1, seed=s, prompt=p), [])
            for s, p in ((1, "a red scarf"), (2, "a yellow raincoat"), (3, "the sea"))]


# ------------------------------------------------------------------------------------------ motion
def test_pinning_puts_the_keyframe_at_the_step_noise_level_before_each_step(models):
    _, video = models
    scheduler = video.new_scheduler()
    scheduler.set_timesteps(3)
    noise = torch.randn(1, 4, 5, 8, 8)
    key, end = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    pin = FramePinning(scheduler, {0: key, 4: end}, noise, last_index=2)
    x = torch.randn(1, 4, 5, 8, 8)
    t = scheduler.timesteps[1]
    pinned = pin.before_step(1, t, x)
    assert torch.equal(pinned[:, :, 0], scheduler.add_noise(key, noise[:, :, 0], t))
    assert torch.equal(pinned[:, :, 4], scheduler.add_noise(end, noise[:, :, 4], t))
    assert torch.equal(pinned[:, :, 1:4], x[:, :, 1:4]) and not torch.equal(pinned, x)
    assert torch.equal(pin.after_step(1, t, x), x), "only the last step pastes the clean latent"
    assert torch.equal(pin.after_step(2, t, x)[:, :, 0], key)


def test_decoded_first_and_last_frames_are_the_keyframes(models, keyframes):
    sd, video = models
    assert same_vae(sd, video), "the tiny models share one VAE: keyframe latents pass as they are"
    first = keyframe_for_video(sd, video, keyframes[0], 64, 64, shared_vae=True)
    last = keyframe_for_video(sd, video, keyframes[1], 64, 64, shared_vae=True)
    frames = video.decode(generate_motion(video, _resolved(frames=5), first, last))[0]
    images = [sd.decode(k)[0] for k in keyframes[:2]]
    torch.testing.assert_close(frames[:, 0], images[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(frames[:, 4], images[1], atol=1e-4, rtol=0)
    for f in (1, 2, 3):
        assert (frames[:, f] - images[0]).abs().mean() > 1e-2, "inner frames are generated, not copies"


def test_pins_condition_the_inner_frames_not_only_replace_the_pinned_ones(models, keyframes):
    _, video = models
    r = _resolved(frames=5)
    a = generate_motion(video, r, keyframes[0], keyframes[1])
    b = generate_motion(video, r, keyframes[2], keyframes[1])
    assert (a[:, :, 1:4] - b[:, :, 1:4]).abs().max() > 1e-3


def test_keyframes_through_pixels_when_the_models_do_not_share_a_vae(models, keyframes):
    sd, video = models
    via_pixels = keyframe_for_video(sd, video, keyframes[0], 64, 64, shared_vae=False)
    assert torch.equal(via_pixels, video.encode(sd.decode(keyframes[0]))[:, :, 0])
    assert keyframe_for_video(sd, video, keyframes[0], 32, 32, shared_vae=True).shape == (1, 4, 4, 4)


def test_a_long_shot_is_one_freenoise_clip_whose_windows_overlap_their_neighbours(models, keyframes, monkeypatch):
    from diffusers.models.attention import FreeNoiseTransformerBlock

    _, video = models
    frames = 40  # 2.5 motion-module clips of 16, past the tiny module's 32-position table
    windows: list = []
    original = FreeNoiseTransformerBlock.forward

    def spy(self, hidden_states, *args, **kwargs):
        windows.append(self._get_frame_indices(hidden_states.shape[1]))
        return original(self, hidden_states, *args, **kwargs)

    monkeypatch.setattr(FreeNoiseTransformerBlock, "forward", spy)
    latents = generate_motion(video, _resolved(frames=frames, steps=2), keyframes[0], keyframes[1])
    assert latents.shape == (1, 4, frames, 8, 8)
    assert torch.equal(latents[:, :, 0], keyframes[0]) and torch.equal(latents[:, :, -1], keyframes[1])
    assert windows, "the motion modules ran in FreeNoise windows"
    for spans in windows:
        assert all(b - a == video.native_frames for a, b in spans)
        # each window shares all but the stride with its neighbour; the last one is pinned to the end
        assert all(b1 - a2 == video.native_frames - 4 for (_, b1), (a2, _) in zip(spans, spans[1:]))
    assert not any(isinstance(m, FreeNoiseTransformerBlock) for m in video.denoiser.modules()), "restored after"


def test_freenoise_reuses_the_first_windows_noise_for_far_frames(models):
    from cinegen.server.pipelines.long_video import free_noise, free_noise_latents

    _, video = models
    with free_noise(video, 40) as on:
        noise = free_noise_latents(video, 64, 64, 40, torch.Generator().manual_seed(0))
    assert on and noise.shape == (1, 4, 40, 8, 8)
    first = [noise[:, :, f] for f in range(16)]
    for f in range(16, 40):  # a shuffled copy of a frame 16 earlier's window: the content stays related
        assert any(torch.equal(noise[:, :, f], g) for g in first)
    with free_noise(video, 16) as on:  # a native-length clip is the stock computation
        assert not on


@given(st.integers(1, 500), st.integers(2, 40))
def test_clip_spans_cover_every_frame_and_overlap_by_one(frames, length):
    spans = clip_spans(frames, length)
    assert spans[0][0] == 0 and spans[-1][1] == frames
    assert all(0 < b - a <= length for a, b in spans)
    assert all(b1 - 1 == a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))


def test_one_shot_needs_every_earlier_keyframe_and_the_next_for_continuity():
    story = load_story(STORY)
    sh = {s.id: s for s in story.shots}
    plan = lambda ids, usable: [s.id for s in keyframes_to_generate(story, [sh[i] for i in ids], usable)]
    assert plan(["sh020"], {"sh010", "sh020", "sh030"}) == ["sh020"]
    assert plan(["sh020"], set()) == ["sh010", "sh020"]
    assert plan(["sh010"], set()) == ["sh010", "sh020"], "continuity pulls in the next keyframe"
    assert plan(["sh010"], {"sh020"}) == ["sh010"]
    assert plan(["sh010", "sh020", "sh030"], {"sh010"}) == ["sh010", "sh020", "sh030"]


# ------------------------------------------------------------------------------------------ contact sheet
def test_contact_sheet_shows_each_keyframe_with_its_shot_and_prompt(tmp_path):
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    tiles = [ContactTile("sh010", "Mira climbs the stairs " * 8, red), ContactTile("sh020", "missing one", None)]
    sheet = np.asarray(render_contact_sheet(tiles, tile_width=64, margin=10))
    assert tuple(sheet[10:74, 10:74].reshape(-1, 3).min(0)) == (255, 0, 0), "the keyframe fills its tile"
    assert tuple(sheet[12, 84 + 2]) == MISSING, "a shot without a keyframe gets a grey tile"
    text = sheet[76:, 10:74]
    assert (text != BACKGROUND).any(), "shot id and prompt are written under the frame"
    for name in ("sheet.png", "sheet.jpg"):
        path = write_contact_sheet(tmp_path / name, tiles)
        assert Image.open(path).size[0] > 256
    with pytest.raises(ValueError):
        write_contact_sheet(tmp_path / "sheet.exr", tiles)


def test_the_cut_sheet_and_story_state_get_the_umasks_permissions_like_the_frames(tmp_path):
    # mkstemp made them 0600: editorial, or a farm step running as another user, could not read them
    from cinegen.server.output.otio_cut import MissingShot, ShotRecord, save_shot_record, write_story_timeline
    from cinegen.server.pipelines.story import KeyframeInfo, KeyframeStore

    previous = os.umask(0o022)
    try:
        written = [write_story_timeline(tmp_path, "t", 24.0, [MissingShot("sh010", "p", 2, 24.0)]),
                   write_contact_sheet(tmp_path / "t.keyframes.png", [ContactTile("sh010", "p", None)]),
                   save_shot_record(tmp_path, ShotRecord("sh010", "p", 1, "m", "k", "j", 1001, 2, 24.0))]
        store = KeyframeStore(tmp_path)
        store.save(KeyframeInfo("sh010", "p", "", 1, "m", 8, 8), torch.zeros(1, 4, 1, 1), np.zeros((8, 8, 3), np.uint8))
        written += [store.latent_path("sh010"), store.image_path("sh010")]
    finally:
        os.umask(previous)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o644" for p in written}


# ------------------------------------------------------------------------------------------ whole runs
def _story_request(out: Path, *, shots=(), story_yaml=STORY, job_id=None, **common):
    c = dict(seed=3, steps=2, out=str(out))
    c.update(common)
    return build_request("story", CommonParams(**c), StoryParams(story_yaml=story_yaml, shots=list(shots)),
                         job_id=job_id or f"story-{uuid.uuid4().hex[:8]}")


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_story_run_writes_shots_sheet_and_timeline_and_reruns_one_shot(client, tmp_path):
    out = tmp_path / "cut"
    events = []
    first = client.run(_story_request(out), on_event=events.append)
    assert first.state == "completed", first.message
    stages = {e.progress.stage for e in events if e.WhichOneof("kind") == "progress"}
    assert {"sh010 keyframe", "sh020 keyframe", "sh030 keyframe", "sh010 motion", "sh030 motion"} <= stages
    for shot, frames in (("sh010", 4), ("sh020", 4), ("sh030", 3)):
        assert sorted(p.name for p in (out / shot).iterdir()) == [f"{shot}.{1001 + i}.exr" for i in range(frames)]
    pixels, meta = read_exr_frame(out / "sh020" / "sh020.1001.exr")
    assert pixels.shape == (64, 64, 4) and meta["cinegen:model"] == "tiny-animatediff"
    assert meta["cinegen:prompt"].endswith("Tom waits at the top.") and meta["cinegen:seed"] == "4"
    timeline = otio.adapters.read_from_file(str(out / "The_Lighthouse.otio"))
    assert [c.name for c in timeline.find_clips()] == ["sh010", "sh020", "sh030"]
    assert timeline.duration().value == 11
    assert str(out / "The_Lighthouse.otio") in first.outputs and (out / "The Lighthouse.keyframes.png").is_file()
    before = _mtimes(out)
    sh020_before = read_exr_frame(out / "sh020" / "sh020.1003.exr")[0]

    rerun = client.run(_story_request(out, shots=["sh020"]))
    assert rerun.state == "completed", rerun.message
    after = _mtimes(out)
    changed = {k for k in after if after[k] != before.get(k)}
    assert {k for k in changed if not k.startswith("sh020")} == {
        "The_Lighthouse.otio", "The Lighthouse.keyframes.png", ".cinegen/keyframes/sh020.safetensors",
        ".cinegen/keyframes/sh020.png", ".cinegen/shots/sh020.json"}
    assert {f"sh020/sh020.{f}.exr" for f in range(1001, 1005)} <= changed
    assert np.array_equal(read_exr_frame(out / "sh020" / "sh020.1003.exr")[0], sh020_before), \
        "the shot is rebuilt from the stored keyframes exactly as before"
    timeline = otio.adapters.read_from_file(str(out / "The_Lighthouse.otio"))
    assert [c.metadata["cinegen"]["job"] for c in timeline.find_clips()] == [first.job_id, rerun.job_id, first.job_id]


def test_a_story_with_an_unknown_character_is_refused_at_submit_naming_the_line(client, tmp_path):
    bad = STORY.replace("characters: [Tom, Mira]", "characters: [Tom, Nora]")
    with pytest.raises(RequestRejected) as info:
        client.submit(_story_request(tmp_path / "cut", story_yaml=bad))
    assert info.value.code == "INVALID_ARGUMENT"
    line = bad.splitlines().index("    characters: [Tom, Nora]") + 1
    assert f"line {line}:" in info.value.message and "Nora" in info.value.message
    with pytest.raises(RequestRejected) as info:
        client.submit(_story_request(tmp_path / "cut", shots=["sh999"]))
    assert info.value.code == "INVALID_ARGUMENT" and "sh999" in info.value.message
    with pytest.raises(RequestRejected) as info:
        client.submit(_story_request(tmp_path / "cut", model="tiny-animatediff"))
    assert info.value.code == "INVALID_ARGUMENT"
    assert not (tmp_path / "cut").exists() or not any((tmp_path / "cut").iterdir())


def test_a_failing_shot_keeps_the_earlier_ones_and_the_cut_marks_it_missing(client, tmp_path, monkeypatch):
    original = StoryRun.make_shot

    def failing(self, shot, *args, **kwargs):
        if shot.id == "sh020":
            raise RuntimeError("simulated failure")
        return original(self, shot, *args, **kwargs)

    monkeypatch.setattr(StoryRun, "make_shot", failing)
    out = tmp_path / "cut"
    result = client.run(_story_request(out))
    assert result.state == "failed" and "simulated failure" in result.message
    assert len(list((out / "sh010").iterdir())) == 4 and not (out / "sh030").exists()
    items = list(otio.adapters.read_from_file(str(out / "The_Lighthouse.otio")).tracks[0])
    assert [(type(i).__name__, i.name) for i in items] == [("Clip", "sh010"), ("Gap", "sh020"), ("Gap", "sh030")]
    assert items[1].markers[0].name == "missing sh020"


def test_cli_generates_a_story_from_a_file(tmp_path, capsys):
    from cinegen.server.cli import main

    story = tmp_path / "story.yaml"
    story.write_text(STORY.replace("frames: 4", "frames: 2").replace("frames: 3", "frames: 2"))
    code = main(["generate", "story", str(story), "--out", str(tmp_path / "cut"), "--steps", "2", "--seed", "9",
                 "--no-hf-cache"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "The_Lighthouse.otio" in printed.out and "sh020.####.exr (1001-1002, 2 frames)" in printed.out
    assert "sh030 motion" in printed.err
