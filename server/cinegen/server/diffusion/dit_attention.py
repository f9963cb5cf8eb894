"""CineScale self-attention for Wan DiTs: attentional scaling and block-tiled attention (ALGORITHMS.md §1b).

**Attentional scaling.** Above the training size a query spreads its softmax over more keys and the
attention entropy grows; CineScale sharpens the self-attention logits by

    softmax( λ · q·kᵀ / √d ),   λ = log_N(N · coef) = 1 + ln(coef) / ln(N)

with N the tokens per frame at the training size (3600 = 45×80 for Wan at 720p). CineScale's
reference code picks coef = 2 above 20 000 tokens per frame (4K: 136×240 = 32 640 → λ = 1.0846,
the "×1.085 at 4K"), 1.5 above 10 000 (λ = 1.0495), else 1 (no change); taking coef as the token
ratio instead (9 at 4K) would give λ = 1.268 — see `cinescale_attention_coef`.

**Block-tiled self-attention** (CineScale's tuning-free refinement on Wan 2.2). Queries are cut into
tiles of `(rows, cols)` tokens per frame (all frames of the tile together); every tile attends to
all keys. Queries keep their true RoPE positions. For each tile the keys get positions on the
row and column axes such that for every query q of the tile |q − k'| ≤ train − 1 on each axis:
keys inside the tile and within `near_margin` of it keep their true positions, farther ones are
squeezed monotonically (piecewise linear, rounded up to integers) into the remaining room, so
no relative distance exceeds the training grid (44 rows, 79 columns for 45×80). Because RoPE is
relative, re-rotating the keys per tile with those positions is exactly attention with the
compressed relative distances. Tiling the queries alone (nothing compressed) is exact attention.

Key positions are integer indices into the rotary tables the transformer hands to its blocks
(compressed positions always lie inside the grid), so the keys are rotated with whichever rope
module is installed — NTK-scaled (`dit_rope`) or stock — without recomputing any frequency.
Cross-attention (`attn2`) is left to diffusers' processor.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from cinegen.server.diffusion.dit_rope import wan_rope_axis_dims

WAN_720P_TRAIN_GRID = (45, 80)
CINESCALE_TILE = (18, 32)
# CineScale's reference keeps keys within 24 tokens of a tile at their true positions.
CINESCALE_NEAR_MARGIN = 24


def attention_scale_factor(train_tokens_per_frame: int, coef: float) -> float:
    """λ = log_N(N · coef): the factor on top of 1/√d for self-attention logits (1 when coef = 1)."""
    if train_tokens_per_frame < 2 or coef <= 0:
        raise ValueError(f"need N ≥ 2 tokens and coef > 0, got N={train_tokens_per_frame}, coef={coef}.")
    return math.log(train_tokens_per_frame * coef) / math.log(train_tokens_per_frame)


def cinescale_attention_coef(tokens_per_frame: int) -> float:
    """CineScale's coef for a generation with `tokens_per_frame` latent tokens: 2 above 20k, 1.5 above 10k, else 1."""
    if tokens_per_frame > 20000:
        return 2.0
    if tokens_per_frame > 10000:
        return 1.5
    return 1.0


@dataclass(frozen=True)
class TileBox:
    """A query tile of one frame's token grid: rows [row_start, row_stop) × cols [col_start, col_stop)."""

    row_start: int
    row_stop: int
    col_start: int
    col_stop: int


def tile_boxes(grid_hw: tuple[int, int], tile: tuple[int, int]) -> list[TileBox]:
    """Non-overlapping tiles covering the grid row-major; the last row/column of tiles may be smaller."""
    rows, cols = grid_hw
    tile_rows, tile_cols = tile
    if tile_rows < 1 or tile_cols < 1:
        raise ValueError(f"tile sizes must be positive, got {tile}.")
    return [
        TileBox(r, min(r + tile_rows, rows), c, min(c + tile_cols, cols))
        for r in range(0, rows, tile_rows)
        for c in range(0, cols, tile_cols)
    ]


