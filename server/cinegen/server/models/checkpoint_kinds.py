"""What a `.safetensors` file is, from its tensor names and shapes (never its file name).

Artists keep checkpoints, LoRAs, motion modules, VAEs and embeddings side by side in one folder; a
LoRA offered as a model fails only when loaded. Only the file's header is read (8 bytes of length
and a JSON table of names, dtypes and shapes), so classifying a 7 GB checkpoint costs microseconds.

Kinds and the names that tell them apart (single-file = the original, LDM layout):

- ``sd1`` / ``sd2`` / ``sdxl`` / ``sdxl-refiner`` checkpoints: ``model.diffusion_model.*`` plus
  ``first_stage_model.*``; the text encoder says which: SD 1.x ``cond_stage_model.transformer.*``
  (CLIP ViT-L), SD 2.x ``cond_stage_model.model.*`` (OpenCLIP ViT-H), SDXL ``conditioner.embedders.0``
  (CLIP ViT-L) and ``.1`` (OpenCLIP bigG), the SDXL refiner ``conditioner.embedders.0.model.*`` only;
- ``lora``: ``lora_up``/``lora_down`` (kohya), ``lora_A``/``lora_B`` (peft), ``.lora.up`` (diffusers),
  ``to_q_lora.down`` (AnimateDiff motion LoRAs);
- ``sparsectrl``: ``controlnet_cond_embedding`` with ``motion_modules`` (a SparseCtrl encoder; cinegen
  loads it as a diffusers folder, see models/sparsectrl.py);
- ``motion-lora``: such LoRA weights inside ``motion_modules``; ``motion-module``: ``motion_modules``
  without them (AnimateDiff v1/v2/v3 files);
- ``vae``: ``encoder.*`` and ``decoder.*`` (LDM or diffusers names) and no denoiser;
- ``textual-inversion``: a handful of 2-D embeddings (``emb_params``, ``string_to_param``, SDXL's
  ``clip_l``/``clip_g``).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_KINDS = ("sd1", "sd2", "sdxl", "sdxl-refiner")
ADDON_KINDS = ("lora", "motion-lora", "motion-module", "vae", "textual-inversion", "sparsectrl")
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"  # (out, in, 3, 3): `in` is 4 for text-to-image
LATENT_CHANNELS = 4
MAX_HEADER_BYTES = 100 << 20  # a header larger than this is not a safetensors file we can read


@dataclass(frozen=True)
class FileKind:
    kind: str  # one of CHECKPOINT_KINDS, ADDON_KINDS, or "unknown"
    base: str = ""  # what it applies to, when the names say so (sd1, sdxl, ...)
    why: str = ""  # the names that decided, for `cinegen models` and error messages

    @property
    def is_checkpoint(self) -> bool:
        return self.kind in CHECKPOINT_KINDS

    @property
    def is_addon(self) -> bool:
        return self.kind in ADDON_KINDS


def read_header(path: Path | str) -> dict[str, dict]:
    """The tensor table of a safetensors file: name → {dtype, shape, data_offsets} (no tensor data read)."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if not 0 < length <= MAX_HEADER_BYTES:
            raise ValueError(f"{path} has no safetensors header")
        table = json.loads(handle.read(length))
    table.pop("__metadata__", None)
    return table


def classify_names(table: dict[str, dict]) -> FileKind:
    """The kind of a file from its tensor table (see the module docstring for the rules)."""
    names = list(table)
    has = lambda part: any(part in n for n in names)  # noqa: E731
    starts = lambda prefix: any(n.startswith(prefix) for n in names)  # noqa: E731
    lora = any(has(p) for p in ("lora_up", "lora_down", "lora_A", "lora_B", ".lora.", "_lora."))
    if has("motion_modules") and has("controlnet_cond_embedding"):  # before motion modules: it holds them too
        return FileKind("sparsectrl", "sd1", "controlnet_cond_embedding and motion_modules")
    if has("motion_modules"):
        return FileKind("motion-lora" if lora else "motion-module", "sd1", "motion_modules")
    if lora:
        return FileKind("lora", _lora_base(table), "lora weights")
    if starts("model.diffusion_model."):
        return _checkpoint_kind(table, names)
    if (starts("encoder.") and starts("decoder.")) or (starts("first_stage_model.") and not has("diffusion_model")):
        return FileKind("vae", "", "encoder.* and decoder.*")
    embeddings = [n for n in names if n in ("emb_params", "clip_l", "clip_g") or n.startswith("string_to_param")]
    if embeddings and len(names) <= 4:
        base = "sdxl" if "clip_g" in names else ""
        return FileKind("textual-inversion", base, ", ".join(embeddings))
    return FileKind("unknown", "", "no known layout")


def _checkpoint_kind(table: dict[str, dict], names: list[str]) -> FileKind:
    starts = lambda prefix: any(n.startswith(prefix) for n in names)  # noqa: E731
    conv_in = table.get(CONV_IN, {}).get("shape") or []
    if len(conv_in) == 4 and int(conv_in[1]) != LATENT_CHANNELS:  # 9: latents + mask + masked image; 8, 5: ...
        return FileKind("unknown", "", f"a UNet of {int(conv_in[1])} input channels: an inpainting, depth or "
                                       "instruct model, which cinegen's text-to-image pipelines do not run")
    if starts("conditioner.embedders.1."):
        return FileKind("sdxl", "sdxl", "conditioner.embedders.0 and .1")
    if starts("conditioner.embedders.0.model."):
        return FileKind("sdxl-refiner", "sdxl", "conditioner.embedders.0 (OpenCLIP) only")
    if starts("cond_stage_model.model."):
        return FileKind("sd2", "sd2", "cond_stage_model.model (OpenCLIP)")
    if starts("cond_stage_model.transformer."):
        return FileKind("sd1", "sd1", "cond_stage_model.transformer (CLIP)")
    context = _context_width(table)  # a checkpoint saved without its text encoder: the UNet's context says
    kind = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl-refiner"}.get(context or 0)
    return FileKind(kind or "unknown", kind or "", f"cross-attention context {context}")


def _context_width(table: dict[str, dict]) -> int | None:
    for name, info in table.items():
        if name.endswith("attn2.to_k.weight"):
            return int(info["shape"][1])
    return None


def _lora_base(table: dict[str, dict]) -> str:
    """SDXL LoRAs carry a second text encoder (te2 / text_encoder_2) or a 2048-wide context."""
    names = list(table)
    if any("lora_te2_" in n or "text_encoder_2" in n for n in names):
        return "sdxl"
    for name, info in table.items():
        if "attn2" in name and ("to_k" in name) and ("lora_down" in name or "lora_A" in name or "lora.down" in name):
            width = int(info["shape"][-1])
            return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width, "")
    if any(n.startswith(("transformer.", "diffusion_model.blocks.")) for n in names):
        return "wan"
    return ""


def classify_file(path: Path | str) -> FileKind:
    """The kind of a `.safetensors` file; "unknown" (with the reason) when it cannot be read."""
    try:
        return classify_names(read_header(path))
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        return FileKind("unknown", "", f"unreadable ({exc})")


__all__ = ["ADDON_KINDS", "CHECKPOINT_KINDS", "FileKind", "classify_file", "classify_names", "read_header"]
