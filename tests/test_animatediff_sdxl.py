"""AnimateDiff-SDXL: a tiny SDXL folder and a tiny SDXL MotionAdapter folder, built in code and saved,
are paired by the registry (block widths), load through diffusers' AnimateDiffSDXLPipeline and
denoise exactly as it does; a saved AnimateDiffSDXLPipeline folder is the same model; trajectory
control and story motion run on it as they do on AnimateDiff."""
from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import tiny_sdxl

from cinegen.server.models.registry import ModelRegistry
from cinegen.server.pipelines.base import Resolved
from cinegen.server.pipelines.story import generate_keyframe, generate_motion, keyframe_for_video, same_vae
from cinegen.server.pipelines.trajectory import generate_freetraj
from cinegen.common.trajectory_io import parse_trajectory

PAIR = "xl+motion-xl"


def _motion_adapter(widths: tuple[int, ...], seed: int):
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    return MotionAdapter(block_out_channels=widths, motion_layers_per_block=1, motion_num_attention_heads=2,
                         motion_norm_num_groups=8, motion_max_seq_length=32, use_motion_mid_block=False)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_model_cache):
    root = tmp_path_factory.mktemp("animatediff-sdxl")
    tiny_sdxl(0).save_pretrained(str(root / "xl"), safe_serialization=True)
    _motion_adapter((32, 64), 7).save_pretrained(str(root / "motion-xl"))  # the tiny SDXL UNet's widths
    _motion_adapter((16, 32), 8).save_pretrained(str(root / "motion-other"))  # fits no UNet here
    return root


@pytest.fixture(scope="module")
def xl_registry(models_dir, tiny_model_cache):
    return ModelRegistry([models_dir], use_hf_cache=False, cache_dir=tiny_model_cache)


def _resolved(frames: int, **kw) -> Resolved:
    base = dict(prompt="a red disc", negative_prompt="blue", model=PAIR, seed=3, steps=2, guidance=7.5, width=64,
                height=64, frames=frames, fps=24.0, first_frame=1001)
    base.update(kw)
    return Resolved(**base)


def _stock(adapter, r: Resolved) -> torch.Tensor:
    return adapter.pipe(r.prompt, negative_prompt=r.negative_prompt, num_frames=r.frames, height=r.height,
                        width=r.width, num_inference_steps=r.steps, guidance_scale=r.guidance,
                        generator=torch.Generator().manual_seed(r.seed), output_type="latent").frames


def test_an_sdxl_folder_and_an_sdxl_motion_adapter_are_paired_by_their_block_widths(xl_registry):
    entries = {e.id: e for e in xl_registry.entries()}
    assert entries[PAIR].family == "animatediff" and entries[PAIR].source == "paired"
    assert "AnimateDiff-SDXL" in entries[PAIR].description
    assert "xl+motion-other" not in entries, "a motion adapter of other widths does not fit the SDXL UNet"
    adapter = xl_registry.get(PAIR)
    assert type(adapter.pipe).__name__ == "AnimateDiffSDXLPipeline" and adapter.is_xl
    assert type(adapter.pipe.unet).__name__ == "UNetMotionModel"


def test_the_trajectory_path_without_control_is_the_stock_animatediff_sdxl_pipeline_bit_for_bit(xl_registry):
    """The UNet path of the trajectory pipeline (FreeTraj) on the pair: identity control = stock latents;
    with the control the video changes and the attention processors are back to stock afterwards."""
    adapter = xl_registry.get(PAIR)
    r = _resolved(4)
    trajectory = parse_trajectory({"origin": "top-left", "width": 64, "height": 64, "tracks": [
        {"name": "disc", "size": 20, "points": [{"frame": 1001, "x": 12, "y": 20}, {"frame": 1004, "x": 52, "y": 44}]}]})
    plain = generate_freetraj(adapter, r, trajectory, control=False)
    assert torch.equal(plain, _stock(adapter, r))
    guided = generate_freetraj(adapter, r, trajectory)
    assert (guided - plain).abs().max() > 1e-2
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in adapter.denoiser.attn_processors.values())


def test_a_saved_animatediff_sdxl_folder_loads_as_the_same_model(xl_registry, models_dir, tmp_path,
                                                                  tiny_model_cache):
    xl_registry.get(PAIR).pipe.save_pretrained(str(tmp_path / "saved-adxl"), safe_serialization=True)
    saved = ModelRegistry([tmp_path], use_hf_cache=False, cache_dir=tiny_model_cache)
    entry = {e.id: e for e in saved.entries()}["saved-adxl"]
    assert entry.family == "animatediff" and entry.source == "folder"
    adapter = saved.get("saved-adxl")
    assert type(adapter.pipe).__name__ == "AnimateDiffSDXLPipeline"
    r = _resolved(3)
    assert torch.equal(generate_freetraj(adapter, r, None, control=False),
                       generate_freetraj(xl_registry.get(PAIR), r, None, control=False))


def test_story_motion_on_animatediff_sdxl_starts_and_ends_on_the_keyframes(xl_registry):
    """Story motion between two SDXL keyframes (shared VAE): decoded first and last frames are the keyframes."""
    sd, video = xl_registry.get("xl"), xl_registry.get(PAIR)
    assert same_vae(sd, video)
    keys = [generate_keyframe(sd, _resolved(1, model="xl", seed=s, prompt=p, negative_prompt=""), [])
            for s, p in ((1, "a red scarf"), (2, "the sea"))]
    first, last = (keyframe_for_video(sd, video, k, 64, 64, shared_vae=True) for k in keys)
    frames = video.decode(generate_motion(video, _resolved(5, negative_prompt=""), first, last))[0]
    images = [sd.decode(k)[0] for k in keys]
    # atol as test_story_pipeline: the VAE decodes 5 frames in one batch there, 1 here
    torch.testing.assert_close(frames[:, 0], images[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(frames[:, 4], images[1], atol=1e-4, rtol=0)
    assert (frames[:, 2] - images[0]).abs().mean() > 1e-2, "inner frames are generated, not copies"


def test_a_one_window_video_panorama_on_animatediff_sdxl_is_the_stock_pipeline_bit_for_bit(xl_registry):
    """The panorama pipeline's window denoiser on the pair (one window, offset shifting alone) = stock latents:
    pooled embeds and time ids go with each window's rows."""
    from cinegen.server.pipelines.panorama import PanoramaSettings, generate_panorama

    adapter = xl_registry.get(PAIR)
    r = _resolved(4)
    plain = PanoramaSettings(projection="plane", scale_down=None, early_overlap=False)
    assert torch.equal(generate_panorama(adapter, r, plain), _stock(adapter, r))
    wide = generate_panorama(adapter, _resolved(4, width=128), plain)  # two windows in one batch
    assert wide.shape == (1, 4, 4, 8, 16) and torch.isfinite(wide).all()
