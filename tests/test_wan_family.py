"""The `wan` family: the adapter is the stock diffusers Wan computation, the tiny model loads like a real one."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import WanPipeline

from cinegen.server.errors import InvalidArgument
from cinegen.server.models.registry import ModelRegistry
from cinegen.server.models.wan import (KNOWN_PROFILES, PROFILE_FILE, TINY_PROFILE, build_tiny_wan, infer_profile,
                                       tiny_wan_transformer)
from cinegen.server.models.wan import as_pil_image
from cinegen.server.pipelines.base import seeded_generator
from cinegen.server.pipelines.upscale_dit import generate_base_latents


@pytest.fixture(scope="module")
def wan_registry(tiny_model_cache):
    registry = ModelRegistry(use_hf_cache=False, cache_dir=tiny_model_cache)
    return registry


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory) -> Path:
    """A LoRA for tiny-wan made with peft on a separate copy of the transformer and saved as diffusers does."""
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = tiny_wan_transformer(seed=0)
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                       init_lora_weights=False))
    folder = tmp_path_factory.mktemp("lora")
    WanPipeline.save_lora_weights(str(folder), transformer_lora_layers=get_peft_model_state_dict(transformer),
                                  weight_name="tiny_lora.safetensors")
    return folder / "tiny_lora.safetensors"


def _stock_frames(pipe_output) -> torch.Tensor:
    """diffusers' (B, F, 3, H, W) video tensor in our (B, 3, F, H, W) layout."""
    return pipe_output.frames.permute(0, 2, 1, 3, 4)


def test_text_to_video_equals_stock_wan_pipeline_bit_for_bit(wan_registry):
    adapter = wan_registry.get("tiny-wan")
    cond = adapter.encode_prompt("a red disc", "blue", 5.0)
    ours = adapter.decode(generate_base_latents(adapter, cond, 32, 32, 5, 3, seeded_generator(7)))
    stock = adapter.pipe("a red disc", negative_prompt="blue", height=32, width=32, num_frames=5,
                         num_inference_steps=3, guidance_scale=5.0, generator=torch.Generator().manual_seed(7),
                         output_type="pt")
    assert ours.shape == (1, 3, 5, 32, 32)
    assert torch.equal(ours, _stock_frames(stock))


def test_text_to_video_without_guidance_equals_stock_at_a_non_square_size(wan_registry):
    adapter = wan_registry.get("tiny-wan")
    cond = adapter.encode_prompt("a red disc", "", 1.0)
    assert not cond.do_cfg
    ours = adapter.decode(generate_base_latents(adapter, cond, 48, 32, 9, 2, seeded_generator(3)))
    stock = adapter.pipe("a red disc", height=32, width=48, num_frames=9, num_inference_steps=2, guidance_scale=1.0,
                         generator=torch.Generator().manual_seed(3), output_type="pt")
    assert ours.shape == (1, 3, 9, 32, 48)
    assert torch.equal(ours, _stock_frames(stock))


def test_image_to_video_equals_stock_i2v_pipeline_bit_for_bit(wan_registry):
    adapter = wan_registry.get("tiny-wan-i2v")
    assert adapter.is_image_to_video
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    cond = adapter.encode_prompt("a red disc", "blue", 5.0)
    ours = adapter.decode(generate_base_latents(adapter, cond, 32, 32, 5, 3, seeded_generator(5), image=image))
    with torch.no_grad():  # the I2V module's own prompt cleaning needs ftfy; WanPipeline's encoding is the same
        positive, negative = (WanPipeline._get_t5_prompt_embeds(adapter.pipe, text, max_sequence_length=512)
                              for text in ("a red disc", "blue"))
    # the stock pipeline's intended input is a PIL image (a float tensor would be rescaled twice by CLIP's
    # processor there); ours turns any picture into that PIL image first
    stock = adapter.pipe(image=as_pil_image(image), prompt_embeds=positive, negative_prompt_embeds=negative,
                         height=32, width=32, num_frames=5, num_inference_steps=3, guidance_scale=5.0,
                         generator=torch.Generator().manual_seed(5), output_type="pt")
    assert torch.equal(ours, _stock_frames(stock))


