"""The AttnProcessor2_0 scaffold (attention_scaffold) around an SDPA core is diffusers' processor."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from cinegen.server.diffusion.attention_scaffold import (attention_inputs, attention_output, attention_tokens,
                                                         merge_heads, processors_named, swapped_processors)
from tiny_unets import tiny_unet


def sdpa_processor(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
    inputs = attention_inputs(attn, hidden_states, encoder_hidden_states, temb)
    out = F.scaled_dot_product_attention(inputs.query, inputs.key, inputs.value, dropout_p=0.0, is_causal=False)
    return attention_output(attn, out, inputs)


def layer(seed: int = 0, query_dim: int = 16, **options) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(query_dim=query_dim, heads=2, dim_head=8, bias=True, **options).eval()
    for p in attn.parameters():  # non-trivial norms and biases, so a skipped step shows
        torch.nn.init.normal_(p, std=0.3)
    return attn


LAYERS = {
    "plain": {},
    "cross": {"cross_attention_dim": 12},
    "cross+norm_cross": {"cross_attention_dim": 12, "cross_attention_norm": "layer_norm"},
    "group_norm+residual+rescale": {"norm_num_groups": 4, "residual_connection": True, "rescale_output_factor": 2.0},
    "qk_norm": {"qk_norm": "layer_norm"},
    "spatial_norm": {"query_dim": 32, "spatial_norm_dim": 3, "residual_connection": True},  # its GroupNorm has 32 groups
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("ndim", [3, 4])
def test_scaffold_with_sdpa_core_is_attn_processor_2_0_bit_for_bit(name, ndim):
    options = LAYERS[name]
    if "spatial_norm_dim" in options and ndim == 3:
        pytest.skip("spatial_norm acts on 4-D feature maps only")
    attn = layer(**options)
    generator = torch.Generator().manual_seed(1)
    channels = options.get("query_dim", 16)
    shape = (2, channels, 3, 5) if ndim == 4 else (2, 15, channels)
    hidden = torch.randn(*shape, generator=generator)
    context = torch.randn(2, 7, 12, generator=generator) if "cross_attention_dim" in options else None
    temb = torch.randn(2, 3, 2, 2, generator=generator) if "spatial_norm_dim" in options else None
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, hidden, context, None, temb)
        got = sdpa_processor(attn, hidden, context, None, temb)
    assert got.shape == hidden.shape
    assert torch.equal(got, expected)


def test_inputs_keep_the_residual_and_4d_shape_and_split_heads():
    attn = layer(norm_num_groups=4)
    hidden = torch.randn(2, 16, 3, 5)
    inputs = attention_inputs(attn, hidden)
    assert inputs.residual is hidden and inputs.image_shape == (2, 16, 3, 5)
    assert inputs.query.shape == inputs.key.shape == inputs.value.shape == (2, 2, 15, 8)
    assert inputs.head_dim == 8
    assert attention_tokens(attn, hidden.flatten(2).transpose(1, 2)).image_shape is None


def test_merge_heads_inverts_the_head_split():
    tokens = torch.randn(2, 15, 16)
    heads = tokens.view(2, 15, 2, 8).transpose(1, 2)
    assert torch.equal(merge_heads(heads), tokens)


def test_swapped_processors_installs_by_name_and_restores_after_an_exception():
    unet = tiny_unet()
    before = dict(unet.attn_processors)
    name = next(key for key in before if key.endswith("attn1.processor"))
    replacement = AttnProcessor2_0()
    with pytest.raises(RuntimeError, match="boom"):
        with swapped_processors(unet, {name: replacement}) as originals:
            inside = unet.attn_processors
            assert inside[name] is replacement
            assert all(inside[key] is before[key] for key in before if key != name)
            assert all(originals[key] is before[key] for key in before)
            raise RuntimeError("boom")
    assert all(unet.attn_processors[key] is before[key] for key in before)


def test_unknown_processor_names_raise_before_anything_changes():
    unet = tiny_unet()
    before = dict(unet.attn_processors)
    with pytest.raises(KeyError, match="no.such"):
        with swapped_processors(unet, {"no.such.processor": AttnProcessor2_0()}):
            pass
    with pytest.raises(KeyError):
        processors_named(unet, ["no.such.processor"])
    assert all(unet.attn_processors[key] is before[key] for key in before)
