"""Training-free trajectory control for UNet video models (FreeTraj; ALGORITHMS.md §3, "Training-free path").

Qiu et al., "FreeTraj: Tuning-Free Trajectory Control in Video Diffusion Models" (2024). Three parts:

1. **Box plan.** Each track (pixels, every frame) with a size becomes a box per frame, kept as
   fractions of the frame (x0, y0, x1, y1), so masks can be drawn at any attention resolution.
2. **Trajectory noise.** x_T is drawn; one shared noise patch per track is pasted at its box in every
   frame; the low frequencies of that trajectory noise are kept and the high ones replaced by fresh
   noise through a 3-D Butterworth low-pass (FreeInit's form, on the power response):

       L(f_t, f_h, f_w) = 1 / (1 + (d² / d_s²)^n),   d² = (d_s/d_t · f_t)² + f_h² + f_w²,
       x_T = IFFT( L · FFT(x_traj) + (1 − L) · FFT(x_fresh) ),

   f in [−1, 1) (2 × `fftfreq`, so DC is exactly 0), n = 4, d_s = 0.25, d_t = 0.1.
3. **Attention masks, first ~6 steps only** (FreeTraj's `ddim_edit = 6`). Every attention token is
   labelled 0 (background) or k + 1 (inside track k's box, later tracks win):
   - spatial self-attention: logits between tokens of different labels are multiplied by 0.01;
   - temporal attention: at each location, logits between two frames whose labels differ there ×0.01;
   - cross-attention: outside its box a track's subject tokens are masked out; inside, a Gaussian
     bump (peak at the box centre, σ = side/3) of height 0.25 / (box area fraction) / (number of
     subject tokens) is added to their attention probabilities, as in the reference code. (The
     reference also masks every other token inside the box, which leaves those rows uniform; we keep
     their plain softmax there — our choice.)
   A clip longer than the motion module's runs its temporal attention in FreeNoise windows
   (pipelines/long_video.py): each window's mask is built from its own frames' labels, so each window
   follows its own slice of the track and the overlap it shares with its neighbours.
   The processors are swapped in per step by a DenoiseLoop hook's `step_context` and the originals
   are always put back on exit, also on error or cancel. Batch rows (CFG halves) all get the masks,
   as in the reference; the negative prompt's tokens at the subject positions are masked alike.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from diffusers.utils.torch_utils import randn_tensor

from .attention_scaffold import attention_inputs, attention_output, swapped_processors  # noqa: F401 (re-exported)
from .chunked_attention import DEFAULT_MAX_LOGITS, chunked_sdpa, label_scaled_attention, with_additive

DEFAULT_BOX_FRACTION = 0.35  # of the shorter frame side, when a track has no size (FreeTraj uses 0.3–0.4)


# ------------------------------------------------------------------------------------------- boxes
@dataclass(frozen=True)
class BoxPlan:
    """Per track and frame, a box as fractions of the frame: (K, F, 4) = x0, y0, x1, y1, top-left origin."""
    boxes: torch.Tensor

    @property
    def tracks(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def frames(self) -> int:
        return int(self.boxes.shape[1])

    def labels(self, height: int, width: int) -> torch.Tensor:
        """(F, height·width) long: 0 outside every box, k + 1 inside track k's box (cell centres decide).

        A box smaller than one cell still claims the cell holding its centre, so no track vanishes at
        the coarse attention levels."""
        boxes = self.boxes.to(torch.float64)
        ys = (torch.arange(height, dtype=torch.float64) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float64) + 0.5) / width
        out = torch.zeros(self.frames, height, width, dtype=torch.long)
        for k in range(self.tracks):
            x0, y0, x1, y1 = boxes[k].unbind(-1)  # each (F,)
            in_x = (xs[None] >= x0[:, None]) & (xs[None] < x1[:, None])
            in_y = (ys[None] >= y0[:, None]) & (ys[None] < y1[:, None])
            inside = in_y[:, :, None] & in_x[:, None, :]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            for f in range(self.frames):
                if not inside[f].any() and 0 <= cx[f] < 1 and 0 <= cy[f] < 1:
                    inside[f, int(cy[f] * height), int(cx[f] * width)] = True
            out[inside] = k + 1
        return out.reshape(self.frames, height * width)

    def cell_boxes(self, height: int, width: int) -> list[list[tuple[int, int, int, int]]]:
        """Per track, per frame (row0, col0, rows, cols) on a height×width grid; the size is the same in
        every frame so one noise patch fits all. Rows/cols may run off the grid (pasting clips)."""
        out = []
        for k in range(self.tracks):
            b = self.boxes[k].to(torch.float64)
            rows = max(1, _round_half_up(float((b[0, 3] - b[0, 1]) * height)))
            cols = max(1, _round_half_up(float((b[0, 2] - b[0, 0]) * width)))
            track = []
            for f in range(self.frames):
                cy, cx = float(b[f, 1] + b[f, 3]) / 2 * height, float(b[f, 0] + b[f, 2]) / 2 * width
                track.append((_round_half_up(cy - rows / 2), _round_half_up(cx - cols / 2), rows, cols))
            out.append(track)
        return out


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)  # not Python's round-half-even: box cells must not jitter by parity


def plan_boxes(tracks: torch.Tensor, width: int, height: int, sizes: list[float | None] | None = None,
               default_fraction: float = DEFAULT_BOX_FRACTION) -> BoxPlan:
    """Tracks (K, F, 2) top-left pixel centres → square boxes of side `sizes[k]` pixels (or
    `default_fraction` of the shorter side) centred on the track in every frame."""
    tracks = torch.as_tensor(tracks, dtype=torch.float64)
    sizes = sizes or [None] * tracks.shape[0]
    side = torch.tensor([s if s is not None else default_fraction * min(width, height) for s in sizes],
                        dtype=torch.float64)[:, None]
    cx, cy = tracks[..., 0] / width, tracks[..., 1] / height
    half_w, half_h = side / 2 / width, side / 2 / height
    return BoxPlan(torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1))


# ------------------------------------------------------------------------------------------- noise
@dataclass(frozen=True)
class ButterworthParams:
    order: int = 4
    spatial_cutoff: float = 0.25
    temporal_cutoff: float = 0.1


def butterworth_lowpass(frames: int, height: int, width: int, params: ButterworthParams = ButterworthParams(),
                        device: torch.device | str | None = None) -> torch.Tensor:
    """(F, H, W) gain in unshifted FFT order (as `torch.fft.fftn` returns): 1 at DC, ½ at d = d_s."""
    ft, fh, fw = (2 * torch.fft.fftfreq(n, dtype=torch.float64, device=device) for n in (frames, height, width))
    ratio = params.spatial_cutoff / params.temporal_cutoff  # stretches time so its cut-off lands at d_s
    d2 = (ratio * ft)[:, None, None] ** 2 + fh[None, :, None] ** 2 + fw[None, None, :] ** 2
    return 1.0 / (1.0 + (d2 / params.spatial_cutoff ** 2) ** params.order)


def lowpass_mix(low_from: torch.Tensor, high_from: torch.Tensor, params: ButterworthParams = ButterworthParams()
                ) -> torch.Tensor:
    """Low frequencies of `low_from`, high ones of `high_from`, over the last three dims (F, H, W)."""
    gain = butterworth_lowpass(*low_from.shape[-3:], params=params, device=low_from.device)
    dims = (-3, -2, -1)
    low = torch.fft.fftn(low_from.double(), dim=dims) * gain
    high = torch.fft.fftn(high_from.double(), dim=dims) * (1 - gain)
    mixed = low + high
    return torch.fft.ifftn(mixed, dim=dims).real.to(low_from.dtype)


def paste_shared_patches(noise: torch.Tensor, plan: BoxPlan, patches: list[torch.Tensor]) -> torch.Tensor:
    """Copy of `noise` (B, C, F, h, w) with `patches[k]` (B, C, rows, cols) at track k's box in every frame."""
    out = noise.clone()
    h, w = noise.shape[-2:]
    for patch, track in zip(patches, plan.cell_boxes(h, w)):
        for f, (r0, c0, rows, cols) in enumerate(track):
            top, left = max(r0, 0), max(c0, 0)
            bottom, right = min(r0 + rows, h), min(c0 + cols, w)
            if bottom > top and right > left:  # the part of the box that is on screen
                out[:, :, f, top:bottom, left:right] = patch[:, :, top - r0:bottom - r0, left - c0:right - c0]
    return out


