"""Toy-world clips, the motion-module training recipe, and the committed toy-video model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cinegen.server.toyworld.clips import ClipParams, clip_batch, clip_for, render_clip
from cinegen.server.toyworld.world import COLOURS, caption


# ---- clips ---------------------------------------------------------------------------------------
def test_clips_are_a_pure_function_of_seed_and_index():
    a, caps_a = clip_batch(5, 20, 3, 32)
    b, caps_b = clip_batch(5, 21, 2, 32)
    assert np.array_equal(a[1:], b) and caps_a[1:] == caps_b
    assert not np.array_equal(clip_batch(6, 20, 3, 32)[0], a)


@pytest.mark.parametrize("index", range(30))
def test_every_frame_draws_each_object_at_its_path_position_inside_the_frame(index):
    clip = clip_for(2, index)
    size = 64
    frames = render_clip(clip, size)
    assert frames.shape == (ClipParams().frames, size, size, 3)
    for k, obj in enumerate(clip.scene.objects):
        path = clip.paths[k]
        assert (path - obj.radius >= 0).all() and (path + obj.radius <= 1).all(), "the object leaves the frame"
        for f in range(clip.frames):
            x, y = (path[f] * size).astype(int)
            assert np.abs(frames[f, y, x] - COLOURS[obj.colour]).max() < 1e-3
    if len(clip.scene.objects) == 2:  # the caption's left-to-right order holds on every frame
        assert (clip.paths[0, :, 0] < clip.paths[1, :, 0]).all()


def test_paths_are_straight_curved_or_still_in_the_stated_shares():
    kinds = {"still": 0, "straight": 0, "curved": 0}
    for index in range(400):
        path = clip_for(3, index).paths[0]
        travel = np.linalg.norm(path[-1] - path[0])
        if travel < 1e-12:
            kinds["still"] += 1
            continue
        assert travel >= ClipParams().min_travel - 1e-9
        chord = path[0] + np.linspace(0, 1, len(path))[:, None] * (path[-1] - path[0])
        kinds["curved" if np.abs(path - chord).max() > 1e-9 else "straight"] += 1
    p = ClipParams()
    assert abs(kinds["still"] / 400 - p.static_probability) < 0.05
    assert abs(kinds["curved"] / (400 - kinds["still"]) - p.curve_probability) < 0.08


def test_clip_captions_are_the_scene_captions():
    clip = clip_for(4, 9)
    assert clip_batch(4, 9, 1, 32)[1] == [caption(clip.scene)]


# ---- the training recipe -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_parts():
    from diffusers import StableDiffusionPipeline

    from cinegen.server.models.toy import TOY_IMAGE_DIR

    sd = StableDiffusionPipeline.from_pretrained(str(TOY_IMAGE_DIR), dtype=torch.float32, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False,
                                                 local_files_only=True)
    return sd


def test_zeroed_motion_modules_make_the_video_unet_the_image_unet_frame_by_frame(toy_parts):
    # AnimateDiff's zero_initialize: training starts exactly from the frozen image model
    from diffusers import UNetMotionModel

    from cinegen.server.toyworld.train_video import build_motion_adapter, zero_motion_outputs

    torch.manual_seed(0)
    video = UNetMotionModel.from_unet2d(toy_parts.unet, build_motion_adapter())
    assert zero_motion_outputs(video) == 10
    frames = 3
    x = torch.randn(2, 4, frames, 8, 8)
    text = torch.randn(2, 77, 64)
    t = torch.tensor([500, 80])
    with torch.no_grad():
        out = video(x, t, encoder_hidden_states=text.repeat_interleave(frames, dim=0)).sample
        flat = x.permute(0, 2, 1, 3, 4).reshape(2 * frames, 4, 8, 8)
        ref = toy_parts.unet(flat, t.repeat_interleave(frames), text.repeat_interleave(frames, dim=0)).sample
    ref = ref.reshape(2, frames, 4, 8, 8).permute(0, 2, 1, 3, 4)
    assert torch.allclose(out, ref, atol=1e-5)
    # and a non-zero motion module does change the result (the check above can fail)
    torch.nn.init.normal_(video.down_blocks[0].motion_modules[0].proj_out.weight)
    with torch.no_grad():
        moved = video(x, t, encoder_hidden_states=text.repeat_interleave(frames, dim=0)).sample
    assert not torch.allclose(moved, ref, atol=1e-3)


def test_trained_motion_modules_are_saved_into_the_adapter_that_rebuilds_the_same_model(toy_parts):
    from diffusers import UNetMotionModel

    from cinegen.server.toyworld.train_video import build_motion_adapter, copy_motion_modules

    torch.manual_seed(1)
    adapter = build_motion_adapter()
    video = UNetMotionModel.from_unet2d(toy_parts.unet, adapter)
    with torch.no_grad():  # stands in for training: every motion weight moves
        for name, param in video.named_parameters():
            if "motion_modules" in name:
                param.add_(torch.randn_like(param) * 0.05)
    copy_motion_modules(video, adapter)
    rebuilt = UNetMotionModel.from_unet2d(toy_parts.unet, adapter)
    x, text = torch.randn(1, 4, 4, 8, 8), torch.randn(4, 77, 64)
    with torch.no_grad():
        assert torch.equal(video(x, 300, encoder_hidden_states=text).sample,
                           rebuilt(x, 300, encoder_hidden_states=text).sample)


def test_the_training_step_runs_and_saves_an_adapter(tmp_path, toy_parts):
    import time

    from diffusers import MotionAdapter

    from cinegen.server.models.toy import TOY_IMAGE_DIR
    from cinegen.server.toyworld.train_video import VideoTrainConfig, train_motion

    cfg = VideoTrainConfig(out=tmp_path, image_model=TOY_IMAGE_DIR, clip_pool=16, steps=2, batch=2)
    folder = train_motion(cfg, deadline=time.time() + 600)
    assert MotionAdapter.from_pretrained(str(folder)).config.motion_max_seq_length == 32
    assert (tmp_path / "motion_loss.csv").read_text().count("\n") == 3  # header and two steps


# ---- the committed model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_video(registry):
    return registry.get("toy-video")


def test_toy_video_loads_as_an_animatediff_pipeline_of_8_frames_on_toy_image(toy_video, registry):
    assert type(toy_video.pipe).__name__ == "AnimateDiffPipeline"
    assert toy_video.native_frames == 8 and toy_video.native_size == (64, 64)
    image = registry.get("toy-image")
    # the spatial layers are toy-image's own: the motion module is all that was trained
    spatial = image.pipe.unet.state_dict()
    video = toy_video.pipe.unet.state_dict()
    assert all(torch.equal(video[k].float(), v.float()) for k, v in spatial.items() if k in video)
    assert sum(k in video for k in spatial) >= 0.9 * len(spatial)
