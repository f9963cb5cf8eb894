"""Image-conditioned panoramas through Wan image-to-video (pipelines/panorama_i2v.py).

The input image is the panorama's first frame; the stock I2V condition of the whole panorama is
built once and every window or sphere view denoises with its own crop of it, plus (Wan 2.1 I2V)
the CLIP tokens of its own pixels. Two tiny I2V models: the built-in one (no CLIP image encoder,
as `tiny-wan-i2v`) and one with a tiny CLIP vision tower and an image projection, built here.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import WanPipeline

from cinegen.server.diffusion.panorama_denoise import ViewRegion, WindowRegion
from cinegen.server.errors import InvalidArgument
from cinegen.server.models.wan import as_pil_image
from cinegen.server.pipelines.base import Resolved
from cinegen.server.pipelines.panorama import (PanoramaSettings, check_request, decode_panorama_frames,
                                               generate_panorama)
from cinegen.server.pipelines.panorama_i2v import RegionImageCondition, first_frame
from tiny_wan_i2v import pixel_world_wan_i2v, tiny_wan_i2v_with_clip

PLAIN = dict(scale_down=None, early_overlap=False)


def _resolved(width: int, height: int, **kw) -> Resolved:
    base = dict(prompt="a red disc", negative_prompt="blue", model="tiny-wan-i2v", seed=5, steps=3, guidance=5.0,
                width=width, height=height, frames=5, fps=24.0, first_frame=1)
    base.update(kw)
    return Resolved(**base)


def _image(width: int, height: int, seed: int = 1) -> torch.Tensor:
    """A picture with 8-bit values (what the stock pipeline's PIL image holds)."""
    return (torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed)) * 255).round() / 255


@pytest.fixture(scope="module")
def plain_i2v(registry):
    return registry.get("tiny-wan-i2v")  # no CLIP image encoder, image_dim unset


@pytest.fixture(scope="module")
def clip_i2v(registry):
    return tiny_wan_i2v_with_clip(registry.get("tiny-wan-i2v"))


class Recording:
    """The adapter, with every model call's condition and CLIP tokens kept, and the region predictor's regions."""

    def __init__(self, adapter):
        self.adapter, self.calls, self.regions = adapter, [], []
        original = RegionImageCondition.__call__

        def spy(predictor, x, t, regions):
            self.regions.append((predictor, list(regions)))
            return original(predictor, x, t, regions)
        self.spy = spy

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    def predict(self, x, t, cond):
        self.calls.append((cond.extra["condition"], cond.extra.get("image_embeds")))
        return self.adapter.predict(x, t, cond)


def _stock(adapter, image, r: Resolved, output_type: str):
    with torch.no_grad():  # the I2V module's prompt cleaning needs ftfy; WanPipeline's encoding is the same
        positive, negative = (WanPipeline._get_t5_prompt_embeds(adapter.pipe, text, max_sequence_length=512)
                              for text in (r.prompt, r.negative_prompt))
    return adapter.pipe(image=as_pil_image(image), prompt_embeds=positive, negative_prompt_embeds=negative,
                        height=r.height, width=r.width, num_frames=r.frames, num_inference_steps=r.steps,
                        guidance_scale=r.guidance, generator=torch.Generator().manual_seed(r.seed),
                        output_type=output_type).frames


@pytest.mark.parametrize("model", ["plain", "clip"])
def test_one_window_panorama_equals_the_stock_i2v_pipeline_bit_for_bit(model, plain_i2v, clip_i2v):
    adapter = plain_i2v if model == "plain" else clip_i2v
    assert adapter.takes_clip_image == (model == "clip")
    r, image = _resolved(32, 32), _image(32, 32)
    latent = generate_panorama(adapter, r, PanoramaSettings(projection="plane"), input_image=image)
    # (GMG is skipped and the early overlap is one window: the panorama is a single window)
    assert torch.equal(latent, _stock(adapter, image, r, "latent"))
    frames = torch.stack(list(decode_panorama_frames(adapter, latent, wrap=False)), dim=1)
    assert torch.equal(frames, _stock(adapter, image, r, "pt")[0].transpose(0, 1))


def _expected_window_crop(full: torch.Tensor, window) -> torch.Tensor:
    """The window's part of a (1, C, F, H, W) tensor, by explicit modular indices on each axis."""
    f, h, w = (torch.arange(s.start, s.start + s.size) % s.extent for s in window.spans)
    return full[:, :, f][:, :, :, h][..., w]


