"""SparseCtrl (Guo et al., 2023) beside an AnimateDiff model: keyframes as sparse conditions.

A SparseCtrl RGB encoder (diffusers' `SparseControlNetModel`, `use_simplified_condition_embedding`)
is a ControlNet with motion modules. Its condition is a clip-long latent that holds a keyframe's VAE
latent at each conditioned frame and zeros elsewhere, plus a mask channel (1 on the conditioned
frames); its residuals are added to the AnimateDiff UNet's skip connections and mid block, as
`AnimateDiffSparseControlNetPipeline` does. The noisy latent itself is not its input (it zeroes it).

On disk it is a diffusers folder (`config.json` with `_class_name: SparseControlNetModel`), found
beside the models and offered as an add-on of kind `sparsectrl` for SD 1.x AnimateDiff models. The
loaded model is kept on the AnimateDiff adapter, so it is unloaded with it, and is under the adapter's
`--offload` mode (models/offload.py `attach`: with model offload it goes back to CPU memory with the UNet).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import FailedPrecondition
from .offload import attach, current_mode

SPARSECTRL_CLASS = "SparseControlNetModel"
SPARSECTRL_KIND = "sparsectrl"
DEFAULT_CONDITIONING_SCALE = 1.0  # the stock pipeline's controlnet_conditioning_scale


def is_sparsectrl_folder(folder: Path) -> bool:
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("_class_name") == SPARSECTRL_CLASS
    except (OSError, ValueError, AttributeError):
        return False


def load_sparsectrl(path: str | Path, device: torch.device, dtype: torch.dtype):
    from diffusers import SparseControlNetModel

    from .folder_check import check_loaded, weights_variant

    model = SparseControlNetModel.from_pretrained(str(path), dtype=dtype, local_files_only=True,
                                                  variant=weights_variant(Path(path)))
    check_loaded(model)
    return model.to(device).eval()


def check_fits(controlnet, unet, name: str, model_id: str) -> None:
    """FAILED_PRECONDITION when the SparseCtrl model was made for another UNet (its residuals would not add)."""
    c, u = controlnet.config, unet.config
    if (tuple(c.block_out_channels) != tuple(u.block_out_channels)
            or c.cross_attention_dim != u.cross_attention_dim or c.in_channels != u.in_channels):
        raise FailedPrecondition(
            f"SparseCtrl '{name}' does not fit '{model_id}' (channels {tuple(c.block_out_channels)} / context "
            f"{c.cross_attention_dim} vs the UNet's {tuple(u.block_out_channels)} / {u.cross_attention_dim}). "
            "Use the SparseCtrl RGB model made for this AnimateDiff version, or --keyframe-motion pinning.")
    if not c.use_simplified_condition_embedding:
        raise FailedPrecondition(f"SparseCtrl '{name}' takes sketches, not RGB keyframes; use the SparseCtrl RGB "
                                 "model, or --keyframe-motion pinning.")


def sparsectrl_for(adapter, name: str, path: str | Path):
    """The SparseCtrl model at `path`, loaded once per AnimateDiff adapter and checked against its UNet."""
    cache = adapter.pipe.__dict__.setdefault("_cinegen_sparsectrl", {})
    key = str(path)
    if key not in cache:
        offloaded = current_mode(adapter.pipe) != "none"
        model = load_sparsectrl(path, torch.device("cpu") if offloaded else adapter.device, adapter.dtype)
        check_fits(model, adapter.pipe.unet, name, adapter.entry.id)
        cache[key] = model
    attach(adapter.pipe, cache[key], adapter.device)  # the job's --offload covers it: it moves with the UNet
    return cache[key]


@dataclass
class SparseControl:
    """A SparseCtrl model with its clip-long condition (1, C, F, h, w) and mask (1, 1, F, h, w).

    Called as `control(latent_in, t, embeds)` by the AnimateDiff adapter's `predict`, it returns the
    residuals for the UNet, as the stock pipeline computes them (batch-1 condition broadcast over the
    CFG rows)."""

    controlnet: torch.nn.Module
    condition: torch.Tensor
    mask: torch.Tensor
    scale: float = DEFAULT_CONDITIONING_SCALE

    def frames(self, start: int, stop: int) -> "SparseControl":
        """The same control for frames [start, stop) of the clip (a temporal window)."""
        return SparseControl(self.controlnet, self.condition[:, :, start:stop], self.mask[:, :, start:stop],
                             self.scale)

    def region(self, top: int, left: int, height: int, width: int) -> "SparseControl":
        """The same control for a spatial crop of the latent (a panorama window)."""
        crop: Callable[[torch.Tensor], torch.Tensor] = lambda z: z[..., top:top + height, left:left + width]
        return SparseControl(self.controlnet, crop(self.condition), crop(self.mask), self.scale)

    def __call__(self, latent_in: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor):
        condition, mask = self.condition.to(latent_in.dtype), self.mask.to(latent_in.dtype)
        rows, own = latent_in.shape[0], condition.shape[0]
        if own not in (1, rows):  # one condition per window, the batch its CFG halves [windows; windows]
            condition, mask = torch.cat([condition] * (rows // own)), torch.cat([mask] * (rows // own))
        with torch.no_grad():  # a batch-1 condition broadcasts over the rows, as in the stock pipeline
            return self.controlnet(latent_in, t, encoder_hidden_states=embeds, controlnet_cond=condition,
                                   conditioning_mask=mask, conditioning_scale=self.scale,
                                   guess_mode=False, return_dict=False)


def build_tiny_sparsectrl(folder: Path, seed: int = 0, zero_outputs: bool = False) -> None:
    """A tiny SparseCtrl RGB model that fits `tiny-animatediff` (and the toy models' 2-level UNets),
    saved like a real one. Its output convs are random unless `zero_outputs` (a fresh SparseCtrl's
    zero-initialised convs, which add nothing)."""
    from diffusers import SparseControlNetModel

    torch.manual_seed(seed)
    model = SparseControlNetModel(
        in_channels=4, conditioning_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"), layers_per_block=1,
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8, motion_max_seq_length=32,
        motion_num_attention_heads=2, use_simplified_condition_embedding=True, concat_conditioning_mask=True)
    with torch.no_grad():  # a fresh model's zero convs would make every condition a no-op
        for p in model.controlnet_cond_embedding.parameters():
            p.normal_(0.0, 0.05)
        for module in (*model.controlnet_down_blocks, model.controlnet_mid_block):  # the output convs
            for p in module.parameters():
                p.zero_() if zero_outputs else p.normal_(0.0, 0.05)
    model.save_pretrained(str(folder), safe_serialization=True)



def pick_sparsectrl(addons, mode: str, name: str, family: str):
    """The SparseCtrl add-on a story's AnimateDiff motion uses, or None for pinning.

    `mode`: auto (the named or first installed SparseCtrl folder, else None), sparsectrl (one must be
    there), pinning (None). Problems are said so that the artist can fix them."""
    from ..errors import InvalidArgument

    mode = (mode or "auto").lower()
    if mode not in ("auto", "sparsectrl", "pinning"):
        raise InvalidArgument(f"--keyframe-motion '{mode}' is not one of auto, sparsectrl, pinning.")
    if mode == "pinning" or (family != "animatediff" and mode == "auto"):
        return None
    if family != "animatediff":
        raise InvalidArgument("--keyframe-motion sparsectrl conditions AnimateDiff models; pick an AnimateDiff "
                              "--video-model, or leave --keyframe-motion at auto.")
    installed = [a for a in addons if a.kind == SPARSECTRL_KIND]
    if name:
        named = [a for a in installed if a.id == name]
        if not named:
            known = ", ".join(a.id for a in installed) or "none is installed"
            raise InvalidArgument(f"There is no SparseCtrl model '{name}' ({known}). Put its diffusers folder "
                                  "beside the models (--models DIR) and restart the server.")
        installed = named
    folders = [a for a in installed if Path(a.path).is_dir()]
    if installed and not folders and (mode == "sparsectrl" or name):
        raise FailedPrecondition(f"SparseCtrl '{installed[0].id}' is a single file; cinegen loads SparseCtrl as a "
                                 "diffusers folder (SparseControlNetModel.save_pretrained). Convert it once, or use "
                                 "--keyframe-motion pinning.")
    if not folders:
        if mode == "sparsectrl":
            raise FailedPrecondition("No SparseCtrl model is installed: put a SparseCtrl RGB diffusers folder beside "
                                     "the models (--models DIR), or use --keyframe-motion pinning.")
        return None
    from .folder_check import model_folder_missing

    missing = model_folder_missing(Path(folders[0].path))
    if missing:  # picked at Submit: a half-downloaded folder is named now, not when the motion stage loads it
        raise FailedPrecondition(f"SparseCtrl '{folders[0].id}' at {folders[0].path} is incomplete: "
                                 f"{'; '.join(missing)} (a download that did not finish?). Fetch it again, or use "
                                 "--keyframe-motion pinning.")
    return folders[0]


__all__ = ["DEFAULT_CONDITIONING_SCALE", "SPARSECTRL_CLASS", "SPARSECTRL_KIND", "SparseControl", "pick_sparsectrl",
           "build_tiny_sparsectrl", "check_fits", "is_sparsectrl_folder", "load_sparsectrl", "sparsectrl_for"]
