"""The model registry: save/load through the real path, offline discovery, LRU within a budget."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from cinegen.server.errors import NotFound
from cinegen.server.models.registry import ModelRegistry, ensure_tiny_model


def _tiny_folder(registry: ModelRegistry):
    fam = registry.families["sd"]
    return ensure_tiny_model(fam.tiny[0], registry.cache_dir)


def test_tiny_model_is_saved_as_a_diffusers_folder_and_loads_back(registry):
    folder = _tiny_folder(registry)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    adapter = registry.get("tiny-sd")
    assert adapter.native_size == (64, 64)
    assert adapter.entry.path == str(folder)


def test_models_folder_is_discovered_and_loads_the_same_weights(registry, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(_tiny_folder(registry), models / "my-sd")
    (models / "not-a-model").mkdir()
    reg = ModelRegistry([models], use_hf_cache=False, cache_dir=registry.cache_dir)
    entries = {e.id: e for e in reg.entries()}
    assert entries["my-sd"].source == "folder" and entries["my-sd"].family == "sd"
    assert "not-a-model" not in entries
    assert reg.default_model(["sd"]) == "my-sd", "a real model is preferred over the tiny one"
    loaded = reg.get("my-sd").pipe.unet.state_dict()
    builtin = registry.get("tiny-sd").pipe.unet.state_dict()
    assert all(torch.equal(loaded[k], builtin[k]) for k in builtin)


def test_cinegen_models_environment_variable_adds_folders(registry, tmp_path, monkeypatch):
    shutil.copytree(_tiny_folder(registry), tmp_path / "env-sd")
    monkeypatch.setenv("CINEGEN_MODELS", str(tmp_path))
    reg = ModelRegistry(use_hf_cache=False, cache_dir=registry.cache_dir)
    assert "env-sd" in {e.id for e in reg.entries()}


def test_hf_cache_snapshots_are_discovered_offline(registry, tmp_path, monkeypatch):
    # the layout huggingface_hub writes: models--org--name/{snapshots/<rev>, refs/main, blobs}
    repo = tmp_path / "hub" / "models--acme--tiny-sd"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(_tiny_folder(registry), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    (repo / "blobs").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    reg = ModelRegistry(use_hf_cache=True, cache_dir=registry.cache_dir)
    entries = {e.id: e for e in reg.entries()}
    assert entries["acme/tiny-sd"].source == "hf-cache"
    assert reg.get("acme/tiny-sd").native_size == (64, 64)


def test_unknown_model_names_the_known_ones(registry):
    with pytest.raises(NotFound, match="tiny-sd"):
        registry.entry("no-such-model")


def test_least_recently_used_model_is_unloaded_over_budget(registry, tmp_path):
    models = tmp_path / "models"
    for name in ("a", "b", "c"):
        shutil.copytree(_tiny_folder(registry), models / name)
    size = registry.get("tiny-sd").parameter_bytes()
    reg = ModelRegistry([models], use_hf_cache=False, cache_dir=registry.cache_dir,
                        memory_budget=int(size * 2.5))  # room for two
    reg.get("a")
    reg.get("b")
    reg.get("a")  # a is now the most recently used
    reg.get("c")
    assert reg.is_loaded("a") and reg.is_loaded("c") and not reg.is_loaded("b")
    assert reg.loaded_bytes() <= reg.memory_budget


def test_loading_is_lazy(registry, tmp_path):
    shutil.copytree(_tiny_folder(registry), tmp_path / "lazy")
    reg = ModelRegistry([tmp_path], use_hf_cache=False, cache_dir=registry.cache_dir)
    reg.entries()
    assert not reg.is_loaded("lazy")


def test_tiny_animatediff_denoises_like_the_stock_pipeline(registry):
    from diffusers.utils.torch_utils import randn_tensor

    adapter = registry.get("tiny-animatediff")
    assert adapter.family == "animatediff" and type(adapter.pipe.unet).__name__ == "UNetMotionModel"
    stock = adapter.pipe("a red disc", negative_prompt="blue", num_frames=6, num_inference_steps=2,
                         guidance_scale=7.5, generator=torch.Generator().manual_seed(3), output_type="latent",
                         height=64, width=64).frames
    generator = torch.Generator().manual_seed(3)
    cond = adapter.encode_prompt("a red disc", "blue", 7.5)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(2)
    x = randn_tensor(adapter.latent_shape(1, 64, 64, 6), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(adapter.predict(scheduler.scale_model_input(x, t), t, cond), t, x, eta=0.0,
                           generator=generator, return_dict=False)[0]
    assert torch.equal(x, stock)
    video = adapter.decode(x)
    assert video.shape == (1, 3, 6, 64, 64) and 0 <= video.min() and video.max() <= 1
