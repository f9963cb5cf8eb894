"""Print docs/memory.md's table: the memory estimate for the real-size configs in models/configs/.

Every module is built on the meta device from its config (no weights, no download): the UNet,
transformer, VAE and motion adapter from the shipped JSON configs, the text encoders from their
published architectures (CLIP ViT-L/14 text, OpenCLIP bigG text, UMT5-XXL and T5-XXL encoders).
Bytes per element are those a CUDA server loads them in (precision.dtype_for; the SD and Wan VAEs in
float32). Run: .venv/bin/python tools/memory_table.py
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from cinegen.server.memory_check import refiner_component
from cinegen.server.models.memory_estimate import GiB, Architecture, Component, Workload, estimate

CONFIGS = Path(__file__).resolve().parents[1] / "server" / "cinegen" / "server" / "models" / "configs"


def _load(name: str, file: str) -> dict:
    return json.loads((CONFIGS / name / file).read_text())


def _counts(module: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules())
    return total, largest


def _component(name: str, role: str, module: torch.nn.Module, element: int) -> Component:
    total, largest = _counts(module)
    return Component(name, total * element, largest * element, role)


def _without_class(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def architectures() -> dict[str, Architecture]:
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel
    from transformers import UMT5Config, UMT5EncoderModel

    clip_l = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, projection_dim=768)
    clip_g = CLIPTextConfig(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                            num_attention_heads=20, max_position_embeddings=77, projection_dim=1280)
    xxl = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu")
    out = {}
    with torch.device("meta"):
        sd15_unet = diffusers.UNet2DConditionModel.from_config(_load("sd15", "unet.json"))
        sd15_vae = diffusers.AutoencoderKL.from_config(_load("sd15", "vae.json"))
        text_l = CLIPTextModel(clip_l)
        out["SD 1.5"] = Architecture("sd", (
            _component("text_encoder", "text", text_l, 2), _component("unet", "denoiser", sd15_unet, 2),
            _component("vae", "vae", sd15_vae, 4)), sd15_unet.config, sd15_vae.config, text_width=768)
        motion = diffusers.MotionAdapter.from_config(_without_class(_load("animatediff-motion-v1-5-2",
                                                                          "motion_adapter.json")))
        out["AnimateDiff (SD 1.5 + v1-5-2)"] = Architecture("animatediff", (
            _component("text_encoder", "text", text_l, 2), _component("unet", "denoiser", sd15_unet, 2),
            _component("motion_adapter", "denoiser", motion, 2), _component("vae", "vae", sd15_vae, 4)),
            sd15_unet.config, sd15_vae.config, text_width=768)
        xl_unet = diffusers.UNet2DConditionModel.from_config(_load("sdxl", "unet.json"))
        xl_vae = diffusers.AutoencoderKL.from_config(_load("sdxl", "vae.json"))
        out["SDXL"] = Architecture("sd", (
            _component("text_encoder", "text", text_l, 2),
            _component("text_encoder_2", "text", CLIPTextModelWithProjection(clip_g), 2),
            _component("unet", "denoiser", xl_unet, 2), _component("vae", "vae", xl_vae, 4)),
            xl_unet.config, xl_vae.config, text_width=1280)
        refiner_dir = "single-file/sdxl-refiner"
        refiner_unet = diffusers.UNet2DConditionModel.from_config(_load(refiner_dir, "unet/config.json"))
        refiner_parts = (  # beside the base, where model offload leaves them (memory_check.refiner_component)
            _component("refiner.text_encoder_2", "text", CLIPTextModelWithProjection(clip_g), 2),
            _component("refiner.unet", "denoiser", refiner_unet, 2),
            _component("refiner.vae", "vae", diffusers.AutoencoderKL.from_config(
                _load(refiner_dir, "vae/config.json")), 4))
        out["SDXL + refiner"] = dataclasses.replace(out["SDXL"], components=out["SDXL"].components + tuple(
            refiner_component(c) for c in refiner_parts),
            extra_denoisers=(refiner_unet.config,))
        sparsectrl = diffusers.SparseControlNetModel()  # its defaults are the SparseCtrl RGB architecture
        animatediff = out["AnimateDiff (SD 1.5 + v1-5-2)"]
        out["AnimateDiff + SparseCtrl RGB"] = dataclasses.replace(
            animatediff, components=animatediff.components + (_component("sparsectrl", "denoiser", sparsectrl, 2),),
            control=sparsectrl.config)
        wan = diffusers.WanTransformer3DModel.from_config(_load("wan2.1-1.3b", "transformer.json"))
        wan_vae = diffusers.AutoencoderKLWan.from_config(_load("wan2.1-1.3b", "vae.json"))
        umt5 = UMT5EncoderModel(UMT5Config(vocab_size=256384, **xxl))
        out["Wan 2.1 T2V 1.3B"] = Architecture("wan", (
            _component("text_encoder", "text", umt5, 2), _component("transformer", "denoiser", wan, 2),
            _component("vae", "vae", wan_vae, 4)), wan.config, wan_vae.config, denoiser_bytes=2, vae_bytes=4,
            text_width=4096, text_tokens=512)
        cog = diffusers.CogVideoXTransformer3DModel.from_config(_load("cogvideox-5b", "transformer.json"))
        cog_vae = diffusers.AutoencoderKLCogVideoX.from_config(_load("cogvideox-5b", "vae.json"))
        t5 = T5EncoderModel(T5Config(vocab_size=32128, **xxl))
        out["CogVideoX 5B"] = Architecture("cogvideox", (
            _component("text_encoder", "text", t5, 2), _component("transformer", "denoiser", cog, 2),
            _component("vae", "vae", cog_vae, 2)), cog.config, cog_vae.config, denoiser_bytes=2, vae_bytes=2,
            text_width=4096, text_tokens=226)
    return out


# (model, label, workload): native sizes, then sizes artists ask for
ROWS = [
    ("SD 1.5", "512² image", Workload(512, 512)),
    ("SD 1.5", "4 frames batched, 512²", Workload(512, 512, rows=4)),
    ("SDXL", "1024² image", Workload(1024, 1024)),
    ("SDXL", "2048² last cascade stage (tiled decode, scale fusion)",
     Workload(2048, 2048, decode_tile=1024, chunked_attention_logits=1 << 25)),
    ("SDXL + refiner", "1024² image", Workload(1024, 1024)),
    ("AnimateDiff (SD 1.5 + v1-5-2)", "16 frames, 512²", Workload(512, 512, frames=16, decode_frames=16)),
    ("AnimateDiff + SparseCtrl RGB", "16 frames, 512² (story shot)", Workload(512, 512, frames=16, decode_frames=16)),
    ("Wan 2.1 T2V 1.3B", "81 frames, 832×480", Workload(832, 480, frames=81)),
    ("Wan 2.1 T2V 1.3B", "81 frames, 1280×720 (tiled decode)", Workload(1280, 720, frames=81, decode_tile=832)),
    ("CogVideoX 5B", "49 frames, 720×480", Workload(720, 480, frames=49)),
    ("CogVideoX 5B", "49 frames, 1440×960 (tiled decode)", Workload(1440, 960, frames=49, decode_tile=720)),
]


def table() -> str:
    archs = architectures()
    lines = ["| model | job | weights (GB) | none | model | sequential |", "|---|---|---|---|---|---|"]
    for name, label, work in ROWS:
        arch = archs[name]
        weights = sum(c.parameter_bytes for c in arch.components) / GiB
        cells = []
        for mode in ("none", "model", "sequential"):
            e = estimate(arch, Workload(**{**work.__dict__, "offload": mode}))
            cells.append(f"{e.gib():.1f} ({e.phase})")
        lines.append(f"| {name} | {label} | {weights:.1f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| model | component | parameters (M) | bytes/param | largest leaf module (MB) |")
    lines.append("|---|---|---|---|---|")
    for name, arch in archs.items():
        if name == "SDXL + refiner":
            arch = dataclasses.replace(arch, components=arch.components[len(archs["SDXL"].components):])
        elif name == "AnimateDiff + SparseCtrl RGB":
            arch = dataclasses.replace(arch, components=arch.components[-1:])
        for c in arch.components:
            element = 4 if c.role == "vae" and arch.vae_bytes == 4 else 2
            lines.append(f"| {name} | {c.name} | {c.parameter_bytes / element / 1e6:.0f} | {element} | "
                         f"{c.largest_module_bytes / 1e6:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
