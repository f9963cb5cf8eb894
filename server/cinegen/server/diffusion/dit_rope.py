"""NTK-scaled 3-axis rotary position embedding for Wan DiTs (CineScale, ALGORITHMS.md §1b).

Wan rotates each attention head by three 1-D RoPEs, one per axis (frame t, row h, column w), laid
side by side in the head dimension. CineScale extends the model beyond its training grid by
scaling the RoPE base per axis (NTK-aware interpolation):

    θ_axis = base · α_axis,    ω_axis,i = θ_axis^(−2i / d_axis),   i = 0 … d_axis/2 − 1

with α = (1, 20, 20) for (t, h, w) at 1088p (25 for its second stage). A larger base lowers every
frequency but the first, so long row/column distances rotate no further than the training ones.

Head-dimension split (diffusers' `WanRotaryPosEmbed`, identical to the original Wan code):
h = w = 2·⌊d/6⌋, t = d − 2·h. This equals the handbook's ⌊d/3⌋ whenever d mod 6 ∈ {0, 2}
(every released Wan model has d = 128 → t, h, w = 44, 42, 42); for d mod 6 ∈ {3, 4, 5} ⌊d/3⌋
would differ from the model (and can be odd, which RoPE cannot use), so the model's split is used.

`install_ntk_rope(transformer, alphas)` swaps `transformer.rope` for an `NTKWanRotaryPosEmbed`
(a `WanRotaryPosEmbed` with rescaled tables, same forward) and puts the original back on exit.
With α = (1, 1, 1) the tables, and so the transformer's output, are bit-identical to stock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

ROPE_BASE = 10000.0
CINESCALE_NTK_ALPHAS = (1.0, 20.0, 20.0)


def wan_rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of one head given to the (t, h, w) rotary axes, as Wan splits them."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even attention head dimension, got {head_dim}.")
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _frequency_dtype() -> torch.dtype:
    # diffusers builds the tables in float32 where MPS exists (no float64 there); match it for bit-identity.
    return torch.float32 if torch.backends.mps.is_available() else torch.float64


def ntk_inverse_frequencies(axis_dim: int, theta: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Angular frequencies ω_i = 1 / θ^(2i/d) of one rotary axis (d/2 values)."""
    dtype = dtype or _frequency_dtype()
    return 1.0 / (theta ** (torch.arange(0, axis_dim, 2, dtype=dtype) / axis_dim))


def ntk_rope_frequencies(
    head_dim: int,
    max_seq_len: int,
    alphas: Sequence[float] = CINESCALE_NTK_ALPHAS,
    base: float = ROPE_BASE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos and sin tables (max_seq_len, head_dim), float32, laid out [t | h | w] like Wan's rope buffers.

    Row p holds cos/sin(p · ω) for position p on every axis, each value repeated for the two
    channels of its rotation pair; axis k uses θ = base · alphas[k].
    """
    if len(alphas) != 3:
        raise ValueError(f"alphas needs one value per axis (t, h, w), got {tuple(alphas)}.")
    positions = torch.arange(max_seq_len)
    cos_parts, sin_parts = [], []
    for axis_dim, alpha in zip(wan_rope_axis_dims(head_dim), alphas):
        angles = torch.outer(positions, ntk_inverse_frequencies(axis_dim, base * float(alpha)))
        cos_parts.append(angles.cos().repeat_interleave(2, dim=1).float())
        sin_parts.append(angles.sin().repeat_interleave(2, dim=1).float())
    return torch.cat(cos_parts, dim=1), torch.cat(sin_parts, dim=1)


class NTKWanRotaryPosEmbed(WanRotaryPosEmbed):
    """`WanRotaryPosEmbed` whose tables use the NTK-scaled bases; forward and outputs keep its interface."""

    def __init__(
        self,
        attention_head_dim: int,
        patch_size: tuple[int, int, int],
        max_seq_len: int,
        alphas: Sequence[float] = CINESCALE_NTK_ALPHAS,
        base: float = ROPE_BASE,
    ) -> None:
        super().__init__(attention_head_dim, patch_size, max_seq_len, theta=base)
        self.alphas = tuple(float(a) for a in alphas)
        self.base = float(base)
        freqs_cos, freqs_sin = ntk_rope_frequencies(attention_head_dim, max_seq_len, self.alphas, self.base)
        self.register_buffer("freqs_cos", freqs_cos, persistent=False)
        self.register_buffer("freqs_sin", freqs_sin, persistent=False)

    @classmethod
    def like(cls, stock: WanRotaryPosEmbed, alphas: Sequence[float], base: float = ROPE_BASE) -> NTKWanRotaryPosEmbed:
        """An NTK rope with the geometry of `stock`, on its device and in its dtype.

        It needs no offload hook of its own: it has no parameters, and under sequential offload the
        stock rope's tables (non-persistent buffers) sit on the execution device (tests/test_offload.py)."""
        rope = cls(stock.attention_head_dim, tuple(stock.patch_size), stock.max_seq_len, alphas, base)
        return rope.to(device=stock.freqs_cos.device, dtype=stock.freqs_cos.dtype)


@contextlib.contextmanager
def install_ntk_rope(
    transformer: torch.nn.Module,
    alphas: Sequence[float] = CINESCALE_NTK_ALPHAS,
    base: float = ROPE_BASE,
) -> Iterator[NTKWanRotaryPosEmbed]:
    """Within the block, `transformer.rope` is NTK-scaled; the original module returns on exit (also on errors)."""
    original = transformer.rope
    if not isinstance(original, WanRotaryPosEmbed):
        raise TypeError(
            "install_ntk_rope needs a Wan transformer whose .rope is a WanRotaryPosEmbed, "
            f"got {type(original).__name__}."
        )
    replacement = NTKWanRotaryPosEmbed.like(original, alphas, base)
    transformer.rope = replacement
    try:
        yield replacement
    finally:
        transformer.rope = original
