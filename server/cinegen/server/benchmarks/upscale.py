"""`cinegen bench upscale`: time and peak memory per cascade stage, against direct inference at the target.

Default: the tiny SD model on this device, native 64² → 4× (64 → 128 → 256), 8 steps.
`--real-size` (CUDA only): SDXL's UNet and VAE architectures with random weights, built from the JSON
configs in `models/configs/sdxl/` (no text encoders: the prompt embedding is random too), fp16,
1024² → 2048² → 4096², 50 steps. Time and memory are those of the real model; the pictures are noise.

Rows: stage 1 (plain generation at the first stage), each upscaled stage (resize + re-encode + the
denoising from K with cosine mix, dilation, scale fusion), the final (tiled) decode, and direct
inference at the target with the same steps (no cascade, no patches). On CUDA `peak_gpu_gib` is the
peak of each row alone (the model weights included); on CPU only the process-wide RSS peak exists.
diffusers' DemoFusion is a community pipeline fetched from the Hub at run time; the server never goes
online, so that comparison is reported as not run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..diffusion.cascade import plan_stages
from ..diffusion.sampler import DenoiseLoop, scheduler_step_kwargs
from ..models.family import Conditioning, FamilyAdapter, ModelEntry
from ..pipelines.base import seeded_generator
from ..pipelines.upscale_unet import (NOISE_SEED_OFFSET, CascadeSettings, decode_latents, default_vae_tile,
                                      pixel_multiple, reference_size, refine_stage, upscaled_reference)
from ..devices import resolve_device
from .measure import measure

SDXL_CONFIGS = Path(__file__).resolve().parents[1] / "models" / "configs" / "sdxl"
DEMOFUSION = "not run: DemoFusion is a diffusers community pipeline loaded from the Hub; the server is offline"


def plain_generation(adapter: FamilyAdapter, cond: Conditioning, size: tuple[int, int], steps: int,
                     seed: int) -> torch.Tensor:
    """Ordinary sampling at `size` (stage 1, and direct inference at the target)."""
    generator = seeded_generator(seed)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(steps, device=adapter.device)
    shape = adapter.latent_shape(1, size[0], size[1])
    latents = randn_tensor(shape, generator=generator, device=adapter.device, dtype=adapter.dtype)
    loop = DenoiseLoop(scheduler, lambda x, t: adapter.predict(x, t, cond),
                       step_kwargs=scheduler_step_kwargs(scheduler, generator))
    return loop.run(latents * scheduler.init_noise_sigma)


def bench_cascade(adapter: FamilyAdapter, cond: Conditioning, target: tuple[int, int], steps: int,
                  device: torch.device, seed: int = 0, direct: bool = True) -> dict[str, Any]:
    stages = plan_stages(adapter.native_size, target, multiple=pixel_multiple(adapter))
    reference = reference_size(adapter, target)
    settings = CascadeSettings(steps=steps, vae_tile=default_vae_tile(adapter))
    for size in (stages[0], target) if direct else stages[:1]:  # first calls pay for kernel selection and allocator growth
        plain_generation(adapter, cond, size, 1, seed)
    rows = []
    with measure(device) as m:
        x0 = plain_generation(adapter, cond, stages[0], steps, seed)
    rows.append({"stage": f"1/{len(stages)} {stages[0][0]}x{stages[0][1]} plain", "steps": steps, **m.as_dict()})
    noise_generator = seeded_generator(seed + NOISE_SEED_OFFSET)
    for k, size in enumerate(stages[1:], start=2):
        with measure(device) as m:
            x0_up = upscaled_reference(adapter, x0, size, settings)
            x0 = refine_stage(adapter, cond, x0_up, size, reference, settings, noise_generator=noise_generator,
                              jitter_generator=seeded_generator(seed))
        rows.append({"stage": f"{k}/{len(stages)} {size[0]}x{size[1]} cascade",
                     "steps": steps - settings.start_index, **m.as_dict()})
    with measure(device) as m:
        decode_latents(adapter, x0, settings)
    rows.append({"stage": f"decode {target[0]}x{target[1]} (tiles of {settings.vae_tile} px)", **m.as_dict()})
    denoise_seconds = sum(r["seconds"] for r in rows[:-1])
    denoise_cpu_seconds = sum(r["cpu_seconds"] for r in rows[:-1])
    if not direct:  # too slow to run at this size: the cascade alone
        return {"native": list(adapter.native_size), "target": list(target), "stages": [list(s) for s in stages],
                "steps": steps, "rows": rows, "direct": "not run", "cascade_denoise_seconds": round(denoise_seconds, 3)}
    with measure(device) as m:
        plain_generation(adapter, cond, target, steps, seed)
    direct_row = {"stage": f"direct {target[0]}x{target[1]} plain", "steps": steps, **m.as_dict()}
    return {
        "native": list(adapter.native_size), "target": list(target), "stages": [list(s) for s in stages],
        "steps": steps, "rows": rows, "direct": direct_row,
        "time_ratio_cascade_over_direct": round(denoise_seconds / max(direct_row["seconds"], 1e-9), 3),
        "cpu_time_ratio_cascade_over_direct": round(denoise_cpu_seconds / max(direct_row["cpu_seconds"], 1e-9), 3),
        "pixel_ratio_per_stage": [round(b[0] * b[1] / (a[0] * a[1]), 3) for a, b in zip(stages, stages[1:])],
        "demofusion": DEMOFUSION,
    }


def sdxl_random_weights(device: torch.device, dtype: torch.dtype = torch.float16,
                        config: dict[str, dict] | None = None) -> tuple[FamilyAdapter, Conditioning]:
    """SDXL-size UNet + VAE with random weights on `device`, in an SD adapter; a random prompt embedding.
    `config` (unet/vae/scheduler/profile dicts) replaces the JSON files (`bench gpu --tiny` shrinks them)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from ..models.sd import SDAdapter, keep_vae_in_float32

    config = config or {name: json.loads((SDXL_CONFIGS / f"{name}.json").read_text())
                        for name in ("unet", "vae", "scheduler", "profile")}
    with torch.device(device):  # weights are made where they run: no 10 GB detour through host memory
        unet = UNet2DConditionModel.from_config(config["unet"]).to(dtype).eval()
        vae = AutoencoderKL.from_config(config["vae"]).to(dtype).eval()
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, unet=unet,
                                     scheduler=EulerDiscreteScheduler.from_config(config["scheduler"]))
    keep_vae_in_float32(pipe, dtype)  # as serving loads SDXL (force_upcast): memory figures are the served model's
    adapter = SDAdapter(pipe, ModelEntry("sdxl-random", "sd", "builtin", "", "SDXL architecture, random weights"),
                        device, dtype)
    profile = config["profile"]
    generator = torch.Generator("cpu").manual_seed(0)
    embeds = torch.randn(2, profile["text_tokens"], profile["text_embed_dim"], generator=generator)
    pooled = torch.randn(2, profile["pooled_embed_dim"], generator=generator)
    cond = Conditioning(embeds=embeds.to(device, dtype), guidance=profile["guidance"], do_cfg=True,
                        extra={"text_embeds": pooled.to(device, dtype)})
    return adapter, cond


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    report: dict[str, Any] = {"benchmark": "upscale", "device": str(device), "torch": torch.__version__}
    if getattr(args, "real_size", False):
        if device.type != "cuda":
            return {**report, "skipped": "--real-size needs a CUDA GPU (SDXL at 4096² does not fit a CPU run)."}
        report["gpu"] = torch.cuda.get_device_name(device)
        adapter, cond = sdxl_random_weights(device)
        report["model"] = "SDXL UNet+VAE architecture, random weights, fp16"
        report.update(bench_cascade(adapter, cond, (4096, 4096), steps=50, device=device))
        return report
    from ..models.registry import ModelRegistry

    if device.type == "cpu":
        torch.set_num_threads(1)  # CPU time is then the work done, steady under other jobs' load
    adapter = ModelRegistry(device=device, use_hf_cache=False).get("tiny-sd")
    cond = adapter.encode_prompt("a lighthouse on a cliff", "", 7.5)
    report["model"] = "tiny-sd"
    native = adapter.native_size
    report.update(bench_cascade(adapter, cond, (4 * native[0], 4 * native[1]), steps=8, device=device))
    return report
