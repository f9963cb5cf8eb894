"""Is a diffusers folder whole, and did every tensor of it load? Read from the files and the loaded modules.

Folders are found in the wild half-downloaded (a config without its weights, a shard that stopped
midway, an HF-cache symlink whose blob never arrived), with only the `fp16` variant files
(`diffusion_pytorch_model.fp16.safetensors`, what `--variant fp16` or `allow_patterns="*fp16*"`
downloads), or with tensors a model's config asks for but its file lacks. diffusers then fails with
"no file named …bin", leaves the tensors on the meta device (fails when moved), or — transformers'
text encoders — initialises them at random and carries on. Here:

- `missing_parts(folder)`: what a folder lacks, from its files only (headers, never tensors): a component
  folder model_index.json names, a model's weights, a shard its index names, a file shorter than its
  header says. Empty when whole; Submit refuses a model whose folder lacks something, naming it.
- `weights_variant(folder)`: the variant (`fp16`, …) to load when a model's weights exist only as that
  variant; diffusers falls back to the plain files for the other components.
- `check_loaded(pipe)`: after loading, before moving to the device, every tensor came from the files
  (none left on the meta device, none of a transformers model newly initialised).
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import torch

OPTIONAL = ("safety_checker", "feature_extractor")  # the SD loader passes None for them: not needed
WEIGHTS = ("*.safetensors", "*.bin")
VARIANT = re.compile(r"^[^.]+\.([A-Za-z0-9_]+)\.(?:safetensors|bin)$")  # model.fp16.safetensors → fp16
INFERENCE_VARIANTS = ("fp16", "bf16", "fp32")  # what a folder of variants only is run from, in this order
SHARD = re.compile(r"-\d{5}-of-\d{5}")
_MODEL_CLASS = re.compile(r"(Model|Adapter|Transformer|Autoencoder|UNet|ControlNet)", re.I)


def read_index(folder: Path) -> dict:
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def components(folder: Path) -> dict[str, tuple[str, str]]:
    """The parts model_index.json names: name → (library, class); null parts (left out) are not listed."""
    out = {}
    for name, value in read_index(folder).items():
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and all(value):
            out[name] = (str(value[0]), str(value[1]))
    return out


def _variant_of(path: Path) -> str | None:
    match = VARIANT.match(SHARD.sub("", path.name))
    return match.group(1) if match else None


def is_cut_short(path: Path) -> bool:
    """A safetensors file that ends before the tensors its header lists (a download that stopped)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                return True
            (length,) = struct.unpack("<Q", raw)
            table = json.loads(handle.read(length))
        table.pop("__metadata__", None)
        end = max((int(t["data_offsets"][1]) for t in table.values()), default=0)
        return path.stat().st_size < 8 + length + end
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
        return True


def _stem(path: Path) -> Path:
    """An index file's weights name (`x.fp16.safetensors.index.json` → `x.fp16.safetensors`)."""
    return Path(path.name[:-len(".index.json")]) if path.name.endswith(".index.json") else path


