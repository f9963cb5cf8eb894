"""The `trajectory` pipeline end to end: CLI and gRPC on tiny AnimateDiff, Tora on tiny CogVideoX, bad input."""
from __future__ import annotations

import io
import json
import shutil
import uuid

import numpy as np
import pytest
import torch

from cinegen.common.client import RequestRejected, build_request
from cinegen.common.exr import read_exr_frame
from cinegen.common.params import CommonParams, TrajectoryParams
from cinegen.common.trajectory_io import parse_trajectory
from cinegen.server.cli import main
from cinegen.server.errors import FailedPrecondition
from cinegen.server.models.cogvideox import cogvideox_family
from cinegen.server.models.registry import ModelRegistry, ensure_tiny_model
from cinegen.server.pipelines.base import JobSpec, Resolved, RunContext
from cinegen.common.trajectory_io import Trajectory
from cinegen.server.diffusion.tora import motion_features
from cinegen.server.pipelines.trajectory import (ToraInference, TrajectoryPipeline, generate_freetraj, generate_tora,
                                                 tora_flow_latents)

TRACK_COLOUR = (0xFF, 0x4D, 0x4D)  # trajectory_io's first track colour


def _document(frames: int = 8, first: int = 1001, **track) -> dict:
    points = [{"frame": first, "x": 12, "y": 20}, {"frame": first + frames - 1, "x": 52, "y": 44}]
    return {"origin": "top-left", "width": 64, "height": 64,
            "tracks": [{"name": "disc", "size": 20, "points": points, **track}]}


def test_cli_generates_eight_exr_frames_that_follow_a_trajectory_file(tmp_path, capsys):
    tracks = tmp_path / "t.json"
    tracks.write_text(json.dumps(_document()))
    out = tmp_path / "shot" / "traj.####.exr"
    code = main(["generate", "trajectory", "--trajectory", str(tracks), "--model", "tiny-animatediff",
                 "--frames", "8", "--width", "64", "--height", "64", "--steps", "3", "--seed", "5",
                 "--prompt", "a red disc", "--out", str(out), "--no-hf-cache"])
    assert code == 0, capsys.readouterr().err
    written = sorted(p.name for p in (tmp_path / "shot").iterdir())
    assert written == [f"traj.{f}.exr" for f in range(1001, 1009)]
    pixels, meta = read_exr_frame(tmp_path / "shot" / "traj.1008.exr")
    assert pixels.shape == (64, 64, 4) and meta["cinegen:pipeline"] == "trajectory"
    assert "traj.####.exr (1001-1008, 8 frames)" in capsys.readouterr().out


def _request(tmp_path, document: dict | None = None, **common):
    c = dict(prompt="a red disc", model="tiny-animatediff", seed=2, steps=1, width=64, height=64, frames=4,
             out=str(tmp_path / "t.####.exr"))
    c.update(common)
    params = TrajectoryParams(trajectory_json=json.dumps(document or _document(frames=c["frames"])))
    return build_request("trajectory", CommonParams(**c), params, job_id=f"traj-{uuid.uuid4().hex[:8]}")


def test_the_first_preview_shows_the_tracks_and_the_job_completes_over_grpc(client, tmp_path):
    from PIL import Image

    ticket = client.submit(_request(tmp_path))
    events = list(client.watch(ticket.job_id))
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds[-1] == "completed", events[-1]
    first_preview = next(e.preview for e in events if e.WhichOneof("kind") == "preview")
    assert kinds.index("preview") < kinds.index("frame_written"), "the track drawing comes before any frame"
    colours = {tuple(c) for c in np.asarray(Image.open(io.BytesIO(first_preview.png)).convert("RGB")).reshape(-1, 3)}
    assert TRACK_COLOUR in colours
    assert kinds.count("frame_written") == 4


@pytest.mark.parametrize("document, words", [
    (_document(points=[{"frame": 1001, "x": 12, "y": 20}]), ["Track 'disc'", "only one point"]),
    (_document(frames=9), ["Track 'disc' point 2", "frame 1009", "1001–1004"]),
    (_document(points=[{"frame": 999, "x": 12, "y": 20}, {"frame": 1003, "x": 30, "y": 20}]),
     ["Track 'disc' point 1", "frame 999"]),
    (_document(points=[{"frame": 1001, "x": -20, "y": 20}, {"frame": 1004, "x": -5, "y": 30}]),
     ["Track 'disc'", "outside the 64×64 frame", "bottom-left"]),
    ({**_document(), "origin": "centre"}, ["origin", "bottom-left"]),
    (_document(points=[{"frame": 1001, "x": 12}]), ["track 'disc' point 1", "no y"]),
])
def test_bad_trajectories_are_refused_with_a_sentence_naming_the_track_and_point(client, tmp_path, document, words):
    with pytest.raises(RequestRejected) as err:
        client.submit(_request(tmp_path, document))
    assert err.value.code == "INVALID_ARGUMENT"
    for word in words:
        assert word in err.value.message
    assert not any(tmp_path.rglob("*.exr"))


