"""Code taken only on a CUDA device, run on the CPU: the CUDA dtype policy forced (CPU torch runs
float16/bfloat16 matmuls, convolutions and sdpa), or the device check replaced. No GPU has run these."""
from __future__ import annotations

import argparse
import weakref

import numpy as np
import pytest
import torch

from cinegen.server.benchmarks import gpu

CPU = torch.device("cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cogvideox_tora_steps_run_with_a_half_transformer_and_float32_latents(dtype, tiny_model_cache):
    # the loop keeps float32 latents; the transformer's time embedding takes the latents' dtype, so
    # float32 latents into a half transformer failed ("mat1 and mat2 must have the same dtype")
    figures = gpu.tora_steps(CPU, gpu.Sizes(tiny=True), dtype)
    assert figures["steps_timed"] == 2 and figures["seconds_per_step"] > 0


def test_bench_models_follow_the_serving_dtype_policy_on_cuda():
    cuda = torch.device("cuda")  # dtype_for reads only the device type: nothing touches a GPU
    assert gpu.half_for(cuda) == torch.float16
    assert gpu.half_for(cuda, "cogvideox") == torch.bfloat16  # 5B overflows in float16
    assert gpu.half_for(cuda, "wan") == torch.bfloat16
    assert gpu.half_for(CPU, "wan") == torch.float32


def test_a_failed_case_is_released_before_the_cache_is_emptied(monkeypatch):
    class Big:  # stands for the failed case's models and activations
        pass

    refs, alive_at_free = [], []

    def broken():
        big = Big()
        refs.append(weakref.ref(big))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(gpu, "cases", lambda device, sizes: [gpu.Case("oom", 1, broken),
                                                             gpu.Case("next", 1, lambda: {"x": 1})])
    monkeypatch.setattr(gpu, "_free", lambda: alive_at_free.append(refs[-1]() is not None if refs else False))
    monkeypatch.setattr("cinegen.server.devices.resolve_device", lambda name: CPU)
    report = gpu.run(argparse.Namespace(device="cpu", tiny=True))
    # inside the except clause the traceback still holds `big`: empty_cache there frees nothing of it
    assert alive_at_free[0] is False
    assert report["rows"][0]["status"].startswith("out of memory: CUDA out of memory")
    assert report["rows"][1]["status"] == "ok"


def _track(width: int, height: int, frames: int):
    import json

    from cinegen.common.trajectory_io import load_trajectory

    document = {"origin": "top-left", "width": width, "height": height,
                "tracks": [{"name": "a", "size": 20, "points": [{"frame": 1001, "x": 12, "y": 12},
                                                                {"frame": 1000 + frames, "x": 52, "y": 52}]}]}
    return load_trajectory(json.dumps(document)).to_top_left().scaled_to(width, height)


def _tora_frames(registry) -> torch.Tensor:
    from cinegen.server.pipelines.base import Resolved
    from cinegen.server.pipelines.trajectory import generate_tora

    adapter = registry.get("tiny-cogvideox")
    r = Resolved("a disc", "", "tiny-cogvideox", 3, 2, 6.0, 64, 64, 9, 24.0, 1001)
    return adapter, adapter.decode(generate_tora(adapter, r, _track(64, 64, 9)))


def test_a_tora_job_in_the_cuda_dtype_runs_and_decodes_near_float32(tiny_model_cache):
    from cinegen.server.models.registry import ModelRegistry

    # bfloat16 is what `dtype_for("cogvideox", cuda)` gives; the registry's dtype override forces it here
    half, video = _tora_frames(ModelRegistry(dtype=torch.bfloat16, use_hf_cache=False, cache_dir=tiny_model_cache))
    assert half.pipe.transformer.dtype == torch.bfloat16
    _, reference = _tora_frames(ModelRegistry(use_hf_cache=False, cache_dir=tiny_model_cache))
    assert video.dtype == torch.float32 and torch.isfinite(video).all()
    # bfloat16 keeps 8 bits of mantissa: measured mean |diff| 0.002 over 2 steps, 10x margin
    assert (video - reference).abs().mean() < 0.02


def test_the_bench_sd_cases_run_in_float16_with_the_vae_kept_in_float32_as_served(monkeypatch):
    monkeypatch.setattr(gpu, "half_for", lambda device, family="sd": torch.float16)  # the CUDA policy, on a CPU
    sizes = gpu.Sizes(tiny=True)
    adapter = gpu.sd15_random_weights(CPU, torch.float16, tiny=True)
    assert adapter.pipe.unet.dtype == torch.float16 and adapter.pipe.vae.dtype == torch.float32  # force_upcast
    assert gpu.animatediff_steps(CPU, sizes, torch.float16)["steps_timed"] == 2
    cascade = gpu.sdxl_cascade(CPU, sizes, 128, True)  # fp16 UNet latents through the fp32 VAE, both ways
    assert cascade["stages"][-1] == [128, 128] and cascade["direct"]["steps"] == 2


def test_an_out_of_memory_without_a_message_is_still_recorded(monkeypatch):
    def oom():
        raise torch.cuda.OutOfMemoryError()  # an empty message once made the handler itself raise

    monkeypatch.setattr(gpu, "cases", lambda device, sizes: [gpu.Case("oom", 1, oom), gpu.Case("next", 1, dict)])
    monkeypatch.setattr("cinegen.server.devices.resolve_device", lambda name: CPU)
    report = gpu.run(argparse.Namespace(device="cpu", tiny=True))
    assert [r["status"] for r in report["rows"]] == ["out of memory: ", "ok"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_decoded_frames_reach_the_exr_paths_as_their_float32_values(dtype):
    from cinegen.server.output.device_colour import display_to_linear_half_rgba, primaries_matrix
    from cinegen.server.output.frames import to_numpy_hwc

    # a half-precision VAE (SD in float16 on CUDA, CogVideoX in bfloat16) decodes to half frames; numpy
    # has no bfloat16, so both paths must widen first. Same values in float32: the same bits out.
    frame = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    alpha = torch.rand(8, 8, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(to_numpy_hwc(frame), to_numpy_hwc(frame.float()))
    matrix = primaries_matrix()
    if matrix is not None:  # the device path exists only where curve + matrix is the config's conversion
        assert torch.equal(display_to_linear_half_rgba(frame, alpha, matrix),
                           display_to_linear_half_rgba(frame.float(), alpha, matrix))


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-animatediff"])
def test_float32_latents_into_a_float16_unet_are_cast_not_refused(model, tiny_model_cache):
    from cinegen.server.models.registry import ModelRegistry

    adapter = ModelRegistry(dtype=torch.float16, use_hf_cache=False, cache_dir=tiny_model_cache).get(model)
    cond = adapter.encode_prompt("a red disc", "blue", 7.5)
    shape = adapter.latent_shape(1, 64, 64, 4) if adapter.kind == "video" else adapter.latent_shape(1, 64, 64)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))  # float32, as a test or a loop hands it
    out = adapter.predict(x, torch.tensor(500), cond)  # was: conv_in "Input type (float) and bias type (Half)"
    torch.testing.assert_close(out, adapter.predict(x.half(), torch.tensor(500), cond), rtol=0, atol=0)


def test_golden_memory_resizes_bfloat16_latents_as_their_float32_values():
    from cinegen.server.diffusion.goldenmem import build_memory_latents

    latents = [torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(i)).bfloat16() for i in range(3)]
    half = build_memory_latents(latents)  # was: antialiased bilinear has no bfloat16 CPU kernel
    reference = build_memory_latents([latent.float() for latent in latents])
    assert [m.dtype for m in half] == [torch.bfloat16] * len(half)
    assert all(torch.equal(h, r.bfloat16()) for h, r in zip(half, reference))
