"""Shared self-attention over GoldenMem memory: transparent when empty, exact when the memory repeats
the frame itself, effective otherwise, and always removed again (ALGORITHMS.md §4)."""
from __future__ import annotations

import pytest
import torch

from cinegen.server.diffusion.shared_attention import (
    MemoryBank,
    MemoryWriteHook,
    SharedSelfAttentionProcessor,
    shared_self_attention,
)
from cinegen.server.diffusion.sampler import DenoiseLoop
from cinegen.server.pipelines.base import Resolved
from cinegen.server.pipelines.image import generate_images
from cinegen.server.pipelines.story import MemoryKeyframe, generate_keyframe


@pytest.fixture(scope="module")
def sd(registry):
    return registry.get("tiny-sd")


def _resolved(**kw) -> Resolved:
    base = dict(prompt="a lighthouse keeper with a red scarf", negative_prompt="blur", model="tiny-sd", seed=11,
                steps=3, guidance=7.5, width=64, height=64, frames=1, fps=24.0, first_frame=1001)
    base.update(kw)
    return Resolved(**base)


def _unet_call(sd, x, t, embeds):
    with torch.no_grad():
        return sd.denoiser(x, t, encoder_hidden_states=embeds, return_dict=False)[0]


def _inputs(sd, seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, size, size, generator=g)
    embeds = sd.encode_prompt("a red disc", "", 1.0).embeds
    return x, torch.tensor(500), embeds


def test_installed_without_memory_the_unet_is_unchanged_bit_for_bit(sd):
    x, t, embeds = _inputs(sd)
    plain = _unet_call(sd, x, t, embeds)
    with shared_self_attention(sd.denoiser, sd.self_attention_names()) as bank:
        bank.mode = "read"  # reading an empty bank must fall through to the original processors
        shared = _unet_call(sd, x, t, embeds)
        assert any(isinstance(p, SharedSelfAttentionProcessor) for p in sd.denoiser.attn_processors.values())
    assert torch.equal(plain, shared)


def test_memory_equal_to_the_frame_itself_leaves_attention_unchanged(sd):
    # softmax over [K; K] with values [V; V] weighs every duplicated pair equally: the same result
    x, t, embeds = _inputs(sd, seed=1)
    plain = _unet_call(sd, x, t, embeds)
    with shared_self_attention(sd.denoiser, sd.self_attention_names()) as bank:
        bank.mode = "write"
        _unet_call(sd, x, t, embeds)
        bank.mode = "read"
        with_itself = _unet_call(sd, x, t, embeds)
    torch.testing.assert_close(with_itself, plain, atol=1e-4, rtol=1e-4)


def test_memory_of_another_frame_changes_the_output(sd):
    x, t, embeds = _inputs(sd, seed=2)
    other, _, _ = _inputs(sd, seed=3, size=5)  # an odd GoldenMem size on purpose
    plain = _unet_call(sd, x, t, embeds)
    with shared_self_attention(sd.denoiser, sd.self_attention_names()) as bank:
        bank.mode = "write"
        _unet_call(sd, other, t, embeds)
        counts = {name: bank.token_count(name) for name in sd.self_attention_names()}
        bank.mode = "read"
        shared = _unet_call(sd, x, t, embeds)
    assert shared.shape == plain.shape
    # one cached entry per self-attention layer, with the memory frame's token count at that level
    assert set(counts) == set(sd.self_attention_names())
    assert counts == {name: 9 if name.startswith("mid_block") else 25 for name in counts}  # 5×5, mid block 3×3


