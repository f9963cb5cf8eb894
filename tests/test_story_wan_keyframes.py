"""Story keyframes from a Wan text-to-video model run for one frame (pipelines/story_wan_keyframes.py).

Without memory a keyframe is `WanPipeline(num_frames=1)` bit for bit. GoldenMem memory on the DiT:
memory keyframes are earlier frames in RoPE and every self-attention also attends to their rotated
keys and values (diffusion/dit_shared_attention.py).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from cinegen.common.client import RequestRejected, build_request
from cinegen.common.params import CommonParams, StoryParams
from cinegen.server.diffusion.dit_shared_attention import rope_frame_offset, wan_shared_self_attention
from cinegen.server.diffusion.goldenmem import golden_memory_shapes
from cinegen.server.errors import InvalidArgument
from cinegen.server.pipelines.base import Resolved
from cinegen.server.pipelines.story import KeyframeStore, generate_keyframe
from cinegen.server.pipelines.story_wan_keyframes import check_wan_keyframes, keyframe_display, wan_memory_latents

STORY = """\
title: Wan Keys
fps: 24
shots:
  - id: sh010
    prompt: a red lighthouse
    frames: 5
    continuity: true
  - id: sh020
    prompt: a blue boat
    frames: 5
  - id: sh030
    prompt: a green field
    frames: 1
"""


def _resolved(**kw) -> Resolved:
    base = dict(prompt="a red disc", negative_prompt="blue", model="tiny-wan", seed=4, steps=3, guidance=5.0,
                width=32, height=32, frames=1, fps=24.0, first_frame=1001)
    base.update(kw)
    return Resolved(**base)


@dataclass
class Memory:
    latent: torch.Tensor
    prompt: str


@pytest.fixture(scope="module")
def wan(registry):
    return registry.get("tiny-wan")


def test_a_keyframe_without_memory_is_the_stock_one_frame_wan_pipeline_bit_for_bit(wan):
    latent = generate_keyframe(wan, _resolved(), [])
    stock = wan.pipe("a red disc", negative_prompt="blue", height=32, width=32, num_frames=1, num_inference_steps=3,
                     guidance_scale=5.0, generator=torch.Generator().manual_seed(4), output_type="latent").frames
    assert latent.shape == (1, 4, 1, 4, 4)
    assert torch.equal(latent, stock)
    pixels = wan.pipe("a red disc", negative_prompt="blue", height=32, width=32, num_frames=1, num_inference_steps=3,
                      guidance_scale=5.0, generator=torch.Generator().manual_seed(4), output_type="pt").frames
    assert torch.equal(keyframe_display(wan, latent), pixels[0, 0].permute(1, 2, 0))


def test_rope_frame_offset_gives_a_pass_the_rotation_of_a_later_frame(wan):
    rope = wan.denoiser.rope
    x = torch.zeros(1, 4, 3, 4, 4)  # 3 latent frames of 2×2 patches
    cos_all, sin_all = rope(x)
    with rope_frame_offset([wan.denoiser], 2):
        cos, sin = rope(x[:, :, :1])
    assert torch.equal(cos, cos_all[:, -4:]) and torch.equal(sin, sin_all[:, -4:])  # frame 2's 4 tokens
    assert "forward" not in vars(rope), "the class's forward is back"


def _transformer_out(wan, x, t, text):
    with torch.no_grad():
            return wan.denoiser(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=text, return_dict=False)[0]


def test_attending_to_a_copy_of_itself_at_its_own_position_changes_nothing(wan):
    # softmax over [K; K] with values [V; V] is softmax over K with V: so the memory keys must be the
    # layer's own keys exactly as it rotates them, and appended to keys and values alike
    x = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(700.0)
    text = wan.encode_prompt("a red disc", "", 1.0).embeds
    plain = _transformer_out(wan, x, t, text)
    with wan_shared_self_attention(wan.denoiser) as bank:
        bank.mode = "write"
        assert torch.equal(_transformer_out(wan, x, t, text), plain), "writing does not change the pass"
        assert bank.token_count("blocks.0.attn1.processor:k") == 4
        bank.mode = "read"
        torch.testing.assert_close(_transformer_out(wan, x, t, text), plain, rtol=0, atol=1e-5)
        with rope_frame_offset([wan.denoiser], 3):  # the same copy seen from 3 frames later: not a copy any more
            assert float((_transformer_out(wan, x, t, text) - plain).abs().max()) > 1e-3
    assert torch.equal(_transformer_out(wan, x, t, text), plain), "processors back"


def test_memory_latents_are_golden_memory_sizes_in_whole_patches():
    latents = [torch.randn(1, 4, 1, 12, 20, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    memory = wan_memory_latents(latents, patch=2, min_side=2)
    golden = golden_memory_shapes((12, 20), 3, 2)[::-1]  # oldest first: the smallest
    assert [tuple(m.shape[-2:]) for m in memory] == [(h // 2 * 2, w // 2 * 2) for h, w in golden]
    assert any(h % 2 or w % 2 for h, w in golden), "an odd GoldenMem size (7×11) is snapped to whole patches"
    assert torch.equal(memory[-1], latents[-1][0, :, 0]), "the newest at full size, as it is"


def test_memory_keyframe_runs_its_write_pass_at_its_frame_and_the_keyframe_after_it(wan, monkeypatch):
    seen = []
    rope = wan.denoiser.rope
    original = type(rope).forward

    def spy(self, hidden_states):
        seen.append(hidden_states.shape)
        return original(self, hidden_states)
    monkeypatch.setattr(type(rope), "forward", spy)
    first = generate_keyframe(wan, _resolved(seed=1, steps=2), [])
    second = generate_keyframe(wan, _resolved(seed=2, steps=2, prompt="a blue boat"), [Memory(first, "a red disc")])
    assert second.shape == first.shape
    # per step: the memory write pass at RoPE frame 0 (1 frame), then the keyframe (guided: 2 passes) at frame 1,
    # whose rotation comes from a 2-frame table
    frames = [shape[2] for shape in seen[-6:]]
    assert frames == [1, 2, 2, 1, 2, 2], frames


def test_i2v_models_and_off_patch_sizes_are_refused(registry, wan):
    with pytest.raises(InvalidArgument, match="image-to-video model and keyframes are drawn from text"):
        check_wan_keyframes(registry.get("tiny-wan-i2v"), 32, 32)
    with pytest.raises(InvalidArgument, match="multiples of 16"):
        check_wan_keyframes(wan, 40, 32)


SHORT = """\
title: Two Keys
fps: 24
shots:
  - id: sh010
    prompt: a red lighthouse
    frames: 2
    continuity: true
  - id: sh020
    prompt: a blue boat
    frames: 1