@pytest.mark.parametrize("common, params, words", [
    # no --frames: the clip is the model's 16 frames, known at Submit (the job used to fail once running)
    (dict(frames=None), dict(trajectory_json=json.dumps(_document(frames=30))), ["frame 1030", "1001–1016"]),
    (dict(model="tiny-cogvideox", width=72, frames=9), {}, ["multiples of 16", "try 64×64"]),
    # Tora's sampling options used to be silently ignored on the training-free path
    (dict(), dict(tora_sampler="ddim"), ["--tora-sampler", "FreeTraj"]),
    (dict(), dict(dynamic_cfg=False, flow_kernel="scaled"), ["--no-dynamic-cfg, --flow-kernel", "CogVideoX"]),
])
def test_what_the_model_cannot_do_is_refused_at_submit(client, tmp_path, common, params, words):
    request = _request(tmp_path, _document(frames=common.get("frames") or 4), **common)
    for name, value in params.items():
        setattr(request.trajectory, name, value)
    with pytest.raises(RequestRejected) as err:
        client.submit(request)
    assert err.value.code == "INVALID_ARGUMENT"
    for word in words:
        assert word in err.value.message


def test_a_request_without_tracks_says_how_to_give_them(client, tmp_path):
    request = build_request("trajectory", CommonParams(model="tiny-animatediff", out=str(tmp_path / "t.####.exr")),
                            TrajectoryParams())
    with pytest.raises(RequestRejected) as err:
        client.submit(request)
    assert err.value.code == "INVALID_ARGUMENT" and "--trajectory" in err.value.message


# ---- the two generation paths -----------------------------------------------------------------
def _resolved(model: str, frames: int, **kw) -> Resolved:
    base = dict(prompt="a red disc", negative_prompt="", model=model, seed=9, steps=2, guidance=6.0, width=64,
                height=64, frames=frames, fps=24.0, first_frame=1001)
    base.update(kw)
    return Resolved(**base)


def test_without_control_the_unet_path_is_stock_animatediff_and_with_it_the_video_changes(registry):
    adapter = registry.get("tiny-animatediff")
    r = _resolved("tiny-animatediff", 4)
    trajectory = parse_trajectory(_document(frames=4))
    plain = generate_freetraj(adapter, r, trajectory, control=False)
    stock = adapter.pipe(r.prompt, num_frames=r.frames, height=r.height, width=r.width, num_inference_steps=r.steps,
                         guidance_scale=r.guidance, generator=torch.Generator().manual_seed(r.seed),
                         output_type="latent").frames
    assert torch.equal(plain, stock)
    guided = generate_freetraj(adapter, r, trajectory)
    assert (guided - plain).abs().max() > 1e-2
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in adapter.denoiser.attn_processors.values())


@pytest.fixture(scope="module")
def cog_registry(tiny_model_cache):
    registry = ModelRegistry(use_hf_cache=False, cache_dir=tiny_model_cache)
    return registry


def _context(registry, job: JobSpec, events: list) -> RunContext:
    return RunContext(job=job, registry=registry,
                      report_progress=lambda *a: events.append(("progress", a)),
                      report_preview=lambda frame, rgb: events.append(("preview", rgb)),
                      report_frame=lambda frame, path, seq: events.append(("frame", path)),
                      report_log=lambda message: events.append(("log", message)),
                      is_cancelled=lambda: False)


def test_tora_path_on_cogvideox_writes_the_requested_frames_and_removes_its_hooks(cog_registry, tmp_path):
    job = JobSpec("tora-1", "trajectory",
                  CommonParams(prompt="a red disc", model="tiny-cogvideox", seed=1, steps=2, width=64, height=64,
                               frames=8, out=str(tmp_path / "tora.####.exr")),
                  TrajectoryParams(trajectory_json=json.dumps(_document(frames=8))))
    pipeline = TrajectoryPipeline()
    pipeline.validate(job, cog_registry)
    events: list = []
    outputs = pipeline.run(_context(cog_registry, job, events))
    assert [p.rsplit(".", 2)[-2] for p in outputs] == [str(f) for f in range(1001, 1009)], "9 decoded, 8 kept"
    assert events[0][0] == "preview" and events[0][1].shape[-1] == 3
    assert any(kind == "log" and "Tora" in message for kind, message in events)

    adapter = cog_registry.get("tiny-cogvideox")
    assert all(not block.norm1._forward_hooks for block in adapter.denoiser.transformer_blocks)


def _line_track(x0: float, x1: float, frames: int, width: int = 512, height: int = 64) -> Trajectory:
    return parse_trajectory({"origin": "top-left", "width": width, "height": height, "tracks": [
        {"name": "disc", "size": 20, "points": [{"frame": 1001, "x": x0, "y": 32},
                                                {"frame": 1000 + frames, "x": x1, "y": 32}]}]})