def trajectory_noise(shape: tuple[int, ...], plan: BoxPlan, generator: torch.Generator | None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     params: ButterworthParams = ButterworthParams(), base: torch.Tensor | None = None) -> torch.Tensor:
    """x_T of `shape` (B, C, F, h, w) for a box plan: base draw (the stock one, or `base` — a long clip's
    FreeNoise draw), one patch per track, then fresh noise for the high frequencies — all from
    `generator`, in that order."""
    if base is None:
        base = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)
    batch, channels, _, h, w = shape
    patches = [randn_tensor((batch, channels, track[0][2], track[0][3]), generator=generator,
                            device=torch.device(device), dtype=dtype) for track in plan.cell_boxes(h, w)]
    fresh = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)
    return lowpass_mix(paste_shared_patches(base, plan, patches), fresh, params)


# --------------------------------------------------------------------------------------- attention
@dataclass(frozen=True)
class FreeTrajConfig:
    attention_steps: int = 6  # FreeTraj's ddim_edit
    cross_label_logit_scale: float = 0.01
    cross_attention_strength: float = 0.25
    bump_sigma_fraction: float = 1 / 3  # σ of the in-box Gaussian bump, as a fraction of the box side
    max_logits: int = DEFAULT_MAX_LOGITS  # logits per attention call: bounds memory whatever the size