def test_a_float_picture_conditions_exactly_as_its_8_bit_pil_image(wan_registry):
    adapter = wan_registry.get("tiny-wan-i2v")
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    cond = adapter.encode_prompt("a red disc", "", 1.0)
    noise = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    from_tensor = adapter.with_image_condition(cond, image, noise, 5, 32, 32)
    from_array = adapter.with_image_condition(cond, image.permute(1, 2, 0).numpy(), noise, 5, 32, 32)
    from_pil = adapter.with_image_condition(cond, as_pil_image(image), noise, 5, 32, 32)
    # (the tiny I2V model has no CLIP image encoder, so "condition" is what there is to compare here;
    # with one, "image_embeds" come from the same PIL image by construction)
    assert set(from_tensor.extra) == set(from_pil.extra) >= {"condition"}
    for key in from_pil.extra:
        assert torch.equal(from_tensor.extra[key], from_pil.extra[key])
        assert torch.equal(from_array.extra[key], from_pil.extra[key])
    dark = adapter.with_image_condition(cond, image * 0.5, noise, 5, 32, 32)
    assert not torch.equal(dark.extra["condition"], from_pil.extra["condition"]), "the picture matters"


def test_pictures_become_8_bit_rgb_pil_images_and_odd_shapes_are_refused():
    from PIL import Image

    pil = as_pil_image(torch.tensor([[[0.0, 1.0]], [[0.5, 0.25]], [[1.0, 0.0]]]))  # (3, 1, 2)
    assert pil.mode == "RGB" and pil.size == (2, 1)
    assert pil.getpixel((0, 0)) == (0, 128, 255) and pil.getpixel((1, 0)) == (255, 64, 0)
    same = Image.new("RGB", (4, 4))
    assert as_pil_image(same) is same
    with pytest.raises(InvalidArgument, match="one image"):
        as_pil_image(torch.zeros(2, 3, 8, 8))


def test_image_condition_changes_the_video(wan_registry):
    adapter = wan_registry.get("tiny-wan-i2v")
    cond = adapter.encode_prompt("a red disc", "", 1.0)
    dark, bright = torch.zeros(3, 32, 32), torch.ones(3, 32, 32)
    a = generate_base_latents(adapter, cond, 32, 32, 5, 2, seeded_generator(5), image=dark)
    b = generate_base_latents(adapter, cond, 32, 32, 5, 2, seeded_generator(5), image=bright)
    assert not torch.allclose(a, b)


def test_text_to_video_model_refuses_an_image_condition(wan_registry):
    adapter = wan_registry.get("tiny-wan")
    cond = adapter.encode_prompt("x", "", 1.0)
    with pytest.raises(InvalidArgument, match="text-to-video"):
        adapter.with_image_condition(cond, torch.zeros(3, 32, 32), torch.zeros(1, 4, 2, 4, 4), 5, 32, 32)


def test_byte_tokenizer_reloads_from_the_folder_and_pads_like_t5(wan_registry):
    tokenizer = wan_registry.get("tiny-wan").pipe.tokenizer  # loaded back from the saved folder
    out = tokenizer(["héllo"], padding="max_length", max_length=12, truncation=True, add_special_tokens=True,
                    return_attention_mask=True, return_tensors="pt")
    ids, mask = out.input_ids[0].tolist(), out.attention_mask[0].tolist()
    assert len("héllo".encode()) == 6 and ids[6] == tokenizer.eos_token_id == 1  # one token per byte, then </s>
    assert ids[7:] == [0] * 5 and mask == [1] * 7 + [0] * 5
    assert tokenizer.decode(ids, skip_special_tokens=True) == "héllo"


def test_geometry_follows_the_causal_vae_and_the_patch_grid(wan_registry):
    adapter = wan_registry.get("tiny-wan")
    assert adapter.native_size == (32, 32) and adapter.native_frames == 5
    assert adapter.size_multiple == 16 and adapter.training_token_grid == (2, 2)
    assert adapter.latent_shape(1, 64, 32, 9) == (1, 4, 3, 4, 8)
    video = torch.rand(1, 3, 9, 32, 64)
    latents = adapter.encode(video)
    assert tuple(latents.shape) == adapter.latent_shape(1, 64, 32, 9)
    assert adapter.decode(latents).shape == video.shape  # 4k+1 frames come back as 4k+1 frames


def test_encode_normalises_with_the_vae_latent_statistics(wan_registry):
    adapter = wan_registry.get("tiny-wan")
    video = torch.rand(1, 3, 5, 32, 32)
    vae = adapter.pipe.vae
    with torch.no_grad():
        raw = vae.encode(2 * video - 1).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(adapter.encode(video), (raw - mean) / std)


def test_vae_tiling_is_restored_after_the_block(wan_registry):
    vae = wan_registry.get("tiny-wan").pipe.vae
    before = (vae.use_tiling, vae.tile_sample_min_height, vae.tile_sample_stride_width)
    with wan_registry.get("tiny-wan").vae_tiling(64):
        assert vae.use_tiling and vae.tile_sample_min_height == 64 and vae.tile_sample_stride_width == 48
    assert (vae.use_tiling, vae.tile_sample_min_height, vae.tile_sample_stride_width) == before


