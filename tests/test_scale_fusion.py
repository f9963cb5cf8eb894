"""Scale fusion self-attention (ALGORITHMS.md §1a) against diffusers' AttnProcessor2_0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel, UNetMotionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from hypothesis import given, settings
from hypothesis import strategies as st

from cinegen.server.diffusion.scale_fusion import (
    ScaleFusionAttnProcessor,
    dilated_global_attention,
    fuse_scales,
    gaussian_blur_grid,
    gaussian_kernel_size,
    install_scale_fusion,
    local_window_attention,
    window_starts,
)
from tiny_unets import tiny_unet as shared_tiny_unet


def tiny_unet() -> UNet2DConditionModel:
    unet = shared_tiny_unet()
    unet.set_attn_processor(AttnProcessor2_0())
    return unet


def tiny_motion_unet() -> UNetMotionModel:
    torch.manual_seed(0)
    return UNetMotionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
        cross_attention_dim=32,
        norm_num_groups=8,
        num_attention_heads=4,
        motion_num_attention_heads=4,
        motion_max_seq_length=8,
    ).eval()


def run(unet, sample, context):
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context).sample


def full_attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def grid(batch=1, heads=2, height=12, width=16, dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, height, width, dim, generator=generator) for _ in range(3)]


# ---------------------------------------------------------------------------------------------
# equivalence with diffusers at scale 1
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [False, True])
def test_scale_one_unet_output_equals_attn_processor_2_0(fast):
    unet = tiny_unet()
    sample, context = torch.randn(1, 4, 16, 24), torch.randn(1, 5, 32)
    plain = run(unet, sample, context)
    with install_scale_fusion(unet, (1, 1), fast=fast):
        fused = run(unet, sample, context)
    assert torch.allclose(fused, plain, atol=1e-5)


def test_upscaled_fusion_windows_are_each_blocks_native_token_grid(monkeypatch):
    # At 2× the native latent, every attn1's local windows are the token grid that block has at native size
    unet = tiny_unet()
    native_grids: list = []
    hooks = [attn.register_forward_pre_hook(lambda m, args, kw: native_grids.append(args[0].shape[1] if args
                                            else kw["hidden_states"].shape[1]), with_kwargs=True)
             for name, attn in unet.named_modules() if name.endswith("attn1")]
    context = torch.randn(1, 5, 32)
    run(unet, torch.randn(1, 4, 16, 16), context)
    for hook in hooks:
        hook.remove()
    windows: list = []
    original = ScaleFusionAttnProcessor.fused_attention

    def spy(self, query, key, value, grid_hw, attend):
        windows.append((grid_hw, self.native_window(grid_hw)))
        return original(self, query, key, value, grid_hw, attend)

    monkeypatch.setattr(ScaleFusionAttnProcessor, "fused_attention", spy)
    with install_scale_fusion(unet, (2, 2), generator=torch.Generator().manual_seed(0)):
        fused = run(unet, torch.randn(1, 4, 32, 32), context)
    assert fused.shape == (1, 4, 32, 32) and len(windows) == len(native_grids)
    for (grid, (window_h, window_w)), native_tokens in zip(windows, native_grids):
        assert window_h * window_w == native_tokens and grid[0] * grid[1] == 4 * native_tokens


def test_only_self_attention_processors_change_and_come_back():
    unet = tiny_unet()
    before = dict(unet.attn_processors)
    with install_scale_fusion(unet, (2, 2)) as installed:
        inside = unet.attn_processors
        changed = {key for key in before if inside[key] is not before[key]}
        assert changed == {key for key in before if key.endswith("attn1.processor")}
        assert {f"{name}.processor" for name in installed} == changed
        assert all(isinstance(inside[key], ScaleFusionAttnProcessor) for key in changed)
    after = unet.attn_processors
    assert all(after[key] is before[key] for key in before)


def test_exception_inside_restores_processors_and_removes_grid_hooks():
    unet = tiny_unet()
    before = dict(unet.attn_processors)
    with pytest.raises(ValueError, match="boom"):
        with install_scale_fusion(unet, (2, 2)):
            raise ValueError("boom")
    assert all(unet.attn_processors[key] is before[key] for key in before)
    assert all(not module._forward_pre_hooks for module in unet.modules())


def test_motion_unet_keeps_temporal_attention_and_matches_at_scale_one():
    unet = tiny_motion_unet()
    before = dict(unet.attn_processors)
    sample, context = torch.randn(1, 4, 3, 16, 16), torch.randn(3, 5, 32)
    plain = run(unet, sample, context)
    with install_scale_fusion(unet, (1, 1)):
        inside = unet.attn_processors
        changed = {key for key in before if inside[key] is not before[key]}
        fused = run(unet, sample, context)
    spatial = {k for k in before if k.endswith("attn1.processor") and "motion_modules" not in k}
    assert spatial and changed == spatial
    assert torch.allclose(fused, plain, atol=1e-5)
    with install_scale_fusion(unet, (2, 2)):
        assert run(unet, sample, context).shape == plain.shape


# ---------------------------------------------------------------------------------------------
# local windows
# ---------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 80), window=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_window_starts_cover_every_position_with_bounded_jitter(length, window, seed):
    jitter = window // 8
    plain = window_starts(length, window)
    starts = window_starts(length, window, jitter, torch.Generator().manual_seed(seed))
    size = min(window, length)
    for offsets in (plain, starts):
        assert offsets[0] == 0 and offsets[-1] == max(0, length - window)
        covered = set()
        for start in offsets:
            covered.update(range(start, start + size))
        assert covered == set(range(length))
    assert all(b - a == max(1, window // 2) for a, b in zip(plain[:-2], plain[1:-1]))
    assert all(abs(a - b) <= jitter for a, b in zip(plain, starts))


def test_overlap_average_weights_sum_to_one():
    q, k, v = grid(height=20, width=20)
    passthrough = lambda q_, k_, v_: v_  # noqa: E731  (attention made trivial: each token keeps v)
    starts = window_starts(20, 8, 1, torch.Generator().manual_seed(3))
    out = local_window_attention(q, k, v, (8, 8), starts, starts, passthrough)
    assert len(starts) > 3
    assert torch.allclose(out, v, atol=1e-6)


def test_overlapping_windows_are_averaged_not_overwritten():
    q, k, v = grid(height=1, width=8)
    calls = []

    def window_index(q_, k_, v_):
        calls.append(q_.shape[0])
        return torch.arange(q_.shape[0], dtype=v_.dtype).view(-1, 1, 1, 1).expand_as(v_).clone()

    out = local_window_attention(q, k, v, (1, 4), [0], [0, 2, 4], window_index)
    # windows 0, 1, 2 cover columns [0,4), [2,6), [4,8): their means per column
    expected = torch.tensor([0, 0, 0.5, 0.5, 1.5, 1.5, 2, 2])
    assert torch.allclose(out[0, 0, 0, :, 0], expected)


def test_single_window_over_the_whole_grid_is_full_attention():
    q, k, v = grid()
    out = local_window_attention(q, k, v, (12, 16), [0], [0], full_attention)
    expected = full_attention(*(x.reshape(1, 2, -1, 4) for x in (q, k, v))).reshape(out.shape)
    assert torch.allclose(out, expected, atol=1e-6)


def test_local_window_attention_batches_in_chunks_identically():
    q, k, v = grid(height=16, width=16)
    starts = window_starts(16, 8)
    one_call = local_window_attention(q, k, v, (8, 8), starts, starts, full_attention)
    chunked = local_window_attention(q, k, v, (8, 8), starts, starts, full_attention, windows_per_batch=2)
    assert torch.allclose(one_call, chunked, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# global branch and fusion
# ---------------------------------------------------------------------------------------------


def test_dilated_global_with_stride_one_is_full_attention():
    q, k, v = grid()
    out = dilated_global_attention(q, k, v, (1, 1), full_attention)
    expected = full_attention(*(x.reshape(1, 2, -1, 4) for x in (q, k, v))).reshape(out.shape)
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("height, width", [(12, 16), (11, 15)])
def test_dilated_subsets_attend_only_within_themselves(height, width):
    q, k, v = grid(height=height, width=width)
    out = dilated_global_attention(q, k, v, (2, 2), full_attention)
    for i, j in ((0, 0), (1, 1), (0, 1)):
        sub = [x[:, :, i::2, j::2] for x in (q, k, v)]
        shape = sub[0].shape
        expected = full_attention(*(x.reshape(1, 2, -1, 4) for x in sub)).reshape(shape)
        assert torch.allclose(out[:, :, i::2, j::2], expected, atol=1e-6)


@pytest.mark.parametrize("scale, size", [((1, 1), 1), ((2, 2), 3), ((2, 4), 7), ((1.5, 1.5), 3), ((3, 1), 5)])
def test_gaussian_kernel_size_is_two_s_minus_one(scale, size):
    assert gaussian_kernel_size(scale) == size


def test_blur_keeps_constants_and_smooths_noise():
    constant = torch.full((1, 2, 9, 9, 3), 0.4)
    assert torch.allclose(gaussian_blur_grid(constant, 3), constant)
    noise = torch.randn(1, 2, 32, 32, 3)
    assert gaussian_blur_grid(noise, 3).std() < 0.7 * noise.std()


def test_fusion_takes_low_frequencies_from_local_and_high_from_global():
    local = torch.randn(1, 2, 16, 16, 3)
    flat_global = torch.full_like(local, 0.3)  # no high frequencies to contribute
    assert torch.allclose(fuse_scales(local, flat_global, 3), gaussian_blur_grid(local, 3), atol=1e-6)
    same = torch.randn(1, 2, 16, 16, 3)
    assert torch.allclose(fuse_scales(same, same, 5), same, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the processor itself
# ---------------------------------------------------------------------------------------------


def test_processor_jitter_follows_its_generator():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    hidden = torch.randn(1, 32 * 32, 16)

    def fused(seed):
        processor = ScaleFusionAttnProcessor((2, 2), generator=torch.Generator().manual_seed(seed))
        processor.grid_hw = (32, 32)
        with torch.no_grad():
            return processor(attn, hidden)

    assert torch.equal(fused(1), fused(1))
    assert not torch.equal(fused(1), fused(2))


def test_processor_reads_grid_from_4d_input_and_refuses_unknown_grid():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8, residual_connection=True).eval()
    image = torch.randn(1, 16, 6, 10)
    with torch.no_grad():
        plain = AttnProcessor2_0()(attn, image)
        fused = ScaleFusionAttnProcessor((1, 1))(attn, image)
    assert torch.allclose(fused, plain, atol=1e-5)
    with pytest.raises(RuntimeError, match="token grid"):
        ScaleFusionAttnProcessor((2, 2))(attn, torch.randn(1, 60, 16))
