"""LoRAs for one job on the UNet families: loaded at their weights, removed after (the model is as it
was, bit for bit), motion LoRAs on AnimateDiff, and the wrong file refused with a sentence."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from cinegen.server.errors import InvalidArgument
from cinegen.server.models.lora import LoraSpec, loras_applied, parse_lora


def _save_lora(unet, pipeline_class, folder: Path, name: str, targets: list[str]) -> Path:
    """A LoRA made with peft on a copy of the model's UNet, saved as diffusers saves one."""
    unet = copy.deepcopy(unet)
    torch.manual_seed(4)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=targets, init_lora_weights=False))
    pipeline_class.save_lora_weights(str(folder), unet_lora_layers=get_peft_model_state_dict(unet),
                                     weight_name=f"{name}.safetensors")
    return folder / f"{name}.safetensors"


def _prediction(adapter, x):
    cond = adapter.encode_prompt("a red disc", "", 7.5)
    return adapter.predict(x, torch.tensor(500), cond)


@pytest.mark.parametrize("text, spec", [
    ("/loras/style.safetensors", LoraSpec("/loras/style.safetensors", 1.0)),
    ("/loras/style.safetensors:0.6", LoraSpec("/loras/style.safetensors", 0.6)),
    ("C:\\loras\\style.safetensors", LoraSpec("C:\\loras\\style.safetensors", 1.0)),
    ("C:\\loras\\style.safetensors:-0.5", LoraSpec("C:\\loras\\style.safetensors", -0.5)),
])
def test_a_lora_is_a_path_and_an_optional_weight(text, spec):
    assert parse_lora(text) == spec


def test_an_sd_lora_changes_the_job_and_leaves_the_model_as_it_was(registry, tmp_path):
    from diffusers import StableDiffusionPipeline

    adapter = registry.get("tiny-sd")
    path = _save_lora(adapter.pipe.unet, StableDiffusionPipeline, tmp_path, "style",
                      ["to_q", "to_k", "to_v", "to_out.0"])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    before = _prediction(adapter, x)
    with loras_applied(adapter, [LoraSpec(str(path), 1.0)]):
        full = _prediction(adapter, x)
    with loras_applied(adapter, [LoraSpec(str(path), 0.5)]):
        half = _prediction(adapter, x)
    assert (full - before).abs().max() > 1e-3
    # LoRA adds weight × BA to each layer: half the weight lands between (nonlinear model: not exactly half)
    assert 0 < float((half - before).abs().mean()) < float((full - before).abs().mean())
    assert torch.equal(_prediction(adapter, x), before), "unloaded after the job"


def test_the_lora_is_removed_when_the_job_fails(registry, tmp_path):
    from diffusers import StableDiffusionPipeline

    adapter = registry.get("tiny-sd")
    path = _save_lora(adapter.pipe.unet, StableDiffusionPipeline, tmp_path, "style", ["to_q", "to_v"])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    before = _prediction(adapter, x)
    with pytest.raises(RuntimeError, match="cancelled"):
        with loras_applied(adapter, [LoraSpec(str(path))]):
            raise RuntimeError("cancelled")
    assert torch.equal(_prediction(adapter, x), before)


def test_a_motion_lora_changes_how_animatediff_moves(registry, tmp_path):
    from diffusers import AnimateDiffPipeline

    adapter = registry.get("tiny-animatediff")
    motion_targets = [name for name, _ in adapter.pipe.unet.named_modules()
                      if "motion_modules" in name and name.endswith(("to_q", "to_v"))]
    path = _save_lora(adapter.pipe.unet, AnimateDiffPipeline, tmp_path, "zoom", motion_targets)
    x = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    before = _prediction(adapter, x)
    with loras_applied(adapter, [LoraSpec(str(path))]):
        moved = _prediction(adapter, x)
    assert (moved - before).abs().max() > 1e-4
    assert torch.equal(_prediction(adapter, x), before)


def test_files_that_are_not_loras_are_refused_with_a_sentence(registry, tmp_path):
    from safetensors.torch import save_file

    adapter = registry.get("tiny-sd")
    module = tmp_path / "mm_sd_v15.safetensors"
    save_file({"down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight": torch.zeros(1)}, str(module))
    with pytest.raises(InvalidArgument, match="not a LoRA but a motion-module"):
        with loras_applied(adapter, [LoraSpec(str(module))]):
            pass
    with pytest.raises(InvalidArgument, match="not a .safetensors file"):
        with loras_applied(adapter, [LoraSpec(str(tmp_path / "missing.safetensors"))]):
            pass


def test_the_unet_upscale_pipeline_takes_loras_for_the_job(registry, tmp_path):
    """`--lora A:W,B` on an SD upscale: the frames change with the LoRA, and the next job is as before."""
    from diffusers import StableDiffusionPipeline

    from cinegen.common.params import UpscaleParams
    from test_upscale_pipeline import run_upscale

    adapter = registry.get("tiny-sd")
    style = _save_lora(adapter.pipe.unet, StableDiffusionPipeline, tmp_path, "style", ["to_q", "to_v"])
    other = _save_lora(adapter.pipe.unet, StableDiffusionPipeline, tmp_path, "other", ["to_k"])
    params = dict(scale=2.0, stages=1)
    without = run_upscale(registry, params=UpscaleParams(**params), steps=2)
    with_loras = run_upscale(registry, params=UpscaleParams(lora=f"{style}:0.8,{other}", **params), steps=2)
    after = run_upscale(registry, params=UpscaleParams(**params), steps=2)
    frames = lambda ctx: torch.stack([ctx.sink.frames[k] for k in sorted(ctx.sink.frames)])  # noqa: E731
    assert not torch.allclose(frames(without), frames(with_loras))
    assert torch.equal(frames(without), frames(after))
