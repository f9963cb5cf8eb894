"""Attention whose logit matrix is never held whole: queries in chunks through ``scaled_dot_product_attention``.

A full ``(rows, heads, N, N)`` logit matrix grows with the square of the token count (at 512²×16
frames with CFG, FreeTraj's spatial logits are ~8.6 GB in one tensor). Here queries go through SDPA
``chunk`` at a time, so even SDPA's math backend (which does build the logits) holds at most
``rows · heads · chunk · keys`` of them — linear in the tokens for a fixed element budget; fused
backends (flash, memory-efficient) hold less still.

``label_scaled_attention`` is FreeTraj's "multiply the logits between tokens of different labels by
a small factor" written for SDPA: the keys are stacked twice, once as they are and once scaled by
the factor (``q · (λk) = λ (q · k)``), and a boolean mask per query chunk lets each query see the
plain copy of same-label keys and the scaled copy of the others. Exactly one copy of every key is
visible to every query, so the softmax is the one over the scaled logits.
Pure torch.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

DEFAULT_MAX_LOGITS = 1 << 25  # logits per SDPA call (32 Mi: 128 MiB in float32)

MaskFn = Callable[[int, int], "torch.Tensor | None"]  # (query start, query stop) → mask for that chunk


def query_chunk(rows: int, heads: int, queries: int, keys: int, max_logits: int) -> int:
    """Queries per SDPA call so that one call's logits stay within ``max_logits`` (at least 1)."""
    return max(1, min(queries, max_logits // max(1, rows * heads * keys)))


def chunked_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask_for: MaskFn | None = None,
                 max_logits: int = DEFAULT_MAX_LOGITS, scale: float | None = None) -> torch.Tensor:
    """``SDPA(q, k, v, mask)`` on (rows, heads, N, d) projections, ``N`` queries at a time in chunks.

    ``mask_for(a, b)`` gives the mask of queries ``a:b`` (boolean: True = attend, or additive),
    broadcastable to (rows, heads, b − a, keys); it is built per chunk so no full mask exists either."""
    rows, heads, queries, _ = query.shape
    chunk = query_chunk(rows, heads, queries, key.shape[2], max_logits)
    parts = []
    for start in range(0, queries, chunk):
        stop = min(queries, start + chunk)
        mask = mask_for(start, stop) if mask_for is not None else None
        parts.append(F.scaled_dot_product_attention(query[:, :, start:stop], key, value, attn_mask=mask,
                                                    dropout_p=0.0, is_causal=False, scale=scale))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def label_scaled_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, same_for: MaskFn,
                           other_scale: float, max_logits: int = DEFAULT_MAX_LOGITS,
                           extra_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(S ⊙ QKᵀ/√d) V`` with ``S = 1`` where ``same_for(a, b)`` (bool, broadcastable to (rows,
    heads, b − a, keys)) is True and ``other_scale`` elsewhere, without the full logit matrix.

    ``extra_mask``: an additive (rows, heads, 1 or N, keys) mask (diffusers' prepared attention mask)."""
    keys = torch.cat([key, key * other_scale], dim=2)
    values = torch.cat([value, value], dim=2)

    doubled = None if extra_mask is None else torch.cat([extra_mask, extra_mask], dim=-1)

    def mask_for(start: int, stop: int) -> torch.Tensor:
        same = same_for(start, stop)
        return with_additive(torch.cat([same, ~same], dim=-1), doubled, start, stop)

    return chunked_sdpa(query, keys, values, mask_for, max_logits)


def with_additive(visible: torch.Tensor, additive: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
    """A boolean chunk mask, or — when diffusers passed an additive mask too — both as one additive mask
    (the additive one sliced to the chunk's queries unless it is one row for all)."""
    if additive is None:
        return visible
    added = additive if additive.shape[-2] == 1 else additive[..., start:stop, :]
    blocked = torch.tensor(float("-inf"), dtype=added.dtype, device=added.device)
    return torch.where(visible, added, blocked)


__all__ = ["DEFAULT_MAX_LOGITS", "chunked_sdpa", "label_scaled_attention", "query_chunk", "with_additive"]
