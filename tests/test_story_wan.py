"""Story motion on Wan: first-last-frame-to-video equals diffusers' WanImageToVideoPipeline, flow-matching
pinning on text-to-video Wan, 4k+1 frame counts, and a whole story cut on tiny-wan-i2v through the server."""
from __future__ import annotations

import uuid
from dataclasses import replace

import numpy as np
import opentimelineio as otio
import pytest
import torch
from diffusers import WanPipeline
from hypothesis import given
from hypothesis import strategies as st

from cinegen.common.client import RequestRejected, build_request
from cinegen.common.exr import read_exr_frame
from cinegen.common.params import CommonParams, StoryParams
from cinegen.server.diffusion.noise_shift import renoise_flow
from cinegen.server.diffusion.sampler import LoopCallbacks
from cinegen.server.errors import InvalidArgument
from cinegen.server.pipelines.base import Resolved, seeded_generator
from cinegen.server.pipelines.story import generate_keyframe
from cinegen.server.pipelines.story_motion import (FlowFramePinning, conditioning_image, cut_to_length, held_frame_latent, keyframe_pixels,
                                                   motion_for_family, wan_flf2v_clip, wan_frame_count, wan_motion,
                                                   wan_pinned_clip)
from cinegen.server.pipelines.upscale_dit import generate_base_latents

PROMPT, NEGATIVE, SEED, STEPS, GUIDANCE = "a keeper climbs", "blurry", 5, 2, 5.0

STORY = """\
title: Wan Lighthouse
fps: 24
shots:
  - id: sh010
    prompt: Mira climbs the stairs
    frames: 4
    continuity: true
  - id: sh020
    prompt: Tom waits at the top
    frames: 3
"""


def _resolved(**kw) -> Resolved:
    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, model="tiny-wan-i2v", seed=SEED, steps=STEPS,
                guidance=GUIDANCE, width=64, height=64, frames=5, fps=24.0, first_frame=1001)
    base.update(kw)
    return Resolved(**base)


@pytest.fixture(scope="module")
def sd(registry):
    return registry.get("tiny-sd")


@pytest.fixture(scope="module")
def keyframes(sd):
    """Two keyframe latents of the sd image model (8×8 latents, 64 px)."""
    return [generate_keyframe(sd, _resolved(model="tiny-sd", frames=1, steps=2, guidance=7.5, seed=s, prompt=p), [])
            for s, p in ((1, "a red scarf"), (2, "a yellow raincoat"))]


def _stock_i2v(adapter, first, last, frames=5, output_type="pt") -> torch.Tensor:
    """diffusers' WanImageToVideoPipeline on the 8-bit images of pixel keyframes, with our prompt (precomputed
    embeds: no ftfy)."""
    first, last = conditioning_image(first), None if last is None else conditioning_image(last)
    with torch.no_grad():
        positive, negative = (WanPipeline._get_t5_prompt_embeds(adapter.pipe, text, max_sequence_length=512)
                              for text in (PROMPT, NEGATIVE))
    out = adapter.pipe(image=first, last_image=last, prompt_embeds=positive, negative_prompt_embeds=negative,
                       height=64, width=64, num_frames=frames, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                       generator=torch.Generator().manual_seed(SEED), output_type=output_type).frames
    return out if output_type == "latent" else out.permute(0, 2, 1, 3, 4)  # → (B, 3, F, H, W)


# ------------------------------------------------------------------------------------------ image-to-video
def test_shot_motion_on_i2v_wan_equals_stock_first_last_frame_pipeline(registry, sd, keyframes):
    i2v = registry.get("tiny-wan-i2v")
    first, last = (keyframe_pixels(sd, k, 64, 64) for k in keyframes)
    stock = _stock_i2v(i2v, first, last)
    ours = motion_for_family(i2v)(sd, i2v, _resolved(), keyframes[0], keyframes[1], shared_vae=False,
                                  callbacks=LoopCallbacks())
    assert ours.shape == (1, 3, 5, 64, 64)
    assert torch.equal(ours, stock), "keyframes through pixels, then the stock FLF2V computation bit for bit"
    four = wan_motion(sd, i2v, _resolved(frames=4), keyframes[0], keyframes[1], shared_vae=False,
                      callbacks=LoopCallbacks())
    # 4 frames: made as 5 and re-timed to times 0, 4/3, 8/3, 4 — blends of neighbours, none dropped, ends exact
    expected = torch.stack([stock[:, :, 0], stock[:, :, 1] * (2 / 3) + stock[:, :, 2] / 3,
                            stock[:, :, 2] / 3 + stock[:, :, 3] * (2 / 3), stock[:, :, 4]], dim=2)
    torch.testing.assert_close(four, expected, atol=1e-6, rtol=0)  # float weights of the same two frames
    assert torch.equal(four[:, :, 0], stock[:, :, 0]) and torch.equal(four[:, :, 3], stock[:, :, 4])


