"""Test fixtures: diffusers pipelines written back as original (LDM / CompVis / SGM) single files.

The inverse of diffusers' `single_file_utils` conversions, for any UNet2DConditionModel / AutoencoderKL /
CLIP text model shape (the tiny ones here and the real-size configs on the meta device):
UNet blocks become `input_blocks`/`middle_block`/`output_blocks`, VAE blocks `down`/`mid`/`up` (up in
reverse order, 1x1-conv attention), CLIP ViT-L stays Hugging Face names under its prefix, OpenCLIP
towers get `resblocks` with fused `in_proj` and a transposed `text_projection`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TE_PREFIX = {  # where each pipeline's text encoders live in the original file, and in which layout
    "sd1": {"text_encoder": ("cond_stage_model.transformer.", "clip")},
    "sd2": {"text_encoder": ("cond_stage_model.model.", "openclip")},
    "sdxl": {"text_encoder": ("conditioner.embedders.0.transformer.", "clip"),
             "text_encoder_2": ("conditioner.embedders.1.model.", "openclip")},
    "sdxl-refiner": {"text_encoder_2": ("conditioner.embedders.0.model.", "openclip")},
}


def _resnet(key: str) -> str:
    for new, old in (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                     ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")):
        key = key.replace(new, old)
    return key


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    lpb = int(config["layers_per_block"])
    out: dict[str, torch.Tensor] = {}
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    for key, value in state.items():
        parts = key.split(".")
        head = next((h for h in fixed if key.startswith(h + ".")), None)
        if head is not None:
            out[fixed[head] + key[len(head):]] = value
            continue
        if parts[0] == "down_blocks":
            level, what = int(parts[1]), parts[2]
            if what == "downsamplers":  # the downsampler is its own input block after the level's layers
                out[f"input_blocks.{(level + 1) * (lpb + 1)}.0.op." + ".".join(parts[5:])] = value
                continue
            index = 1 + level * (lpb + 1) + int(parts[3])
            rest = ".".join(parts[4:])
            out[f"input_blocks.{index}.{0 if what == 'resnets' else 1}.{_resnet(rest) if what == 'resnets' else rest}"] = value
        elif parts[0] == "mid_block":
            what, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if what == "resnets":
                out[f"middle_block.{2 * j}.{_resnet(rest)}"] = value
            else:
                out[f"middle_block.1.{rest}"] = value
        elif parts[0] == "up_blocks":
            level, what = int(parts[1]), parts[2]
            if what == "upsamplers":  # on the level's last layer, after its attention when it has one
                has_attention = "CrossAttn" in config["up_block_types"][level]
                out[f"output_blocks.{level * (lpb + 1) + lpb}.{2 if has_attention else 1}.conv." + ".".join(parts[5:])] = value
                continue
            index = level * (lpb + 1) + int(parts[3])
            rest = ".".join(parts[4:])
            out[f"output_blocks.{index}.{0 if what == 'resnets' else 1}.{_resnet(rest) if what == 'resnets' else rest}"] = value
        else:
            raise KeyError(f"no LDM name for UNet parameter {key}")
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        parts = k.split(".")
        if parts[1] == "down_blocks":
            if parts[3] == "downsamplers":
                k = f"{parts[0]}.down.{parts[2]}.downsample." + ".".join(parts[5:])
            else:
                k = f"{parts[0]}.down.{parts[2]}.block." + ".".join(parts[4:])
        elif parts[1] == "up_blocks":
            level = n_up - 1 - int(parts[2])  # LDM numbers the decoder's levels from the bottom
            if parts[3] == "upsamplers":
                k = f"{parts[0]}.up.{level}.upsample." + ".".join(parts[5:])
            else:
                k = f"{parts[0]}.up.{level}.block." + ".".join(parts[4:])
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                k = f"{parts[0]}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:])
            else:
                rest = ".".join(parts[4:])
                for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
                    if rest.startswith(new + "."):
                        rest = old + rest[len(new):]
                k = f"{parts[0]}.mid.attn_1.{rest}"
                if value.dim() == 2:  # LDM's attention is 1x1 convolutions
                    value = value[:, :, None, None]
        out["first_stage_model." + k] = value
    return out


def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + ("" if k.startswith("text_model.") or k.startswith("text_projection") else "text_model.") + k: v
            for k, v in state.items() if not k.endswith("position_ids")}


def openclip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    state = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out: dict[str, torch.Tensor] = {}
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        src = f"encoder.layers.{i}."
        dst = f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([state[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[dst + f"attn.out_proj.{kind}"] = state[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = state[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = state[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = state[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = state[src + f"mlp.fc2.{kind}"]
    out["token_embedding.weight"] = state["embeddings.token_embedding.weight"]
    out["positional_embedding"] = state["embeddings.position_embedding.weight"]
    out["ln_final.weight"] = state["final_layer_norm.weight"]
    out["ln_final.bias"] = state["final_layer_norm.bias"]
    if "text_projection.weight" in state:
        out["text_projection"] = state["text_projection.weight"].T.contiguous()  # OpenCLIP: x @ proj
    return {prefix + k: v for k, v in out.items()}


def pipeline_to_ldm(pipe, kind: str) -> dict[str, torch.Tensor]:
    """All weights of an SD/SDXL/refiner pipeline under their original single-file names."""
    out = unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config))
    out.update(vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
    for name, (prefix, layout) in TE_PREFIX[kind].items():
        state = getattr(pipe, name).state_dict()
        out.update(clip_to_ldm(state, prefix) if layout == "clip" else openclip_to_ldm(state, prefix))
    return out


def save_config_folder(pipe, folder: Path) -> None:
    """The pipeline's diffusers folder without its weights: what `from_single_file(config=...)` reads."""
    pipe.save_pretrained(str(folder), safe_serialization=True)
    for weights in list(folder.rglob("*.safetensors")) + list(folder.rglob("*.bin")):
        weights.unlink()


def write_single_file(pipe, kind: str, path: Path, *, with_config: bool = True) -> Path:
    """`path` (.safetensors) in the original layout, and its `<stem>.config/` folder beside it."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in pipeline_to_ldm(pipe, kind).items()}
    save_file(state, str(path))
    if with_config:
        save_config_folder(pipe, path.with_name(path.stem + ".config"))
    return path


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
