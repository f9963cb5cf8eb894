"""Shared self-attention on Wan's DiT: a keyframe attends to earlier keyframes as earlier frames of a video.

The UNet version (``shared_attention.py``) appends the memory's *input tokens* to a layer's keys
and values and projects them there. A Wan self-attention rotates its queries and keys by 3-D RoPE
(frame, row, column), so a memory token needs a position. Wan is a video model: attending to the
tokens of other frames at other frame positions is what it is trained to do. So, training-free:

* the memory keyframes (GoldenMem sizes, oldest → newest) are frames ``0 … K−1`` and the keyframe
  being drawn is frame ``K`` (``rope_frame_offset`` shifts the RoPE frame index of a pass);
* write: each memory latent, noised to the step, goes through the transformer at its frame
  position; every ``attn1`` keeps its keys (after ``norm_k`` and RoPE) and values;
* read: the keyframe's ``attn1`` attends to ``[own keys; memory keys]``, ``[own values; memory
  values]``. Cross-attention (text, CLIP image) is untouched.

What does not carry over from the UNet method: a GoldenMem-shrunk frame keeps its own grid
positions from the top-left (rows and columns 0…h_k−1), so a small memory frame lines up with the top-left
of the keyframe rather than being spread over it, and its latent frame is one that Wan's causal VAE would
give four video frames. With no memory kept, a layer calls the processor it replaced, untouched:
an empty memory is the plain model bit for bit.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention_scaffold import processors_named, swapped_processors
from .shared_attention import MemoryBank

__all__ = ["WanMemoryAttention", "rope_frame_offset", "wan_shared_self_attention"]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on (B, N, H, D), as `WanAttnProcessor` computes it."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
    out[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
    return out.type_as(x)


class WanMemoryAttention:
    """Wraps a Wan self-attention processor: keeps its rotated keys and values in write mode, attends to
    the kept ones as well in read mode, and is the original processor otherwise."""

    def __init__(self, layer: str, original: Any, bank: MemoryBank):
        self.layer, self.original, self.bank = layer, original, bank

    def _qkv(self, attn: nn.Module, hidden_states: torch.Tensor, rotary_emb: Any) -> tuple[torch.Tensor, ...]:
        if getattr(attn, "fused_projections", False):
            raise ValueError(f"{self.layer}: shared self-attention needs unfused q/k/v projections")
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        return query, key, value

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb: Any = None) -> torch.Tensor:
        mode = self.bank.mode
        if encoder_hidden_states is not None or mode == "off":
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if mode == "write":
            _, key, value = self._qkv(attn, hidden_states, rotary_emb)
            self.bank.store(self.layer + ":k", key.flatten(2))
            self.bank.store(self.layer + ":v", value.flatten(2))
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        memory_k, memory_v = self.bank.memory_for(self.layer + ":k"), self.bank.memory_for(self.layer + ":v")
        if memory_k is None or memory_v is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if attention_mask is not None:
            raise ValueError(f"{self.layer}: shared self-attention does not support attention masks")
        query, key, value = self._qkv(attn, hidden_states, rotary_emb)
        batch = query.shape[0]  # one memory for every row (CFG passes are separate calls on Wan)
        key = torch.cat([key, memory_k[:1].expand(batch, -1, -1).unflatten(2, (attn.heads, -1)).to(key.dtype)], 1)
        value = torch.cat([value, memory_v[:1].expand(batch, -1, -1).unflatten(2, (attn.heads, -1)).to(value.dtype)],
                          1)
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                             dropout_p=0.0, is_causal=False).transpose(1, 2)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


@contextlib.contextmanager
def wan_shared_self_attention(transformer: nn.Module, bank: MemoryBank | None = None) -> Iterator[MemoryBank]:
    """Install shared self-attention on every ``attn1`` of a Wan transformer for the block; yields the bank
    (``bank``, to share one between experts). The original processors are put back on exit, also after an error."""
    bank = bank if bank is not None else MemoryBank()
    layers = [name for name in transformer.attn_processors if name.endswith("attn1.processor")]
    wrapped = {name: WanMemoryAttention(name, original, bank)
               for name, original in processors_named(transformer, layers).items()}
    with swapped_processors(transformer, wrapped):
        try:
            yield bank
        finally:
            bank.clear()


@contextlib.contextmanager
def rope_frame_offset(transformers: Sequence[nn.Module], offset: int) -> Iterator[None]:
    """Within the block, every latent frame of a pass sits ``offset`` frames later in RoPE (frame ``f``
    takes the rotation of ``f + offset``); rows and columns keep theirs."""
    if offset == 0:
        yield
        return
    ropes = [t.rope for t in transformers]
    for rope in ropes:
        original = rope.forward

        def shifted(hidden_states: torch.Tensor, rope: nn.Module = rope, original: Any = original) -> Any:
            b, c, f, h, w = hidden_states.shape
            p_t, p_h, p_w = rope.patch_size
            longer = torch.empty((b, c, f + offset * p_t, h, w), device="meta")  # only its shape is read
            cos, sin = original(longer)
            keep = (f // p_t) * (h // p_h) * (w // p_w)  # the last frames' tokens (frames are outermost)
            return cos[:, -keep:], sin[:, -keep:]
        rope.forward = shifted
    try:
        yield
    finally:
        for rope in ropes:
            del rope.forward  # the class's forward again