def compress_axis_positions(
    tile_start: int, tile_stop: int, length: int, train_length: int, near_margin: int = CINESCALE_NEAR_MARGIN
) -> torch.Tensor:
    """Key positions (int64, one per index 0…length−1) on one axis for queries in [tile_start, tile_stop).

    Guarantees |q − k'| ≤ train_length − 1 for every query q of the tile; keys within
    min(near_margin, train_length − tile length) of the tile, and whole sides that already fit,
    keep their true positions; the map is non-decreasing and stays in [0, length − 1].
    """
    tile_length = tile_stop - tile_start
    if not 0 <= tile_start < tile_stop <= length:
        raise ValueError(f"tile [{tile_start}, {tile_stop}) does not lie in an axis of length {length}.")
    if tile_length > train_length:
        raise ValueError(
            f"a tile of {tile_length} tokens exceeds the training extent of {train_length}; use smaller tiles."
        )
    if near_margin < 0:
        raise ValueError(f"near_margin must be ≥ 0, got {near_margin}.")
    true_positions = torch.arange(length)
    positions = true_positions.clone()
    slack = train_length - tile_length  # room beyond the tile on each side within the training extent
    near = min(near_margin, slack)

    lowest_allowed = tile_stop - train_length  # farthest key position before the tile any query may see
    if lowest_allowed > 0:
        edge = tile_start - near  # first key that keeps its true position
        budget = edge - lowest_allowed
        far = true_positions < edge
        distance = edge - true_positions[far]  # 1 … edge
        positions[far] = edge - _ceil_div(distance * budget, edge)

    highest_allowed = tile_start + train_length - 1
    if highest_allowed < length - 1:
        edge = tile_stop - 1 + near  # last key that keeps its true position
        budget = highest_allowed - edge
        span = length - 1 - edge
        far = true_positions > edge
        distance = true_positions[far] - edge  # 1 … span
        positions[far] = edge + _ceil_div(distance * budget, span)
    return positions


def _ceil_div(numerator: torch.Tensor, denominator: int) -> torch.Tensor:
    return -torch.div(-numerator, denominator, rounding_mode="floor")


