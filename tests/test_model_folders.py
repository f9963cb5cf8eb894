"""Model folders as a studio has them on disk: fp16-variant files only, tensors missing from a file, a
half-finished download. Each usable one loads with its own weights; each unusable one is refused with a
sentence naming the folder and what it lacks — never a traceback, never a model run on random weights.

The folders are copies of the tiny SD model (real diffusers/transformers classes, seeded weights),
changed the way the wild changes them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cinegen.server.errors import FailedPrecondition
from cinegen.server.models.registry import ModelRegistry, ensure_tiny_model


@pytest.fixture(scope="module")
def tiny_sd(tiny_model_cache) -> Path:
    from cinegen.server.models.families import all_families

    return ensure_tiny_model(all_families()["sd"].tiny[0], tiny_model_cache)


def _registry(root: Path, cache: Path) -> ModelRegistry:
    return ModelRegistry([root], use_hf_cache=False, cache_dir=cache)


def _drop_tensors(file: Path, part: str) -> None:
    tensors = load_file(str(file))
    save_file({k: v for k, v in tensors.items() if part not in k}, str(file), metadata={"format": "pt"})


def test_a_folder_of_fp16_variant_files_only_loads_its_own_weights(tiny_sd, tmp_path, tiny_model_cache):
    # what `--variant fp16` / allow_patterns="*fp16*" downloads: no plain weights beside the variant files
    folder = tmp_path / "models" / "sd-fp16"
    shutil.copytree(tiny_sd, folder)
    for plain in folder.glob("*/*.safetensors"):
        weights = {k: v.half() for k, v in load_file(str(plain)).items()}
        save_file(weights, str(plain.with_name(plain.stem + ".fp16.safetensors")), metadata={"format": "pt"})
        plain.unlink()
    adapter = _registry(folder.parent, tiny_model_cache).get("sd-fp16")
    expected = load_file(str(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"))
    loaded = adapter.pipe.unet.state_dict()
    assert all(torch.equal(loaded[k].half(), v) for k, v in expected.items())


@pytest.mark.parametrize("part, file, tensor", [
    ("text_encoder", "model.safetensors", "layers.1."),  # transformers would initialise them at random
    ("unet", "diffusion_pytorch_model.safetensors", "conv_out"),  # diffusers leaves them on the meta device
])
def test_a_file_lacking_tensors_is_refused_naming_the_part_not_run_on_random_weights(
        tiny_sd, tmp_path, tiny_model_cache, part, file, tensor):
    folder = tmp_path / "models" / "lacking"
    shutil.copytree(tiny_sd, folder)
    _drop_tensors(folder / part / file, tensor)
    with pytest.raises(FailedPrecondition, match=rf"'lacking' at .*its {part} lacks \d+ tensors.*{tensor}"):
        _registry(folder.parent, tiny_model_cache).get("lacking")


@pytest.mark.parametrize("damage, said", [
    ("remove", "unet/ has no weights"),
    ("truncate", "unet/diffusion_pytorch_model.safetensors is cut short"),
])
def test_a_half_downloaded_folder_is_refused_at_submit_naming_the_file(tiny_sd, tmp_path, tiny_model_cache,
                                                                        damage, said):
    import grpc

    from cinegen.common.client import GeneratorClient, RequestRejected
    from server_kit import private_server, tiny_request

    folder = tmp_path / "models" / "half"
    shutil.copytree(tiny_sd, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "remove":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    registry = _registry(folder.parent, tiny_model_cache)
    with private_server(registry) as running, GeneratorClient(running.address, timeout=30) as client:
        with pytest.raises(RequestRejected) as err:
            client.submit(tiny_request(tmp_path / "out", model="half"))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION.name
    assert f"'half' at {folder} is incomplete: {said}" in err.value.message
    assert not registry.is_loaded("half")


def _write_json(path: Path, change) -> None:
    import json

    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_folder_of_folders_of_models_is_found_with_each_model_under_its_path(tiny_sd, tmp_path, tiny_model_cache):
    # a studio's tree (and ComfyUI's models/ layout): groups of diffusers folders and of single files
    root = tmp_path / "models"
    shutil.copytree(tiny_sd, root / "sd15" / "realistic")
    shutil.copytree(tiny_sd, root / "top-sd")
    lora = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 32)}
    (root / "loras" / "styles").mkdir(parents=True)
    save_file(lora, str(root / "loras" / "styles" / "ink.safetensors"))
    registry = _registry(root, tiny_model_cache)
    entries = {e.id: e for e in registry.entries() if e.source != "builtin"}
    assert set(entries) == {"top-sd", "sd15/realistic"}, "top-level ids stay the folder's name"
    assert entries["sd15/realistic"].path == str(root / "sd15" / "realistic")
    assert [(a.id, a.kind) for a in registry.addons()] == [("loras/styles/ink", "lora")]
    assert registry.get("sd15/realistic").native_size == (64, 64)


def test_folders_cinegen_cannot_run_are_skipped_each_with_a_line_saying_why(tiny_sd, tmp_path, tiny_model_cache,
                                                                           caplog):
    root = tmp_path / "models"
    shutil.copytree(tiny_sd, root / "inpainting")  # a 9-channel UNet under a plain SD model_index.json
    _write_json(root / "inpainting" / "unet" / "config.json", lambda c: c.update(in_channels=9))
    shutil.copytree(tiny_sd, root / "controlnet")
    _write_json(root / "controlnet" / "model_index.json",
                lambda c: c.update(_class_name="StableDiffusionControlNetPipeline"))
    (root / "odd").mkdir()
    (root / "odd" / "model_index.json").write_text("[]")  # valid JSON, not an object: discovery crashed on it
    shutil.copytree(tiny_sd / "vae", root / "vae-alone")
    shutil.copytree(tiny_sd, root / "wrong-vae")  # a 16-channel (SD3/Flux) VAE dropped into an SD folder
    _write_json(root / "wrong-vae" / "vae" / "config.json", lambda c: c.update(latent_channels=16))
    (root / "old.ckpt").write_bytes(b"PK\x03\x04")
    shutil.copytree(tiny_sd, root / "fine")
    with caplog.at_level("WARNING", logger="cinegen.server.models.registry"):
        ids = {e.id for e in _registry(root, tiny_model_cache).entries() if e.source != "builtin"}
    assert ids == {"fine"}
    said = {Path(r.args[0]).name: r.getMessage() for r in caplog.records if r.args}
    assert "9 input channels" in said["inpainting"] and "inpainting" in said["inpainting"]
    assert "StableDiffusionControlNetPipeline folder, which cinegen does not run" in said["controlnet"]
    assert "cannot be read" in said["odd"]
    assert "AutoencoderKL" in said["vae-alone"] and "not a whole diffusers pipeline" in said["vae-alone"]
    assert ".safetensors files only" in said["old.ckpt"]
    assert "a VAE of 16-channel latents for a UNet of 4 input channels" in said["wrong-vae"]


def test_the_hf_cache_offers_the_whole_snapshot_main_points_at_not_a_newer_partial_one(
        tiny_sd, tmp_path, tiny_model_cache, monkeypatch):
    import huggingface_hub.constants as constants

    repo = tmp_path / "hub" / "models--acme--sd"
    whole, partial = repo / "snapshots" / ("a" * 40), repo / "snapshots" / ("b" * 40)
    shutil.copytree(tiny_sd, whole)
    partial.mkdir(parents=True)
    shutil.copy(tiny_sd / "model_index.json", partial)  # one file of a later revision, fetched last
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "blobs").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    registry = ModelRegistry(use_hf_cache=True, cache_dir=tiny_model_cache)
    assert registry.entry("acme/sd").path == str(whole)


def test_an_sdxl_folder_with_a_text_encoder_left_out_is_refused_before_its_first_step(tmp_path, tiny_model_cache):
    from tiny_checkpoints import tiny_sdxl

    folder = tmp_path / "models" / "sdxl-no-te"
    tiny_sdxl().save_pretrained(str(folder))
    shutil.rmtree(folder / "text_encoder")  # saved without the CLIP ViT-L tower: its UNet still attends to both
    _write_json(folder / "model_index.json", lambda c: c.update(text_encoder=[None, None], tokenizer=[None, None]))
    registry = _registry(folder.parent, tiny_model_cache)
    with pytest.raises(FailedPrecondition, match=r"'sdxl-no-te' .* is incomplete: its UNet attends to 96-wide text "
                                                 r"but its text encoders \(text_encoder_2\) give 64"):
        registry.check_files("sdxl-no-te")


def test_a_single_file_cut_short_is_refused_as_cut_short_not_as_a_config_mismatch(tmp_path, tiny_model_cache):
    from ldm_layout import write_single_file
    from tiny_checkpoints import BUILDERS

    file = tmp_path / "models" / "cut.safetensors"
    file.parent.mkdir()
    write_single_file(BUILDERS["sd1"](), "sd1", file)
    file.write_bytes(file.read_bytes()[: file.stat().st_size * 3 // 4])  # header whole, tensors not
    registry = _registry(file.parent, tiny_model_cache)
    assert registry.entry("cut").kind == "sd1"
    with pytest.raises(FailedPrecondition, match="'cut' at .* is cut short: the file ends before the tensors"):
        registry.get("cut")


def test_a_folder_named_in_another_encoding_is_skipped_and_the_model_list_still_answers(tiny_sd, tmp_path,
                                                                                        tiny_model_cache):
    import os

    from cinegen.common.client import GeneratorClient
    from server_kit import private_server

    root = tmp_path / "models"
    shutil.copytree(tiny_sd, root / "fine")
    shutil.copytree(tiny_sd, root / os.fsdecode(b"mod\xe8le"))  # Latin-1 bytes, as copied from an old share
    with private_server(_registry(root, tiny_model_cache)) as running, \
            GeneratorClient(running.address, timeout=30) as client:
        ids = {m.id for m in client.capabilities().models}
    assert "fine" in ids and "tiny-sd" in ids


def test_a_lora_cut_short_is_refused_as_cut_short_not_as_a_lora_for_another_model(tmp_path):
    from cinegen.server.errors import InvalidArgument
    from cinegen.server.models.lora import LoraSpec, check_lora

    layer = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    file = tmp_path / "style.safetensors"
    save_file({f"{layer}.lora_A.weight": torch.ones(4, 32), f"{layer}.lora_B.weight": torch.ones(32, 4)}, str(file))
    check_lora(LoraSpec(str(file)))
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(InvalidArgument, match="'style.safetensors' is cut short"):
        check_lora(LoraSpec(str(file)))


def test_models_hidden_by_a_namesake_or_a_corrupt_hf_cache_entry_are_named_in_the_log(
        tiny_sd, tmp_path, tiny_model_cache, monkeypatch, caplog):
    import huggingface_hub.constants as constants

    for root in ("a", "b"):
        shutil.copytree(tiny_sd, tmp_path / root / "sd15")
    (tmp_path / "hub" / "models--acme--broken" / "refs").mkdir(parents=True)  # no snapshots/: the scan drops it
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with caplog.at_level("WARNING", logger="cinegen.server.models.registry"):
        registry = ModelRegistry([tmp_path / "a", tmp_path / "b"], use_hf_cache=True, cache_dir=tiny_model_cache)
        assert registry.entry("sd15").path == str(tmp_path / "b" / "sd15")
    text = caplog.text
    assert f"two models are named 'sd15': {tmp_path / 'b' / 'sd15'} is offered, {tmp_path / 'a' / 'sd15'} is hidden" \
        in text
    assert "Hugging Face cache:" in text and "models--acme--broken" in text


def test_a_wan_folder_with_only_its_transformer_in_fp16_files_loads_on_half_precision(tmp_path, tiny_model_cache):
    # the Wan VAE loads apart (float32) from its own plain files while the transformer takes the fp16 variant
    from cinegen.server.models.families import all_families

    folder = tmp_path / "models" / "wan-fp16"
    shutil.copytree(ensure_tiny_model(all_families()["wan"].tiny[0], tiny_model_cache), folder)
    for plain in (folder / "transformer").glob("*.safetensors"):
        save_file(load_file(str(plain)), str(plain.with_name(plain.stem + ".fp16.safetensors")), metadata={"format": "pt"})
        plain.unlink()
    registry = ModelRegistry([folder.parent], use_hf_cache=False, cache_dir=tiny_model_cache, dtype=torch.bfloat16)
    adapter = registry.get("wan-fp16")
    assert adapter.pipe.vae.dtype == torch.float32 and adapter.pipe.transformer.dtype == torch.bfloat16


def test_a_tora_folder_of_fp16_variant_files_loads(tmp_path, tiny_model_cache):
    # a ToraPipeline folder loads part by part (models/cogvideox.py), each from its own files
    from cinegen.server.models.families import all_families

    folder = tmp_path / "models" / "tora-fp16"
    shutil.copytree(ensure_tiny_model(all_families()["cogvideox"].tiny[0], tiny_model_cache), folder)
    _write_json(folder / "model_index.json", lambda c: c.update(_class_name="ToraPipeline"))
    for part in ("transformer", "text_encoder"):
        for plain in (folder / part).glob("*.safetensors"):
            save_file(load_file(str(plain)), str(plain.with_name(plain.stem + ".fp16.safetensors")),
                      metadata={"format": "pt"})
            plain.unlink()
    adapter = _registry(folder.parent, tiny_model_cache).get("tora-fp16")
    assert type(adapter.pipe).__name__ == "CogVideoXPipeline" and adapter.tora is not None


def test_a_half_downloaded_sparsectrl_folder_is_named_when_picked_not_when_the_motion_stage_loads_it(tmp_path):
    from cinegen.server.models.family import AddOn
    from cinegen.server.models.sparsectrl import SPARSECTRL_KIND, build_tiny_sparsectrl, pick_sparsectrl

    folder = tmp_path / "sc-rgb"
    build_tiny_sparsectrl(folder, seed=1)
    addons = [AddOn("sc-rgb", SPARSECTRL_KIND, "sd1", str(folder))]
    assert pick_sparsectrl(addons, "auto", "", "animatediff") == addons[0]
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FailedPrecondition, match=r"SparseCtrl 'sc-rgb' at .* is incomplete: sc-rgb/ has no weights"):
        pick_sparsectrl(addons, "auto", "", "animatediff")


def test_models_folders_from_the_environment_take_a_tilde_and_are_reported_whole(tiny_sd, tmp_path, tiny_model_cache,
                                                                                  monkeypatch, caplog):
    shutil.copytree(tiny_sd, tmp_path / "home" / "models" / "sd15")
    shutil.copytree(tiny_sd, tmp_path / "work" / "local" / "sd-local")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CINEGEN_MODELS", "~/models")  # as an env file or a systemd unit leaves it
    monkeypatch.chdir(tmp_path / "work")
    file = tmp_path / "one.safetensors"
    file.write_bytes(b"")
    with caplog.at_level("WARNING", logger="cinegen.server.models.registry"):
        registry = ModelRegistry([Path("local"), file], use_hf_cache=False, cache_dir=tiny_model_cache)
        assert registry.entry("sd15").path == str(tmp_path / "home" / "models" / "sd15")
    assert registry.entry("sd-local").path == str(tmp_path / "work" / "local" / "sd-local")  # absolute for clients
    assert f"--models takes folders; {file} is a file: give the folder that holds it ({tmp_path})" in caplog.text


def test_a_folder_of_several_variants_only_runs_from_fp16_and_names_the_variants_it_cannot_choose(tmp_path):
    import json

    from cinegen.server.models.folder_check import missing_parts, weights_variant

    folder = tmp_path / "sd"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                         "unet": ["diffusers", "UNet2DConditionModel"]}))
    (folder / "unet" / "config.json").write_text("{}")
    for variant in ("non_ema", "fp16"):  # runwayml's layout without the plain (EMA) files
        save_file({"w": torch.zeros(1)}, str(folder / "unet" / f"diffusion_pytorch_model.{variant}.safetensors"))
    assert weights_variant(folder) == "fp16" and missing_parts(folder) == []
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").rename(
        folder / "unet" / "diffusion_pytorch_model.ema.safetensors")
    assert weights_variant(folder) is None
    assert missing_parts(folder) == ["unet/ has no weights file (only ema, non_ema variant files)"]


def test_the_memory_estimate_counts_the_variant_that_loads_not_every_variant_file(tmp_path):
    from cinegen.server.models.architecture import architecture_of
    from cinegen.server.models.family import ModelEntry

    folder = tmp_path / "sd"
    (folder / "unet").mkdir(parents=True)
    save_file({"w": torch.zeros(1000, dtype=torch.float16)}, str(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"))
    entry = ModelEntry("sd", "sd", "folder", str(folder))
    alone = architecture_of(entry, "sd", torch.float16).components
    save_file({"w": torch.zeros(1000)}, str(folder / "unet" / "diffusion_pytorch_model.non_ema.safetensors"))
    assert architecture_of(entry, "sd", torch.float16).components == alone
    assert [c.parameter_bytes for c in alone] == [2000]


def test_an_inpainting_single_file_is_not_offered_as_a_text_to_image_checkpoint(tmp_path):
    from cinegen.server.models.checkpoint_kinds import classify_file

    unet = "model.diffusion_model."
    tensors = {unet + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(1, 768),
               "first_stage_model.decoder.conv_in.weight": torch.zeros(1, 1),
               "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.zeros(1, 77)}
    for channels, kind in ((4, "sd1"), (9, "unknown")):  # sd-v1-5-inpainting: latents + mask + masked image
        save_file({**tensors, unet + "input_blocks.0.0.weight": torch.zeros(1, channels, 3, 3)},
                  str(tmp_path / "v1-5.safetensors"))
        found = classify_file(tmp_path / "v1-5.safetensors")
        assert found.kind == kind
    assert "9 input channels: an inpainting" in found.why


def test_an_inpainting_model_in_the_hf_cache_is_skipped_saying_why(tiny_sd, tmp_path, tiny_model_cache, monkeypatch,
                                                                   caplog):
    import huggingface_hub.constants as constants

    snapshot = tmp_path / "hub" / "models--acme--inpainting" / "snapshots" / ("e" * 40)
    shutil.copytree(tiny_sd, snapshot)
    _write_json(snapshot / "unet" / "config.json", lambda c: c.update(in_channels=9))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with caplog.at_level("WARNING", logger="cinegen.server.models.registry"):
        ids = {e.id for e in ModelRegistry(use_hf_cache=True, cache_dir=tiny_model_cache).entries()}
    assert "acme/inpainting" not in ids
    assert "Hugging Face cache: acme/inpainting has a UNet of 9 input channels" in caplog.text


def test_an_sd_repo_and_a_motion_adapter_repo_in_the_hf_cache_make_an_animatediff_model(tiny_sd, tmp_path,
                                                                                         tiny_model_cache, monkeypatch):
    # `huggingface-cli download` of a base and of guoyww/animatediff-motion-adapter-v1-5-3, as AnimateDiff ships
    import huggingface_hub.constants as constants
    from diffusers import AnimateDiffPipeline

    from cinegen.server.models.families import all_families

    def snapshot(repo: str, rev: str) -> Path:
        folder = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(rev * 40)
        (folder / "blobs").mkdir(exist_ok=True)
        return folder / "snapshots" / (rev * 40)

    shutil.copytree(tiny_sd, snapshot("acme/sd15", "a"))
    tiny_ad = ensure_tiny_model(all_families()["animatediff"].tiny[0], tiny_model_cache)
    AnimateDiffPipeline.from_pretrained(str(tiny_ad)).motion_adapter.save_pretrained(str(snapshot("acme/mm", "b")))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    registry = ModelRegistry(use_hf_cache=True, cache_dir=tiny_model_cache)
    entry = registry.entry("acme/sd15+acme/mm")
    assert (entry.family, entry.source, entry.extra_path) == ("animatediff", "paired", str(snapshot("acme/mm", "b")))
    assert type(registry.get(entry.id).pipe.unet).__name__ == "UNetMotionModel"


def test_cinegen_models_says_which_folders_are_not_offered_and_why(tiny_sd, tmp_path, capsys):
    """A TD whose model is missing from the list reads why in `cinegen models` (and a gRPC client in
    Capabilities.model_notes), not only in the server's log; a later discovery says it again."""
    from cinegen.server.cli import main

    root = tmp_path / "models"
    shutil.copytree(tiny_sd, root / "controlnet")
    _write_json(root / "controlnet" / "model_index.json",
                lambda c: c.update(_class_name="StableDiffusionControlNetPipeline"))
    (root / "old.ckpt").write_bytes(b"PK\x03\x04")
    shutil.copytree(tiny_sd, root / "fine")
    assert main(["models", "--models", str(root), "--no-hf-cache"]) == 0
    out = capsys.readouterr().out
    listed, _, notes = out.partition("not offered, or incomplete:")
    assert "fine" in listed and "controlnet" not in listed
    assert "StableDiffusionControlNetPipeline folder, which cinegen does not run" in notes
    assert "old.ckpt is a pickled file" in notes
    registry = _registry(root, tmp_path / "cache")
    first = registry.discovery_notes()
    registry.refresh()
    assert registry.discovery_notes() == first and len(first) == 2


