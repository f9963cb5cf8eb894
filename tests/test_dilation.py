"""Restrained dilated convolution (ALGORITHMS.md §1a) on tiny diffusers UNets."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel, UNetMotionModel
from torch import nn

from cinegen.server.diffusion.dilation import DilationSchedule, dilation_targets, restrained_dilation
from tiny_unets import tiny_unet


def tiny_sdxl_layout_unet() -> UNet2DConditionModel:
    """SDXL's block layout (3 levels, 2 resnets each, no attention at the top) at toy width."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=8,
        attention_head_dim=8,
    )


def conv_settings(unet: nn.Module) -> dict[str, tuple]:
    return {
        name: (module.dilation, module.padding, tuple(module._reversed_padding_repeated_twice))
        for name, module in unet.named_modules()
        if isinstance(module, nn.Conv2d)
    }


def run(unet: UNet2DConditionModel, sample: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=torch.ones(1, 3, 32)).sample


def test_default_targets_reproduce_freescale_sdxl_list():
    names = [name for name, _ in dilation_targets(tiny_sdxl_layout_unet())]
    expected = ["down_blocks.1.downsamplers.0.conv"]
    expected += [f"down_blocks.2.resnets.{i}.conv{j}" for i in (0, 1) for j in (1, 2)]
    expected += [f"mid_block.resnets.{i}.conv{j}" for i in (0, 1) for j in (1, 2)]
    assert names == expected


def test_targets_are_down_and_mid_3x3_convs_only():
    unet = tiny_unet()
    names = [name for name, _ in dilation_targets(unet, from_level=0)]
    every_3x3 = [n for n, m in unet.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert names == [n for n in every_3x3 if n.startswith(("down_blocks.", "mid_block."))]
    without_downsamplers = dilation_targets(unet, from_level=0, include_downsamplers=False)
    assert all(conv.stride == (1, 1) for _, conv in without_downsamplers)
    assert len(without_downsamplers) == len(names) - 1


def test_inside_context_targets_are_dilated_and_the_rest_untouched():
    unet = tiny_unet()
    before = conv_settings(unet)
    target_names = {name for name, _ in dilation_targets(unet)}
    assert {"down_blocks.0.downsamplers.0.conv", "mid_block.resnets.1.conv2"} <= target_names
    with restrained_dilation(unet, 2):
        inside = conv_settings(unet)
    for name, (dilation, padding, _) in inside.items():
        if name in target_names:
            assert dilation == (2, 2) and padding == (2, 2), name
        else:
            assert inside[name] == before[name], name
    assert not any(name.startswith("up_blocks.") or name in ("conv_in", "conv_out") for name in target_names)
    assert conv_settings(unet) == before


def test_exception_inside_still_restores_every_conv():
    unet = tiny_unet()
    before = conv_settings(unet)
    with pytest.raises(RuntimeError, match="boom"):
        with restrained_dilation(unet, 3):
            assert conv_settings(unet) != before
            raise RuntimeError("boom")
    assert conv_settings(unet) == before


@pytest.mark.parametrize("latent_hw", [(16, 16), (16, 24), (18, 22)])
def test_dilated_unet_keeps_output_shape(latent_hw):
    unet = tiny_unet()
    sample = torch.randn(1, 4, *latent_hw)
    plain = run(unet, sample)
    with restrained_dilation(unet, 2):
        dilated = run(unet, sample)
    assert dilated.shape == plain.shape
    assert not torch.allclose(dilated, plain)  # the dilation really is in effect
    assert torch.equal(run(unet, sample), plain)  # and really gone afterwards


def test_scale_one_is_bit_identical():
    unet = tiny_unet()
    sample = torch.randn(1, 4, 16, 16)
    plain = run(unet, sample)
    with restrained_dilation(unet, 1):
        assert torch.equal(run(unet, sample), plain)


def test_non_zero_padding_mode_is_dilated_and_restored():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
            self.down_blocks = nn.ModuleList([nn.Sequential(conv)])

    toy = Toy()
    conv = toy.down_blocks[0][0]
    image = torch.randn(1, 2, 12, 12)
    plain = conv(image)
    reference = nn.Conv2d(2, 2, 3, padding=2, dilation=2, padding_mode="reflect")
    reference.load_state_dict(conv.state_dict())
    with restrained_dilation(toy, 2) as targets:
        assert [name for name, _ in targets] == ["down_blocks.0.0"]
        assert torch.allclose(conv(image), reference(image))
    assert torch.equal(conv(image), plain)


def test_motion_unet_targets_skip_temporal_layers_and_keep_shape():
    torch.manual_seed(0)
    unet = UNetMotionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
        cross_attention_dim=32,
        norm_num_groups=8,
        num_attention_heads=4,
        motion_num_attention_heads=4,
        motion_max_seq_length=8,
    ).eval()
    targets = dilation_targets(unet, from_level=0)
    assert targets and all("motion_modules" not in name for name, _ in targets)
    motion_params = [n for n, m in unet.named_modules() if "motion_modules" in n and isinstance(m, nn.Conv2d)]
    assert motion_params == []  # the temporal layers hold no 2-D convs to confuse with

    sample = torch.randn(1, 4, 3, 16, 16)
    context = torch.ones(3, 3, 32)  # one prompt embedding per frame
    with torch.no_grad():
        plain = unet(sample, 10, encoder_hidden_states=context).sample
        before = conv_settings(unet)
        with restrained_dilation(unet, 2):
            dilated = unet(sample, 10, encoder_hidden_states=context).sample
        assert conv_settings(unet) == before
    assert dilated.shape == plain.shape and not torch.allclose(dilated, plain)


def test_schedule_dilates_only_early_steps_of_upscaled_stages():
    schedule = DilationSchedule.for_stage(native_width=1024, stage_width=4096, dilate_tau=35)
    assert schedule.scale == 4
    assert [schedule.uses_dilation(i) for i in (0, 34, 35, 49)] == [True, True, False, False]
    native = DilationSchedule.for_stage(native_width=1024, stage_width=1024)
    assert not native.uses_dilation(0)

    unet = tiny_unet()
    probe = dict(unet.named_modules())["mid_block.resnets.0.conv1"]
    with schedule.for_step(unet, 3) as dilated:
        assert dilated and probe.dilation == (4, 4)
    with schedule.for_step(unet, 40) as dilated:
        assert not dilated and probe.dilation == (1, 1)
    assert probe.dilation == (1, 1)