def compressed_key_positions(
    query_tile_box: TileBox | tuple[int, int, int, int],
    grid_hw: tuple[int, int],
    train_hw: tuple[int, int],
    near_margin: int = CINESCALE_NEAR_MARGIN,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(key rows, key cols): the RoPE row of every grid row and column of every grid column for one tile."""
    box = query_tile_box if isinstance(query_tile_box, TileBox) else TileBox(*query_tile_box)
    rows = compress_axis_positions(box.row_start, box.row_stop, grid_hw[0], train_hw[0], near_margin)
    cols = compress_axis_positions(box.col_start, box.col_stop, grid_hw[1], train_hw[1], near_margin)
    return rows, cols


def rotate_with_rope(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (B, S, heads, d) by the angles in the tables — Wan's arithmetic."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out.type_as(x)


def key_rope_tables(
    table: torch.Tensor, grid: tuple[int, int, int], key_rows: torch.Tensor, key_cols: torch.Tensor
) -> torch.Tensor:
    """A rotary table (1, S, 1, d) like `table`, with the h and w parts read at the given row/column positions."""
    frames, rows, cols = grid
    t_dim, h_dim, w_dim = wan_rope_axis_dims(table.shape[-1])
    per_token = table.reshape(frames, rows, cols, -1)
    # The h part depends on the row only and the w part on the column only: one row/column of the grid is the table.
    row_table = per_token[0, :, 0, t_dim : t_dim + h_dim][key_rows.to(table.device)]
    col_table = per_token[0, 0, :, t_dim + h_dim :][key_cols.to(table.device)]
    rebuilt = torch.cat(
        [
            per_token[..., :t_dim],
            row_table.view(1, rows, 1, h_dim).expand(frames, rows, cols, h_dim),
            col_table.view(1, 1, cols, w_dim).expand(frames, rows, cols, w_dim),
        ],
        dim=-1,
    )
    return rebuilt.reshape(table.shape)


class CineScaleWanAttnProcessor:
    """Wan self-attention with λ-scaled logits and optional block-tiled queries with compressed key positions.

    scale_factor = 1 and tile = None reproduce diffusers' `WanAttnProcessor` exactly. With a tile
    and no train_grid the queries are tiled but no position is compressed (exact attention, less
    memory). `grid` (frames, rows, cols of latent tokens) must be set before a tiled call;
    `install_cinescale_attention` sets it from every transformer call.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(
        self,
        scale_factor: float = 1.0,
        tile: tuple[int, int] | None = None,
        train_grid: tuple[int, int] | None = None,
        near_margin: int = CINESCALE_NEAR_MARGIN,
    ) -> None:
        if scale_factor <= 0:
            raise ValueError(f"scale_factor must be positive, got {scale_factor}.")
        if tile is not None and train_grid is not None and (tile[0] > train_grid[0] or tile[1] > train_grid[1]):
            raise ValueError(f"tile {tuple(tile)} must fit in the training grid {tuple(train_grid)}.")
        self.scale_factor = float(scale_factor)
        self.tile = None if tile is None else (int(tile[0]), int(tile[1]))
        self.train_grid = None if train_grid is None else (int(train_grid[0]), int(train_grid[1]))
        self.near_margin = int(near_margin)
        self.grid: tuple[int, int, int] | None = None
        self._cross_attention = WanAttnProcessor()

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            # Only self-attention is rescaled or tiled; cross-attention behaves as in diffusers.
            self._cross_attention._attention_backend = self._attention_backend
            return self._cross_attention(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

        query, key, value = self._project(attn, hidden_states)
        scale = None if self.scale_factor == 1.0 else self.scale_factor / math.sqrt(query.shape[-1])
        if self.tile is None:
            if rotary_emb is not None:
                query = rotate_with_rope(query, *rotary_emb)
                key = rotate_with_rope(key, *rotary_emb)
            hidden_states = dispatch_attention_fn(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False, scale=scale,
                backend=self._attention_backend, parallel_config=self._parallel_config,
            )
        else:
            if attention_mask is not None or rotary_emb is None:
                raise ValueError("block-tiled self-attention needs rotary embeddings and no attention mask.")
            hidden_states = self._tiled_attention(query, key, value, rotary_emb, scale)

        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)

    @staticmethod
    def _project(attn: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        return tuple(x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))

    def _tiled_attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        scale: float | None,
    ) -> torch.Tensor:
        grid = self._checked_grid(query.shape[1])
        frames, rows, cols = grid
        freqs_cos, freqs_sin = rotary_emb
        query = rotate_with_rope(query, freqs_cos, freqs_sin)
        token_index = torch.arange(query.shape[1], device=query.device).view(frames, rows, cols)
        true_rows, true_cols = torch.arange(rows), torch.arange(cols)
        key_at_true_positions: torch.Tensor | None = None
        output: torch.Tensor | None = None
        for box in tile_boxes((rows, cols), self.tile):
            if self.train_grid is None:
                key_rows, key_cols = true_rows, true_cols
            else:
                key_rows, key_cols = compressed_key_positions(box, (rows, cols), self.train_grid, self.near_margin)
            if torch.equal(key_rows, true_rows) and torch.equal(key_cols, true_cols):
                if key_at_true_positions is None:
                    key_at_true_positions = rotate_with_rope(key, freqs_cos, freqs_sin)
                rotated_key = key_at_true_positions
            else:
                rotated_key = rotate_with_rope(
                    key,
                    key_rope_tables(freqs_cos, grid, key_rows, key_cols),
                    key_rope_tables(freqs_sin, grid, key_rows, key_cols),
                )
            tile_tokens = token_index[:, box.row_start : box.row_stop, box.col_start : box.col_stop].reshape(-1)
            tile_output = dispatch_attention_fn(
                query[:, tile_tokens], rotated_key, value, dropout_p=0.0, is_causal=False, scale=scale,
                backend=self._attention_backend,
            )
            if output is None:
                output = tile_output.new_empty(query.shape[:3] + tile_output.shape[3:])
            output[:, tile_tokens] = tile_output
        return output

    def _checked_grid(self, sequence_length: int) -> tuple[int, int, int]:
        if self.grid is None:
            raise RuntimeError(
                "block-tiled attention needs the latent token grid: install it with install_cinescale_attention "
                "or set processor.grid = (frames, rows, cols)."
            )
        if math.prod(self.grid) != sequence_length:
            raise RuntimeError(f"token grid {self.grid} does not match the sequence length {sequence_length}.")
        return self.grid


@contextlib.contextmanager
def install_cinescale_attention(
    transformer: torch.nn.Module,
    scale_factor: float = 1.0,
    tile: tuple[int, int] | None = None,
    train_grid: tuple[int, int] | None = None,
    near_margin: int = CINESCALE_NEAR_MARGIN,
) -> Iterator[CineScaleWanAttnProcessor]:
    """Within the block every `blocks[i].attn1` uses one CineScale processor; originals return on exit."""
    processor = CineScaleWanAttnProcessor(scale_factor, tile, train_grid, near_margin)
    self_attentions = [block.attn1 for block in transformer.blocks]
    originals = [attention.processor for attention in self_attentions]

    def record_token_grid(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        latents = args[0] if args else kwargs["hidden_states"]
        patch_t, patch_h, patch_w = module.config.patch_size
        frames, height, width = latents.shape[2:]
        processor.grid = (frames // patch_t, height // patch_h, width // patch_w)

    hook = transformer.register_forward_pre_hook(record_token_grid, with_kwargs=True)
    try:
        for attention in self_attentions:
            attention.set_processor(processor)
        yield processor
    finally:
        hook.remove()
        for attention, original in zip(self_attentions, originals):
            attention.set_processor(original)
