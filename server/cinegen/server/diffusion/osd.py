"""Offset Shifting Denoiser step (DynamicScaler, seed 003; ALGORITHMS.md §2), model-agnostic.

One denoising step ``t → t_prev`` over a latent larger than the model's native size: the windows
of ``windows.plan_windows`` (shifted every step) are read, denoised one scheduler step by the
caller's callable and written back *sequentially*, so every latent is advanced once per step
(MultiDiffusion instead denoises every overlapping view and averages them).

A mask marks latents already advanced this step. Before a window is denoised, its
already-advanced part (at ``t_prev``, less noisy) is pushed back to ``t``:

    x ← √(ᾱ_t / ᾱ_{t_prev}) · x + √(1 − ᾱ_t / ᾱ_{t_prev}) · ε          (forward q(x_t | x_{t_prev}))

and after denoising that part is blended with the value it had before the push-back:

    x_new ← (1 − r_i) · x_new + r_i · x_prev,    r_i = r_max · (1 − i/K) for i < K, else 0

(``r_max = 0.5``, ``K = 20`` as in the reference defaults; the handbook gives K = 15–20).

Which parts of a window are "already advanced" depends only on the plan's geometry, so the
re-noising noise is drawn up front, one tensor per window that needs it, in plan order. That makes
``denoise_windows_batched`` (disjoint windows denoised in one call, in dependency "waves") give
the same result as the sequential step for any denoiser that treats batch items independently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cinegen.server.diffusion.windows import Window, read_window, window_mask, write_window

__all__ = [
    "BlendSchedule",
    "DenoiseCounts",
    "alpha_bar_at",
    "denoise_windows_batched",
    "disjoint_groups",
    "draw_noise",
    "generator_for",
    "offset_shift_denoise_step",
    "overlap_matrix",
    "plan_waves",
    "renoise_to",
]

DenoiseWindow = Callable[[Tensor, int], Tensor]
DenoiseBatch = Callable[[Tensor, Sequence[int]], Tensor]
Renoise = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class BlendSchedule:
    """Blend of a re-denoised latent with its earlier value: ``r_i = r_max·(1 − i/K)`` for ``i < K``."""

    r_max: float = 0.5
    steps: int = 20  # K

    def ratio(self, step_index: int) -> float:
        if step_index < 0:
            raise ValueError(f"step index must be >= 0, got {step_index}")
        if step_index >= self.steps:
            return 0.0
        return self.r_max * (1.0 - step_index / self.steps)


@dataclass
class DenoiseCounts:
    """Per-position tallies over one step: how often denoised, how often pushed back to ``t``."""

    denoised: Tensor
    renoised: Tensor

    @classmethod
    def zeros(cls, latent_size: tuple[int, int, int], device: torch.device | str | None = None) -> DenoiseCounts:
        return cls(
            torch.zeros(latent_size, dtype=torch.int32, device=device),
            torch.zeros(latent_size, dtype=torch.int32, device=device),
        )

    @property
    def net_advances(self) -> Tensor:
        """Times each position went ``t → t_prev`` net of push-backs; 1 everywhere after a step."""
        return self.denoised - self.renoised


def alpha_bar_at(alphas_cumprod: Tensor, timestep: int | Tensor, final_alpha_cumprod: float = 1.0) -> float:
    """``ᾱ`` at a timestep; a negative timestep (past the last step) is the clean level."""
    index = int(timestep)
    return final_alpha_cumprod if index < 0 else float(alphas_cumprod[index])


def renoise_to(x: Tensor, alpha_bar_from: float, alpha_bar_to: float, noise: Tensor) -> Tensor:
    """Move ``x`` from noise level ``ᾱ_from`` to the noisier ``ᾱ_to <= ᾱ_from`` (forward process)."""
    if alpha_bar_to > alpha_bar_from:
        raise ValueError(f"re-noising must add noise: ᾱ_to={alpha_bar_to} > ᾱ_from={alpha_bar_from}")
    keep = alpha_bar_to / alpha_bar_from
    return keep**0.5 * x + (1.0 - keep) ** 0.5 * noise.to(dtype=x.dtype)


def plan_waves(windows: Sequence[Window]) -> list[list[int]]:
    """Group window indices into waves of pairwise disjoint windows, keeping overlap order.

    A window goes one wave after the latest earlier window it overlaps, so every position sees
    its windows in plan order — the sequential result is unchanged.
    """
    overlap = overlap_matrix(windows)
    level = np.zeros(len(windows), dtype=np.int64)
    for k in range(len(windows)):
        earlier = level[:k][overlap[:k, k]]
        level[k] = 1 + earlier.max() if earlier.size else 0
    waves: list[list[int]] = [[] for _ in range(int(level.max(initial=-1)) + 1)]
    for k, wave in enumerate(level.tolist()):
        waves[wave].append(k)
    return waves


def disjoint_groups(overlap: np.ndarray) -> list[list[int]]:
    """Region indices in groups of pairwise disjoint regions (first fit, in plan order).

    ``overlap`` is the (K, K) bool matrix of which regions share a latent. Going through the groups
    one after the other is another sequential order of the same regions (every latent still advanced
    once per step), in which each group can be denoised in one call; in plan order, neighbours that
    overlap chain every region to the one before it (a ring of overlapping windows, or the sphere's
    views, give one region per wave)."""
    groups: list[list[int]] = []
    members: list[np.ndarray] = []  # per group: which regions overlap one of its members
    for k in range(len(overlap)):
        for group, touched in zip(groups, members):
            if not touched[k]:
                group.append(k)
                touched |= overlap[k]
                break
        else:
            groups.append([k])
            members.append(overlap[k].copy())
    return groups


def overlap_matrix(windows: Sequence[Window]) -> np.ndarray:
    """(K, K) bool: windows j and k share a latent position (`windows_overlap` for every pair at once).

    Per axis, spans [a, a + n) and [b, b + m) taken mod the extent E meet iff (b − a) mod E < n or
    (a − b) mod E < m; a span that does not wrap is a plain interval, for which the same holds."""
    overlap = np.ones((len(windows), len(windows)), dtype=bool)
    for axis in range(3):
        spans = [w.spans[axis] for w in windows]
        start = np.array([sp.start for sp in spans], dtype=np.int64)
        size = np.array([sp.size for sp in spans], dtype=np.int64)
        extent = np.array([sp.extent for sp in spans], dtype=np.int64)
        gap = (start[None, :] - start[:, None]) % extent[:, None]  # [j, k]: from j's start to k's
        overlap &= (gap < size[:, None]) | (gap.T < size[None, :])
    return overlap


def _advanced_before(
    windows: Sequence[Window], latent_size: tuple[int, int, int], device: torch.device
) -> list[Tensor | None]:
    """For each window, the ``(f, h, w)`` mask of its positions advanced by earlier windows.

    Which windows have such positions, and whether the windows cover the latent, is geometry: it
    is decided on the host (`overlap_matrix`), so building the masks never waits on the device."""
    _check_covered(windows, latent_size)
    overlaps_earlier = np.triu(overlap_matrix(windows), k=1).any(axis=0) if windows else np.zeros(0, bool)
    advanced = torch.zeros(latent_size, dtype=torch.bool, device=device)
    masks: list[Tensor | None] = []
    for k, window in enumerate(windows):
        masks.append(read_window(advanced, window) if overlaps_earlier[k] else None)
        write_window(advanced, window, torch.ones(window.shape, dtype=torch.bool, device=device))
    return masks


def _check_covered(windows: Sequence[Window], latent_size: tuple[int, int, int]) -> None:
    covered = np.zeros(latent_size, dtype=bool)
    for window in windows:
        f, h, w = ((sp.start + np.arange(sp.size)) % sp.extent for sp in window.spans)
        covered[np.ix_(f, h, w)] = True
    if not covered.all():
        raise ValueError(f"the windows leave {int((~covered).sum())} latent positions uncovered")


def draw_noise(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise of ``shape`` on ``like``'s device and dtype, drawn there (see ``_on_device``;
    a step passes the generator through ``generator_for`` once, not once per window)."""
    generator = generator_for(generator, like.device)
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def generator_for(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """``generator`` itself where it can draw for ``device`` (a CPU latent, or the same device), else a
    generator on ``device`` seeded from it (``_on_device``)."""
    if generator is None or device.type in ("cpu", generator.device.type):
        return generator
    return _on_device(generator, device)


def _on_device(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on the latent's device, seeded by one draw of ``generator``: the push-back noise is
    drawn where it is used (no host draw and copy per window), reproducible per seed and device. On a
    CPU latent the CPU generator draws as before, so CPU results are unchanged."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device).manual_seed(seed)


def _osd_step(
    latent: Tensor,
    t: int | Tensor,
    t_prev: int | Tensor,
    windows: Sequence[Window],
    waves: Sequence[Sequence[int]],
    denoise_wave: Callable[[list[Tensor], Sequence[int]], list[Tensor]],
    alphas_cumprod: Tensor,
    step_index: int,
    blend: BlendSchedule,
    generator: torch.Generator | None,
    counts: DenoiseCounts | None,
    renoise: Renoise | None,
) -> Tensor:
    latent_size = tuple(latent.shape[-3:])
    advanced_before = _advanced_before(windows, latent_size, latent.device)  # type: ignore[arg-type]
    if renoise is None:
        alpha_t, alpha_prev = alpha_bar_at(alphas_cumprod, t), alpha_bar_at(alphas_cumprod, t_prev)
        renoise = lambda x, noise: renoise_to(x, alpha_prev, alpha_t, noise)  # noqa: E731
    leading = tuple(latent.shape[:-3])
    generator = generator_for(generator, latent.device)  # one device generator a step, not one a window
    noises = [
        None if mask is None else draw_noise(leading + window.shape, latent, generator)
        for window, mask in zip(windows, advanced_before)
    ]
    ratio = blend.ratio(step_index)
    out = latent.clone()
    for wave in waves:
        inputs: list[Tensor] = []
        earlier: list[Tensor | None] = []
        for k in wave:
            x = read_window(out, windows[k])
            mask = advanced_before[k]
            earlier.append(x if mask is not None else None)
            if mask is not None:
                x = torch.where(mask, renoise(x, noises[k]), x)
            inputs.append(x)
        outputs = denoise_wave(inputs, wave)
        for k, x_in, x_new, x_prev in zip(wave, inputs, outputs, earlier):
            if tuple(x_new.shape) != tuple(x_in.shape):
                raise ValueError(
                    f"denoiser returned shape {tuple(x_new.shape)} for window {k} of shape {tuple(x_in.shape)}"
                )
            mask = advanced_before[k]
            if mask is not None and ratio > 0.0:
                x_new = torch.where(mask, (1.0 - ratio) * x_new + ratio * x_prev, x_new)
            write_window(out, windows[k], x_new)
            if counts is not None:
                counts.denoised += window_mask(latent_size, windows[k], counts.denoised.device)  # type: ignore
                if mask is not None:
                    counts.renoised += write_window(
                        torch.zeros(latent_size, dtype=torch.bool, device=counts.renoised.device), windows[k], mask
                    )
    return out


def offset_shift_denoise_step(
    latent: Tensor,
    t: int | Tensor,
    t_prev: int | Tensor,
    windows: Sequence[Window],
    denoise_window: DenoiseWindow,
    alphas_cumprod: Tensor,
    step_index: int,
    blend: BlendSchedule = BlendSchedule(),
    generator: torch.Generator | None = None,
    *,
    counts: DenoiseCounts | None = None,
    renoise: Renoise | None = None,
) -> Tensor:
    """One OSD step ``t → t_prev``; returns the new latent (the input is left untouched).

    ``denoise_window(x_window_at_t, window_index)`` advances one window by one scheduler step (the
    caller owns scheduler state, e.g. one scheduler copy per window index). ``t`` / ``t_prev``
    index ``alphas_cumprod`` (``t_prev < 0`` means the clean level). ``counts`` (optional) is
    incremented with per-position denoise/push-back tallies. ``renoise(x, noise)`` replaces the
    DDPM push-back for other parametrisations (e.g. flow matching).
    """
    return _osd_step(
        latent, t, t_prev, windows, [[k] for k in range(len(windows))],
        lambda inputs, wave: [denoise_window(inputs[0], wave[0])],
        alphas_cumprod, step_index, blend, generator, counts, renoise,
    )  # fmt: skip


def denoise_windows_batched(
    latent: Tensor,
    t: int | Tensor,
    t_prev: int | Tensor,
    windows: Sequence[Window],
    denoise_batch: DenoiseBatch,
    alphas_cumprod: Tensor,
    step_index: int,
    blend: BlendSchedule = BlendSchedule(),
    generator: torch.Generator | None = None,
    *,
    max_batch: int | None = None,
    counts: DenoiseCounts | None = None,
    renoise: Renoise | None = None,
) -> Tensor:
    """``offset_shift_denoise_step`` with disjoint windows of equal shape denoised in one call.

    ``denoise_batch(x, window_indices)`` gets the windows concatenated along dim 0 (each window
    contributes ``latent.shape[0]`` items) and returns the same shape. At most ``max_batch``
    windows go into one call. Same result as the sequential step when batch items are independent.
    """
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")

    def denoise_wave(inputs: list[Tensor], wave: Sequence[int]) -> list[Tensor]:
        outputs: list[Tensor | None] = [None] * len(wave)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for slot, x in enumerate(inputs):
            by_shape.setdefault(tuple(x.shape), []).append(slot)
        for slots in by_shape.values():
            chunk = max_batch or len(slots)
            for begin in range(0, len(slots), chunk):
                group = slots[begin : begin + chunk]
                batch = torch.cat([inputs[s] for s in group], dim=0)
                result = denoise_batch(batch, [wave[s] for s in group])
                if tuple(result.shape) != tuple(batch.shape):
                    raise ValueError(f"batched denoiser returned {tuple(result.shape)} for {tuple(batch.shape)}")
                for s, piece in zip(group, result.chunk(len(group), dim=0)):
                    outputs[s] = piece
        return outputs  # type: ignore[return-value]

    return _osd_step(
        latent, t, t_prev, windows, plan_waves(windows), denoise_wave,
        alphas_cumprod, step_index, blend, generator, counts, renoise,
    )  # fmt: skip
