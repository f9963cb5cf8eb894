"""Scale fusion for the self-attention of UNet transformer blocks (FreeScale, ALGORITHMS.md §1a).

At an upscaled stage with scale ``s = (s_h, s_w)`` (stage size / native size per axis), every
spatial self-attention (``attn1``) computes two branches on the same ``q, k, v``:

- local: attention inside windows the size of the native token grid ``(H/s_h, W/s_w)``, stride =
  half a window, interior windows jittered by up to ±window/8, overlapping outputs averaged;
- global: full self-attention over all tokens, or (``fast``) the ``s_h·s_w`` dilated subsets
  ``[i::s_h, j::s_w]`` attended separately;

and fuses the low frequencies of the local branch with the high frequencies of the global one:

    h = G(h_local) + (h_global − G(h_global)),   G = Gaussian blur, kernel 2·⌈max(s)⌉ − 1, σ = 1.

The fusion runs before the output projection: ``to_out`` mixes channels per token and ``G`` mixes
tokens per channel, so the two commute (``G`` of the bias cancels between the two ``G`` terms).
Projections, norms, residual and rescale are diffusers' ``AttnProcessor2_0`` (``attention_scaffold``), so with
``s = (1, 1)`` (one window = the whole grid, ``G`` = identity) the output is that processor's.

The token grid ``(H, W)`` of a block is not visible inside an attention processor (the transformer
flattens it); ``install_scale_fusion`` puts a forward pre-hook on each ``Transformer2DModel`` that
hands its input's ``(H, W)`` to its processors. Cross-attention (``attn2``) and temporal/motion
attention (``AnimateDiffTransformer3D``, ``TransformerTemporalModel``) are left alone.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from .attention_scaffold import attention_inputs, attention_output, swapped_processors
from .chunked_attention import DEFAULT_MAX_LOGITS, chunked_sdpa

GridSize = tuple[int, int]
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Branches on (B, heads, H, W, d) grids
# ----------------------------------------------------------------------------------------------


def window_starts(
    length: int, window: int, jitter: int = 0, generator: torch.Generator | None = None
) -> list[int]:
    """Window offsets covering ``[0, length)``: stride ``window // 2``, first at 0, last at the end.

    Interior offsets move by a random integer in ``[−jitter, jitter]``; with ``jitter ≤ window/8``
    neighbours still overlap (gap ≤ window/2 + window/4 < window), so every position stays covered.
    """
    if window >= length:
        return [0]
    stride = max(1, window // 2)
    last = length - window
    starts = list(range(0, last, stride)) + [last]
    if jitter > 0 and len(starts) > 2:
        device = generator.device if generator is not None else "cpu"
        moves = torch.randint(-jitter, jitter + 1, (len(starts) - 2,), generator=generator, device=device)
        for index, move in enumerate(moves.tolist(), start=1):
            starts[index] = min(max(starts[index] + move, 0), last)
    return starts


def _sdpa(scale: float | None, max_logits: int = DEFAULT_MAX_LOGITS) -> AttentionFn:
    # queries in chunks: the global branch over every token of an upscaled stage never holds N² logits
    def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return chunked_sdpa(query, key, value, None, max_logits, scale)

    return attend


def _flat(grid: torch.Tensor) -> torch.Tensor:
    batch, heads, height, width, dim = grid.shape
    return grid.reshape(batch, heads, height * width, dim)


def local_window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    window_hw: GridSize,
    starts_h: list[int],
    starts_w: list[int],
    attend: AttentionFn,
    windows_per_batch: int = 64,
) -> torch.Tensor:
    """Attention inside every window ``(top, left) × window_hw``; overlaps averaged.

    ``query/key/value``: ``(B, heads, H, W, d)``; returns the same shape.
    """
    batch, heads, height, width, dim = query.shape
    window_h, window_w = window_hw
    output = torch.zeros_like(value)
    coverage = torch.zeros(height, width, dtype=value.dtype, device=value.device)
    corners = [(top, left) for top in starts_h for left in starts_w]
    for first in range(0, len(corners), windows_per_batch):
        chunk = corners[first : first + windows_per_batch]

        def gather(grid: torch.Tensor) -> torch.Tensor:
            # windows stacked along the batch axis: one attention call per chunk
            return torch.cat([_flat(grid[:, :, t : t + window_h, l : l + window_w]) for t, l in chunk])

        attended = attend(gather(query), gather(key), gather(value))
        attended = attended.reshape(len(chunk), batch, heads, window_h, window_w, dim)
        for index, (top, left) in enumerate(chunk):
            output[:, :, top : top + window_h, left : left + window_w] += attended[index]
            coverage[top : top + window_h, left : left + window_w] += 1
    return output / coverage[:, :, None]


def dilated_global_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, stride_hw: GridSize, attend: AttentionFn
) -> torch.Tensor:
    """Each dilated subset ``[i::s_h, j::s_w]`` attends within itself (FreeScale's fast global)."""
    stride_h, stride_w = stride_hw
    output = torch.empty_like(value)
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i in range(stride_h):
        for j in range(stride_w):
            shape = tuple(query[:, :, i::stride_h, j::stride_w].shape[2:4])
            groups.setdefault(shape, []).append((i, j))
    batch = query.shape[0]
    for (sub_h, sub_w), offsets in groups.items():
        # subsets of equal shape go through one attention call
        def gather(grid: torch.Tensor) -> torch.Tensor:
            return torch.cat([_flat(grid[:, :, i::stride_h, j::stride_w]) for i, j in offsets])

        attended = attend(gather(query), gather(key), gather(value))
        for index, (i, j) in enumerate(offsets):
            part = attended[index * batch : (index + 1) * batch]
            output[:, :, i::stride_h, j::stride_w] = part.reshape(*part.shape[:2], sub_h, sub_w, -1)
    return output


def gaussian_kernel_size(scale: tuple[float, float]) -> int:
    """``2·⌈max(s_h, s_w)⌉ − 1`` (odd; 1 = identity at ``s = 1``)."""
    return max(1, 2 * math.ceil(max(scale) - 1e-9) - 1)


def gaussian_blur_grid(grid: torch.Tensor, kernel_size: int, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur over ``H, W`` of a ``(B, heads, H, W, d)`` grid, edges replicated."""
    if kernel_size <= 1:
        return grid
    batch, heads, height, width, dim = grid.shape
    channels = heads * dim
    planes = grid.permute(0, 1, 4, 2, 3).reshape(batch, channels, height, width)
    offsets = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    taps = (taps / taps.sum()).to(device=grid.device, dtype=grid.dtype)
    radius = kernel_size // 2
    planes = F.pad(planes, (radius, radius, radius, radius), mode="replicate")
    planes = F.conv2d(planes, taps.view(1, 1, 1, -1).expand(channels, 1, 1, kernel_size), groups=channels)
    planes = F.conv2d(planes, taps.view(1, 1, -1, 1).expand(channels, 1, kernel_size, 1), groups=channels)
    return planes.reshape(batch, heads, dim, height, width).permute(0, 1, 3, 4, 2)


def fuse_scales(
    local: torch.Tensor, global_: torch.Tensor, kernel_size: int, sigma: float = 1.0
) -> torch.Tensor:
    """``G(local) + (global − G(global))``: local low frequencies, global high frequencies."""
    if kernel_size <= 1:
        return local + (global_ - global_)
    blur_local = gaussian_blur_grid(local, kernel_size, sigma)
    return blur_local + (global_ - gaussian_blur_grid(global_, kernel_size, sigma))


# ----------------------------------------------------------------------------------------------
# The attention processor
# ----------------------------------------------------------------------------------------------


class ScaleFusionAttnProcessor:
    """Scale-fusion self-attention for one ``attn1`` (diffusers attention processor).

    ``scale``: ``(s_h, s_w)`` = stage size / first-stage size (the native pixel count at the
    target's aspect, ``plan_stages(...)[0]``), so windows keep the token grid the model was trained
    on at every block. ``grid_hw``: the token grid of the
    current call, set by ``install_scale_fusion``'s hook (or read from a 4-D input).
    ``fast``: dilated-subset global branch instead of full attention. ``jitter``: random window
    offsets (± window/8) drawn from ``generator``.
    Cross-attention calls and attention masks fall back to plain ``AttnProcessor2_0``.
    """

    def __init__(
        self,
        scale: tuple[float, float],
        fast: bool = False,
        jitter: bool = True,
        generator: torch.Generator | None = None,
        sigma: float = 1.0,
        windows_per_batch: int = 64,
    ):
        if min(scale) < 1:
            raise ValueError(f"scale fusion is for upscaled stages (scale >= 1), got {scale}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.fast = fast
        self.jitter = jitter
        self.generator = generator
        self.sigma = sigma
        self.windows_per_batch = windows_per_batch
        self.grid_hw: GridSize | None = None
        self._plain = AttnProcessor2_0()

    def native_window(self, grid_hw: GridSize) -> GridSize:
        """The local window: this block's token grid at the first-stage size."""
        height, width = grid_hw
        return (
            min(height, max(1, round(height / self.scale[0]))),
            min(width, max(1, round(width / self.scale[1]))),
        )

    def fused_attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        grid_hw: GridSize,
        attend: AttentionFn,
    ) -> torch.Tensor:
        """Both branches and their fusion on ``(B, heads, N, d)`` projections; returns that shape."""
        batch, heads, tokens, dim = query.shape
        height, width = grid_hw
        if height * width != tokens:
            raise ValueError(f"token grid {grid_hw} does not hold the {tokens} tokens of this call")
        q, k, v = (x.reshape(batch, heads, height, width, dim) for x in (query, key, value))

        window_h, window_w = self.native_window(grid_hw)
        jitter_h, jitter_w = (window_h // 8, window_w // 8) if self.jitter else (0, 0)
        starts_h = window_starts(height, window_h, jitter_h, self.generator)
        starts_w = window_starts(width, window_w, jitter_w, self.generator)
        local = local_window_attention(
            q, k, v, (window_h, window_w), starts_h, starts_w, attend, self.windows_per_batch
        )

        if self.fast:
            stride = (max(1, round(self.scale[0])), max(1, round(self.scale[1])))
            global_ = dilated_global_attention(q, k, v, stride, attend)
        else:
            global_ = attend(query, key, value).reshape(batch, heads, height, width, dim)

        fused = fuse_scales(local, global_, gaussian_kernel_size(self.scale), self.sigma)
        return fused.reshape(batch, heads, tokens, dim)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            # not plain self-attention: windows would be meaningless or break the mask
            return self._plain(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )

        if hidden_states.ndim == 4:
            grid_hw = (hidden_states.shape[-2], hidden_states.shape[-1])
        elif self.grid_hw is None:
            raise RuntimeError("ScaleFusionAttnProcessor needs the token grid: use install_scale_fusion")
        else:
            grid_hw = self.grid_hw
        inputs = attention_inputs(attn, hidden_states, temb=temb)
        fused = self.fused_attention(inputs.query, inputs.key, inputs.value, grid_hw, _sdpa(attn.scale))
        return attention_output(attn, fused, inputs)


# ----------------------------------------------------------------------------------------------
# Installing on a UNet
# ----------------------------------------------------------------------------------------------


def spatial_self_attentions(unet: nn.Module) -> list[tuple[str, Transformer2DModel, Attention]]:
    """``(name, transformer, attn1)`` of every spatial transformer block (no temporal/motion ones)."""
    found = []
    for name, module in unet.named_modules():
        if isinstance(module, Transformer2DModel):
            for index, block in enumerate(module.transformer_blocks):
                if isinstance(getattr(block, "attn1", None), Attention):
                    found.append((f"{name}.transformer_blocks.{index}.attn1", module, block.attn1))
    return found


def _grid_recorder(processors: list[ScaleFusionAttnProcessor]) -> Callable[..., None]:
    def record_grid(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden_states = args[0] if args else kwargs["hidden_states"]
        grid_hw = tuple(hidden_states.shape[-2:])
        for processor in processors:
            processor.grid_hw = grid_hw  # type: ignore[assignment]

    return record_grid


@contextmanager
def install_scale_fusion(
    unet: nn.Module,
    scale: tuple[float, float],
    fast: bool = False,
    jitter: bool = True,
    generator: torch.Generator | None = None,
    sigma: float = 1.0,
) -> Iterator[dict[str, ScaleFusionAttnProcessor]]:
    """Within the block, every spatial ``attn1`` runs scale fusion; originals restored on exit.

    Yields ``{attn1 name: processor}``. Restores processors and removes the grid hooks also when
    the block raises.
    """
    installed: dict[str, ScaleFusionAttnProcessor] = {}
    per_transformer: dict[int, tuple[Transformer2DModel, list[ScaleFusionAttnProcessor]]] = {}
    for name, transformer, _ in spatial_self_attentions(unet):
        processor = ScaleFusionAttnProcessor(scale, fast=fast, jitter=jitter, generator=generator, sigma=sigma)
        installed[name] = processor
        per_transformer.setdefault(id(transformer), (transformer, []))[1].append(processor)
    with swapped_processors(unet, {f"{name}.processor": p for name, p in installed.items()}):
        hooks = []
        try:
            for transformer, processors in per_transformer.values():
                hooks.append(transformer.register_forward_pre_hook(_grid_recorder(processors), with_kwargs=True))
            yield installed
        finally:
            for hook in hooks:
                hook.remove()

__all__ = [
    "ScaleFusionAttnProcessor",
    "dilated_global_attention",
    "fuse_scales",
    "gaussian_blur_grid",
    "gaussian_kernel_size",
    "install_scale_fusion",
    "local_window_attention",
    "spatial_self_attentions",
    "window_starts",
]
