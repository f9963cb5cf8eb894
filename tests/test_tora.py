"""Tora's Trajectory Extractor and Motion-guidance Fuser on diffusers' CogVideoX transformer."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from cinegen.server.diffusion.tora import (MotionGuidanceFuser, ToraConfig, ToraModules, load_tora_weights,
                                           motion_features, our_name, patchify_flow_latents, published_name,
                                           to_published_state_dict, tora_installed)

CONFIG = ToraConfig(num_layers=2, hidden_dim=32, latent_channels=4, feature_channels=16)
TEXT_TOKENS = 8


@pytest.fixture(scope="module")
def transformer():
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(0)
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
        text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        max_text_seq_length=TEXT_TOKENS)
    return model.eval()


def _inputs(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 3, 4, 8, 8, generator=g)  # (B, F', C, h, w)
    text = torch.randn(batch, TEXT_TOKENS, 32, generator=g)
    flow = torch.randn(1, 3, 4, 8, 8, generator=g)  # one flow video, shared by the CFG rows
    return latents, text, flow


def _run(model, latents, text):
    with torch.no_grad():
        return model(hidden_states=latents, encoder_hidden_states=text, timestep=torch.tensor([500] * latents.shape[0]),
                     return_dict=False)[0]


def _randomised(modules: ToraModules, seed: int = 2) -> ToraModules:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in modules.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=g) * 0.2 + (0.9 if "running_var" in name else -0.1))
    return modules


def test_zero_initialised_fusers_leave_the_transformer_output_bit_identical(transformer):
    latents, text, flow = _inputs()
    plain = _run(transformer, latents, text)
    modules = ToraModules(CONFIG)
    features = motion_features(modules, flow)
    assert any(f.abs().max() > 0 for f in features), "the motion features themselves are not zero"
    with tora_installed(transformer, modules, features):
        fused = _run(transformer, latents, text)
    assert torch.equal(fused, plain)


def test_trained_fusers_change_the_output_and_removing_them_restores_it(transformer):
    latents, text, flow = _inputs()
    plain = _run(transformer, latents, text)
    modules = _randomised(ToraModules(CONFIG))
    with tora_installed(transformer, modules, motion_features(modules, flow)):
        fused = _run(transformer, latents, text)
    assert (fused - plain).abs().max() > 1e-3
    assert torch.equal(_run(transformer, latents, text), plain)


def test_hooks_are_removed_when_the_forward_fails(transformer):
    modules = ToraModules(CONFIG)
    features = motion_features(modules, _inputs()[2])
    with pytest.raises(RuntimeError):
        with tora_installed(transformer, modules, features):
            raise RuntimeError("cancelled")
    assert all(not block.norm1._forward_hooks for block in transformer.transformer_blocks)


def test_modules_for_another_layer_count_are_refused(transformer):
    modules = ToraModules(ToraConfig(num_layers=3, hidden_dim=32, latent_channels=4, feature_channels=16))
    with pytest.raises(ValueError, match="3 layers"):
        with tora_installed(transformer, modules, motion_features(modules, _inputs()[2])):
            pass


def test_fuser_is_h_plus_groupnorm_of_h_times_gamma_plus_beta_with_gamma_from_the_previous_frame():
    """With only the temporal conv's first tap set (weight M), γ(t) = M·s(t−1) and β(t) = M'·s'(t−1), s the
    spatial conv of the feature at the same location; frame 0 repeats itself (replicate padding)."""
    fuser = MotionGuidanceFuser(CONFIG)
    g = torch.Generator().manual_seed(3)
    m_gamma, m_beta = torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g)
    with torch.no_grad():
        fuser.gamma_temporal.weight.zero_()
        fuser.beta_temporal.weight.zero_()
        fuser.gamma_temporal.weight[:, :, 0] = m_gamma
        fuser.beta_temporal.weight[:, :, 0] = m_beta
    frames = 3
    h = torch.randn(2 * frames, 32, 4, 4, generator=g)
    feature = torch.randn(2 * frames, 16, 4, 4, generator=g)
    with torch.no_grad():
        out = fuser(h, feature, frames)
        previous = torch.tensor([0, 0, 1])  # frame t reads frame t − 1; frame 0 reads itself
        s_gamma = fuser.gamma_spatial(feature).view(2, frames, 8, 4, 4)[:, previous]
        s_beta = fuser.beta_spatial(feature).view(2, frames, 8, 4, 4)[:, previous]
        gamma = torch.einsum("oc,bfchw->bfohw", m_gamma, s_gamma).reshape(2 * frames, 32, 4, 4)
        beta = torch.einsum("oc,bfchw->bfohw", m_beta, s_beta).reshape(2 * frames, 32, 4, 4)
        expected = h + torch.nn.functional.group_norm(h, 32, fuser.norm.weight, fuser.norm.bias) * gamma + beta
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_patchify_puts_each_2x2_patch_on_one_token_with_channels_ordered_c_then_rows_then_columns():
    z = torch.arange(2 * 3 * 4 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 4, 6)  # (B, F', C, h, w)
    out = patchify_flow_latents(z, patch_size=2, patch_size_t=1)
    assert out.shape == (2 * 3, 4 * 4, 2, 3)
    for b, f, c, di, dj, i, j in [(0, 0, 0, 0, 0, 0, 0), (1, 2, 3, 1, 0, 1, 2), (0, 1, 2, 0, 1, 1, 1)]:
        assert out[b * 3 + f, c * 4 + di * 2 + dj, i, j] == z[b, f, c, 2 * i + di, 2 * j + dj]


def test_extractor_gives_one_feature_map_per_layer_on_the_token_grid():
    features = motion_features(ToraModules(CONFIG), torch.randn(1, 3, 4, 8, 10))
    assert [tuple(f.shape) for f in features] == [(3, 16, 4, 5)] * 2
    assert not torch.equal(features[0], features[1]), "each layer has its own feature map"


def test_every_parameter_name_maps_to_toras_and_back():
    names = list(ToraModules(CONFIG).state_dict())
    for name in names:
        theirs = published_name(name)
        assert theirs.startswith(("traj_extractor.", "fuser.")) and our_name(theirs) == name
    assert published_name("extractor.blocks.3.conv2.weight") == "traj_extractor.body.3.block2.weight"
    assert published_name("extractor.blocks.0.norm1.running_var") == "traj_extractor.body.0.bn1.running_var"
    assert our_name("fuser.29.flow_cond_norm.bias") == "fusers.29.norm.bias"
    assert our_name("traj_extractor.conv_in.weight") == "extractor.stem.weight"


def test_a_name_toras_diffusers_modules_do_not_have_is_reported():
    with pytest.raises(KeyError, match="skep"):
        our_name("traj_extractor.body.0.skep.weight")


def test_published_weights_load_back_from_a_model_folder(tmp_path):
    modules = _randomised(ToraModules(CONFIG))
    state = to_published_state_dict(modules)
    state["patch_embed.proj.weight"] = torch.zeros(3)  # the transformer's own weights sit beside Tora's
    (tmp_path / "transformer").mkdir()
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    loaded = load_tora_weights(tmp_path, latent_channels=4, patch_size=2)
    assert loaded is not None and loaded.config == CONFIG
    for (name, a), (other, b) in zip(modules.state_dict().items(), loaded.state_dict().items()):
        assert name == other and torch.equal(a, b)


def test_sharded_published_weights_load_through_their_index(tmp_path):
    modules = _randomised(ToraModules(CONFIG), seed=4)
    state = to_published_state_dict(modules)
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    folder = tmp_path / "transformer"
    folder.mkdir()
    for file, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, str(folder / file))
    weight_map = {k: f for f, keys in shards.items() for k in keys}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_tora_weights(tmp_path, latent_channels=4, patch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(modules.state_dict().values(), loaded.state_dict().values()))


def test_a_folder_without_tora_weights_gives_none(tmp_path):
    (tmp_path / "transformer").mkdir()
    save_file({"patch_embed.proj.weight": torch.zeros(3)}, str(tmp_path / "transformer" / "x.safetensors"))
    assert load_tora_weights(tmp_path, latent_channels=4, patch_size=2) is None


def test_the_hook_lines_motion_features_up_with_the_video_tokens_for_every_cfg_row():
    from cinegen.server.diffusion.tora import _fuse_hook

    class AddFeature(torch.nn.Module):
        def forward(self, h, feature, frames):
            return h + feature

    frames, height, width, channels = 3, 2, 4, 5
    feature = torch.randn(frames, channels, height, width)  # one clip's features, (T, C, H, W)
    tokens = torch.zeros(2, frames * height * width, channels)  # CFG: two rows of (T·H·W) tokens
    fused, *rest = _fuse_hook(AddFeature(), feature)(None, (), (tokens, "text", "gate"))
    assert rest == ["text", "gate"], "norm1's other outputs pass through"
    for row in range(2):
        for t, y, x in [(0, 0, 0), (2, 1, 3), (1, 0, 2)]:
            assert torch.equal(fused[row, t * height * width + y * width + x], feature[t, :, y, x])