def _model_weights_problem(part: Path, variant: str | None) -> str | None:
    """What a model folder's weights lack, for the files diffusers/transformers would read."""
    files = [f for f in part.iterdir() if f.name.endswith((".safetensors", ".bin", ".index.json"))]
    if not files:
        return f"{part.name}/ has no weights (.safetensors or .bin)"
    if any(_variant_of(_stem(f)) is None for f in files):
        variant = None  # the plain files are there: they are what loads
    mine = [f for f in files if _variant_of(_stem(f)) == variant]
    if not mine:
        found = sorted({str(_variant_of(_stem(f))) for f in files})
        return (f"{part.name}/ has no {variant + ' ' if variant else ''}weights file (only "
                f"{', '.join(found)} variant files)")
    safe = [f for f in mine if _stem(f).name.endswith(".safetensors")]
    if safe:  # diffusers and transformers read .safetensors before .bin: a .bin index beside them is not read
        mine = safe
    indexes = [f for f in mine if f.name.endswith(".index.json")]
    if indexes:  # sharded: every shard its weight map names, whole
        try:
            shards = sorted(set(json.loads(indexes[0].read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            return f"{part.name}/{indexes[0].name} cannot be read"
        mine = [part / shard for shard in shards]
    for path in mine:
        if not path.is_file():  # a shard the index names, or an HF-cache symlink whose blob never arrived
            return f"{part.name}/{path.name} is missing"
        if path.name.endswith(".safetensors") and is_cut_short(path):
            return f"{part.name}/{path.name} is cut short"
    return None


def weights_variant(folder: Path) -> str | None:
    """The variant to load: None when the plain weights are there, else the one variant the files have
    (`fp16` for `diffusion_pytorch_model.fp16.safetensors`); a pipeline folder's parts or a model folder."""
    folder = Path(folder)
    parts = [folder / name for name in components(folder)] if (folder / "model_index.json").is_file() else [folder]
    found: set[str] = set()
    for part in parts:
        if not (part / "config.json").is_file():
            continue
        names = [f for pattern in WEIGHTS for f in part.glob(pattern)]
        names += [Path(f.name[:-len(".index.json")]) for f in part.glob("*.index.json")]
        variants = {_variant_of(f) for f in names}
        if names and None not in variants:
            found |= variants
    preferred = [v for v in INFERENCE_VARIANTS if v in found]  # fp16 beside non_ema (a training copy): fp16
    return preferred[0] if preferred else (sorted(found)[0] if len(found) == 1 else None)


def model_folder_missing(folder: Path) -> list[str]:
    """What a single-model diffusers folder (a MotionAdapter, a SparseCtrl encoder) lacks, named from it."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return [f"{folder.name}/config.json"]
    problem = _model_weights_problem(folder, weights_variant(folder))
    return [problem] if problem else []


def missing_parts(folder: Path) -> list[str]:
    """What a diffusers pipeline folder lacks to load (empty when whole), read from its files only."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        return ["model_index.json is missing"]
    if not read_index(folder):
        return ["model_index.json cannot be read"]
    variant = weights_variant(folder)
    out = []
    for name, (_library, _cls) in components(folder).items():
        part = folder / name
        if name in OPTIONAL:
            continue
        if not part.is_dir():
            out.append(f"{name}/ is missing")
        elif (part / "config.json").is_file():
            problem = _model_weights_problem(part, variant)
            if problem:
                out.append(problem)
        elif _MODEL_CLASS.search(_cls) and not any(part.iterdir()):
            out.append(f"{name}/ is empty")
    return out + _text_width_mismatch(folder)


def _config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _text_width(config: dict) -> int:
    """A text encoder's output width; a CLIPConfig (text and vision, as CLIPModel saves it) keeps it in
    text_config, where transformers' CLIPTextModel reads it. 0 when the config does not say."""
    nested = config.get("text_config")
    size = config.get("hidden_size") or (nested.get("hidden_size") if isinstance(nested, dict) else None)
    return size if isinstance(size, int) and not isinstance(size, bool) else 0


def _text_width_mismatch(folder: Path) -> list[str]:
    """A UNet attends to its text encoders' outputs side by side (SDXL: 768 + 1280 = 2048); a text encoder
    left out of model_index.json (set to null, its folder deleted) fails only at the first step."""
    parts = components(folder)
    width = _config(folder / "unet" / "config.json").get("cross_attention_dim")
    encoders = [name for name in parts if name.startswith("text_encoder")]
    if "unet" not in parts or not isinstance(width, int) or not encoders:
        return []
    widths = [_text_width(_config(folder / name / "config.json")) for name in encoders]
    given = sum(widths)
    if not all(widths) or given == width:  # a width not read from its config: nothing to compare
        return []
    return [f"its UNet attends to {width}-wide text but its text encoders ({', '.join(encoders)}) give {given} "
            "(a text encoder left out of model_index.json?)"]


def check_loaded(pipe: Any) -> None:
    """ValueError naming the part and a tensor that did not come from the files: left on the meta device
    (diffusers), or newly initialised at random (transformers marks each tensor it loaded). Call it before
    moving the pipeline to the device (a move drops transformers' marks)."""
    parts = pipe.components.items() if hasattr(pipe, "components") else [("model", pipe)]
    for name, part in parts:
        if not isinstance(part, torch.nn.Module):
            continue
        tensors = list(part.named_parameters()) + list(part.named_buffers())
        missing = [n for n, t in tensors if t.is_meta]
        params = list(part.named_parameters())
        marks = [getattr(p, "_is_hf_initialized", None) for _n, p in params]
        if not missing and any(mark is True for mark in marks):  # transformers ≥ 5 marks what it loaded
            missing = [n for (n, _p), mark in zip(params, marks) if mark is not True]
        if missing:
            raise ValueError(f"its {name} lacks {len(missing)} tensor{'s' if len(missing) > 1 else ''} "
                             f"the config asks for, such as {missing[0]} (an incomplete or mismatched file)")


__all__ = ["INFERENCE_VARIANTS", "check_loaded", "components", "is_cut_short", "missing_parts", "model_folder_missing",
           "read_index", "weights_variant"]
