"""CineScale self-attention for Wan (cinegen.server.diffusion.dit_attention) on a tiny Wan DiT."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from hypothesis import given, settings
from hypothesis import strategies as st

from cinegen.server.diffusion.dit_attention import (
    CineScaleWanAttnProcessor,
    TileBox,
    attention_scale_factor,
    cinescale_attention_coef,
    compress_axis_positions,
    compressed_key_positions,
    install_cinescale_attention,
    tile_boxes,
)
from cinegen.server.diffusion.dit_rope import NTKWanRotaryPosEmbed, install_ntk_rope, ntk_inverse_frequencies

HEADS, HEAD_DIM = 2, 12


def tiny_wan() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()


def tiny_inputs(rows: int = 6, cols: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, 3, 2 * rows, 2 * cols, generator=generator)
    return latents, torch.tensor([600]), torch.randn(1, 5, 32, generator=generator)


def tiny_self_attention() -> WanAttention:
    torch.manual_seed(2)
    attention = WanAttention(dim=HEADS * HEAD_DIM, heads=HEADS, dim_head=HEAD_DIM, eps=1e-6)
    with torch.no_grad():
        attention.norm_q.weight.uniform_(0.5, 1.5)
        attention.norm_k.weight.uniform_(0.5, 1.5)
    return attention.eval()


# ---- attentional scaling -------------------------------------------------------------------------


def test_scale_factor_is_one_without_coef_and_solves_n_to_the_lambda() -> None:
    assert attention_scale_factor(3600, 1.0) == 1.0
    for coef in (1.5, 2.0, 9.0):
        factor = attention_scale_factor(3600, coef)
        assert 3600**factor == pytest.approx(3600 * coef, rel=1e-12)


def test_cinescale_4k_coefficient_gives_the_papers_1_085() -> None:
    tokens_per_frame_4k = (2176 // 16) * (3840 // 16)  # 136 × 240 latent tokens after VAE ÷8 and patch ÷2
    assert round(attention_scale_factor(3600, cinescale_attention_coef(tokens_per_frame_4k)), 3) == 1.085
    assert cinescale_attention_coef(45 * 80) == 1.0


def test_scale_factor_equals_stock_attention_with_queries_scaled_by_it() -> None:
    attention = tiny_self_attention()
    frames, rows, cols = 2, 4, 5
    rope = NTKWanRotaryPosEmbed(HEAD_DIM, (1, 1, 1), 16, alphas=(1, 1, 1))
    rotary = rope(torch.zeros(1, 1, frames, rows, cols))
    hidden = torch.randn(1, frames * rows * cols, HEADS * HEAD_DIM, generator=torch.Generator().manual_seed(3))
    factor = 1.2
    with torch.no_grad():
        scaled = CineScaleWanAttnProcessor(scale_factor=factor)(attention, hidden, rotary_emb=rotary)
        attention.norm_q.weight.mul_(factor)  # logits are linear in q: λ·q reproduces a λ-scaled softmax
        reference = WanAttnProcessor()(attention, hidden, rotary_emb=rotary)
    torch.testing.assert_close(scaled, reference, rtol=1e-5, atol=1e-6)


# ---- equivalence with diffusers and restoring --------------------------------------------------


def test_everything_installed_at_identity_settings_equals_stock_output() -> None:
    model = tiny_wan()
    latents, timestep, text = tiny_inputs()
    with torch.no_grad():
        reference = model(latents, timestep, text).sample
        with install_ntk_rope(model, (1, 1, 1)), install_cinescale_attention(model, scale_factor=1.0):
            output = model(latents, timestep, text).sample
    torch.testing.assert_close(output, reference, rtol=0, atol=1e-6)


def test_only_self_attention_processors_are_replaced_and_all_come_back() -> None:
    model = tiny_wan()
    self_originals = [block.attn1.processor for block in model.blocks]
    cross_originals = [block.attn2.processor for block in model.blocks]
    with install_cinescale_attention(model, scale_factor=1.1) as processor:
        assert all(block.attn1.processor is processor for block in model.blocks)
        assert all(block.attn2.processor is p for block, p in zip(model.blocks, cross_originals))
    assert all(block.attn1.processor is p for block, p in zip(model.blocks, self_originals))
    assert len(model._forward_pre_hooks) == 0


def test_processors_and_hook_are_restored_after_an_exception() -> None:
    model = tiny_wan()
    originals = [block.attn1.processor for block in model.blocks]
    with pytest.raises(RuntimeError, match="boom"):
        with install_cinescale_attention(model, scale_factor=1.3, tile=(2, 2)):
            raise RuntimeError("boom")
    assert all(block.attn1.processor is p for block, p in zip(model.blocks, originals))
    assert len(model._forward_pre_hooks) == 0


def test_scaled_attention_changes_the_output() -> None:
    model = tiny_wan()
    latents, timestep, text = tiny_inputs()
    with torch.no_grad():
        reference = model(latents, timestep, text).sample
        with install_cinescale_attention(model, scale_factor=1.3):
            scaled = model(latents, timestep, text).sample
    assert not torch.allclose(scaled, reference, atol=1e-5)


# ---- block-tiled attention ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tile", "train_grid"),
    [((6, 8), (6, 8)), ((6, 8), None), ((4, 3), (6, 8)), ((2, 5), (7, 9)), ((1, 1), None)],
)
def test_tiled_attention_equals_full_attention_when_nothing_is_compressed(tile, train_grid) -> None:
    model = tiny_wan()
    latents, timestep, text = tiny_inputs(rows=6, cols=8)
    with torch.no_grad():
        reference = model(latents, timestep, text).sample
        with install_cinescale_attention(model, tile=tile, train_grid=train_grid) as processor:
            tiled = model(latents, timestep, text).sample
            assert processor.grid == (3, 6, 8)
    torch.testing.assert_close(tiled, reference, rtol=0, atol=1e-6)


def test_tiled_attention_with_compression_matches_a_hand_built_rope_reference() -> None:
    attention = tiny_self_attention()
    frames, rows, cols = 2, 9, 11
    tile, train, near, factor = (3, 4), (5, 6), 1, 1.1
    alphas = (1.0, 20.0, 20.0)
    rotary = NTKWanRotaryPosEmbed(HEAD_DIM, (1, 1, 1), 16, alphas=alphas)(torch.zeros(1, 1, frames, rows, cols))
    hidden = torch.randn(2, frames * rows * cols, HEADS * HEAD_DIM, generator=torch.Generator().manual_seed(4))
    processor = CineScaleWanAttnProcessor(scale_factor=factor, tile=tile, train_grid=train, near_margin=near)
    processor.grid = (frames, rows, cols)
    with torch.no_grad():
        tiled = processor(attention, hidden, rotary_emb=rotary)
        reference = _hand_tiled_attention(attention, hidden, (frames, rows, cols), tile, train, near, factor, alphas)
        full = CineScaleWanAttnProcessor(scale_factor=factor)(attention, hidden, rotary_emb=rotary)
    torch.testing.assert_close(tiled, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tiled, full, atol=1e-4)  # the grid exceeds the training extent: keys did move


def _hand_tiled_attention(attention, hidden, grid, tile, train, near, factor, alphas) -> torch.Tensor:
    """Per tile: softmax over all keys with keys rotated at their compressed positions — complex-number RoPE."""
    frames, rows, cols = grid
    query, key, value = (
        projection(hidden).unflatten(2, (HEADS, -1)).double()
        for projection in (
            lambda h: attention.norm_q(attention.to_q(h)),
            lambda h: attention.norm_k(attention.to_k(h)),
            attention.to_v,
        )
    )
    omegas = [ntk_inverse_frequencies(dim, 10000.0 * alpha, torch.float64) for dim, alpha in zip((4, 4, 4), alphas)]
    f_index, r_index, c_index = (a.reshape(-1) for a in torch.meshgrid(
        torch.arange(frames), torch.arange(rows), torch.arange(cols), indexing="ij"))

    def rotate(x: torch.Tensor, t_pos, r_pos, c_pos) -> torch.Tensor:
        angles = torch.cat([t_pos[:, None] * omegas[0], r_pos[:, None] * omegas[1], c_pos[:, None] * omegas[2]], 1)
        turned = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous()) * torch.polar(
            torch.ones_like(angles), angles)[None, :, None, :]
        return torch.view_as_real(turned).flatten(-2)

    rotated_query = rotate(query, f_index.double(), r_index.double(), c_index.double())
    output = torch.zeros_like(query)
    for box in tile_boxes((rows, cols), tile):
        key_rows, key_cols = compressed_key_positions(box, (rows, cols), train, near)
        rotated_key = rotate(key, f_index.double(), key_rows[r_index].double(), key_cols[c_index].double())
        in_tile = ((r_index >= box.row_start) & (r_index < box.row_stop)
                   & (c_index >= box.col_start) & (c_index < box.col_stop))
        logits = torch.einsum("bqhd,bkhd->bhqk", rotated_query[:, in_tile], rotated_key) * factor / math.sqrt(HEAD_DIM)
        output[:, in_tile] = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), value)
    return attention.to_out[0](output.flatten(2).float())


def test_tiled_attention_needs_the_token_grid_and_tiles_within_training_grid() -> None:
    with pytest.raises(ValueError, match="fit in the training grid"):
        CineScaleWanAttnProcessor(tile=(20, 32), train_grid=(18, 80))
    attention = tiny_self_attention()
    rotary = NTKWanRotaryPosEmbed(HEAD_DIM, (1, 1, 1), 16, alphas=(1, 1, 1))(torch.zeros(1, 1, 1, 2, 3))
    with pytest.raises(RuntimeError, match="token grid"):
        CineScaleWanAttnProcessor(tile=(1, 1))(attention, torch.randn(1, 6, HEADS * HEAD_DIM), rotary_emb=rotary)


def test_tile_boxes_cover_every_token_once() -> None:
    covered = torch.zeros(7, 10, dtype=torch.int64)
    for box in tile_boxes((7, 10), (3, 4)):
        covered[box.row_start : box.row_stop, box.col_start : box.col_stop] += 1
    assert torch.equal(covered, torch.ones_like(covered))


# ---- compressed key positions (properties) -----------------------------------------------------


@st.composite
def axis_cases(draw) -> tuple[int, int, int, int, int]:
    train = draw(st.integers(1, 60))
    length = draw(st.integers(1, 200))
    tile_length = draw(st.integers(1, min(train, length)))
    start = draw(st.integers(0, length - tile_length))
    return start, start + tile_length, length, train, draw(st.integers(0, 40))


@st.composite
def grid_cases(draw) -> tuple[TileBox, tuple[int, int], tuple[int, int], int]:
    (r0, r1, rows, train_rows, near), (c0, c1, cols, train_cols, _) = draw(axis_cases()), draw(axis_cases())
    return TileBox(r0, r1, c0, c1), (rows, cols), (train_rows, train_cols), near


@settings(max_examples=300, deadline=None)
@given(grid_cases())
def test_compressed_relative_positions_never_exceed_the_training_extent(case) -> None:
    box, grid, train, near = case
    key_rows, key_cols = compressed_key_positions(box, grid, train, near)
    query_rows, query_cols = torch.arange(box.row_start, box.row_stop), torch.arange(box.col_start, box.col_stop)
    assert (query_rows[:, None] - key_rows[None, :]).abs().max() <= train[0] - 1
    assert (query_cols[:, None] - key_cols[None, :]).abs().max() <= train[1] - 1


@settings(max_examples=300, deadline=None)
@given(axis_cases())
def test_keys_in_and_near_the_tile_keep_their_true_positions(case) -> None:
    start, stop, length, train, near = case
    positions = compress_axis_positions(start, stop, length, train, near)
    kept = min(near, train - (stop - start))
    near_keys = torch.arange(max(0, start - kept), min(length, stop + kept))
    assert torch.equal(positions[near_keys], near_keys)


@settings(max_examples=300, deadline=None)
@given(axis_cases())
def test_compressed_positions_keep_key_order_and_stay_on_the_grid(case) -> None:
    start, stop, length, train, near = case
    positions = compress_axis_positions(start, stop, length, train, near)
    assert positions.dtype == torch.int64 and positions.shape == (length,)
    assert positions.min() >= 0 and positions.max() <= length - 1
    assert bool((positions[1:] >= positions[:-1]).all())


@settings(max_examples=100, deadline=None)
@given(axis_cases())
def test_nothing_is_compressed_when_the_axis_fits_the_training_extent(case) -> None:
    start, stop, length, train, near = case
    if length <= train:
        assert torch.equal(compress_axis_positions(start, stop, length, train, near), torch.arange(length))


def test_cinescale_720p_tiles_on_a_4k_grid_respect_44_rows_and_79_columns() -> None:
    grid, train = (136, 240), (45, 80)
    for box in tile_boxes(grid, (18, 32)):
        key_rows, key_cols = compressed_key_positions(box, grid, train)
        assert max(box.row_stop - 1 - key_rows.min(), key_rows.max() - box.row_start) <= 44
        assert max(box.col_stop - 1 - key_cols.min(), key_cols.max() - box.col_start) <= 79
