"""A model's `Architecture` for the memory estimate, read without loading any weights.

Parameter counts come from the safetensors headers (shapes only) of each component folder, the
architecture from each component's config.json; bytes per element from the dtype the registry
would load the family in (precision.dtype_for; the VAE in float32 where the loaders keep it so).
A single-file checkpoint is split by its key prefixes and takes the shipped SD 1.5 / SDXL configs.
Tora's modules saved inside a ToraPipeline's transformer files are counted apart (role "other": they
are loaded beside the model, outside its offload hooks). Models a job adds (a SparseCtrl folder, job
LoRAs) are read the same way: `folder_component`, `lora_components`.
Results are cached by path and modification time: Submit reads each model once.
"""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..diffusion.tora import PUBLISHED_PREFIXES as TORA_PREFIXES
from .checkpoint_kinds import read_header
from .folder_check import INFERENCE_VARIANTS
from .memory_estimate import Architecture, Component

CONFIGS = Path(__file__).parent / "configs"
DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}
ROLES = {"text_encoder": "text", "text_encoder_2": "text", "text_encoder_3": "text", "image_encoder": "image",
         "unet": "denoiser", "transformer": "denoiser", "transformer_2": "denoiser", "motion_adapter": "denoiser",
         "vae": "vae", "tora": "other"}
TEXT_TOKENS = {"sd": 77, "animatediff": 77, "wan": 512, "cogvideox": 226}
SINGLE_FILE_PREFIXES = (("model.diffusion_model.", "unet"), ("first_stage_model.", "vae"),
                        ("cond_stage_model.", "text_encoder"), ("conditioner.", "text_encoder"))


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _counts(table: dict[str, dict], strip: str = "") -> tuple[int, int, str]:
    """(elements, elements of the largest leaf module, the dtype most elements are saved in)."""
    modules: dict[str, int] = defaultdict(int)
    saved: dict[str, int] = defaultdict(int)
    for name, info in table.items():
        n = _numel(info.get("shape", []))
        modules[name[len(strip):].rsplit(".", 1)[0]] += n
        saved[info.get("dtype", "F32")] += n
    return sum(modules.values()), max(modules.values(), default=0), max(saved, key=saved.get, default="F32")


VARIANT = re.compile(r"\.(fp16|bf16|fp32|ema|non_ema)\.")  # diffusers' variant files beside the plain ones


def _weight_files(folder: Path, pattern: str) -> list[Path]:
    files = sorted(folder.glob(pattern))
    plain = [f for f in files if not VARIANT.search(f.name)]
    if plain:
        return plain  # what diffusers loads without `variant=`: the plain files when both exist
    for variant in INFERENCE_VARIANTS:  # else the variant the loaders pick (folder_check.weights_variant)
        mine = [f for f in files if f".{variant}." in f.name]
        if mine:
            return mine
    return files


@lru_cache(maxsize=64)
def _folder_component(folder: str, _mtime: float) -> tuple[int, int, str, dict]:
    total = largest = 0
    saved = "F32"
    for weights in _weight_files(Path(folder), "*.safetensors"):
        n, big, saved = _counts(read_header(weights))
        total, largest = total + n, max(largest, big)
    if not total:  # pickled weights only: their size on disk over the element size the name says
        for weights in _weight_files(Path(folder), "*.bin"):
            element = 2 if "16" in weights.name else 4
            n = weights.stat().st_size // element
            total, largest, saved = total + n, max(largest, n), ("F16" if element == 2 else "F32")
    config_file = Path(folder) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return total, largest, saved, config


def _component(folder: Path) -> tuple[int, int, str, dict]:
    return _folder_component(str(folder), os.path.getmtime(folder))


@lru_cache(maxsize=64)
def _prefixed_counts(folder: str, _mtime: float, prefixes: tuple[str, ...]) -> tuple[int, int]:
    """(elements, largest leaf module) of the tensors whose names start with `prefixes`."""
    total = largest = 0
    for weights in _weight_files(Path(folder), "*.safetensors"):
        table = {k: v for k, v in read_header(weights).items() if k.startswith(prefixes)}
        n, big, _ = _counts(table)
        total, largest = total + n, max(largest, big)
    return total, largest


def folder_component(folder: Path, name: str, role: str, element_bytes: int) -> tuple[Component, dict]:
    """A diffusers model folder a job adds (SparseCtrl) as one component, and its config."""
    n, largest, _saved, config = _component(Path(folder))
    return Component(name, n * element_bytes, largest * element_bytes, role), config


LORA_TEXT_PREFIXES = ("text_encoder", "lora_te")  # diffusers' text_encoder(_2). and kohya's lora_te(1|2)_


