"""Farm export and the options it relies on: `--frame-range` chunks that add up to the full run, story
stages (keyframes → motion per shot → timeline) that add up to a one-box story, and `cinegen export-job`
templates checked (`openjd check`) and run (`openjd run`) by the Open Job Description tools."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import opentimelineio as otio
import pytest
import yaml

from cinegen.common.client import RequestRejected, build_request
from cinegen.common.exr import ExrMetadata, read_exr_frame, write_exr_frame
from cinegen.common.params import CommonParams, ImageParams, PanoramaParams, StoryParams, UpscaleParams
from cinegen.server.cli import main

STORY = """\
title: Tiny Cut
fps: 24
shots:
  - id: sh010
    prompt: a lighthouse at dusk
    frames: 2
    continuity: true
  - id: sh020
    prompt: the sea below
    frames: 2
  - id: sh030
    prompt: a boat leaves
    frames: 2
"""
STORY_2 = STORY[:STORY.index("  - id: sh030")]  # the first two shots
OPENJD = shutil.which("openjd", path=str(Path(sys.executable).parent)) or shutil.which("openjd")
CINEGEN = shutil.which("cinegen", path=str(Path(sys.executable).parent))


def _run(client, pipeline, params, **common):
    c = dict(seed=11, steps=1, width=64, height=64)
    c.update(common)
    result = client.run(build_request(pipeline, CommonParams(**c), params, job_id=f"farm-{uuid.uuid4().hex[:8]}"))
    assert result.state == "completed", result.message
    return result


def _pixels(folder: Path, pattern: str = "*.exr") -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): read_exr_frame(p)[0] for p in sorted(folder.rglob(pattern))}


@pytest.fixture(scope="module")
def full_image_run(running_server, tmp_path_factory):
    from cinegen.common.client import GeneratorClient

    out = tmp_path_factory.mktemp("full") / "img.####.exr"
    with GeneratorClient(running_server.address, timeout=30) as client:
        _run(client, "image", ImageParams(), frames=8, out=str(out), prompt="a red door")
    return out.parent


# ---- --frame-range ----------------------------------------------------------------------------------
def test_image_chunks_write_only_their_frames_and_equal_the_full_run(client, full_image_run, tmp_path):
    full = _pixels(full_image_run)
    assert len(full) == 8
    # chunks that cut the pipeline's batches of 4 in the middle still get the full run's numbers
    for chunk in ("1001-1003", "1004-1006", "1007-1008"):
        _run(client, "image", ImageParams(), frames=8, out=str(tmp_path / "img.####.exr"), prompt="a red door",
             frame_range=chunk)
    parts = _pixels(tmp_path)
    assert parts.keys() == full.keys()
    for name in full:
        assert np.array_equal(parts[name], full[name]), name  # same batches, same ops: bit for bit
    assert not np.array_equal(full["img.1001.exr"], full["img.1002.exr"])


def test_a_frame_range_outside_the_sequence_or_on_a_pipeline_that_cannot_chunk_is_refused(client, tmp_path):
    with pytest.raises(RequestRejected) as info:
        client.submit(build_request("panorama", CommonParams(out=str(tmp_path / "p.####.exr"), frame_range="1001-1002"),
                                    PanoramaParams()))
    assert info.value.code == "INVALID_ARGUMENT" and "frame" in info.value.message.lower()
    with pytest.raises(RequestRejected) as info:
        client.submit(build_request("image", CommonParams(out=str(tmp_path / "i.####.exr"), frame_range="10-2"),
                                    ImageParams()))
    assert info.value.code == "INVALID_ARGUMENT"
    with pytest.raises(RequestRejected) as info:  # at Submit (the job used to be queued, then fail)
        client.submit(build_request("image", CommonParams(out=str(tmp_path / "i.####.exr"), frames=2, steps=1,
                                                          width=64, height=64, frame_range="2001-2004"),
                                    ImageParams()))
    assert info.value.code == "INVALID_ARGUMENT" and "outside the sequence 1001-1002" in info.value.message
    assert not list(tmp_path.glob("i.*.exr"))


def test_plate_upscale_chunk_equals_the_full_run(client, tmp_path):
    (tmp_path / "in").mkdir()
    y, x = np.mgrid[0:32, 0:32].astype(np.float32)
    for n, frame in enumerate(range(1005, 1007)):
        write_exr_frame(tmp_path / "in" / f"plate.{frame}.exr", np.stack([x / 32, y / 32, np.full_like(x, 0.1 * n)], -1),
                        metadata=ExrMetadata())
    params = UpscaleParams(input=str(tmp_path / "in" / "plate.####.exr"), scale=2.0)
    _run(client, "upscale", params, width=None, height=None, out=str(tmp_path / "full" / "up.####.exr"))
    _run(client, "upscale", params, width=None, height=None, out=str(tmp_path / "part" / "up.####.exr"),
         frame_range="1006-1009")
    full, part = _pixels(tmp_path / "full"), _pixels(tmp_path / "part")
    assert sorted(part) == ["up.1006.exr"] and len(full) == 2, "a range past the end stops at the last frame"
    for name in part:
        assert np.array_equal(part[name], full[name]), name


# ---- story stages -----------------------------------------------------------------------------------
def test_story_stages_run_one_after_another_equal_the_one_box_story(client, tmp_path):
    def story(out, stage="all", shots=()):
        return _run(client, "story", StoryParams(story_yaml=STORY, stage=stage, shots=list(shots)), out=str(out))

    story(tmp_path / "one")
    keyframes = story(tmp_path / "farm", "keyframes")
    assert not (tmp_path / "farm" / "sh010").exists(), "the keyframes stage makes no motion"
    assert all(not o.endswith(".exr") for o in keyframes.outputs)
    for shot in ("sh030", "sh010", "sh020"):  # any order: each shot needs only the keyframes on disk
        motion = story(tmp_path / "farm", "motion", [shot])
        assert all(o.endswith(".exr") and f"/{shot}/" in o for o in motion.outputs), "motion writes no cut"
    story(tmp_path / "farm", "timeline")
    one, farm = _pixels(tmp_path / "one"), _pixels(tmp_path / "farm")
    assert len(one) == 6 and one.keys() == farm.keys()
    for name in one:
        assert np.array_equal(one[name], farm[name]), name
    timelines = [list(root.glob("*.otio")) for root in (tmp_path / "one", tmp_path / "farm")]
    assert [len(t) for t in timelines] == [1, 1]
    clips = [[c.name for c in otio.adapters.read_from_file(str(t[0])).find_clips()] for t in timelines]
    assert clips[0] == clips[1] == ["sh010", "sh020", "sh030"]


# ---- export-job -------------------------------------------------------------------------------------
def _export(tmp_path: Path, *args: str) -> dict:
    template = tmp_path / "job.yaml"
    assert main(["export-job", *args, "--out", str(template)]) == 0
    return yaml.safe_load(template.read_text())


def _openjd(*args: str, cwd: Path, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([OPENJD, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.skipif(OPENJD is None, reason="the Open Job Description CLI is not installed (pip install 'cinegen[farm]')")
def test_story_template_has_keyframes_then_a_step_per_shot_then_the_cut_and_passes_openjd_check(tmp_path):
    (tmp_path / "story.yaml").write_text(STORY)
    job = _export(tmp_path, "story", str(tmp_path / "story.yaml"), "--frames-out", str(tmp_path / "cut"),
                  "--seed", "7", "--steps", "1")
    assert job["specificationVersion"] == "jobtemplate-2023-09"
    steps = {s["name"]: s for s in job["steps"]}
    assert list(steps) == ["keyframes", "sh010", "sh020", "sh030", "timeline"]
    assert "dependencies" not in steps["keyframes"]
    assert all(steps[s]["dependencies"] == [{"dependsOn": "keyframes"}] for s in ("sh010", "sh020", "sh030"))
    assert [d["dependsOn"] for d in steps["timeline"]["dependencies"]] == ["sh010", "sh020", "sh030"]
    args = steps["sh020"]["script"]["actions"]["onRun"]["args"]
    assert args[:3] == ["generate", "story", str(tmp_path / "story.yaml")]
    assert args[args.index("--seed") + 1] == "7" and args[-4:] == ["--stage", "motion", "--shots", "sh020"]
    check = _openjd("check", "job.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    # the check can fail: a step waiting for one that does not exist
    steps["sh020"]["dependencies"] = [{"dependsOn": "sh999"}]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(job))
    assert _openjd("check", "bad.yaml", cwd=tmp_path).returncode != 0


def _unit_free(args: list[str]) -> list[str]:
    """A step's command without its unit's own options (--stage, --shots, --frame-range): the single-box run."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--stage", "--shots", "--frame-range"):
            skip = True
        else:
            out.append(arg)
    return out


