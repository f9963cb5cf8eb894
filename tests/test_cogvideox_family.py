"""The `cogvideox` family: the adapter equals the stock CogVideoXPipeline, and Tora weights load beside it."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from cinegen.server.models.cogvideox import CogVideoXAdapter, cogvideox_family
from cinegen.server.models.registry import ModelRegistry, ensure_tiny_model
from cinegen.server.pipelines.base import Resolved, seeded_generator
from cinegen.server.pipelines.trajectory import denoise, stock_noise


@pytest.fixture(scope="module")
def cog_registry(tiny_model_cache):
    registry = ModelRegistry(use_hf_cache=False, cache_dir=tiny_model_cache)
    return registry


@pytest.fixture(scope="module")
def cog(cog_registry) -> CogVideoXAdapter:
    return cog_registry.get("tiny-cogvideox")


def test_denoising_with_the_adapter_equals_the_stock_pipeline_bit_for_bit(cog):
    r = Resolved("a red disc", "blurry", "tiny-cogvideox", seed=4, steps=2, guidance=6.0, width=64, height=64,
                 frames=9, fps=8.0, first_frame=1001)
    generator = seeded_generator(r.seed)
    ours = cog.decode(denoise(cog, r, stock_noise(cog, r, generator), generator))
    stock = cog.pipe(r.prompt, negative_prompt=r.negative_prompt, num_inference_steps=r.steps,
                     guidance_scale=r.guidance, num_frames=r.frames, height=r.height, width=r.width,
                     generator=torch.Generator().manual_seed(r.seed), output_type="pt").frames  # (B, F, 3, H, W)
    assert torch.equal(ours.permute(0, 2, 1, 3, 4), stock)


def test_tora_samples_as_its_reference_dpm_trailing_with_dynamic_cfg_bit_for_bit(cog):
    from diffusers import CogVideoXDPMScheduler

    from cinegen.server.pipelines.trajectory import ToraInference, denoise_cogvideox

    r = Resolved("a red disc", "blurry", "tiny-cogvideox", seed=4, steps=3, guidance=6.0, width=64, height=64,
                 frames=9, fps=8.0, first_frame=1001)
    generator = seeded_generator(r.seed)
    ours = cog.decode(denoise_cogvideox(cog, r, stock_noise(cog, r, generator), generator, ToraInference()))
    stock_pipe = type(cog.pipe)(**{**cog.pipe.components, "scheduler": CogVideoXDPMScheduler.from_config(
        cog.pipe.scheduler.config, timestep_spacing="trailing")})  # Tora's diffusers-version/inference.py
    stock = stock_pipe(r.prompt, negative_prompt=r.negative_prompt, num_inference_steps=r.steps,
                       guidance_scale=r.guidance, num_frames=r.frames, height=r.height, width=r.width,
                       use_dynamic_cfg=True, generator=torch.Generator().manual_seed(r.seed), output_type="pt").frames
    assert torch.equal(ours.permute(0, 2, 1, 3, 4), stock)


def test_tiny_model_is_registered_as_cogvideox_with_its_tora_modules(cog_registry, cog):
    assert cog_registry.entry("tiny-cogvideox").family == "cogvideox"
    assert cog.native_size == (64, 64) and cog.native_frames == 9
    assert cog.tora is not None
    assert cog.tora.config.num_layers == len(cog.denoiser.transformer_blocks)
    dit = cog.denoiser.config
    assert cog.tora.config.hidden_dim == dit.num_attention_heads * dit.attention_head_dim
    assert cog.self_attention_names() and not cog.cross_attention_names() and not cog.temporal_attention_names()


def test_frame_counts_round_up_to_the_vaes_four_plus_one_grid(cog):
    assert [cog.latent_frames(f) for f in (1, 5, 8, 9, 10)] == [1, 2, 3, 3, 4]
    assert [cog.decoded_frames(f) for f in (1, 5, 8, 9, 10)] == [1, 5, 9, 9, 13]
    assert cog.latent_shape(1, 64, 48, 8) == (1, 3, 4, 6, 8)


def test_encode_then_decode_keeps_the_clip_shape(cog):
    video = torch.rand(1, 3, 9, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = cog.encode(video)
    assert latents.shape == (1, 3, 4, 8, 8)
    frames = cog.decode(latents)
    assert frames.shape == (1, 3, 9, 64, 64) and 0 <= float(frames.min()) and float(frames.max()) <= 1


def test_models_with_the_dpm_scheduler_are_sampled_with_ddim_of_the_same_config(cog):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    original = cog.scheduler
    try:
        cog.scheduler = CogVideoXDPMScheduler.from_config(original.config)
        scheduler = cog.new_scheduler()
    finally:
        cog.scheduler = original
    assert type(scheduler) is CogVideoXDDIMScheduler
    assert scheduler.config.prediction_type == original.config.prediction_type


def test_a_tora_pipeline_folder_is_found_and_loads_toras_weights_from_its_transformer(tmp_path, tiny_model_cache, cog):
    """Tora's published folder: model_index says ToraPipeline, Tora's parameters live in transformer/."""
    tiny = ensure_tiny_model(cogvideox_family().tiny[0], tiny_model_cache)
    folder = tmp_path / "Tora_T2V_diffusers"
    shutil.copytree(tiny, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "ToraPipeline"
    index["transformer"] = ["tora.transformer_3d", "ToraTransformer3DModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    merged = {**load_file(str(weights)), **load_file(str(folder / "tora" / "diffusion_pytorch_model.safetensors"))}
    save_file(merged, str(weights))
    shutil.rmtree(folder / "tora")

    registry = ModelRegistry([tmp_path], use_hf_cache=False, cache_dir=tiny_model_cache)
    assert registry.entry("Tora_T2V_diffusers").family == "cogvideox"
    adapter = registry.get("Tora_T2V_diffusers")
    assert adapter.tora is not None
    for a, b in zip(adapter.tora.state_dict().values(), cog.tora.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(adapter.denoiser.state_dict().values(), cog.denoiser.state_dict().values()):
        assert torch.equal(a, b)