def test_first_frame_only_clip_equals_stock_image_to_video_latents(registry, sd, keyframes):
    i2v = registry.get("tiny-wan-i2v")
    first = keyframe_pixels(sd, keyframes[0], 64, 64)
    ours = wan_flf2v_clip(i2v, _resolved(), first, None)
    assert torch.equal(ours, _stock_i2v(i2v, first, None, output_type="latent"))
    with_last = wan_flf2v_clip(i2v, _resolved(), first, keyframe_pixels(sd, keyframes[1], 64, 64))
    assert (with_last - ours).abs().max() > 1e-3, "the last image conditions the clip"


def test_a_long_shot_is_one_clip_whose_windows_overlap_their_neighbours(registry, sd, keyframes, monkeypatch):
    i2v = registry.get("tiny-wan-i2v")  # native 5 frames = 2 latent frames; 13 frames = 4 latent frames
    calls: list = []
    original = i2v.predict
    monkeypatch.setattr(i2v, "predict", lambda x, t, cond: calls.append((int(t), x.shape[2],
                                                                         cond.extra["condition"].shape[2]))
                        or original(x, t, cond))
    steps: list = []
    long = wan_motion(sd, i2v, _resolved(steps=2, frames=13), keyframes[0], keyframes[1], shared_vae=False,
                      callbacks=LoopCallbacks(lambda done, todo: steps.append((done, todo))))
    assert long.shape == (1, 3, 13, 64, 64) and steps == [(1, 2), (2, 2)], "one clip, one progress"
    # every call is one window of the model's 2 latent frames, with its slice of the image condition;
    # per step 3 windows (0-1, 1-2, 2-3): each shares a latent frame with its neighbour
    assert all(frames == 2 and condition == 2 for _, frames, condition in calls)
    assert len(calls) == 2 * 3


def test_temporal_windows_cover_the_clip_overlap_and_average_by_pyramid():
    from cinegen.server.diffusion.temporal_windows import predict_in_windows, pyramid_weights, window_spans

    spans = window_spans(21 * 3, 21, 10)
    assert spans[0] == (0, 21) and spans[-1] == (42, 63) and all(b - a == 21 for a, b in spans)
    assert all(b1 > a2 for (_, b1), (a2, _) in zip(spans, spans[1:])), "neighbours share frames"
    x = torch.randn(1, 4, 63, 2, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    # a per-frame model is the same in windows as on the whole clip (the seams change nothing)
    torch.testing.assert_close(predict_in_windows(x, t, lambda p, t, s: 2 * p, spans, 2), 2 * x)
    one = predict_in_windows(x, t, lambda p, t, s: 2 * p, [(0, 63)], 2)
    assert torch.equal(one, 2 * x), "one window over the whole clip is the plain call, bit for bit"
    # windows that disagree are blended by pyramid weight: frame 15 is near the end of window 0 and
    # near the start of window 1 (10–31)
    marked = predict_in_windows(x, t, lambda p, t, s: torch.full_like(p, float(s[0])), spans, 2)
    w = pyramid_weights(21)
    expected = (0 * w[15] + 10 * w[5]) / (w[15] + w[5])
    torch.testing.assert_close(marked[0, 0, 15, 0, 0].double(), expected, atol=1e-6, rtol=0)


def test_conditioning_images_reach_clip_at_their_true_brightness():
    from transformers import CLIPImageProcessor  # what Wan 2.1 I2V/FLF2V folders use for their image encoder

    levels = torch.arange(256.0).view(1, 1, 16, 16).repeat(1, 3, 1, 1) / 255
    image = conditioning_image(levels)
    assert torch.equal(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None] / 255, levels), "8-bit exact"
    processor = CLIPImageProcessor(do_resize=False, do_center_crop=False)
    white = processor(images=conditioning_image(torch.ones(1, 3, 8, 8)), return_tensors="pt").pixel_values
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    torch.testing.assert_close(white[0, :, 0, 0], (1 - mean) / std)  # a float tensor would come out near-black


def test_a_size_wan_cannot_take_is_refused_with_the_multiple(registry, sd, keyframes):
    with pytest.raises(InvalidArgument, match="multiples of 16"):
        wan_motion(sd, registry.get("tiny-wan-i2v"), _resolved(width=72), keyframes[0], None, shared_vae=False,
                   callbacks=LoopCallbacks())


# ------------------------------------------------------------------------------------------ text-to-video pinning
def test_flow_pinning_puts_pinned_frames_on_the_flow_path_at_each_step_sigma(registry):
    scheduler = registry.get("tiny-wan").new_scheduler()
    scheduler.set_timesteps(3)
    noise, x = torch.randn(1, 4, 3, 4, 4), torch.randn(1, 4, 3, 4, 4)
    key, end = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    pin = FlowFramePinning(scheduler, {0: key, 2: end}, noise, last_index=2)
    pinned = pin.before_step(1, scheduler.timesteps[1], x)
    sigma = float(scheduler.sigmas[1])
    assert 0 < sigma < 1
    assert torch.equal(pinned[:, :, 0], renoise_flow(key, noise[:, :, 0], sigma))
    assert torch.equal(pinned[:, :, 2], renoise_flow(end, noise[:, :, 2], sigma))
    assert torch.equal(pinned[:, :, 1], x[:, :, 1])
    assert torch.equal(pin.after_step(1, scheduler.timesteps[1], x), x)
    assert torch.equal(pin.after_step(2, scheduler.timesteps[2], x)[:, :, 0], key)