@pytest.mark.parametrize("projection, width, height, scale_down", [
    ("ring", 96, 32, None),   # windows across the 360° seam
    ("plane", 64, 32, 2.0),   # with global motion guidance: a second size, a second condition
    ("sphere", 64, 32, None),  # perspective views in the projecting steps, then windows
])
def test_each_region_sees_the_crop_of_the_full_condition_and_the_clip_tokens_of_its_pixels(
        clip_i2v, monkeypatch, projection, width, height, scale_down):
    recording = Recording(clip_i2v)
    monkeypatch.setattr(RegionImageCondition, "__call__", recording.spy)
    r, image = _resolved(width, height, steps=2), _image(width, height, seed=2)
    generate_panorama(recording, r, PanoramaSettings(projection=projection, scale_down=scale_down,
                                                     early_overlap=False), input_image=image)
    assert len(recording.calls) == len(recording.regions) > 0
    sizes, kinds, wrapped = set(), set(), False
    for (predictor, regions), (condition, tokens) in zip(recording.regions, recording.calls):
        full, pixels = predictor.condition, predictor.pixels
        sizes.add(tuple(full.shape[-2:]))
        # the full condition is the stock one of the panorama's first frame at this size
        if (full.shape[-2] * 8, full.shape[-1] * 8) == (height, width):
            assert torch.equal(pixels, first_frame(image, width, height))
        assert condition.shape[0] == tokens.shape[0] == len(regions)
        for row, region in enumerate(regions):
            if isinstance(region, WindowRegion):
                kinds.add("window")
                wrapped |= region.window.width.wraps
                expected = _expected_window_crop(full, region.window)
                rows, cols = ((span.indices()[:, None] * 8 + torch.arange(8)).flatten()
                              for span in (region.window.height, region.window.width))
                crop = pixels[:, rows][:, :, cols]  # the 8×8 pixel blocks of its latent cells, wrapped
            else:
                assert isinstance(region, ViewRegion)
                kinds.add("view")
                frames = region.frames.indices()
                expected = full[:, :, frames][:, :, :, region.rows, region.cols]
                rows = (region.rows * 8)[:, None, :, None] + torch.arange(8)[None, :, None, None]
                cols = (region.cols * 8)[:, None, :, None] + torch.arange(8)[None, None, None, :]
                crop = pixels[:, rows, cols].reshape(3, region.rows.shape[0] * 8, region.rows.shape[1] * 8)
            assert torch.equal(condition[row:row + 1], expected)
            assert torch.equal(tokens[row:row + 1], clip_i2v.clip_image_embeds(as_pil_image(crop)))
    assert kinds == ({"window", "view"} if projection == "sphere" else {"window"})
    assert len(sizes) == (2 if scale_down else 1)
    assert wrapped == (projection != "plane"), "ring and sphere windows cross the seam"


def test_without_clip_the_model_takes_no_image_tokens_and_still_its_crop_of_the_condition(plain_i2v, monkeypatch):
    recording = Recording(plain_i2v)
    monkeypatch.setattr(RegionImageCondition, "__call__", recording.spy)
    generate_panorama(recording, _resolved(96, 32, steps=2), PanoramaSettings(projection="ring", **PLAIN),
                      input_image=_image(96, 32))
    assert recording.calls and all(tokens is None for _, tokens in recording.calls)
    for (predictor, regions), (condition, _) in zip(recording.regions, recording.calls):
        expected = torch.cat([_expected_window_crop(predictor.condition, region.window) for region in regions])
        assert torch.equal(condition, expected)


def test_kept_first_frame_is_the_vae_image_of_the_input(plain_i2v):
    # The causal VAE encodes frame 0 alone into latent frame 0 and decodes it alone from it, so pinning
    # latent frame 0 to the condition's makes frame 0 the VAE's own image of the input.
    r, image = _resolved(64, 32, steps=2), _image(64, 32, seed=3)
    settings = PanoramaSettings(projection="ring", scale_down=2.0, keep_first_frame=True)
    kept = next(decode_panorama_frames(plain_i2v, generate_panorama(plain_i2v, r, settings, input_image=image),
                                       wrap=True))
    vae_image = next(decode_panorama_frames(plain_i2v, plain_i2v.encode(image[None, :, None]), wrap=True))
    # tolerance: the VAE's convs run over 5 frames (2 latent frames) here and over 1 there
    torch.testing.assert_close(kept, vae_image, rtol=0, atol=1e-5)
    free = next(decode_panorama_frames(plain_i2v, generate_panorama(
        plain_i2v, r, dataclasses.replace(settings, keep_first_frame=False), input_image=image), wrap=True))
    assert float((free - kept).abs().max()) > 1e-2, "without the pin the model redraws frame 0"


def test_kept_first_frame_is_the_input_on_a_vae_that_reconstructs(plain_i2v):
    adapter = pixel_world_wan_i2v(plain_i2v)  # a latent cell = the mean of its 8×8 pixels
    blocks = torch.rand(3, 4, 8, generator=torch.Generator().manual_seed(0))
    image = (blocks.repeat_interleave(8, 1).repeat_interleave(8, 2) * 255).round() / 255  # 8×8 blocks: exact cells
    r = _resolved(64, 32, steps=2)
    settings = PanoramaSettings(projection="ring", keep_first_frame=True)  # GMG and early overlap on
    kept = next(decode_panorama_frames(adapter, generate_panorama(adapter, r, settings, input_image=image), wrap=True))
    torch.testing.assert_close(kept, image, rtol=0, atol=1e-5)  # float pooling and the latent statistics
    free = next(decode_panorama_frames(adapter, generate_panorama(
        adapter, r, dataclasses.replace(settings, keep_first_frame=False), input_image=image), wrap=True))
    assert float((free - image).abs().mean()) > 0.05, "without the pin the random model redraws frame 0"


