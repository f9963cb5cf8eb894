"""toy-cogvideox: a tiny CogVideoX (3-D causal VAE + video DiT) trained on toy-world clips with CogVideoX's objective."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")


def _entry(folder: Path):
    from cinegen.server.models.family import ModelEntry

    return ModelEntry("toy-cogvideox-run", "cogvideox", "folder", str(folder))


# ---- the recipe ------------------------------------------------------------------------------------
def test_the_objective_is_v_prediction_on_a_zero_terminal_snr_schedule(monkeypatch):
    from cinegen.server.toyworld.train_cogvideox import build_pipeline, v_loss

    pipe = build_pipeline(0)
    sched = pipe.scheduler
    assert sched.config.prediction_type == "v_prediction"
    assert float(sched.alphas_cumprod[-1]) < 1e-6  # at t = 999 the input is pure noise
    torch.manual_seed(0)
    z0, noise = torch.randn(2, 3, 8, 16, 16), torch.randn(2, 3, 8, 16, 16)
    t = torch.tensor([999, 300])
    embeds = torch.zeros(2, 48, 32)
    a = sched.alphas_cumprod[t].float().view(-1, 1, 1, 1, 1)
    velocity = a.sqrt() * noise - (1 - a).sqrt() * z0

    class Oracle(torch.nn.Module):  # predicts what the objective should reward, or the noise (epsilon-prediction)
        answer = velocity

        def forward(self, hidden_states, **kwargs):
            assert torch.allclose(hidden_states, a.sqrt() * z0 + (1 - a).sqrt() * noise, atol=1e-5)
            return (self.answer,)

    oracle = Oracle()
    monkeypatch.setattr(pipe, "transformer", oracle)
    monkeypatch.setattr(pipe, "_prepare_rotary_positional_embeddings", lambda *a, **k: None)
    assert v_loss(pipe, z0, embeds, noise=noise, t=t).item() < 1e-10
    oracle.answer = noise
    assert v_loss(pipe, z0, embeds, noise=noise, t=t).item() > 0.1


def test_a_two_step_training_run_saves_a_model_that_loads_as_a_cogvideox_model(tmp_path):
    from cinegen.server.models.cogvideox import load_cogvideox
    from cinegen.server.toyworld import train_cogvideox

    train_cogvideox.main(["--out", str(tmp_path), "--vae-steps", "2", "--steps", "2", "--clip-pool", "8"])
    assert len((tmp_path / "transformer_loss.csv").read_text().splitlines()) == 3  # header + 2 steps
    adapter = load_cogvideox(_entry(tmp_path / "model"), torch.device("cpu"), torch.float32)
    assert adapter.native_size == (64, 64) and adapter.native_frames == 9
    assert adapter.temporal_compression == 4 and adapter.latent_frames(9) == 3
    assert adapter.pipe.vae.config.scaling_factor != 1.0  # set to 1/std of the encoded clips
    assert adapter.tora is None  # the base model alone: Tora is trained on top of it


# ---- the committed model -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_cogvideox(tiny_model_cache):
    from cinegen.server.models.registry import ModelRegistry

    registry = ModelRegistry(use_hf_cache=False, cache_dir=tiny_model_cache)
    return registry.get("toy-cogvideox")


def _held_out_clip() -> tuple[np.ndarray, str]:
    from cinegen.server.toyworld.clips import clip_for, render_clip
    from cinegen.server.toyworld.train_cogvideox import CLIP_PARAMS, NATIVE
    from cinegen.server.toyworld.world import caption

    clip = clip_for(1234, 3, CLIP_PARAMS)  # a data seed the model never saw
    return render_clip(clip, NATIVE), caption(clip.scene)


def test_toy_cogvideox_is_registered_with_its_trained_tora_weights(toy_cogvideox):
    assert type(toy_cogvideox.pipe).__name__ == "CogVideoXPipeline"
    assert toy_cogvideox.family == "cogvideox" and toy_cogvideox.tora is not None
    assert len(toy_cogvideox.tora.fusers) == len(toy_cogvideox.denoiser.transformer_blocks)
    trained = [f.gamma_temporal.weight.detach() for f in toy_cogvideox.tora.fusers]
    assert all(float(w.abs().max()) > 0 for w in trained)  # the fusers left their zero start


def test_the_trained_vae_reconstructs_a_held_out_clip(toy_cogvideox):
    frames, _ = _held_out_clip()
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)
    decoded = toy_cogvideox.decode(toy_cogvideox.encode(video))[0].permute(1, 2, 3, 0).numpy()
    assert decoded.shape == frames.shape
    error = float(np.abs(decoded - frames).mean())
    # measured 0.032 (the VAE at its start: 0.26)
    assert error < 0.05, f"mean reconstruction error {error:.3f} (measured 0.032; untrained 0.26)"


def test_the_trained_dit_predicts_velocity_far_better_than_its_untrained_start(toy_cogvideox):
    from cinegen.server.toyworld.train_cogvideox import build_transformer, v_loss

    frames, text = _held_out_clip()
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)
    z0 = toy_cogvideox.encode(video).float().repeat(4, 1, 1, 1, 1)
    pipe = toy_cogvideox.pipe
    embeds = pipe.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=48,
                                device=torch.device("cpu"))[0].repeat(4, 1, 1)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(z0.shape, generator=g)
    t = torch.tensor([100, 400, 700, 950])
    with torch.no_grad():
        trained = v_loss(pipe, z0, embeds, noise=noise, t=t).item()
        torch.manual_seed(2)
        saved, pipe.transformer = pipe.transformer, build_transformer().eval()
        try:
            untrained = v_loss(pipe, z0, embeds, noise=noise, t=t).item()
        finally:
            pipe.transformer = saved
    # measured 0.111 trained vs 1.333 untrained
    assert trained < 0.5 * untrained, f"v-loss trained {trained:.3f} vs untrained {untrained:.3f}"


# ---- the bench row -----------------------------------------------------------------------------------
def test_the_quality_bench_measures_tora_on_the_trained_cogvideox_model_when_registered(registry):
    import argparse

    from cinegen.server.benchmarks.quality import chosen_models, tora_model
    from cinegen.server.models.family import ModelEntry
    from cinegen.server.quality.runs import RunSettings, tora_experiment

    class Fake:
        def __init__(self, ids):
            self._entries = [ModelEntry(i, f, "builtin", "") for i, f in ids.items()]

        def entries(self):
            return self._entries

        def entry(self, model_id):
            return next(e for e in self._entries if e.id == model_id)

    ids = {"tiny-sd": "sd", "tiny-animatediff": "animatediff", "tiny-cogvideox": "cogvideox"}
    none = argparse.Namespace()
    assert tora_model(Fake(ids), none) == "tiny-cogvideox"
    toys = Fake({**ids, "toy-cogvideox": "cogvideox"})
    assert tora_model(toys, none) == "toy-cogvideox"
    assert tora_model(toys, argparse.Namespace(model="tiny-cogvideox")) == "tiny-cogvideox"
    assert chosen_models(toys, argparse.Namespace(model="tiny-cogvideox")) == ("tiny-sd", "tiny-animatediff")
    # plumbing on the random-weight model: both sides, the model's own 9 frames
    result = tora_experiment(registry.get("tiny-cogvideox"), RunSettings(steps=2, tora_seeds=(0,)))
    assert result.frames == 9 and len(result.cases[0].videos["on"]) == 9
    assert set(result.as_dict()["mean_error_px"]) == {"off", "on", "off_any_colour", "on_any_colour"}