def test_t2v_pinning_makes_frame_zero_the_vae_image_of_the_keyframe(registry, sd, keyframes):
    t2v = registry.get("tiny-wan")
    assert not t2v.is_image_to_video
    first, last = (keyframe_pixels(sd, k, 64, 64) for k in keyframes)
    r = _resolved(model="tiny-wan", steps=2)
    latents = wan_pinned_clip(t2v, r, first, last)
    free = t2v.decode(generate_base_latents(t2v, t2v.encode_prompt(PROMPT, NEGATIVE, GUIDANCE), 64, 64, 5, 2,
                                            seeded_generator(SEED)))  # the same noise, nothing pinned
    assert torch.equal(latents[:, :, 0], t2v.encode(first)[:, :, 0]), "causal VAE: the keyframe alone is frame 0"
    assert torch.equal(latents[:, :, -1], held_frame_latent(t2v, last))
    frames, round_trip = t2v.decode(latents), t2v.decode(t2v.encode(first))
    # as close to the keyframe as the VAE can show it; untiled, its post-quant conv sees 2 latent frames here, 1 there
    torch.testing.assert_close(frames[:, :, 0], round_trip[:, :, 0], atol=1e-5, rtol=0)
    assert (free[:, :, 0] - round_trip[:, :, 0]).abs().mean() > 1e-2
    held = t2v.decode(t2v.encode(last.unsqueeze(2).repeat(1, 1, 5, 1, 1)))[:, :, -1]
    assert (frames[:, :, -1] - held).abs().mean() < 0.5 * (free[:, :, -1] - held).abs().mean()
    shot = motion_for_family(t2v)(sd, t2v, replace(r, frames=3), keyframes[0], keyframes[1], shared_vae=False,
                                  callbacks=LoopCallbacks())
    assert shot.shape == (1, 3, 3, 64, 64)
    torch.testing.assert_close(shot[:, :, 0], round_trip[:, :, 0], atol=1e-5, rtol=0)  # as above: 2 latent frames vs 1


# ------------------------------------------------------------------------------------------ frame counts
@given(st.integers(1, 400))
def test_wan_frame_count_is_the_next_4k_plus_1(frames):
    n = wan_frame_count(frames)
    assert (n - 1) % 4 == 0 and frames <= n < frames + 4


@given(st.integers(2, 40), st.integers(0, 3), st.booleans())
def test_cut_keeps_the_first_frame_and_retimes_to_keep_the_last_when_asked(frames, extra, keep_last):
    clip = torch.arange(frames + extra, dtype=torch.float32).view(1, 1, -1, 1, 1)
    cut = cut_to_length(clip, frames, keep_last).flatten()
    assert len(cut) == frames and cut[0] == 0
    if keep_last:  # re-timed: a constant-speed ramp stays constant speed (no dropped frame, no jump), ends exact
        expected = torch.linspace(0, frames + extra - 1, frames, dtype=torch.float64)
        torch.testing.assert_close(cut.double(), expected, atol=1e-5, rtol=0)
        if frames > 4:  # every source frame is within one frame of an output time: none is dropped
            assert all(bool(((expected - k).abs() < 1).any()) for k in range(frames + extra))
    else:  # the tail is cut, the inside kept frame for frame
        assert cut.tolist() == list(range(frames))


# ------------------------------------------------------------------------------------------ whole run
def _request(out, **params):
    return build_request("story", CommonParams(seed=3, steps=2, out=str(out)),
                         StoryParams(story_yaml=STORY, **params), job_id=f"story-wan-{uuid.uuid4().hex[:8]}")


def test_story_on_wan_i2v_writes_every_shot_and_the_cut(client, tmp_path):
    out = tmp_path / "cut"
    result = client.run(_request(out, video_model="tiny-wan-i2v"))
    assert result.state == "completed", result.message
    for shot, frames in (("sh010", 4), ("sh020", 3)):
        assert sorted(p.name for p in (out / shot).iterdir()) == [f"{shot}.{1001 + i}.exr" for i in range(frames)]
    pixels, meta = read_exr_frame(out / "sh010" / "sh010.1004.exr")
    assert pixels.shape == (32, 32, 4) and meta["cinegen:model"] == "tiny-wan-i2v"  # the video model's native size
    timeline = otio.adapters.read_from_file(str(out / "Wan_Lighthouse.otio"))
    clips = list(timeline.find_clips())
    assert [c.name for c in clips] == ["sh010", "sh020"] and timeline.duration().value == 7
    marker = [m for m in clips[0].markers if m.metadata["cinegen"]["keyframe"] == "sh020"]
    assert marker and marker[0].marked_range.start_time.value == 1004, "continuity: the shot ends on sh020's keyframe"


def test_a_video_model_without_a_motion_path_is_refused_at_submit(client, tmp_path):
    with pytest.raises(RequestRejected) as info:
        client.submit(_request(tmp_path / "cut", video_model="tiny-cogvideox"))
    assert info.value.code == "INVALID_ARGUMENT" and "animatediff or wan" in info.value.message
