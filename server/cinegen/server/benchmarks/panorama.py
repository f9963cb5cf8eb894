"""`cinegen bench panorama`: the Offset Shifting Denoiser against MultiDiffusion, like for like.

Both methods run with the model's native window (the latent size it was trained at) and the same
scheduler, steps, guidance, prompt and initial noise; MultiDiffusion at its own stride ratio
(window / 8, SD 1.5's 64-latent views at stride 8), with its views batched to the same latent cells
per denoiser call as OSD's windows (`CELLS_PER_CALL`). OSD runs without the global-motion pass
(`scale_down=None`): one denoising pass, as MultiDiffusion. The peer is `multidiffusion.py`
(diffusers' loop with a window argument; diffusers' own pipeline cannot take the tiny model's 8×8
window and crashes on wrapped views with more than one row).

Two models: `tiny-sd` (8×8-latent window) and `sd15-layout` (SD 1.5's UNet layout with its channels
divided, 64×64-latent window: the attention token counts of SD 1.5). For each case: seconds per
step, denoiser calls and latent cells per step (counted at `adapter.predict`), and peak memory;
each case runs in its own process, cases interleaved over `--repeat` rounds. The physical ratio is
MultiDiffusion's latent cells per step over OSD's: the speed-up a method gets from denoising less.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import torch

from .measure import device_peak, in_fresh_process, interleaved, ratio_stat, reset_peak, stat, synchronize

PROMPT = "a mountain range at dawn"
GUIDANCE = 7.5
# "OSD disjoint": the OSD with its overlapping early-step windows regrouped into disjoint sets (one call
# each) instead of the reference's raster order, which chains every window to the one before it.
OSD_METHODS = {"OSD": "plan", "OSD disjoint": "disjoint"}
CASES = (("OSD", "plane"), ("MultiDiffusion", "plane"), ("OSD disjoint", "plane"),
         ("OSD", "ring"), ("MultiDiffusion", "ring"), ("OSD disjoint", "ring"))
# (height, width) px per model and device; the CPU sizes keep a round of four cases near a minute.
SIZES = {"cpu": {"tiny-sd": (128, 1024), "sd15-layout": (512, 1024)},
         "cuda": {"tiny-sd": (512, 4096), "sd15-layout": (512, 4096)}}
STEPS = {"cpu": 2, "cuda": 10}
# One thread: on a shared CPU the process's CPU time is then the work done (no spin-waiting threads),
# a steadier figure than wall time when other jobs compete for the cores.
CPU_THREADS = 1


def build_adapter(model: str, device: torch.device) -> Any:
    from ..models.registry import ModelRegistry
    from .architectures import sd15_layout_adapter

    base = ModelRegistry(device=device, use_hf_cache=False).get("tiny-sd")
    return base if model == "tiny-sd" else sd15_layout_adapter(base)


def _native_window(adapter: Any) -> tuple[int, int]:
    w, h = adapter.native_size
    return h // adapter.vae_scale_factor, w // adapter.vae_scale_factor


def _view_batch(adapter: Any, device: torch.device) -> int:
    from ..pipelines.panorama import cells_per_call

    wh, ww = _native_window(adapter)
    return max(1, cells_per_call(device) // (wh * ww))


def multidiffusion_latent(adapter: Any, height: int, width: int, steps: int, circular: bool, seed: int,
                          device: torch.device) -> torch.Tensor:
    """MultiDiffusion at the model's native window and stride window/8; (1, C, h, w)."""
    from diffusers.utils.torch_utils import randn_tensor

    from ..diffusion.sampler import scheduler_step_kwargs
    from ..pipelines.base import seeded_generator
    from .multidiffusion import multidiffusion_denoise

    generator = seeded_generator(seed)
    cond = adapter.encode_prompt(PROMPT, "", GUIDANCE)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(steps, device=device)
    shape = adapter.latent_shape(1, width, height)
    latents = randn_tensor(shape, generator=generator, device=device, dtype=adapter.dtype) * scheduler.init_noise_sigma
    window = _native_window(adapter)
    return multidiffusion_denoise(latents, scheduler, lambda x, t: adapter.predict(x, t, cond), window=window,
                                  stride=max(1, window[1] // 8), circular=circular,
                                  view_batch=_view_batch(adapter, device),
                                  step_kwargs=scheduler_step_kwargs(scheduler, generator))


def osd_latent(adapter: Any, height: int, width: int, steps: int, projection: str, seed: int,
               window_order: str = "plan") -> torch.Tensor:
    from ..pipelines.base import Resolved
    from ..pipelines.panorama import PanoramaSettings, generate_panorama

    settings = dataclasses.replace(PanoramaSettings(projection=projection), scale_down=None, window_order=window_order)
    r = Resolved(PROMPT, "", adapter.entry.id, seed, steps, GUIDANCE, width, height, 1, 24.0, 1001)
    return generate_panorama(adapter, r, settings)


def run_case(model: str, method: str, variant: str, height: int, width: int, steps: int,
             device_name: str) -> dict[str, Any]:
    """One case in this process: build, warm up (one step, small), then measure the denoising."""
    from .architectures import count_denoiser_work

    device = torch.device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    adapter = build_adapter(model, device)
    work = count_denoiser_work(adapter)
    wh, ww = (s * adapter.vae_scale_factor for s in _native_window(adapter))

    def denoise(h: int, w: int, n: int) -> torch.Tensor:
        if method in OSD_METHODS:
            return osd_latent(adapter, h, w, n, variant, seed=0, window_order=OSD_METHODS[method])
        return multidiffusion_latent(adapter, h, w, n, variant == "ring", seed=0, device=device)

    denoise(wh, 2 * ww, 1)  # first calls pay for kernel selection and allocator growth
    work.reset()
    reset_peak(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    denoise(height, width, steps)
    synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"seconds_per_step": seconds / steps, "cpu_seconds_per_step": cpu_seconds / steps,
            "denoiser_calls_per_step": work.calls / steps, "latent_cells_per_step": work.cells / steps,
            **device_peak(device)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..devices import resolve_device

    device = resolve_device(args.device)
    steps = getattr(args, "steps", None) or STEPS.get(device.type, STEPS["cpu"])
    rounds = max(1, getattr(args, "repeat", 1) or 1)
    models = getattr(args, "panorama_models", None) or ("tiny-sd", "sd15-layout")
    tiny = getattr(args, "tiny", False)
    same_process = getattr(args, "same_process", False) or tiny
    rows, comparisons = [], []
    for model in models:
        height, width = (64, 256) if tiny else SIZES.get(device.type, SIZES["cpu"])[model]
        if tiny and model == "sd15-layout":
            height, width = 512, 576

        def one(case: tuple[str, str], _round: int, model: str = model, h: int = height, w: int = width):
            args_ = (model, *case, h, w, steps, str(device))
            return run_case(*args_) if same_process else in_fresh_process(run_case, *args_)

        samples = interleaved(CASES, rounds, one,
                              on_sample=lambda case, r, s: print(f"  round {r + 1}: {case} {s}", flush=True))
        by_case = {}
        for (method, variant), runs in samples.items():
            row = {"model": model, "method": method, "variant": variant, "size": f"{height}x{width}",
                   "steps": steps, "seconds_per_step": stat([s["seconds_per_step"] for s in runs]),
                   "cpu_seconds_per_step": stat([s["cpu_seconds_per_step"] for s in runs]),
                   "denoiser_calls_per_step": runs[0]["denoiser_calls_per_step"],
                   "latent_cells_per_step": runs[0]["latent_cells_per_step"],
                   "peak_rss_gib": stat([s["peak_rss_gib"] for s in runs], 3),
                   "peak_gpu_gib": None if runs[0]["peak_gpu_gib"] is None else stat([s["peak_gpu_gib"] for s in runs], 3)}
            rows.append(row)
            by_case[(method, variant)] = runs
        for (method, variant) in (c for c in CASES if c[0] in OSD_METHODS):
            md, osd = by_case[("MultiDiffusion", variant)], by_case[(method, variant)]
            # CPU time on a CPU (steadier under load, see CPU_THREADS), wall time on a GPU
            key = "cpu_seconds_per_step" if device.type == "cpu" else "seconds_per_step"
            measured = ratio_stat([s[key] for s in md], [s[key] for s in osd])
            physical = md[0]["latent_cells_per_step"] / osd[0]["latent_cells_per_step"]
            comparisons.append({"name": f"{model} {variant}: MultiDiffusion over {method} ({key})",
                                "ratio": measured, "wall_ratio": ratio_stat([s["seconds_per_step"] for s in md],
                                                                            [s["seconds_per_step"] for s in osd]),
                                "physical_ratio": round(physical, 3),
                                "share_of_physical": round(measured["median"] / physical, 3)})
    return {"benchmark": "panorama", "device": str(device), "torch": torch.__version__, "steps": steps,
            "rounds": rounds, "rows": rows, "comparisons": comparisons}