@pytest.mark.skipif(OPENJD is None or CINEGEN is None, reason="needs the openjd and cinegen commands of this Python")
def test_story_template_steps_run_by_openjd_give_the_single_box_story_headers_and_cut_too(tiny_model_cache, tmp_path):
    (tmp_path / "story.yaml").write_text(STORY_2)
    job = _export(tmp_path, "story", str(tmp_path / "story.yaml"), "--frames-out", str(tmp_path / "cut"),
                  "--seed", "7", "--steps", "1", "--width", "64", "--height", "64", "--no-hf-cache")
    steps = job["steps"]
    assert [s["name"] for s in steps] == ["keyframes", "sh010", "sh020", "timeline"]
    env = {"CINEGEN_CACHE": str(tiny_model_cache)}

    def openjd_run(step: str) -> subprocess.Popen:
        return subprocess.Popen([OPENJD, "run", "job.yaml", "--step", step, "-p", f"Cinegen={CINEGEN}"], cwd=tmp_path,
                                env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # as a farm runs them: keyframes (its command, in this process: a cinegen process costs ~5 s of imports),
    # then the shots side by side (each needs only the keyframes), then the cut
    assert main(steps[0]["script"]["actions"]["onRun"]["args"]) == 0
    assert not list((tmp_path / "cut").rglob("*.exr")), "the keyframes step makes no motion"
    for wave in (["sh010", "sh020"], ["timeline"]):
        for step, proc in [(step, openjd_run(step)) for step in wave]:
            out = proc.communicate(timeout=120)[0]
            assert proc.returncode == 0, f"{step}: {out[-3000:]}"
    (tmp_path / "cut").rename(tmp_path / "steps")
    # the single-box run: a step's command without its unit options, to the same destination (in this process)
    args = _unit_free(steps[1]["script"]["actions"]["onRun"]["args"])
    assert "--stage" not in args and "--shots" not in args and "--job-id" in args
    assert main(args) == 0
    names = sorted(p.relative_to(tmp_path / "cut").as_posix() for p in (tmp_path / "cut").rglob("*.exr"))
    assert names == [f"{s}/{s}.{f}.exr" for s in ("sh010", "sh020") for f in (1001, 1002)]
    assert sorted(p.relative_to(tmp_path / "steps").as_posix() for p in (tmp_path / "steps").rglob("*.exr")) == names
    for name in names:
        (a, head_a), (b, head_b) = read_exr_frame(tmp_path / "steps" / name), read_exr_frame(tmp_path / "cut" / name)
        # other processes, whose torch may use another thread count: up to a half-float ulp (bit for bit in
        # one process: test_story_stages_run_one_after_another_equal_the_one_box_story)
        np.testing.assert_allclose(a, b, atol=2e-3, rtol=2e-3, err_msg=name)
        assert {k: v for k, v in head_a.items() if k != "capDate"} == \
               {k: v for k, v in head_b.items() if k != "capDate"}, name  # the step's --stage/--shots not recorded
        recorded = json.loads(head_a["cinegen:params"])
        assert recorded["stage"] == "all" and recorded["shots"] == [] and recorded["frame_range"] == ""
    cuts = [otio.adapters.read_from_file(str(next(root.glob("*.otio")))) for root in (tmp_path / "steps", tmp_path / "cut")]
    clips = [list(cut.find_clips()) for cut in cuts]
    assert [c.name for c in clips[0]] == ["sh010", "sh020"] and not cuts[0].metadata["cinegen"]["missing"]
    for farm, single in zip(*clips):
        ref = farm.media_reference
        assert ref.target_url_base == f"{farm.name}/" and ref.name_prefix == f"{farm.name}." and ref.start_frame == 1001
        assert farm.source_range.duration.value == ref.available_range.duration.value == 2
        assert otio.adapters.write_to_string(farm) == otio.adapters.write_to_string(single), farm.name
    assert otio.adapters.write_to_string(cuts[0]) == otio.adapters.write_to_string(cuts[1])


@pytest.mark.skipif(OPENJD is None or CINEGEN is None, reason="needs the openjd and cinegen commands of this Python")
def test_openjd_runs_one_chunk_of_an_image_sequence_locally_and_it_equals_the_full_run(
        full_image_run, tiny_model_cache, tmp_path):
    job = _export(tmp_path, "image", "--prompt", "a red door", "--frames", "8", "--chunk", "4", "--seed", "11",
                  "--steps", "1", "--width", "64", "--height", "64", "--frames-out", str(tmp_path / "img.####.exr"),
                  "--no-hf-cache")
    assert [s["name"] for s in job["steps"]] == ["frames 1001-1004", "frames 1005-1008"]
    run = _openjd("run", "job.yaml", "--step", "frames 1005-1008", "-p", f"Cinegen={CINEGEN}", cwd=tmp_path,
                  env={"CINEGEN_CACHE": str(tiny_model_cache)}, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    written = _pixels(tmp_path)
    assert sorted(written) == [f"img.{f}.exr" for f in range(1005, 1009)]
    full = _pixels(full_image_run)
    for name in written:  # another process, whose torch may use another thread count: up to a half-float ulp
        np.testing.assert_allclose(written[name], full[name], atol=2e-3, rtol=2e-3, err_msg=name)


def test_plate_and_single_unit_templates(tmp_path):
    (tmp_path / "in").mkdir()
    for frame in range(1005, 1011):
        write_exr_frame(tmp_path / "in" / f"plate.{frame}.exr", np.full((8, 8, 3), 0.5, np.float32),
                        metadata=ExrMetadata())
    job = _export(tmp_path, "upscale", "--input", str(tmp_path / "in" / "plate.####.exr"), "--scale", "2",
                  "--frames-out", str(tmp_path / "up.####.exr"), "--chunk", "4")
    assert [s["name"] for s in job["steps"]] == ["frames 1005-1008", "frames 1009-1010"]
    args = job["steps"][1]["script"]["actions"]["onRun"]["args"]
    assert args[:2] == ["generate", "upscale"] and args[-2:] == ["--frame-range", "1009-1010"]
    assert args[args.index("--input") + 1] == str(tmp_path / "in" / "plate.####.exr") and "--seed" in args
    for model in ("tiny-wan", "no-such-model"):  # a DiT plate is one step, as on Ray; so is a model not here
        job = _export(tmp_path, "upscale", "--input", str(tmp_path / "in" / "plate.####.exr"), "--model", model,
                      "--frames-out", str(tmp_path / "up.####.exr"), "--no-hf-cache")
        assert [s["name"] for s in job["steps"]] == ["all"], model
    job = _export(tmp_path, "panorama", "--prompt", "a bay", "--projection", "ring", "--loop",
                  "--frames-out", str(tmp_path / "pano.####.exr"))
    (step,) = job["steps"]
    args = step["script"]["actions"]["onRun"]["args"]
    assert "--frame-range" not in args and "--loop" in args and args[args.index("--projection") + 1] == "ring"
    with pytest.raises(SystemExit, match="frames-out"):
        main(["export-job", "image", "--prompt", "x", "--out", str(tmp_path / "j.yaml")])


def test_the_server_plans_a_job_s_units_like_the_farm(registry, tmp_path):
    from cinegen.server.pipelines import load_pipelines
    from cinegen.server.pipelines.base import JobSpec
    from cinegen.server.scaleout.ray_executor import plan_units, unit_spec

    pipelines = load_pipelines()
    (tmp_path / "in").mkdir()
    for frame in range(1001, 1007):
        write_exr_frame(tmp_path / "in" / f"p.{frame}.exr", np.full((8, 8, 3), 0.5, np.float32), metadata=ExrMetadata())

    def names(pipeline, common, params):
        spec = JobSpec("j", pipeline, CommonParams(out=str(tmp_path / "o.####.exr"), **common), params)
        return [u.name for u in plan_units(pipelines[pipeline], spec, registry)], spec

    plate, spec = names("upscale", {"first_frame": 1}, UpscaleParams(input=str(tmp_path / "in" / "p.####.exr")))
    assert plate == ["frames 1-4", "frames 5-6"], "chunks in the output's numbering"
    assert names("image", {"frames": 5}, ImageParams())[0] == ["frames 1001-1004", "frames 1005-1005"]
    assert names("image", {"frames": 5, "frame_range": "1001-1002"}, ImageParams())[0] == ["all"]
    assert names("panorama", {}, PanoramaParams())[0] == ["all"]
    story, story_spec = names("story", {}, StoryParams(story_yaml=STORY, shots=["sh020", "sh030"]))
    assert story == ["keyframes", "sh020", "sh030", "timeline"]
    units = plan_units(pipelines["story"], story_spec, registry)
    assert unit_spec(story_spec, units[1]).params.stage == "motion" and unit_spec(story_spec, units[1]).params.shots == ["sh020"]
    # a unit's frames record the whole job's options less what picks the part written (the job's --shots too)
    from cinegen.server.pipelines.base import recorded_params

    whole = json.loads(unit_spec(story_spec, units[1]).recorded_params)
    assert whole == json.loads(recorded_params(story_spec.common, StoryParams(story_yaml=STORY)))
    assert (whole["stage"], whole["shots"], whole["frame_range"]) == ("all", [], "") and whole["seed"] is None
    assert unit_spec(spec, plan_units(pipelines["upscale"], spec, registry)[1]).common.frame_range == "5-6"


@pytest.mark.skipif(OPENJD is None or CINEGEN is None, reason="needs the openjd and cinegen commands of this Python")
def test_a_video_plate_template_splits_at_clip_starts_and_its_steps_give_the_single_box_files(
        tiny_model_cache, tmp_path):
    from cinegen.common.sequence import FrameRange
    from cinegen.server.pipelines.upscale import plate_blend
    from cinegen.server.scaleout.units import clip_chunks

    (tmp_path / "in").mkdir()
    y, x = np.mgrid[0:16, 0:16].astype(np.float32)
    for k in range(20):  # a moving gradient: toy-video's clips (8 frames, at 0, 6, 12) disagree where they overlap
        write_exr_frame(tmp_path / "in" / f"plate.{1001 + k}.exr",
                        np.stack([(x + 2 * k) % 16 / 16, y / 16, np.full_like(x, k / 20)], -1), metadata=ExrMetadata())
    job = _export(tmp_path, "upscale", "--input", str(tmp_path / "in" / "plate.####.exr"), "--scale", "2",
                  "--model", "toy-video", "--steps", "2", "--seed", "3", "--prompt", "a harbour at dawn",
                  "--frames-out", str(tmp_path / "farm" / "up.####.exr"), "--no-hf-cache", "--nodes", "4")
    blend = plate_blend(20, 8)
    plan = clip_chunks(FrameRange.from_count(1001, 20), blend.starts, blend.window, 4)
    steps = job["steps"]
    assert [s["name"] for s in steps] == [u.name for u in plan] == ["frames 1001-1012", "frames 1013-1020"]
    assert [s["script"]["actions"]["onRun"]["args"][-1] for s in steps] == ["1001-1012", "1013-1020"]
    check = _openjd("check", "job.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    env = {"CINEGEN_CACHE": str(tiny_model_cache), "OMP_NUM_THREADS": "1"}  # the same kernels in every process
    for step in reversed(steps):  # any order: a chunk needs nothing of another
        run = _openjd("run", "job.yaml", "--step", step["name"], "-p", f"Cinegen={CINEGEN}", cwd=tmp_path, env=env,
                      timeout=120)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    names = [f"up.{n}.exr" for n in range(1001, 1021)]
    assert sorted(p.name for p in (tmp_path / "farm").glob("*.exr")) == names
    (tmp_path / "farm").rename(tmp_path / "steps")
    # the single-box run: the template's command without a step's --frame-range, to the same destination
    args = steps[0]["script"]["actions"]["onRun"]["args"]
    assert args[-2] == "--frame-range"
    one = subprocess.run([CINEGEN, *args[:-2]], capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    for name in names:
        (a, head_a), (b, head_b) = read_exr_frame(tmp_path / "steps" / name), read_exr_frame(tmp_path / "farm" / name)
        assert a.shape == (32, 32, 4) and np.array_equal(a, b), name  # the same clips, blended alike: bit for bit
        assert {k: v for k, v in head_a.items() if k != "capDate"} == \
               {k: v for k, v in head_b.items() if k != "capDate"}, name  # headers too: the whole job's options
    recorded = json.loads(head_a["cinegen:params"])
    assert recorded["frame_range"] == "" and recorded["out"] == str(tmp_path / "farm" / "up.####.exr")
    assert head_a["cinegen:job"] == args[args.index("--job-id") + 1], "every step names the template's one job"
