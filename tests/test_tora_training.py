"""Training Tora's Trajectory Extractor and Motion-guidance Fusers on a frozen CogVideoX (toyworld/train_tora.py)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A seeded, untrained toy-cogvideox-shaped pipeline saved as a folder (the recipe's shapes, random weights)."""
    from cinegen.server.toyworld.train_cogvideox import build_pipeline

    folder = tmp_path_factory.mktemp("base")
    build_pipeline(0).save_pretrained(str(folder), safe_serialization=True)
    return folder


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(2, 3, 8, 16, 16, generator=g)
    flow = torch.randn(2, 3, 8, 16, 16, generator=g)
    embeds = torch.randn(2, 48, 32, generator=g)
    noise = torch.randn(2, 3, 8, 16, 16, generator=g)
    return z0, flow, embeds, noise, torch.tensor([250, 800])


def test_untrained_tora_modules_start_from_the_base_model_exactly_and_can_leave_it(base):
    from cinegen.server.diffusion.tora import ToraModules
    from cinegen.server.toyworld.train_cogvideox import v_loss
    from cinegen.server.toyworld.train_tora import load_base, tora_config, tora_v_loss

    pipe = load_base(base)
    torch.manual_seed(0)
    modules = ToraModules(tora_config(pipe)).train()
    z0, flow, embeds, noise, t = _inputs()
    with torch.no_grad():
        plain = v_loss(pipe, z0, embeds, noise=noise, t=t)
    fused = tora_v_loss(pipe, modules, z0, flow, embeds, noise=noise, t=t)
    # the fusers' temporal convs are zero, so h + norm(h)*0 + 0 is h bit for bit: the same DiT ops in order
    assert torch.equal(plain, fused.detach())
    fused.backward()
    grads = [f.gamma_temporal.weight.grad for f in modules.fusers] + [f.beta_temporal.weight.grad for f in modules.fusers]
    assert all(g is not None and float(g.abs().max()) > 0 for g in grads), "the zero convs must get a gradient"
    assert all(p.grad is None for p in pipe.transformer.parameters()), "the DiT is frozen"


def test_a_two_step_tora_run_saves_weights_the_cogvideox_loader_reads_as_the_models_tora(base, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from cinegen.server.diffusion.tora import load_tora_weights
    from cinegen.server.models.cogvideox import load_cogvideox
    from cinegen.server.models.family import ModelEntry
    from cinegen.server.toyworld import train_tora

    train_tora.main(["--base", str(base), "--out", str(tmp_path / "run"), "--steps", "2", "--clip-pool", "8"])
    weights = tmp_path / "run" / train_tora.TORA_WEIGHTS
    saved = load_file(str(weights))
    assert all(k.startswith(("traj_extractor.", "fuser.")) for k in saved)  # Tora's published names
    assert float(saved["fuser.0.flow_gamma_temporal.weight"].abs().max()) > 0  # two steps moved the zero convs
    modules = load_tora_weights(tmp_path / "run", latent_channels=8, patch_size=2)
    assert modules is not None and modules.config.num_layers == 4 and modules.config.hidden_dim == 128

    model = tmp_path / "model"
    shutil.copytree(base, model)
    shutil.copytree(tmp_path / "run" / "tora", model / "tora")
    adapter = load_cogvideox(ModelEntry("m", "cogvideox", "folder", str(model)), torch.device("cpu"), torch.float32)
    loaded = adapter.tora.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in modules.state_dict().items())


# ---- direction of the effect, on the trained toy-cogvideox ------------------------------------------
def test_on_toy_cogvideox_the_trained_tora_modules_bring_the_object_onto_its_track(tiny_model_cache):
    # measured (the bench's tora row: diagonal track, "a red disc", 9 frames, 20 DPM steps, dynamic CFG 7.5),
    # error of the largest object of any palette colour: seeds 0-7 off 24.0 -> on 6.0 px, seeds 8-15 37.4 ->
    # 10.7 px, lower with Tora on 16 of 16 seeds. Seeds 0-1 (off 16.8 / 12.4, on 3.7 / 3.3) with a wide margin.
    # (The red-disc error says nothing here: the model paints the disc orange, so red is found on <= 2 of 9 frames.)
    from cinegen.server.models.registry import ModelRegistry
    from cinegen.server.quality.runs import RunSettings, tora_experiment

    adapter = ModelRegistry(use_hf_cache=False, cache_dir=tiny_model_cache).get("toy-cogvideox")
    result = tora_experiment(adapter, RunSettings(tora_seeds=(0, 1)))
    off, on = result.mean_error("off_any_colour"), result.mean_error("on_any_colour")
    assert on <= 0.5 * off, f"Tora should bring the object onto the track (measured 14.6 -> 3.5 px), got {off:.1f} -> {on:.1f}"
