"""Single-file checkpoints (original layout) load offline through the configs cinegen ships.

Tiny SD 1.x / 2.x / SDXL / refiner pipelines are written as original single files, found by the
registry beside a `<stem>.config/` folder of the same layout as the shipped ones, loaded through the
code path every real file takes, and compared with the pipeline they came from bit for bit. The
real-size shipped configs are checked on the meta device against diffusers' own conversion.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from cinegen.server.models import single_file
from cinegen.server.models.checkpoint_kinds import classify_file, classify_names
from cinegen.server.models.registry import ModelRegistry
from ldm_layout import TE_PREFIX, clip_to_ldm, openclip_to_ldm, unet_to_ldm, vae_to_ldm, write_single_file
from tiny_checkpoints import BUILDERS

KINDS = ("sd1", "sd2", "sdxl", "sdxl-refiner")


def _stock_latents(pipe, kind: str) -> torch.Tensor:
    """Two steps of the stock pipeline from a fixed seed, as latents (the refiner from fixed latents)."""
    kwargs = dict(prompt="a red disc", negative_prompt="blur", num_inference_steps=2, guidance_scale=5.0,
                  output_type="latent", generator=torch.Generator().manual_seed(7))
    if kind == "sdxl-refiner":
        kwargs.update(image=torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)), strength=0.5)
    else:
        kwargs.update(height=64, width=64)
    with torch.no_grad():
        return pipe(**kwargs).images


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("single-files")
    built = {}
    for kind in KINDS:
        pipe = BUILDERS[kind]()
        write_single_file(pipe, kind, root / f"tiny-{kind}.safetensors")
        built[kind] = pipe
    return root, built


@pytest.mark.parametrize("kind", KINDS)
def test_a_tiny_single_file_loads_through_the_registry_and_equals_its_pipeline(tiny_files, kind, tmp_path):
    root, built = tiny_files
    registry = ModelRegistry([root], use_hf_cache=False, cache_dir=tmp_path)
    entries = {e.id: e for e in registry.entries()}
    assert not any(i.endswith(".config") for i in entries)  # the config folders are not offered as models
    entry = entries[f"tiny-{kind}"]
    assert (entry.source, entry.kind) == ("single-file", kind)
    loaded = registry.get(entry.id).pipe
    direct = built[kind]
    assert type(loaded) is type(direct)
    for name, part in direct.components.items():
        if isinstance(part, torch.nn.Module):
            mine, theirs = getattr(loaded, name).state_dict(), part.state_dict()
            assert mine.keys() == theirs.keys(), name
            assert all(torch.equal(mine[k], theirs[k]) for k in theirs), name
    assert torch.equal(_stock_latents(loaded, kind), _stock_latents(direct, kind))


def test_a_dropped_text_encoder_fails_with_a_sentence_naming_the_config_folder(tiny_files, tmp_path):
    root, built = tiny_files
    from safetensors.torch import load_file

    state = load_file(str(root / "tiny-sd1.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("cond_stage_model.")
               or "position_embedding" in k}, str(tmp_path / "broken.safetensors"))
    shutil.copytree(root / "tiny-sd1.config", tmp_path / "broken.config")
    from cinegen.server.errors import FailedPrecondition

    registry = ModelRegistry([tmp_path], use_hf_cache=False, cache_dir=tmp_path / "cache")
    with pytest.raises(FailedPrecondition, match="its own 'broken.config' folder"):
        registry.get("broken")


def test_the_shipped_path_copies_the_config_and_gives_it_clip_s_tokenizer(tiny_files, tmp_path, monkeypatch):
    """No `.config` folder: the shipped folder for the kind is assembled with CLIP's real vocabulary."""
    root, built = tiny_files
    shipped = tmp_path / "shipped"
    shutil.copytree(root / "tiny-sd1.config", shipped / "sd1")
    for vocab in ("vocab.json", "merges.txt", "tokenizer.json"):  # shipped folders hold only its config
        (shipped / "sd1" / "tokenizer" / vocab).unlink(missing_ok=True)
    monkeypatch.setattr(single_file, "SHIPPED_CONFIGS", shipped)
    bare = tmp_path / "bare.safetensors"
    shutil.copy(root / "tiny-sd1.safetensors", bare)
    pipe = single_file.load_single_file(bare, "sd1", torch.float32)
    assert len(pipe.tokenizer) == 49408
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert torch.equal(pipe.unet.conv_in.weight, built["sd1"].unet.conv_in.weight)
    assert not (shipped / "sd1" / "tokenizer" / "vocab.json").exists()  # assembled in a temporary folder


