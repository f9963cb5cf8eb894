"""GoldenMem: golden-ratio memory sizes, bounded cost, exact downsampling, memory tokens (ALGORITHMS.md §4)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cinegen.server.diffusion.goldenmem import (
    GOLDEN_MEMORY_BOUND,
    PHI,
    build_memory_latents,
    floor_div_phi,
    golden_memory_shapes,
    golden_memory_sizes,
    memory_cost,
    memory_tokens,
    patch_tokens,
)


def test_sizes_follow_the_published_example():
    assert golden_memory_sizes(25, 10) == [25, 15, 9, 5, 3, 1]


@given(st.integers(0, 10**7))
def test_integer_floor_div_phi_equals_the_float_division(size):
    assert floor_div_phi(size) == math.floor(size / PHI)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4096), st.integers(1, 100))
def test_successive_sizes_shrink_by_phi_within_rounding(full, count):
    sizes = golden_memory_sizes(full, count)
    assert sizes[0] == full and len(sizes) <= count
    for k, (bigger, smaller) in enumerate(zip(sizes, sizes[1:])):
        assert bigger / PHI - 1 < smaller <= bigger / PHI
        # Repeated floors drift by less than Σ φ^−j = φ² from the ideal s0/φ^k.
        assert full / PHI ** (k + 1) - PHI**2 < smaller <= full / PHI ** (k + 1)


def test_entries_below_the_minimum_are_dropped_not_kept_tiny():
    assert golden_memory_sizes(25, 10, min_short_side=4) == [25, 15, 9, 5]
    assert golden_memory_sizes(25, 3) == [25, 15, 9]
    assert golden_memory_sizes(1, 5) == [1]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4096), st.integers(1, 100), st.floats(0.25, 4.0))
def test_memory_costs_less_than_1_7_frames_for_any_number_of_shots(full, count, aspect):
    cost = memory_cost(golden_memory_sizes(full, count), aspect)
    assert cost < 1.7
    assert cost <= GOLDEN_MEMORY_BOUND + 1e-12


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 512), st.integers(1, 512), st.integers(1, 100))
def test_memory_shapes_keep_the_token_count_under_phi_frames(height, width, count):
    shapes = golden_memory_shapes((height, width), count)
    assert shapes[0] == (height, width)
    assert sum(h * w for h, w in shapes) < 1.7 * height * width
    for h, w in shapes:
        assert (h <= w) == (height <= width) or h == w  # orientation is kept


def test_long_memory_approaches_the_golden_bound():
    cost = memory_cost(golden_memory_sizes(10**6, 100))
    assert cost == pytest.approx(PHI, rel=1e-5)


def test_memory_latents_are_exactly_the_downsampled_keyframes():
    torch.manual_seed(0)
    keyframes = [torch.randn(4, 26, 40) for _ in range(5)]  # oldest → newest
    memory = build_memory_latents(keyframes)
    shapes = golden_memory_shapes((26, 40), 5)[::-1]  # oldest first: (3,4) … (26,40)
    assert [tuple(m.shape[-2:]) for m in memory] == shapes
    assert torch.equal(memory[-1], keyframes[-1])  # the most recent is kept at full size
    for latent, kept, shape in zip(keyframes[:-1], memory[:-1], shapes[:-1]):
        expected = F.interpolate(latent[None], size=shape, mode="bilinear", align_corners=False, antialias=True)[0]
        assert torch.equal(kept, expected)


def test_memory_forgets_the_oldest_keyframes_first():
    keyframes = [torch.full((1, 5, 5), float(i)) for i in range(8)]  # 5 → 3 → 1: three kept
    memory = build_memory_latents(keyframes)
    assert [m.mean().item() for m in memory] == pytest.approx([5.0, 6.0, 7.0])


def test_memory_latents_refuse_keyframes_of_different_sizes():
    with pytest.raises(ValueError, match="one size"):
        build_memory_latents([torch.zeros(4, 8, 8), torch.zeros(4, 8, 10)])


def test_patch_tokens_equal_a_stride_p_patch_embedding_conv():
    torch.manual_seed(1)
    latent = torch.randn(4, 6, 10, dtype=torch.float64)
    weight = torch.randn(8, 4, 2, 2, dtype=torch.float64)
    tokens = patch_tokens(latent, 2)
    conv = F.conv2d(latent[None], weight, stride=2)[0]  # (8, 3, 5)
    torch.testing.assert_close(tokens @ weight.view(8, -1).T, conv.flatten(1).T)


def test_patch_tokens_pad_partial_patches_with_the_border():
    latent = torch.arange(15.0).view(1, 3, 5)
    tokens = patch_tokens(latent, 2)
    assert tokens.shape == (2 * 3, 4)
    assert tokens[-1].tolist() == [14.0, 14.0, 14.0, 14.0]  # bottom-right patch is all the corner


def test_memory_tokens_with_patch_one_are_every_latent_pixel_oldest_first():
    memory = [torch.randn(3, 2, 3), torch.randn(3, 4, 5)]
    tokens = memory_tokens(memory)
    assert tokens.shape == (6 + 20, 3)
    assert torch.equal(tokens[:6], memory[0].flatten(1).T)
    assert torch.equal(tokens[6:], memory[1].flatten(1).T)


def test_memory_tokens_noise_each_latent_before_tokenising():
    memory = [torch.zeros(2, 2, 2), torch.ones(2, 3, 3)]
    seen = []

    def add_noise(z):
        seen.append(tuple(z.shape))
        return z + 10

    tokens = memory_tokens(memory, to_tokens=lambda z: z.flatten(1).T * 2, add_noise=add_noise)
    assert seen == [(2, 2, 2), (2, 3, 3)]
    assert tokens[:4].unique().tolist() == [20.0] and tokens[4:].unique().tolist() == [22.0]