def test_an_i2v_model_needs_the_first_frame_and_only_it_keeps_one(plain_i2v, registry):
    with pytest.raises(InvalidArgument, match="image-to-video model: give the panorama's first frame"):
        check_request(plain_i2v, _resolved(64, 32), PanoramaSettings(projection="ring"))
    with pytest.raises(InvalidArgument, match="--keep-first-frame"):
        check_request(registry.get("tiny-wan"), _resolved(64, 32, model="tiny-wan"),
                      PanoramaSettings(projection="ring", keep_first_frame=True))


def test_the_first_frame_is_the_input_resized_to_the_panorama_in_8_bit_values():
    image = torch.rand(3, 16, 24, generator=torch.Generator().manual_seed(0))
    frame = first_frame(image, 96, 32)
    assert frame.shape == (3, 32, 96)
    assert torch.equal(frame * 255, (frame * 255).round())
    same = _image(96, 32)
    assert torch.equal(first_frame(same, 96, 32), same)


def test_cli_animates_a_ring_from_its_first_frame_kept(tmp_path):
    from cinegen.common.exr import ExrMetadata, read_exr_frame, write_exr_frame
    from cinegen.server.cli import main

    first = tmp_path / "first.exr"
    write_exr_frame(first, np.concatenate([np.full((32, 64, 3), 0.18, np.float32), np.ones((32, 64, 1), np.float32)],
                                          -1), metadata=ExrMetadata())
    out = tmp_path / "pano" / "ring.####.exr"
    code = main(["generate", "panorama", "--model", "tiny-wan-i2v", "--projection", "ring", "--width", "64",
                 "--height", "32", "--frames", "5", "--steps", "2", "--input", str(first), "--keep-first-frame",
                 "--out", str(out), "--no-hf-cache"])
    assert code == 0
    frames = [read_exr_frame(tmp_path / "pano" / f"ring.{1001 + i}.exr")[0] for i in range(5)]
    assert all(f.shape == (32, 64, 4) for f in frames)


def test_band_prompts_reach_only_their_bands_regions_each_with_its_crop(plain_i2v, monkeypatch):
    from cinegen.server.diffusion.panorama_denoise import region_band

    recording = Recording(plain_i2v)
    embeds = []
    original = recording.predict

    def predict(x, t, cond):
        embeds.append(cond.embeds)
        return original(x, t, cond)
    recording.predict = predict
    monkeypatch.setattr(RegionImageCondition, "__call__", recording.spy)
    settings = PanoramaSettings(projection="sphere", band_prompts=("sky", "-", "ground"), **PLAIN)
    r = _resolved(64, 32, steps=2)
    generate_panorama(recording, r, settings, input_image=_image(64, 32))
    encoded = {p: plain_i2v.encode_prompt(p, r.negative_prompt, r.guidance).embeds for p in ("sky", r.prompt, "ground")}
    calls = iter(zip(recording.calls, embeds))
    seen_bands = set()
    for predictor, regions in recording.regions:
        bands = [region_band(region, predictor.condition.shape[-2]) for region in regions]
        for band in sorted(set(bands)):
            (condition, _), prompt_embeds = next(calls)
            own = [region for region, b in zip(regions, bands) if b == band]
            assert torch.equal(condition, torch.cat([region.read(predictor.condition) for region in own]))
            assert torch.equal(prompt_embeds, encoded[settings.band_prompt(band, r.prompt)])
            seen_bands.add(settings.band_prompt(band, r.prompt))
    assert next(calls, None) is None and seen_bands == {"sky", r.prompt, "ground"}


def test_the_clip_token_cache_is_bounded_and_changes_nothing(clip_i2v, monkeypatch):
    from cinegen.server.pipelines import panorama_i2v

    r, image = _resolved(64, 32, steps=2), _image(64, 32, seed=5)
    settings = PanoramaSettings(projection="sphere", **PLAIN)
    unbounded = generate_panorama(clip_i2v, r, settings, input_image=image)
    monkeypatch.setattr(panorama_i2v, "CLIP_CACHE_ENTRIES", 2)
    kept = []
    original = RegionImageCondition.clip_tokens
    monkeypatch.setattr(RegionImageCondition, "clip_tokens",
                        lambda self, region: (kept.append(len(self._tokens)), original(self, region))[1])
    assert torch.equal(generate_panorama(clip_i2v, r, settings, input_image=image), unbounded)
    assert kept and max(kept) <= 2
