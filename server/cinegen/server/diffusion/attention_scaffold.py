"""The scaffold of diffusers' ``AttnProcessor2_0`` around a replaceable attention core.

Our attention processors (scale fusion, FreeTraj, shared self-attention) change only the core
``softmax(Q Kᵀ / √d) V``; everything around it stays diffusers' computation, in the same order:

    inputs:  h ← spatial_norm(h, temb);  (B, C, H, W) → (B, H·W, C);  h ← group_norm(h)
             Q = W_q h,  K = W_k c,  V = W_v c   (c = h, or norm_cross(encoder states))
             split heads → (B, heads, N, d);  Q ← norm_q(Q),  K ← norm_k(K)
    output:  merge heads → (B, N, heads·d);  to_out[0], to_out[1];  → (B, C, H, W) for a 4-D input;
             + residual (if ``residual_connection``);  / ``rescale_output_factor``

So ``attention_output(attn, sdpa(q, k, v), attention_inputs(attn, h, ...))`` is
``AttnProcessor2_0()(attn, h, ...)`` (no mask). ``swapped_processors`` installs processors by name
and always puts the originals back. Pure torch.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

ImageShape = tuple[int, int, int, int]  # (B, C, H, W)


@dataclass
class AttentionTokens:
    """The (B, N, C) tokens the projections see, the untouched input, and its 4-D shape if it had one."""
    tokens: torch.Tensor
    residual: torch.Tensor
    image_shape: ImageShape | None = None


@dataclass
class AttentionInputs:
    """Per-head projections (B, heads, tokens, head_dim) of one attention call, plus what the output needs."""
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    residual: torch.Tensor
    image_shape: ImageShape | None = None

    @property
    def head_dim(self) -> int:
        return int(self.key.shape[-1])


def attention_tokens(attn: nn.Module, hidden_states: torch.Tensor, temb: torch.Tensor | None = None
                     ) -> AttentionTokens:
    """spatial_norm, 4-D → tokens, group_norm: the tokens ``to_q`` (and, in self-attention, ``to_k/to_v``) see."""
    residual = hidden_states
    if getattr(attn, "spatial_norm", None) is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    image_shape = None
    if hidden_states.ndim == 4:
        batch, channels, height, width = hidden_states.shape
        image_shape = (batch, channels, height, width)
        hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
    if getattr(attn, "group_norm", None) is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return AttentionTokens(hidden_states, residual, image_shape)


def cross_context(attn: nn.Module, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """Encoder states as ``to_k/to_v`` see them: through ``norm_cross`` when the layer has one."""
    if getattr(attn, "norm_cross", None):
        return attn.norm_encoder_hidden_states(encoder_hidden_states)
    return encoder_hidden_states


def project_heads(attn: nn.Module, tokens: AttentionTokens, context: torch.Tensor) -> AttentionInputs:
    """Q from ``tokens``, K/V from ``context``; split into heads; norm_q/norm_k."""
    batch = tokens.tokens.shape[0]
    query, key, value = attn.to_q(tokens.tokens), attn.to_k(context), attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads  # diffusers sizes every head by the key's width
    query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
    if getattr(attn, "norm_q", None) is not None:
        query = attn.norm_q(query)
    if getattr(attn, "norm_k", None) is not None:
        key = attn.norm_k(key)
    return AttentionInputs(query, key, value, tokens.residual, tokens.image_shape)


def attention_inputs(attn: nn.Module, hidden_states: torch.Tensor,
                     encoder_hidden_states: torch.Tensor | None = None,
                     temb: torch.Tensor | None = None) -> AttentionInputs:
    """Everything ``AttnProcessor2_0`` does before its ``scaled_dot_product_attention`` (mask aside)."""
    tokens = attention_tokens(attn, hidden_states, temb)
    context = tokens.tokens if encoder_hidden_states is None else cross_context(attn, encoder_hidden_states)
    return project_heads(attn, tokens, context)


def merge_heads(out_heads: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) → (B, N, heads·d)."""
    batch, heads, _, head_dim = out_heads.shape
    return out_heads.transpose(1, 2).reshape(batch, -1, heads * head_dim)


def attention_output(attn: nn.Module, out_heads: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
    """Everything ``AttnProcessor2_0`` does after its core: merge heads, to_out, 4-D shape, residual, rescale."""
    hidden_states = merge_heads(out_heads).to(inputs.query.dtype)
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear, then dropout
    if inputs.image_shape is not None:
        hidden_states = hidden_states.transpose(-1, -2).reshape(inputs.image_shape)
    if attn.residual_connection:
        hidden_states = hidden_states + inputs.residual
    return hidden_states / attn.rescale_output_factor


# ------------------------------------------------------------------------------------ installation
def processors_named(model: nn.Module, names: Sequence[str]) -> dict[str, Any]:
    """The current processors of ``names`` (keys of ``model.attn_processors``); KeyError for unknown ones."""
    current = model.attn_processors
    unknown = sorted(set(names) - set(current))
    if unknown:
        raise KeyError(f"no attention processors named {unknown} in {type(model).__name__}")
    return {name: current[name] for name in names}


@contextlib.contextmanager
def swapped_processors(model: nn.Module, replacements: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Install ``replacements`` (processor key → processor) on ``model``; always restore the originals.

    Yields every original processor by key. Unknown keys raise KeyError before anything changes."""
    processors_named(model, list(replacements))
    original = dict(model.attn_processors)
    model.set_attn_processor({**original, **replacements})
    try:
        yield original
    finally:
        model.set_attn_processor(dict(original))  # a copy: set_attn_processor pops what it is given


__all__ = [
    "AttentionInputs",
    "AttentionTokens",
    "attention_inputs",
    "attention_output",
    "attention_tokens",
    "cross_context",
    "merge_heads",
    "processors_named",
    "project_heads",
    "swapped_processors",
]
