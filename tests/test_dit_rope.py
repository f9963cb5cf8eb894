"""NTK-scaled Wan RoPE (cinegen.server.diffusion.dit_rope): tables, split, install/restore on a tiny Wan DiT."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from cinegen.server.diffusion.dit_rope import (
    NTKWanRotaryPosEmbed,
    install_ntk_rope,
    ntk_inverse_frequencies,
    ntk_rope_frequencies,
    wan_rope_axis_dims,
)


def tiny_wan() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()


def tiny_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, 3, 12, 16, generator=generator)
    return latents, torch.tensor([700]), torch.randn(1, 5, 32, generator=generator)


@pytest.mark.parametrize("head_dim", [12, 16, 20, 22, 64, 128])
def test_axis_split_matches_diffusers_wan_rope(head_dim: int) -> None:
    stock = WanRotaryPosEmbed(head_dim, (1, 2, 2), 8)
    assert wan_rope_axis_dims(head_dim) == (stock.t_dim, stock.h_dim, stock.w_dim)


def test_axis_split_for_real_wan_heads_equals_the_floor_third_rule() -> None:
    assert wan_rope_axis_dims(128) == (128 - 2 * (128 // 3), 128 // 3, 128 // 3) == (44, 42, 42)


def test_ntk_alpha_scales_the_base_of_its_axis_by_hand() -> None:
    head_dim, alphas, base = 12, (1.0, 20.0, 5.0), 10000.0
    cos, sin = ntk_rope_frequencies(head_dim, max_seq_len=40, alphas=alphas, base=base)
    t_dim, h_dim, w_dim = wan_rope_axis_dims(head_dim)
    for position in (0, 1, 7, 39):
        for i in range(h_dim // 2):
            omega = 1.0 / (base * 20.0) ** (2 * i / h_dim)  # θ_h = base · α_h
            column = t_dim + 2 * i
            for channel in (column, column + 1):
                assert cos[position, channel].item() == pytest.approx(math.cos(position * omega), abs=1e-6)
                assert sin[position, channel].item() == pytest.approx(math.sin(position * omega), abs=1e-6)
    hand_w = torch.tensor([1.0 / (base * 5.0) ** (2 * i / w_dim) for i in range(w_dim // 2)], dtype=torch.float64)
    torch.testing.assert_close(ntk_inverse_frequencies(w_dim, base * 5.0), hand_w, rtol=1e-12, atol=0)


def test_alpha_one_axis_is_unchanged_while_scaled_axes_rotate_slower() -> None:
    stock_cos, _ = ntk_rope_frequencies(12, 32, alphas=(1, 1, 1))
    ntk_cos, _ = ntk_rope_frequencies(12, 32, alphas=(1, 20, 20))
    t_dim = wan_rope_axis_dims(12)[0]
    assert torch.equal(ntk_cos[:, :t_dim], stock_cos[:, :t_dim])
    # Pair 0 of every axis has ω = 1 whatever the base; the next pair's angle shrinks with α.
    assert torch.equal(ntk_cos[:, t_dim : t_dim + 2], stock_cos[:, t_dim : t_dim + 2])
    assert not torch.equal(ntk_cos[:, t_dim + 2 :], stock_cos[:, t_dim + 2 :])
    inverse_stock = ntk_inverse_frequencies(4, 10000.0)
    inverse_ntk = ntk_inverse_frequencies(4, 10000.0 * 20)
    assert inverse_ntk[1] < inverse_stock[1]


@pytest.mark.parametrize("head_dim", [12, 128])
def test_alpha_one_tables_are_bit_identical_to_stock(head_dim: int) -> None:
    stock = WanRotaryPosEmbed(head_dim, (1, 2, 2), 64)
    ntk = NTKWanRotaryPosEmbed(head_dim, (1, 2, 2), 64, alphas=(1, 1, 1))
    assert torch.equal(ntk.freqs_cos, stock.freqs_cos) and torch.equal(ntk.freqs_sin, stock.freqs_sin)
    latents = torch.zeros(1, 4, 3, 10, 14)
    for ours, theirs in zip(ntk(latents), stock(latents)):
        assert torch.equal(ours, theirs)


def test_alpha_one_transformer_output_is_bit_identical_and_rope_is_restored() -> None:
    model = tiny_wan()
    latents, timestep, text = tiny_inputs()
    original = model.rope
    with torch.no_grad():
        reference = model(latents, timestep, text).sample
        with install_ntk_rope(model, (1, 1, 1)) as installed:
            assert model.rope is installed and isinstance(installed, NTKWanRotaryPosEmbed)
            output = model(latents, timestep, text).sample
    assert torch.equal(output, reference)
    assert model.rope is original


def test_cinescale_alphas_change_the_output_and_restore_afterwards() -> None:
    model = tiny_wan()
    latents, timestep, text = tiny_inputs()
    with torch.no_grad():
        reference = model(latents, timestep, text).sample
        with install_ntk_rope(model, (1, 20, 20)):
            scaled = model(latents, timestep, text).sample
        after = model(latents, timestep, text).sample
    assert not torch.allclose(scaled, reference, atol=1e-5)
    assert torch.equal(after, reference)


def test_original_rope_is_restored_after_an_exception() -> None:
    model = tiny_wan()
    original = model.rope
    with pytest.raises(RuntimeError, match="boom"):
        with install_ntk_rope(model, (1, 20, 20)):
            assert model.rope is not original
            raise RuntimeError("boom")
    assert model.rope is original


def test_replacement_keeps_the_stock_module_device_and_dtype() -> None:
    model = tiny_wan()
    stock = model.rope.to(torch.float64)
    with install_ntk_rope(model, (1, 20, 20)) as installed:
        assert installed.freqs_cos.dtype == torch.float64
        assert installed.freqs_cos.shape == stock.freqs_cos.shape
        assert (installed.t_dim, installed.h_dim, installed.w_dim) == (4, 4, 4)