def test_cinegen_serve_says_at_start_how_many_models_it_found_and_that_some_folders_have_notes(tmp_path, capsys):
    """Discovery ran at the first client's request: a server started on the wrong folder said nothing."""
    from cinegen.server.serve import announce_models

    root = tmp_path / "models"
    root.mkdir()
    (root / "old.ckpt").write_bytes(b"PK\x03\x04")
    announce_models(_registry(root, tmp_path / "cache")).join(60)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("models: 0 found, ") and "1 note(s) on the model folders above" in line


def test_a_sharded_encoder_fetched_as_safetensors_only_is_whole_though_its_bin_index_came_along(tmp_path):
    import json

    from cinegen.server.models.folder_check import missing_parts

    folder = tmp_path / "sd"
    part = folder / "text_encoder"
    part.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                         "text_encoder": ["transformers", "CLIPTextModel"]}))
    (part / "config.json").write_text("{}")
    shards = {"w1": "model-00001-of-00002.safetensors", "w2": "model-00002-of-00002.safetensors"}
    for name, shard in shards.items():
        save_file({name: torch.zeros(2)}, str(part / shard))
    (part / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    # `--include "*.json" "*.safetensors"` of a repo that ships both formats: the .bin index, not its shards
    (part / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {"w1": "pytorch_model-00001-of-00002.bin", "w2": "pytorch_model-00002-of-00002.bin"}}))
    assert missing_parts(folder) == []  # the loaders read the .safetensors shards first
    (part / "model-00002-of-00002.safetensors").unlink()
    assert missing_parts(folder) == ["text_encoder/model-00002-of-00002.safetensors is missing"]


def test_an_sdxl_text_encoder_configured_as_a_whole_clip_model_is_not_taken_for_one_left_out(tmp_path):
    import json

    from cinegen.server.models.folder_check import missing_parts

    folder = tmp_path / "sdxl"
    index = {"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}
    configs = {"unet": {"cross_attention_dim": 2048},
               # CLIPModel's config (text and vision): CLIPTextModel loads it, reading text_config
               "text_encoder": {"model_type": "clip", "text_config": {"hidden_size": 768}},
               "text_encoder_2": {"hidden_size": 1280}}
    for part, config in configs.items():
        (folder / part).mkdir(parents=True)
        (folder / part / "config.json").write_text(json.dumps(config))
        save_file({"w": torch.zeros(1)}, str(folder / part / "model.safetensors"))
    (folder / "model_index.json").write_text(json.dumps(index))
    assert missing_parts(folder) == []  # 768 + 1280 = 2048
    (folder / "model_index.json").write_text(json.dumps({**index, "text_encoder_2": [None, None]}))
    assert missing_parts(folder) == ["its UNet attends to 2048-wide text but its text encoders (text_encoder) give "
                                     "768 (a text encoder left out of model_index.json?)"]
