"""A cheap latent -> RGB preview: one linear map per latent channel, fitted to the model's own VAE.

Decoding a latent with the VAE at every step would cost as much as a step; a 3 x C matrix and a
bias cost nothing and show composition and colour while the steps run (the approach of the
"latent preview" factors of ComfyUI and A1111, there hand-fitted per model; here fitted once per
loaded model by least squares on random latents decoded by its VAE, so it works for any family,
the tiny random-weight models included). Previews are for the eye: no claim of accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

PREVIEW_MAX_SIDE = 256  # latent cells; the service shrinks the PNG further


@dataclass(frozen=True)
class LatentToRGB:
    weight: torch.Tensor  # (3, C)
    bias: torch.Tensor  # (3,)
    channel_axis: int  # of the model's latent layout, batch included (1, or 2 for CogVideoX's (B, F, C, h, w))

    def first_frame_channels(self, latents: torch.Tensor) -> torch.Tensor:
        """(C, h, w) of batch item 0, frame 0, from any layout with spatial axes last."""
        x = latents[0].movedim(self.channel_axis - 1, 0)
        return x.reshape(x.shape[0], -1, *x.shape[-2:])[:, 0]

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """(3, h', w') display RGB in [0, 1], h', w' <= PREVIEW_MAX_SIDE, on the latents' device."""
        x = self.first_frame_channels(latents)
        stride = max(1, -(-max(x.shape[-2:]) // PREVIEW_MAX_SIDE))
        x = x[:, ::stride, ::stride].float()
        w, b = self.weight.to(x.device), self.bias.to(x.device)
        return (torch.einsum("rc,chw->rhw", w, x) + b[:, None, None]).clamp(0.0, 1.0)


def channel_axis_of(shape: tuple[int, ...], channels: int) -> int:
    """The first axis after the batch whose size is the latent channel count."""
    return next(i for i in range(1, len(shape)) if shape[i] == channels)


@torch.no_grad()
def fit_latent_to_rgb(decode: Callable[[torch.Tensor], torch.Tensor], latent_shape: tuple[int, ...],
                      channels: int, *, device: torch.device, dtype: torch.dtype, seed: int = 0) -> LatentToRGB:
    """Least-squares map from latent cells to the mean RGB of the pixels they decode to.

    `latent_shape` is a small single-frame latent of the model's layout; `decode` returns
    (B, 3, H, W) or (B, 3, F, H, W) in [0, 1]."""
    axis = channel_axis_of(latent_shape, channels)
    generator = torch.Generator("cpu").manual_seed(seed)
    z = torch.randn(latent_shape, generator=generator).to(device=device, dtype=dtype)
    images = decode(z).float()
    if images.dim() == 5:
        images = images[:, :, 0]
    h, w = latent_shape[-2:]
    target = F.adaptive_avg_pool2d(images, (h, w)).permute(0, 2, 3, 1).reshape(-1, 3).double().cpu()
    cells = torch.stack([_cells(z[i:i + 1], axis) for i in range(z.shape[0])]).reshape(-1, channels).double().cpu()
    design = torch.cat([cells, torch.ones(cells.shape[0], 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, target).solution  # (C + 1, 3)
    return LatentToRGB(solution[:-1].T.float().contiguous(), solution[-1].float().contiguous(), axis)


def _cells(latent: torch.Tensor, axis: int) -> torch.Tensor:
    """(h * w, C) of a (1, …) single-frame latent."""
    x = latent[0].movedim(axis - 1, 0)
    x = x.reshape(x.shape[0], -1, *x.shape[-2:])[:, 0]
    return x.reshape(x.shape[0], -1).T
