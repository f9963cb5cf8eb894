"""Single-file checkpoints (original LDM layout) built offline from configs shipped in the package.

diffusers' `from_single_file` needs a diffusers config folder for the architecture (model_index.json,
scheduler, unet, vae, text encoder and tokenizer configs); without `config=` it looks for the hub
repo's in the Hugging Face cache and fails offline. The folders for each checkpoint kind ship in
`configs/single-file/`: `sd1` (v1-5 layout), `sd2-v` (768-v, v-prediction), `sd2-base` (512, epsilon),
`sdxl` and `sdxl-refiner`. Their tokenizer folders get CLIP's vocabulary (`clip_vocab`) when a load
assembles them in a temporary folder.

A diffusers config folder named `<file stem>.config/` beside the checkpoint replaces the shipped one
(an architecture or scheduler the shipped ones do not match; the tests' tiny models come this way).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from .checkpoint_kinds import CHECKPOINT_KINDS

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs" / "single-file"
CONFIG_SUFFIX = ".config"  # `<stem>.config/` beside a checkpoint: its own diffusers config folder
PIPELINE_CLASSES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
                    "sdxl": "StableDiffusionXLPipeline", "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline"}
# ComfyUI's rule for SD 2.x: the 768-v models' last output block has norm1 biases spread far wider than
# the 512-base (epsilon) model's; nothing in the tensor names tells the two apart.
SD2_V_PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
SD2_V_STD = 0.09


def sd2_variant(path: Path) -> str:
    """`sd2-v` (v-prediction, 768 px) or `sd2-base` (epsilon, 512 px), from the probe tensor's spread."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        if SD2_V_PROBE not in handle.keys():
            return "sd2-v"  # SD 2.1 768-v is the common SD 2 checkpoint
        bias = handle.get_tensor(SD2_V_PROBE).float()
    return "sd2-v" if float(bias.std(unbiased=False)) > SD2_V_STD else "sd2-base"


def shipped_config_name(path: Path, kind: str) -> str:
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"{kind} is not a checkpoint kind")
    return sd2_variant(path) if kind == "sd2" else kind


def override_folder(path: Path) -> Path | None:
    folder = path.with_name(path.stem + CONFIG_SUFFIX)
    return folder if (folder / "model_index.json").is_file() else None


def assemble_config(name: str, dest: Path) -> Path:
    """The shipped config folder `name` copied to `dest`, with CLIP's vocabulary in its tokenizer folders."""
    from .clip_vocab import write_clip_tokenizer_files

    shutil.copytree(SHIPPED_CONFIGS / name, dest, dirs_exist_ok=True)
    for tokenizer in sorted(dest.glob("tokenizer*")):
        if not any((tokenizer / f).exists() for f in ("vocab.json", "tokenizer.json")):
            write_clip_tokenizer_files(tokenizer)
    return dest


def load_single_file(path: Path, kind: str, dtype: torch.dtype):
    """The diffusers pipeline of a single-file checkpoint of `kind`, built without any download."""
    import diffusers

    cls = getattr(diffusers, PIPELINE_CLASSES[kind])
    own = override_folder(path)
    if own is not None:
        pipe = cls.from_single_file(str(path), config=str(own), local_files_only=True, dtype=dtype)
    else:
        with tempfile.TemporaryDirectory(prefix="cinegen-config-") as tmp:
            config = assemble_config(shipped_config_name(path, kind), Path(tmp) / "config")
            pipe = cls.from_single_file(str(path), config=str(config), local_files_only=True, dtype=dtype)
    check_complete(pipe)
    return pipe


def check_complete(pipe) -> None:
    """diffusers leaves a tensor the file lacks on the meta device (it fails only when moved): say which."""
    for name, part in pipe.components.items():
        if isinstance(part, torch.nn.Module):
            missing = [n for n, t in list(part.named_parameters()) + list(part.named_buffers()) if t.is_meta]
            if missing:
                raise ValueError(f"the file lacks {len(missing)} tensors of the {name}, such as {missing[0]}")


__all__ = ["CONFIG_SUFFIX", "PIPELINE_CLASSES", "SHIPPED_CONFIGS", "assemble_config", "load_single_file",
           "override_folder", "sd2_variant", "shipped_config_name"]