@dataclass
class AttentionNames:
    """Processor keys (as in `denoiser.attn_processors`) of each kind of attention."""
    spatial: list[str]
    temporal: list[str]
    cross: list[str]


@dataclass
class FreeTrajGuide:
    """What the processors need: the plan, the latent grid, subject tokens and the batch of this call."""
    plan: BoxPlan
    latent_size: tuple[int, int]  # (h, w) of the denoiser's input
    subject_tokens: list[list[int]]  # per track, indices into the text tokens
    config: FreeTrajConfig = field(default_factory=FreeTrajConfig)
    batch: int = 1  # latent batch of the current denoiser call (CFG rows included); set by a pre-hook
    # a clip longer than the motion module's: the FreeNoise windows [start, stop) its temporal attention
    # runs over, in the order it runs them (pipelines/long_video.free_noise_spans); None = the whole clip
    temporal_windows: list[tuple[int, int]] | None = None
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def temporal_span(self, call: int, frames: int) -> tuple[int, int]:
        """The frames the `call`-th temporal attention call of one layer (counted over a step) sees, when it
        sees `frames` of them: the whole clip, or FreeNoise window `call` mod the number of windows."""
        if frames == self.plan.frames:
            return 0, frames
        windows = self.temporal_windows or []
        if not windows:
            raise ValueError(f"temporal attention over {frames} of {self.plan.frames} frames, but no windows are set")
        span = windows[call % len(windows)]
        if span[1] - span[0] != frames:
            raise ValueError(f"FreeNoise window {span} does not hold the {frames} frames the attention sees")
        return span

    def grid(self, tokens: int) -> tuple[int, int]:
        """(h, w) of a UNet level with `tokens` tokens: the latent grid halved (rounding up) k times."""
        h, w = self.latent_size
        while h * w > tokens:
            h, w = -(-h // 2), -(-w // 2)
        if h * w != tokens:
            raise ValueError(f"{tokens} attention tokens match no level of a {self.latent_size} latent grid")
        return h, w

    def labels(self, tokens: int, device: torch.device) -> torch.Tensor:
        key = ("labels", tokens, device)
        if key not in self._cache:
            self._cache[key] = self.plan.labels(*self.grid(tokens)).to(device)
        return self._cache[key]

    def cross_edit(self, tokens: int, text_tokens: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(F, N, T) bool of logits to mask out, and (F, N, T) probability bumps for subject tokens."""
        key = ("cross", tokens, text_tokens, device, dtype)
        if key not in self._cache:
            self._cache[key] = self._cross_edit(tokens, text_tokens, device, dtype)
        return self._cache[key]

    def _cross_edit(self, tokens: int, text_tokens: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        lab = self.labels(tokens, device)
        h, w = self.grid(tokens)
        masked = torch.zeros(self.plan.frames, tokens, text_tokens, dtype=torch.bool, device=device)
        bump = torch.zeros(self.plan.frames, tokens, text_tokens, dtype=dtype, device=device)
        ys = (torch.arange(h, device=device, dtype=torch.float64) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float64) + 0.5) / w
        for k, subject in enumerate(self.subject_tokens):
            subject = [i for i in subject if i < text_tokens]
            if not subject:
                continue
            inside = lab == k + 1  # (F, N)
            masked[:, :, subject] |= ~inside[:, :, None]
            box = self.plan.boxes[k].to(device=device, dtype=torch.float64)  # (F, 4)
            width, height = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
            area = (width * height).clamp(min=1e-6)
            sx, sy = width * self.config.bump_sigma_fraction, height * self.config.bump_sigma_fraction
            dx = (xs[None, :] - (box[:, 0:1] + box[:, 2:3]) / 2) / sx[:, None]  # (F, w)
            dy = (ys[None, :] - (box[:, 1:2] + box[:, 3:4]) / 2) / sy[:, None]  # (F, h)
            gauss = torch.exp(-(dy[:, :, None] ** 2 + dx[:, None, :] ** 2) / 2).reshape(self.plan.frames, -1)
            height_k = self.config.cross_attention_strength / area / len(subject)  # (F,)
            value = (gauss * height_k[:, None] * inside).to(dtype)
            bump[:, :, subject] += value[:, :, None]
        return masked, bump


class FreeTrajAttnProcessor:
    """Attention with FreeTraj's edits for one kind ("spatial", "temporal", "cross"); otherwise the
    same computation as diffusers' `AttnProcessor2_0` (logits at 1/√d, softmax, values, out proj).

    Memory: no logit matrix is held whole. Queries go through `scaled_dot_product_attention` in
    chunks of at most `config.max_logits` logits with a boolean mask per chunk (`chunked_attention`);
    the label masks are built per chunk from the (F, N) labels, so nothing of size N² exists."""

    def __init__(self, kind: str, guide: FreeTrajGuide):
        if kind not in ("spatial", "temporal", "cross"):
            raise ValueError(f"unknown attention kind {kind!r}")
        self.kind = kind
        self.guide = guide
        self.calls = 0  # temporal calls so far (this processor lives one step): FreeNoise runs windows in order

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        inputs = attention_inputs(attn, hidden_states, encoder_hidden_states, temb)
        query, key, value = inputs.query, inputs.key, inputs.value
        rows = query.shape[0]
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[2], rows)
            mask = mask.view(rows, attn.heads, -1, mask.shape[-1])
        return attention_output(attn, self.attend(query, key, value, mask), inputs)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, heads, Nq, d) attention output with this kind's edits; `mask` additive, as diffusers prepares it."""
        g = self.guide
        rows, _, nq, _ = query.shape
        nk = key.shape[2]
        limit, small = g.config.max_logits, g.config.cross_label_logit_scale

        def per_row(same: torch.Tensor) -> torch.Tensor:  # (X, c, K) per frame or location → (rows, 1, c, K)
            return same[None].expand(g.batch, *same.shape).reshape(rows, 1, *same.shape[1:])

        if self.kind == "spatial":  # rows = batch × frames (frames inner), tokens = one frame
            lab = g.labels(nq, query.device)  # (F, N)
            return label_scaled_attention(
                query, key, value, lambda a, b: per_row(lab[:, a:b, None] == lab[:, None, :]), small, limit, mask)
        if self.kind == "temporal":  # rows = batch × locations, tokens = frames (of one FreeNoise window)
            start, stop = g.temporal_span(self.calls, nk)
            self.calls += 1
            lab = g.labels(rows // g.batch, query.device)[start:stop].T  # (N, window frames): its own slice
            return label_scaled_attention(
                query, key, value, lambda a, b: per_row(lab[:, a:b, None] == lab[:, None, :]), small, limit, mask)
        masked, bump = g.cross_edit(nq, nk, query.device, query.dtype)  # (F, N, T) each
        masked = masked & ~masked.all(-1, keepdim=True)  # never mask every token of a row

        def visible(a: int, b: int) -> torch.Tensor:
            return with_additive(per_row(~masked[:, a:b]), mask, a, b)

        out = chunked_sdpa(query, key, value, visible, limit)
        # probabilities + bump, times V  =  attention output + bump @ V (the bump is linear in N: (F, N, T))
        return out + per_row(bump) @ value


# ------------------------------------------------------------------------------------ installation
class FreeTrajAttention:
    """DenoiseLoop hook: FreeTraj's processors during steps 0 … attention_steps − 1, plain attention after.

    `step_context` installs them (and a pre-hook reading the latent batch) around that step's
    prediction and restores the originals when the step ends, however it ends."""

    def __init__(self, denoiser: nn.Module, guide: FreeTrajGuide, names: AttentionNames):
        self.denoiser = denoiser
        self.guide = guide
        self.names = names

    def is_active(self, index: int) -> bool:
        return index < self.guide.config.attention_steps

    def processors(self) -> dict[str, FreeTrajAttnProcessor]:
        out: dict[str, FreeTrajAttnProcessor] = {}
        for kind, keys in (("spatial", self.names.spatial), ("temporal", self.names.temporal),
                           ("cross", self.names.cross)):
            out.update({k: FreeTrajAttnProcessor(kind, self.guide) for k in keys})
        return out

    @contextlib.contextmanager
    def step_context(self, index: int, t: torch.Tensor) -> Iterator[None]:
        if not self.is_active(index):
            yield
            return

        def read_batch(module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            self.guide.batch = int(sample.shape[0])

        handle = self.denoiser.register_forward_pre_hook(read_batch, with_kwargs=True)
        try:
            with swapped_processors(self.denoiser, self.processors()):
                yield
        finally:
            handle.remove()


def subject_token_indices(token_ids: list[int], word_ids: list[int]) -> list[int]:
    """Positions of the first occurrence of `word_ids` as a run inside `token_ids` ([] if absent)."""
    n = len(word_ids)
    if n == 0:
        return []
    for start in range(len(token_ids) - n + 1):
        if token_ids[start:start + n] == word_ids:
            return list(range(start, start + n))
    return []