"""


def _request(out, video_model="tiny-wan", story=STORY, **common):
    base = dict(seed=3, steps=2, model="tiny-wan", out=str(out))
    base.update(common)
    return build_request("story", CommonParams(**base), StoryParams(story_yaml=story, video_model=video_model),
                         job_id=f"story-wan-keys-{uuid.uuid4().hex[:8]}")


def test_a_story_with_wan_keyframes_and_wan_motion_through_the_server(client, tmp_path):
    out = tmp_path / "cut"
    result = client.run(_request(out))
    assert result.state == "completed", result.message
    store = KeyframeStore(out)
    for shot in ("sh010", "sh020", "sh030"):
        latent, info = store.load(shot)
        assert latent.shape == (1, 4, 1, 4, 4) and info.model == "tiny-wan"
        assert np.asarray(store.image(shot)).shape == (32, 32, 3)
    assert sorted(p.name for p in (out / "sh020").iterdir()) == [f"sh020.{1001 + i}.exr" for i in range(5)]
    assert (out / "Wan Keys.keyframes.png").is_file() and (out / "Wan_Keys.otio").is_file()


def test_wan_keyframes_reach_animatediff_motion_through_pixels(client, tmp_path):
    out = tmp_path / "cut"
    result = client.run(_request(out, video_model="tiny-animatediff", story=SHORT))
    assert result.state == "completed", result.message
    assert sorted(p.name for p in (out / "sh010").iterdir()) == ["sh010.1001.exr", "sh010.1002.exr"]


def test_an_i2v_keyframe_model_is_refused_at_submit(client, tmp_path):
    with pytest.raises(RequestRejected) as info:
        client.submit(_request(tmp_path / "cut", model="tiny-wan-i2v"))
    assert info.value.code == "INVALID_ARGUMENT" and "keyframes are drawn from text" in info.value.message