def test_a_layer_attends_over_its_own_tokens_and_the_memory_tokens_jointly():
    # Attn(Q, [K; K_mem], [V; V_mem]) with the layer's own projections: one softmax over both sequences
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    own, memory = torch.randn(1, 12, 16), torch.randn(1, 5, 16)
    bank = MemoryBank(mode="read", tokens={"layer": [memory]})
    with torch.no_grad():
        out = SharedSelfAttentionProcessor("layer", None, bank)(attn, own)
        both = torch.cat([own, memory], dim=1)
        q = attn.to_q(own).view(1, 12, 2, 8).transpose(1, 2)
        k, v = (proj(both).view(1, 17, 2, 8).transpose(1, 2) for proj in (attn.to_k, attn.to_v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1)
        expected = attn.to_out[0]((weights @ v).transpose(1, 2).reshape(1, 12, 16))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)  # SDPA vs explicit softmax: rounding only
    assert float(weights[..., 12:].sum(-1).min()) > 0  # the memory takes part in every query's softmax


def test_original_processors_are_restored_after_use_and_after_an_error(sd):
    before = dict(sd.denoiser.attn_processors)
    with shared_self_attention(sd.denoiser, sd.self_attention_names()):
        pass
    assert all(sd.denoiser.attn_processors[k] is v for k, v in before.items())
    with pytest.raises(RuntimeError):
        with shared_self_attention(sd.denoiser, sd.self_attention_names()):
            raise RuntimeError("boom")
    assert all(sd.denoiser.attn_processors[k] is v for k, v in before.items())
    with pytest.raises(KeyError):
        with shared_self_attention(sd.denoiser, ["no.such.processor"]):
            pass
    assert all(sd.denoiser.attn_processors[k] is v for k, v in before.items())


def test_write_hook_noises_each_memory_to_the_step_and_clears_the_bank(sd):
    scheduler = sd.new_scheduler()
    scheduler.set_timesteps(3)
    memory = [torch.randn(4, 5, 5), torch.randn(4, 8, 8)]
    bank = MemoryBank()
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    hook = MemoryWriteHook(bank, memory, lambda x, t: seen.append((x.shape[-1], x, t)),
                           noise_to=scheduler.add_noise, model_input=scheduler.scale_model_input,
                           generator=torch.Generator().manual_seed(0))
    modes = []
    loop = DenoiseLoop(scheduler, lambda x, t: (modes.append(bank.mode), torch.zeros_like(x))[1], hooks=(hook,))
    loop.run(torch.randn(1, 4, 8, 8))
    assert modes == ["read"] * 3 and bank.mode == "off" and not bank.tokens
    assert [size for size, _, _ in seen] == [5, 8] * 3
    for k, (_, x, t) in enumerate(seen):
        which = k % 2
        expected = scheduler.add_noise(memory[which].unsqueeze(0), hook.noise[which], t)
        assert torch.equal(x, expected), "memory is noised to the current step with one fixed noise"


def test_keyframe_with_empty_memory_equals_the_image_pipeline_bit_for_bit(sd):
    r = _resolved()
    assert torch.equal(generate_keyframe(sd, r, []), generate_images(sd, r))


def test_keyframe_memory_changes_the_keyframe_and_processors_are_restored(sd):
    before = dict(sd.denoiser.attn_processors)
    earlier = [MemoryKeyframe(generate_images(sd, _resolved(seed=s, prompt=p)), p)
               for s, p in ((1, "a red scarf"), (2, "a yellow raincoat"))]
    r = _resolved(seed=3)
    reads: list = []
    original = SharedSelfAttentionProcessor.attend_with_memory
    patched = staticmethod(lambda attn, hidden, memory, temb: reads.append((hidden.shape[1], memory.shape[1]))
                           or original(attn, hidden, memory, temb))
    SharedSelfAttentionProcessor.attend_with_memory = patched
    try:
        remembered = generate_keyframe(sd, r, earlier)
    finally:
        SharedSelfAttentionProcessor.attend_with_memory = staticmethod(original)
    # every self-attention of every step reads the memory; GoldenMem keeps it under φ ≈ 1.62 frames
    assert len(reads) == r.steps * len(sd.self_attention_names())
    assert all(0 < memory <= 1.62 * own for own, memory in reads), reads
    assert torch.equal(generate_keyframe(sd, r, earlier), remembered), "deterministic for one seed"
    assert all(sd.denoiser.attn_processors[k] is v for k, v in before.items())
