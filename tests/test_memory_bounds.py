"""Memory that grows linearly, not with the square, of the token count: FreeTraj's masked attention,
scale fusion's global branch, and decoding above the native size (ISSUE 17).

A GPU is not needed to see what would cost GPU memory: `memory_probe.largest_tensor` records the
biggest tensor allocated at the dispatcher, with SDPA on its math backend (the one that does build
logits). Every size here has 4× the tokens of the one before: linear growth multiplies the peak by
~4, quadratic by ~16. Each test also shows the probe *does* see the quadratic cost of the naive
computation, so a regression cannot pass unseen.
"""
from __future__ import annotations

import math

import pytest
import torch

from cinegen.server.diffusion import scale_fusion
from cinegen.server.diffusion.freetraj import (AttentionNames, BoxPlan, FreeTrajAttention, FreeTrajAttnProcessor,
                                               FreeTrajConfig, FreeTrajGuide)
from cinegen.server.diffusion.scale_fusion import ScaleFusionAttnProcessor

from memory_probe import largest_tensor

LINEAR = 8.0  # ×4 tokens: linear growth ≈ 4 (window counts round up), quadratic ≈ 16
SMALL_BUDGET = 1 << 13  # logits per SDPA call, small enough that the test sizes are chunked


def _growth(peak: dict[int, int]) -> float:
    small, big = sorted(peak)
    return peak[big] / peak[small]


def _qkv(rows: int, tokens: int, heads: int = 2, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(rows, heads, tokens, dim, generator=g) for _ in range(3))


# ---- FreeTraj --------------------------------------------------------------------------------------
def _freetraj_guide(side: int, frames: int = 2) -> FreeTrajGuide:
    box = torch.tensor([0.3, 0.3, 0.7, 0.7], dtype=torch.float64).expand(1, frames, 4).clone()
    return FreeTrajGuide(BoxPlan(box), latent_size=(side, side), subject_tokens=[[1, 2]], batch=2,
                         config=FreeTrajConfig(max_logits=SMALL_BUDGET))


def test_freetraj_spatial_masks_cost_memory_linear_in_the_tokens():
    ours, naive = {}, {}
    for side in (8, 16):
        guide = _freetraj_guide(side)
        q, k, v = _qkv(rows=4, tokens=side * side)  # CFG × 2 frames
        ours[side] = largest_tensor(lambda: FreeTrajAttnProcessor("spatial", guide).attend(q, k, v))
        naive[side] = largest_tensor(lambda: ((q @ k.transpose(-1, -2)) / math.sqrt(8)).softmax(-1) @ v)
    assert _growth(ours) < LINEAR, ours
    assert _growth(naive) > 12, naive  # the full logit matrix, as before this change


def test_a_freetraj_unet_step_costs_memory_linear_in_the_tokens(registry):
    adapter = registry.get("tiny-animatediff")
    cond = adapter.encode_prompt("a red disc", "", 7.5)
    names = AttentionNames(adapter.self_attention_names(), adapter.temporal_attention_names(),
                           adapter.cross_attention_names())
    peak = {}
    for side in (8, 16):  # latent cells: 64 and 256 tokens per frame
        box = torch.tensor([0.2, 0.2, 0.6, 0.6], dtype=torch.float64).expand(1, 2, 4).clone()
        guide = FreeTrajGuide(BoxPlan(box), (side, side), [[1, 2]], FreeTrajConfig(max_logits=1 << 16))
        hook = FreeTrajAttention(adapter.denoiser, guide, names)
        x = torch.randn(1, 4, 2, side, side, generator=torch.Generator().manual_seed(0))

        def step():
            with hook.step_context(0, torch.tensor(500)):
                adapter.predict(x, torch.tensor(500), cond)
        peak[side] = largest_tensor(step)
    assert _growth(peak) < LINEAR, peak


# ---- scale fusion ----------------------------------------------------------------------------------
def test_scale_fusion_global_branch_costs_memory_linear_in_the_tokens():
    ours, naive = {}, {}
    for side in (8, 16):  # the same 4×4 native window: scale 2 and 4
        processor = ScaleFusionAttnProcessor((side / 4, side / 4), jitter=False)
        q, k, v = _qkv(rows=2, tokens=side * side)
        ours[side] = largest_tensor(lambda: processor.fused_attention(
            q, k, v, (side, side), scale_fusion._sdpa(None, 1 << 12)))
        naive[side] = largest_tensor(lambda: processor.fused_attention(
            q, k, v, (side, side), scale_fusion._sdpa(None, 1 << 40)))  # one SDPA call: the full logits
    assert _growth(ours) < LINEAR, ours
    assert _growth(naive) > 12, naive


# ---- decoding above the native size -----------------------------------------------------------------
def test_sd_decode_above_the_tile_size_costs_memory_linear_in_the_pixels(registry, monkeypatch):
    adapter = registry.get("tiny-sd")  # native 64 px = 8 latent cells
    # tiles of the native side (real models: at least 512 px, which a CPU test cannot exceed cheaply)
    monkeypatch.setattr(adapter, "decode_tile_px", 64)
    vae = adapter.pipe.vae
    ours, whole = {}, {}
    for side in (32, 64):  # 256 and 512 px
        z = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(1))
        ours[side] = largest_tensor(lambda: adapter.decode(z))
        whole[side] = largest_tensor(lambda: vae.decode(z / vae.config.scaling_factor))
    assert _growth(ours) < LINEAR, ours
    assert _growth(whole) > 12, whole  # the VAE's mid-block attention over every latent cell


@pytest.mark.parametrize("model", ["tiny-wan", "tiny-cogvideox"])
def test_video_decode_above_native_size_goes_through_the_vae_in_tiles(registry, model, monkeypatch):
    """The video VAEs tile space themselves (and stream time: Wan one latent frame at a time, CogVideoX
    in batches of latent frames); the adapter turns that on for big frames and puts the VAE back."""
    adapter = registry.get(model)
    monkeypatch.setattr(adapter, "decode_tile_px", max(adapter.native_size))  # as on real models' sizes
    vae = adapter.pipe.vae
    calls = []
    tiled = vae.tiled_decode
    monkeypatch.setattr(vae, "tiled_decode", lambda *a, **k: calls.append(1) or tiled(*a, **k))
    width, height = adapter.native_size
    native = adapter.decode(torch.zeros(adapter.latent_shape(1, width, height, 1)))
    assert not calls, "a frame of one tile decodes whole"
    frames = adapter.decode(torch.zeros(adapter.latent_shape(1, width * 2, height * 2, 1)))
    assert calls, "a frame of twice the tile's side decodes in tiles"
    assert frames.shape[-2:] == (height * 2, width * 2) and frames.shape[2] == native.shape[2]
    assert not vae.use_tiling, "the VAE's own setting is restored after the decode"


def test_the_default_decode_tile_is_the_native_side_and_at_least_512_px(registry):
    sd = registry.get("tiny-sd")
    assert sd.decode_tile() == 512  # tiny: 64 px native
    sd_frame = torch.zeros(1, 4, 64, 64)  # 512 px: one tile, decoded whole (the stock pipeline's result)
    with torch.no_grad():
        plain = (sd.pipe.vae.decode(sd_frame / sd.pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert torch.equal(sd.decode(sd_frame), plain)
