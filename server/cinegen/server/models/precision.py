"""The dtype each family's weights are loaded in on a device (pure: no torch state is read).

On CUDA: bfloat16 for Wan and CogVideoX, which are trained in it (float16 overflows in their T5
text encoders and in CogVideoX-5B's transformer); float16 for the SD family (SD 1.x/2.x, SDXL,
AnimateDiff), whose VAE `sd.keep_vae_in_float32` keeps in float32 when its config asks for it
(`force_upcast`, true for the stock SD and SDXL VAEs: float16 decodes to NaN/black frames there), as
diffusers upcasts it for decode; Wan's VAE is always loaded in float32 (`wan.load_wan`). A GPU
without bfloat16 (before Ampere) gets float32 for the DiT families rather than an overflowing
float16. CogVideoX then still takes the half precision its transformer was saved in when that is
half (`cogvideox.cogvideox_dtype`: 5B bfloat16, 2B float16). On the CPU everything is float32:
half-precision matmuls there are slow or missing.
"""
from __future__ import annotations

import torch

BF16_FAMILIES = ("wan", "cogvideox")


def dtype_for(family: str, device: torch.device | str, *, bf16_supported: bool = True) -> torch.dtype:
    if torch.device(device).type != "cuda":
        return torch.float32
    if family in BF16_FAMILIES:
        return torch.bfloat16 if bf16_supported else torch.float32
    return torch.float16


def device_supports_bf16(device: torch.device | str) -> bool:
    """Whether the CUDA device runs bfloat16 natively (compute capability 8.0 and up)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8
