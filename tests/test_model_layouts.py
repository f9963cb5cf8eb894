"""Model layouts as artists keep them: what a `.safetensors` file is comes from its tensor names (not
its file name); LoRAs, motion modules, VAEs and embeddings are add-ons, never models; AnimateDiff is
assembled from an SD 1.5 folder and a MotionAdapter folder; `cinegen models` shows every kind.

The files are written with the real key layouts and tiny tensors (shapes only matter where a rule
reads them, e.g. the cross-attention context width); their names are chosen to mislead.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cinegen.server.cli import main
from cinegen.server.models.checkpoint_kinds import classify_file
from cinegen.server.models.registry import ModelRegistry

UNET = "model.diffusion_model."
ATTN2_K = UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
VAE = "first_stage_model.decoder.conv_in.weight"


def _t(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.float16)


LAYOUTS: dict[str, tuple[str, dict[str, torch.Tensor]]] = {
    # file name (misleading on purpose) → (kind the names say, tensors)
    "sdxl_dreamshaper": ("sd1", {ATTN2_K: _t(1, 768), VAE: _t(1, 1),
                                 "cond_stage_model.transformer.text_model.embeddings.position_ids": _t(1, 77)}),
    "v1-5-pruned": ("sd2", {ATTN2_K: _t(1, 1024), VAE: _t(1, 1),
                            "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": _t(1, 1)}),
    "model": ("sdxl", {ATTN2_K: _t(1, 2048), VAE: _t(1, 1),
                       "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": _t(1),
                       "conditioner.embedders.1.model.ln_final.weight": _t(1)}),
    "sd_xl_base_1.0": ("sdxl-refiner", {ATTN2_K: _t(1, 1280), VAE: _t(1, 1),
                                        "conditioner.embedders.0.model.ln_final.weight": _t(1)}),
    "unet_only_v1": ("sd1", {ATTN2_K: _t(1, 768)}),  # saved without its text encoder: the context width says
    "checkpoint_xl": ("lora", {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": _t(4, 768),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": _t(320, 4),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha": _t(1)}),
    "pony_v6": ("lora", {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": _t(4, 2048),
                         "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": _t(4, 1280)}),
    "mm_sd_v15_v2": ("motion-module", {
        "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight": _t(1, 1),
        "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe":
            _t(1, 32, 1)}),
    "v2_lora_ZoomIn": ("motion-lora", {
        "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor."
        "to_q_lora.down.weight": _t(4, 320)}),
    "sd15_pruned_emaonly": ("vae", {"encoder.conv_in.weight": _t(1, 1), "decoder.conv_out.weight": _t(1, 1)}),
    "vae-ft-mse-840000": ("textual-inversion", {"emb_params": _t(2, 768)}),
    "notes": ("unknown", {"something.else": _t(1)}),
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name, (_, tensors) in LAYOUTS.items():
        save_file(tensors, str(root / f"{name}.safetensors"))
    return root


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_a_file_is_recognised_from_its_tensor_names_not_its_file_name(models_dir, name):
    assert classify_file(models_dir / f"{name}.safetensors").kind == LAYOUTS[name][0]


def test_loras_carry_what_they_were_trained_for():
    assert classify_file_kind("checkpoint_xl").base == "sd1"  # its context is 768 wide despite the name
    assert classify_file_kind("pony_v6").base == "sdxl"  # it has a second text encoder


def classify_file_kind(name: str):
    from cinegen.server.models.checkpoint_kinds import classify_names

    return classify_names({k: {"shape": list(v.shape)} for k, v in LAYOUTS[name][1].items()})


def test_not_a_safetensors_file_is_unknown_not_an_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\xff" * 16)
    kind = classify_file(path)
    assert kind.kind == "unknown" and "unreadable" in kind.why


def test_only_checkpoints_become_models_and_the_rest_are_add_ons(models_dir, tiny_model_cache):
    registry = ModelRegistry([models_dir], use_hf_cache=False, cache_dir=tiny_model_cache)
    singles = {e.id: e.kind for e in registry.entries() if e.source == "single-file"}
    assert singles == {name: kind for name, (kind, _) in LAYOUTS.items() if kind.startswith("sd")}
    addons = {a.id: a.kind for a in registry.addons()}
    assert addons == {name: kind for name, (kind, _) in LAYOUTS.items()
                      if kind in ("lora", "motion-lora", "motion-module", "vae", "textual-inversion")}
    assert "notes" not in singles and "notes" not in addons


@pytest.fixture(scope="module")
def animatediff_parts(tmp_path_factory) -> Path:
    """AnimateDiff as it ships: an SD 1.5 diffusers folder and a MotionAdapter folder side by side."""
    from diffusers import MotionAdapter

    from cinegen.server.models.sd import build_tiny_sd

    root = tmp_path_factory.mktemp("animatediff-parts")
    build_tiny_sd(root / "sd15")
    torch.manual_seed(11)
    MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                  motion_norm_num_groups=8, motion_max_seq_length=32,
                  use_motion_mid_block=False).save_pretrained(str(root / "mm-v3"))
    return root


def test_an_sd15_folder_and_a_motion_adapter_folder_make_an_animatediff_model(animatediff_parts, tiny_model_cache):
    from diffusers import MotionAdapter

    registry = ModelRegistry([animatediff_parts], use_hf_cache=False, cache_dir=tiny_model_cache)
    entry = registry.entry("sd15+mm-v3")
    assert entry.family == "animatediff" and entry.source == "paired"
    adapter = registry.get("sd15+mm-v3")
    motion = MotionAdapter.from_pretrained(str(animatediff_parts / "mm-v3"))
    ours = {k: v for k, v in adapter.pipe.unet.state_dict().items() if "motion_modules" in k}
    theirs = motion.state_dict()
    assert ours and set(ours) == set(theirs), "the UNet carries exactly the adapter's motion modules"
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the motion modules mix frames: changing frame 0 changes the prediction of frame 3
    cond = adapter.encode_prompt("a red disc", "", 7.5)
    x = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    moved = x.clone()
    moved[:, :, 0] += 1.0
    t = torch.tensor(500)
    assert (adapter.predict(moved, t, cond)[:, :, 3] - adapter.predict(x, t, cond)[:, :, 3]).abs().max() > 1e-4


def test_cinegen_models_lists_each_file_with_its_kind(models_dir, animatediff_parts, capsys):
    assert main(["models", "--no-hf-cache", "--models", str(models_dir), "--models", str(animatediff_parts)]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["sdxl_dreamshaper"][1:3] == ["sd", "sd1"]
    assert lines["sd_xl_base_1.0"][2] == "sdxl-refiner"
    assert lines["checkpoint_xl"][1:4] == ["sd1", "lora", "add-on"]
    assert lines["mm_sd_v15_v2"][2:4] == ["motion-module", "add-on"]
    assert lines["sd15+mm-v3"][1:4] == ["animatediff", "model", "paired"]


def test_a_single_file_that_cannot_be_built_offline_says_what_it_is_and_how_to_fix_it(models_dir, tiny_model_cache):
    from cinegen.server.errors import FailedPrecondition

    registry = ModelRegistry([models_dir], use_hf_cache=False, cache_dir=tiny_model_cache)
    with pytest.raises(FailedPrecondition, match="is an sd1 checkpoint") as err:
        registry.get("sdxl_dreamshaper")  # "sdxl" in the name, CLIP ViT-L inside: built as SD 1.x
    assert "save_pretrained" in str(err.value)


@pytest.mark.parametrize("saved, asked, used", [
    (torch.bfloat16, torch.float16, torch.bfloat16),  # CogVideoX-5B: bf16 weights stay bf16 on a GPU
    (torch.float16, torch.float16, torch.float16),    # CogVideoX-2B
    (torch.bfloat16, torch.float32, torch.float32),   # the CPU asks for float32: it gets it
])
def test_cogvideox_keeps_the_half_precision_its_weights_were_saved_in(tmp_path, saved, asked, used):
    from cinegen.server.models.cogvideox import cogvideox_dtype

    (tmp_path / "transformer").mkdir()
    save_file({"patch_embed.proj.weight": torch.zeros(2, 2, dtype=saved)},
              str(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert cogvideox_dtype(tmp_path, asked) == used
