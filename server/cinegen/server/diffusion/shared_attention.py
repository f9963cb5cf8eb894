"""Shared (reference) self-attention: a keyframe also attends to the tokens of earlier keyframes.

ALGORITHMS.md §4 (Captain Cinema's top-down keyframes, training-free): the current keyframe's
self-attention ``attn1`` in every transformer block attends to its own tokens *and* to memory
tokens, so characters and places carry over from shot to shot (StoryDiffusion-style consistent
self-attention, reference-only attention):

    Attn(Q, [K; K_mem], [V; V_mem]),   Q, K, V = W_q h, W_k h, W_v h,
    K_mem = W_k h_mem,  V_mem = W_v h_mem

where ``h`` are the hidden states ``attn1`` receives for the keyframe and ``h_mem`` those it
receives, at the same layer and the same timestep, for the memory keyframes (GoldenMem-downsampled
latents, ``goldenmem.build_memory_latents``, noised to that step). Each step is "write then read":

1. write: run the denoiser on each noised memory latent; every ``attn1`` caches its input tokens;
2. read: run the denoiser on the keyframe; every ``attn1`` appends the cached tokens, projected by
   its own ``to_k``/``to_v``, to its keys and values.

With no memory cached a layer calls the processor it replaced, untouched, so an empty memory is
bit for bit the plain model. Installation is a context manager that always puts the original
processors back. Pure torch: no files, no jobs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention_scaffold import (attention_output, attention_tokens, processors_named, project_heads,
                                 swapped_processors)

WritePass = Callable[[torch.Tensor, torch.Tensor], Any]  # (model input, t) -> anything; run for its side effect


@dataclass
class MemoryBank:
    """Per-layer memory tokens of one step. ``mode``: "off" (pass through), "write" (cache inputs),
    "read" (append cached tokens to keys/values)."""
    mode: str = "off"
    tokens: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # layer -> [(1 or B, n_k, D)]

    def clear(self) -> None:
        self.tokens.clear()

    def store(self, layer: str, hidden: torch.Tensor) -> None:
        self.tokens.setdefault(layer, []).append(hidden.detach())

    def memory_for(self, layer: str) -> torch.Tensor | None:
        parts = self.tokens.get(layer)
        if not parts:
            return None
        batch = max(p.shape[0] for p in parts)
        return torch.cat([p.expand(batch, -1, -1) for p in parts], dim=1)

    def token_count(self, layer: str) -> int:
        return sum(p.shape[1] for p in self.tokens.get(layer, ()))


def _tokens_for_keys(attn: nn.Module, hidden_states: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
    """The (B, N, D) tokens ``to_k``/``to_v`` see in a self-attention, after the layer's own norms."""
    return attention_tokens(attn, hidden_states, temb).tokens


class SharedSelfAttentionProcessor:
    """Wraps a self-attention layer's processor: caches its input in write mode, attends to the
    cached memory tokens in read mode, and is the original processor otherwise."""

    def __init__(self, layer: str, original: Any, bank: MemoryBank):
        self.layer = layer
        self.original = original
        self.bank = bank

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        memory = self.bank.memory_for(self.layer) if self.bank.mode == "read" else None
        if self.bank.mode == "write":
            self.bank.store(self.layer, _tokens_for_keys(attn, hidden_states, temb))
        if memory is None or encoder_hidden_states is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if attention_mask is not None:
            raise ValueError(f"{self.layer}: shared self-attention does not support attention masks")
        return self.attend_with_memory(attn, hidden_states, memory, temb)

    @staticmethod
    def attend_with_memory(attn: nn.Module, hidden_states: torch.Tensor, memory: torch.Tensor,
                           temb: torch.Tensor | None) -> torch.Tensor:
        """``AttnProcessor2_0`` with [own tokens; memory tokens] as the key/value sequence."""
        tokens = attention_tokens(attn, hidden_states, temb)
        batch = tokens.tokens.shape[0]
        if memory.shape[0] != batch:  # one memory for every row (CFG halves, batched frames)
            memory = memory[:1].expand(batch, -1, -1)
        context = torch.cat([tokens.tokens, memory.to(tokens.tokens.dtype)], dim=1)
        inputs = project_heads(attn, tokens, context)
        out = F.scaled_dot_product_attention(inputs.query, inputs.key, inputs.value, dropout_p=0.0, is_causal=False)
        return attention_output(attn, out, inputs)


@contextlib.contextmanager
def shared_self_attention(denoiser: nn.Module, layers: Sequence[str]) -> Iterator[MemoryBank]:
    """Install shared self-attention on ``layers`` (keys of ``denoiser.attn_processors``, e.g. the
    family adapter's ``self_attention_names()``) for the duration of the block; yields the bank.
    The original processors are put back on exit, also after an error."""
    bank = MemoryBank()
    wrapped = {name: SharedSelfAttentionProcessor(name, original, bank)
               for name, original in processors_named(denoiser, layers).items()}
    with swapped_processors(denoiser, wrapped):
        try:
            yield bank
        finally:
            bank.clear()


class MemoryWriteHook:
    """A ``DenoiseLoop`` hook: before each prediction of the keyframe, noise every memory latent to
    the step's timestep, run the denoiser on it in write mode, then switch the bank to read mode.

    ``noise_to(latent, noise, t)`` noises a clean latent (``scheduler.add_noise``) and
    ``model_input(x, t)`` prepares it like the loop prepares the keyframe
    (``scheduler.scale_model_input``); ``write_pass(model_input, t)`` runs the denoiser (e.g. the
    adapter's ``predict`` with the memory keyframe's own prompt). Memory noise is drawn once (seeded)
    and reused at every step, so a memory frame follows one consistent noising path.
    """

    def __init__(self, bank: MemoryBank, memory: Sequence[torch.Tensor], write_pass: Sequence[WritePass] | WritePass,
                 noise_to: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                 model_input: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 generator: torch.Generator | None = None):
        self.bank = bank
        self.memory = [m if m.ndim == 4 else m.unsqueeze(0) for m in memory]  # (1, C, h, w) each
        passes = list(write_pass) if isinstance(write_pass, (list, tuple)) else [write_pass] * len(self.memory)
        if len(passes) != len(self.memory):
            raise ValueError(f"{len(self.memory)} memory latents but {len(passes)} write passes")
        self.write_passes = passes
        self.noise_to = noise_to
        self.model_input = model_input
        self.noise = [torch.randn(m.shape, generator=generator, dtype=torch.float32).to(m.device, m.dtype)
                      for m in self.memory]

    @contextlib.contextmanager
    def step_context(self, index: int, t: torch.Tensor) -> Iterator[None]:
        if not self.memory:
            yield
            return
        self.bank.clear()
        self.bank.mode = "write"
        try:
            for latent, noise, write in zip(self.memory, self.noise, self.write_passes):
                write(self.model_input(self.noise_to(latent, noise, t), t), t)
            self.bank.mode = "read"
            yield
        finally:
            self.bank.mode = "off"
            self.bank.clear()