def test_tora_motion_features_move_with_the_track(cog_registry):
    # Shift the track by one DiT token (2×2 latent cells = 16 px): the injected motion features shift by one
    # token (the flow video, the VAE and the extractor are convolutions on a flat background). 32 tokens
    # wide, so that the borders' padding (seen ~10 tokens deep) stays away from the track's middle tokens.
    adapter = cog_registry.get("tiny-cogvideox")
    r = _resolved("tiny-cogvideox", 9, width=512, height=64)
    deterministic = ToraInference(flow_latents="mode")  # a posterior sample is noise, not a function of position

    def features(x0: float, x1: float) -> list[torch.Tensor]:
        track = _line_track(x0, x1, 9, width=512)
        return motion_features(adapter.tora, tora_flow_latents(adapter, r, track, deterministic))

    here, there, still = features(224, 264), features(240, 280), features(224, 224)
    for a, b, s0 in zip(here, there, still):
        moving = (a - s0).abs()[..., 12:18].amax()  # what the motion changes around the track
        error = (b[..., 13:19] - a[..., 12:18]).abs().amax()
        assert error < 1e-3 * moving, (float(error), float(moving))


def test_the_flow_of_a_reversed_track_points_the_other_way(cog_registry):
    from cinegen.server.diffusion.flowmap import sparse_flow
    from cinegen.server.pipelines.trajectory import track_positions

    forward = track_positions(_line_track(96, 152, 9), 1001, 9).float()
    backward = track_positions(_line_track(152, 96, 9), 1001, 9).float()
    flow_f, flow_b = sparse_flow(forward, 9, 64, 512), sparse_flow(backward, 9, 64, 512)
    # frame t+1 of the reversed track carries the step of frame 8−t of the forward one, negated
    for t in range(8):
        torch.testing.assert_close(flow_b[t + 1].sum((1, 2)), -flow_f[8 - t].sum((1, 2)))
    assert float(flow_f[1:, 0].sum()) > 0 > float(flow_b[1:, 0].sum())


def test_a_long_tora_clip_is_one_clip_whose_windows_get_their_own_frames_features(cog_registry, monkeypatch):
    import cinegen.server.pipelines.trajectory as trajectory_module

    adapter = cog_registry.get("tiny-cogvideox")  # native 9 frames = 3 latent frames; 17 frames = 5
    injected: list = []
    original = trajectory_module.tora_installed
    monkeypatch.setattr(trajectory_module, "tora_installed",
                        lambda transformer, modules, features: injected.append(features) or
                        original(transformer, modules, features))
    r = _resolved("tiny-cogvideox", 17, steps=1)
    track = _line_track(12, 52, 17, 64, 64)
    latents = generate_tora(adapter, r, track)
    assert latents.shape[1] == 5
    full = motion_features(adapter.tora, tora_flow_latents(adapter, r, track))
    # windows 0–2, 1–3, 2–4: three latent frames each, each sharing two with its neighbour
    assert len(injected) == 3
    for start, features in zip((0, 1, 2), injected):
        assert all(torch.equal(f, whole[start:start + 3]) for f, whole in zip(features, full))


def test_the_pipeline_injects_the_features_of_the_requested_track_seeded(cog_registry, monkeypatch):
    import cinegen.server.pipelines.trajectory as trajectory_module

    adapter = cog_registry.get("tiny-cogvideox")
    injected: list = []
    original = trajectory_module.tora_installed
    monkeypatch.setattr(trajectory_module, "tora_installed",
                        lambda transformer, modules, features: injected.append(features) or
                        original(transformer, modules, features))
    r = _resolved("tiny-cogvideox", 9, steps=1)
    forward, backward = _line_track(12, 52, 9, 64, 64), _line_track(52, 12, 9, 64, 64)
    for track in (forward, backward, forward):
        generate_tora(adapter, r, track)
    expected = motion_features(adapter.tora, tora_flow_latents(adapter, r, forward))  # sampled, seeded by r.seed
    assert all(torch.equal(a, b) for a, b in zip(injected[0], expected))
    assert all(torch.equal(a, b) for a, b in zip(injected[2], expected)), "the same seed samples the same latents"
    assert all(not torch.allclose(a, b) for a, b in zip(injected[1], expected)), "a reversed track is not the same"


def test_a_cogvideox_model_without_tora_weights_is_refused_before_running(tmp_path, tiny_model_cache):
    tiny = ensure_tiny_model(cogvideox_family().tiny[0], tiny_model_cache)
    folder = tmp_path / "CogVideoX-tiny"
    shutil.copytree(tiny, folder, ignore=shutil.ignore_patterns("tora"))
    registry = ModelRegistry([tmp_path], use_hf_cache=False, cache_dir=tiny_model_cache)
    job = JobSpec("tora-2", "trajectory", CommonParams(model="CogVideoX-tiny", out=str(tmp_path / "x.####.exr")),
                  TrajectoryParams(trajectory_json=json.dumps(_document())))
    with pytest.raises(FailedPrecondition, match="no Tora weights"):
        TrajectoryPipeline().validate(job, registry)