def test_the_shipped_tokenizers_are_clip_s_with_each_kind_s_padding(tmp_path):
    from transformers import CLIPTokenizer

    pads = {}
    for name in ("sd1", "sd2-v", "sdxl", "sdxl-refiner"):
        folder = single_file.assemble_config(name, tmp_path / name)
        for sub in sorted(folder.glob("tokenizer*")):
            tok = CLIPTokenizer.from_pretrained(str(sub))
            assert len(tok) == 49408 and tok("a photo of a cat").input_ids[1:-1] == [320, 1125, 539, 320, 2368]
            pads[f"{name}/{sub.name}"] = tok.pad_token
    # OpenAI CLIP pads with end-of-text; SD 2's and SDXL's OpenCLIP tokenizers with "!"
    assert pads == {"sd1/tokenizer": "<|endoftext|>", "sd2-v/tokenizer": "!", "sdxl/tokenizer": "<|endoftext|>",
                    "sdxl/tokenizer_2": "!", "sdxl-refiner/tokenizer_2": "!"}


@pytest.mark.parametrize("std, variant", [(0.2, "sd2-v"), (0.02, "sd2-base"), (None, "sd2-v")])
def test_sd2_v_prediction_is_told_from_the_output_norm_spread(tmp_path, std, variant):
    tensors = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}
    if std is not None:
        tensors[single_file.SD2_V_PROBE] = torch.randn(640, generator=torch.Generator().manual_seed(0)) * std
    save_file(tensors, str(tmp_path / "sd2.safetensors"))
    assert single_file.sd2_variant(tmp_path / "sd2.safetensors") == variant
    prediction = json.loads((single_file.SHIPPED_CONFIGS / variant / "scheduler" / "scheduler_config.json").read_text())
    assert prediction["prediction_type"] == {"sd2-v": "v_prediction", "sd2-base": "epsilon"}[variant]


# ---- the real-size shipped configs, on the meta device -------------------------------------------
SHIPPED = {"sd1": ("sd1", "v1"), "sd2-v": ("sd2", "v2"), "sd2-base": ("sd2", "v2"), "sdxl": ("sdxl", "xl_base"),
           "sdxl-refiner": ("sdxl-refiner", "xl_refiner")}
# parameter counts of the released models (UNet, VAE, text encoders), as diffusers builds them
COUNTS = {"sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
          "sd2-v": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
          "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                   "text_encoder_2": 694_659_840},
          "sdxl-refiner": {"vae": 83_653_863, "text_encoder_2": 694_659_840}}


def _meta_parts(folder):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    index = json.loads((folder / "model_index.json").read_text())
    parts = {}
    with torch.device("meta"):  # shapes only: no memory, no weights
        parts["unet"] = UNet2DConditionModel.from_config(json.loads((folder / "unet" / "config.json").read_text()))
        parts["vae"] = AutoencoderKL.from_config(json.loads((folder / "vae" / "config.json").read_text()))
        for name in ("text_encoder", "text_encoder_2"):
            if index.get(name, [None])[0] is not None:
                config = CLIPTextConfig.from_pretrained(str(folder / name))
                cls = CLIPTextModelWithProjection if index[name][1] == "CLIPTextModelWithProjection" else CLIPTextModel
                parts[name] = cls(config)
    return index, parts


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_shipped_config_has_exactly_the_tensors_diffusers_converts_for_its_kind(name):
    from diffusers.loaders import single_file_utils as sfu

    kind, model_type = SHIPPED[name]
    folder = single_file.SHIPPED_CONFIGS / name
    index, parts = _meta_parts(folder)
    assert index["_class_name"] == single_file.PIPELINE_CLASSES[kind]
    unet_cfg, vae_cfg = dict(parts["unet"].config), dict(parts["vae"].config)
    ldm = unet_to_ldm(parts["unet"].state_dict(), unet_cfg)
    ldm.update(vae_to_ldm(parts["vae"].state_dict(), vae_cfg))
    encoders = TE_PREFIX[kind]
    assert set(encoders) == {n for n in parts if n.startswith("text_encoder")}
    for te, (prefix, layout) in encoders.items():
        state = parts[te].state_dict()
        ldm.update(clip_to_ldm(state, prefix) if layout == "clip" else openclip_to_ldm(state, prefix))

    # the original names say the kind, to cinegen's classifier and to diffusers' own
    assert classify_names({k: {"shape": list(v.shape)} for k, v in ldm.items()}).kind == kind
    assert sfu.infer_diffusers_model_type(ldm) == model_type

    def same(converted, module, what):
        want = {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith("position_ids")}
        got = {k: tuple(v.shape) for k, v in converted.items()}
        assert got == want, f"{name} {what}: {sorted(set(got) ^ set(want))[:5]}"

    same(sfu.convert_ldm_unet_checkpoint(ldm, unet_cfg), parts["unet"], "unet")
    same(sfu.convert_ldm_vae_checkpoint(ldm, vae_cfg), parts["vae"], "vae")
    for te, (prefix, layout) in encoders.items():
        if layout == "clip":
            converted = {k.removeprefix("text_model."): v for k, v in sfu.convert_ldm_clip_checkpoint(ldm).items()}
        else:
            converted = sfu.convert_open_clip_checkpoint(parts[te], ldm, prefix=prefix)
            if not hasattr(parts[te], "text_model"):
                converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        same(converted, parts[te], te)
    for part, count in COUNTS.get(name, {}).items():
        assert sum(p.numel() for p in parts[part].parameters()) == count, part