def lora_components(path: Path, element_bytes: int) -> tuple[Component, ...]:
    """The parameters peft adds for a LoRA file: its tensors (the alphas are not parameters), in the
    model's dtype (peft casts the layers to their base layer's), on the text encoders or the denoiser."""
    parts: dict[str, dict[str, dict]] = defaultdict(dict)
    for key, info in read_header(Path(path)).items():
        if not key.endswith("alpha"):
            parts["text" if key.startswith(LORA_TEXT_PREFIXES) else "denoiser"][key] = info
    out = []
    for role, table in sorted(parts.items()):
        n, largest, _ = _counts(table)
        out.append(Component(f"lora:{Path(path).name}:{role}", n * element_bytes, largest * element_bytes, role))
    return tuple(out)


def _element_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _vae_bytes(family: str, dtype: torch.dtype, vae_config: dict) -> int:
    half = dtype in (torch.float16, torch.bfloat16)
    if family == "wan":
        return 4  # wan.load_wan keeps the Wan VAE in float32
    if family in ("sd", "animatediff") and half and vae_config.get("force_upcast", True):
        return 4  # sd.keep_vae_in_float32
    return _element_bytes(dtype)


def architecture_of(entry: Any, family: str, dtype: torch.dtype, folder: Path | None = None) -> Architecture:
    """`entry`: the registry's ModelEntry; `folder`: where a built-in model was built (else entry.path)."""
    if entry.source == "single-file":
        return _single_file(Path(entry.path), entry.kind, family, dtype)
    folder = Path(folder or entry.path)
    parts: dict[str, tuple[int, int, str, dict]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name in ROLES):
        parts[sub.name] = _component(sub)
    if entry.extra_path:  # a paired MotionAdapter: its weights join the UNet
        parts["motion_adapter"] = _component(Path(entry.extra_path))
    model_bytes = _element_bytes(dtype)
    if family == "cogvideox" and "transformer" in parts and parts["transformer"][2] in ("BF16", "F16") \
            and dtype in (torch.float16, torch.bfloat16):
        model_bytes = 2  # cogvideox_dtype: the half precision it was saved in
    vae_config = parts.get("vae", (0, 0, "", {}))[3]
    vae_bytes = _vae_bytes(family, dtype, vae_config)
    components = []
    for name, (n, largest, _saved, _config) in parts.items():
        size = vae_bytes if name == "vae" else model_bytes
        if family == "cogvideox" and name == "transformer":  # a ToraPipeline's transformer files hold Tora too
            tora, tora_largest = _prefixed_counts(str(folder / name), os.path.getmtime(folder / name),
                                                  TORA_PREFIXES)
            if tora:
                n -= tora
                components.append(Component("tora", tora * size, tora_largest * size, "other"))
        components.append(Component(name, n * size, largest * size, ROLES[name]))
    denoiser = dict(parts.get("transformer", parts.get("unet", (0, 0, "", {})))[3])
    text = parts.get("text_encoder", (0, 0, "", {}))[3]
    vae_scale = 2 ** (len(vae_config.get("block_out_channels", (1, 1, 1, 1))) - 1)
    if family == "wan":
        vae_scale = 2 ** len(vae_config.get("temperal_downsample", (0, 0, 0)))
    return Architecture(family, tuple(components), denoiser, vae_config, denoiser_bytes=model_bytes,
                        vae_bytes=vae_bytes, text_width=int(text.get("d_model") or text.get("hidden_size") or 768),
                        text_tokens=TEXT_TOKENS.get(family, 77), vae_scale=vae_scale)


def _single_file(path: Path, kind: str, family: str, dtype: torch.dtype) -> Architecture:
    table = read_header(path)
    grouped: dict[str, dict[str, dict]] = defaultdict(dict)
    for name, info in table.items():
        role = next((r for prefix, r in SINGLE_FILE_PREFIXES if name.startswith(prefix)), "text_encoder")
        grouped[role][name] = info
    shipped = CONFIGS / ("sdxl" if kind.startswith("sdxl") else "sd15")
    unet = json.loads((shipped / "unet.json").read_text())
    vae = json.loads((shipped / "vae.json").read_text())
    model_bytes, vae_bytes = _element_bytes(dtype), _vae_bytes(family, dtype, vae)
    components = []
    for name, part in grouped.items():
        n, largest, _ = _counts(part)
        size = vae_bytes if name == "vae" else model_bytes
        components.append(Component(name, n * size, largest * size, ROLES[name]))
    return Architecture(family, tuple(components), unet, vae, denoiser_bytes=model_bytes, vae_bytes=vae_bytes,
                        text_width=1280 if kind.startswith("sdxl") else 768)
