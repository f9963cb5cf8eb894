"""sRGB-encoded model pixels -> scene-linear half RGBA on the device the pixels are on.

The conversion the writer needs (``color.srgb_display_to_scene_linear``) is, for the sRGB texture
space, the sRGB inverse EOTF (IEC 61966-2-1) followed by one 3x3 primaries matrix. On a GPU that is
a few elementwise ops; done there, a 4K frame crosses to the host as half RGBA (half the bytes of
float32 RGB+A) and the host does no colour work at all.

The matrix is read from OpenColorIO (the images of the three unit vectors) and the whole model is
checked against OpenColorIO on probe pixels; a config whose transform is not "curve then matrix"
(a studio ``$OCIO`` with a LUT, say) gets ``None`` and the writer keeps OpenColorIO on the host.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from cinegen.common.color import config_source, srgb_display_to_scene_linear

# Within float32 noise of OpenColorIO's lossless CPU path over the probe range (measured: ~5e-6).
MODEL_TOLERANCE = 2e-5


def srgb_decode(encoded: torch.Tensor) -> torch.Tensor:
    """The sRGB inverse EOTF; linear below the knee (negatives stay linear, as OpenColorIO's curve)."""
    curved = ((encoded.clamp_min(0.0) + 0.055) / 1.055) ** 2.4
    return torch.where(encoded <= 0.04045, encoded / 12.92, curved)


@functools.lru_cache(maxsize=4)
def _primaries_matrix_for(source: str) -> np.ndarray | None:
    """Rec.709 -> working-space matrix of config ``source``, or None when curve+matrix is not exact."""
    matrix = srgb_display_to_scene_linear(np.eye(3, dtype=np.float32)).T.astype(np.float64)
    probe = np.random.default_rng(0).uniform(-0.25, 1.25, (4096, 3)).astype(np.float32)
    probe[:3] = [[0.0, 0.0, 0.0], [0.04045, 0.5, 1.0], [0.01, 0.2, 0.9]]
    expected = srgb_display_to_scene_linear(probe)
    model = srgb_decode(torch.from_numpy(probe).double()).numpy() @ matrix.T
    if not np.allclose(model, expected, atol=MODEL_TOLERANCE, rtol=MODEL_TOLERANCE):
        return None
    return matrix.astype(np.float32)


def primaries_matrix() -> np.ndarray | None:
    """The active config's matrix (see `_primaries_matrix_for`); cached per ``$OCIO``."""
    return _primaries_matrix_for(config_source())


def display_to_linear_half_rgba(display_chw: torch.Tensor, alpha_hw: torch.Tensor | None,
                                matrix: np.ndarray) -> torch.Tensor:
    """(3|4, H, W) display sRGB in [0, 1] on any device -> (H, W, 4) scene-linear float16, same device."""
    rgb = srgb_decode(display_chw[:3].float())
    m = torch.as_tensor(matrix, device=rgb.device)
    linear = torch.einsum("ij,jhw->hwi", m, rgb)
    a = torch.ones_like(linear[..., :1]) if alpha_hw is None else alpha_hw.to(linear)[..., None]
    return torch.cat([linear, a], dim=-1).half()