def test_lora_changes_the_prediction_and_is_unloaded_after(wan_registry, tiny_lora):
    adapter = wan_registry.get("tiny-wan")
    cond = adapter.encode_prompt("a red disc", "", 5.0)
    x, t = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    before = adapter.predict(x, t, cond)
    with adapter.lora_applied(str(tiny_lora)):
        during = adapter.predict(x, t, cond)
    assert not torch.allclose(before, during)
    assert type(adapter.denoiser.blocks[0].attn1.to_q) is torch.nn.Linear  # the LoRA layers are gone
    assert torch.equal(adapter.predict(x, t, cond), before)


def test_lora_that_is_not_a_safetensors_file_is_rejected(wan_registry, tmp_path):
    adapter = wan_registry.get("tiny-wan")
    with pytest.raises(InvalidArgument, match="safetensors"):
        with adapter.lora_applied(str(tmp_path / "missing.safetensors")):
            pass


def test_no_lora_leaves_the_model_alone(wan_registry):
    adapter = wan_registry.get("tiny-wan")
    with adapter.lora_applied(""):
        assert not getattr(adapter.denoiser, "_hf_peft_config_loaded", False)


def test_a_wan_folder_under_models_is_discovered_with_its_profile(tmp_path, tiny_model_cache):
    build_tiny_wan(tmp_path / "my-wan", seed=4)
    registry = ModelRegistry([tmp_path], use_hf_cache=False, cache_dir=tiny_model_cache)
    entry = registry.entry("my-wan")
    assert (entry.family, entry.source) == ("wan", "folder")
    adapter = registry.get("my-wan")
    assert adapter.profile == TINY_PROFILE
    assert json.loads((tmp_path / "my-wan" / PROFILE_FILE).read_text())["native_frames"] == 5


def test_released_architectures_get_their_training_size_without_a_profile_file():
    def pipe_with(heads: int, head_dim: int):
        config = SimpleNamespace(num_attention_heads=heads, attention_head_dim=head_dim)
        return SimpleNamespace(transformer=SimpleNamespace(config=config), transformer_2=None)

    assert infer_profile(pipe_with(12, 128)) == KNOWN_PROFILES[1536]  # Wan 2.1 1.3B
    assert (infer_profile(pipe_with(12, 128)).native_width, infer_profile(pipe_with(12, 128)).native_height) == (832, 480)
    assert infer_profile(pipe_with(40, 128)).native_height == 720  # 14B


def test_wan_2_2_two_experts_take_their_own_guidance_as_stock_guidance_scale_2(tiny_model_cache):
    # A14B-style: `transformer` above the boundary timestep, `transformer_2` below, each with its own scale
    from cinegen.server.models.family import ModelEntry
    from cinegen.server.models.wan import WanAdapter, tiny_wan_transformer
    from cinegen.server.pipelines.base import seeded_generator
    from cinegen.server.pipelines.upscale_dit import generate_base_latents

    registry = ModelRegistry(use_hf_cache=False, cache_dir=tiny_model_cache)
    one = registry.get("tiny-wan")
    pipe = WanPipeline(**{**one.pipe.components, "transformer_2": tiny_wan_transformer(seed=5)}, boundary_ratio=0.9)
    pipe.set_progress_bar_config(disable=True)
    two = WanAdapter(pipe, ModelEntry("tiny-wan-a14b", "wan", "builtin", ""), one.device, one.dtype)
    scheduler = two.new_scheduler()
    scheduler.set_timesteps(4)
    assert any(t < 900 for t in scheduler.timesteps) and any(t >= 900 for t in scheduler.timesteps), "both experts"
    cond = two.encode_prompt("a red disc", "blue", 5.0, guidance_2=2.0)
    ours = generate_base_latents(two, cond, 32, 32, 5, 4, seeded_generator(7))
    stock = pipe("a red disc", negative_prompt="blue", height=32, width=32, num_frames=5, num_inference_steps=4,
                 guidance_scale=5.0, guidance_scale_2=2.0, generator=torch.Generator().manual_seed(7),
                 output_type="latent").frames
    assert torch.equal(ours, stock)
    same = generate_base_latents(two, two.encode_prompt("a red disc", "blue", 5.0), 32, 32, 5, 4, seeded_generator(7))
    assert not torch.equal(same, ours), "unset, the low-noise expert takes --guidance (diffusers' default)"
    assert "guidance_2" not in one.encode_prompt("a red disc", "blue", 5.0, guidance_2=2.0).extra, "one expert"
