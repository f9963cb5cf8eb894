"""`cinegen bench panorama`: the Offset Shifting Denoiser against MultiDiffusion, same model, same steps.

The peer is diffusers' `StableDiffusionPanoramaPipeline` (MultiDiffusion: 64-latent views at stride
8, every view denoised and averaged, `circular_padding` for 360°) built from the same tiny SD
components and scheduler. Panoramas of 512×2048 and 512×4096 px; every case runs in a fresh process
so its peak memory is its own (CUDA: `max_memory_allocated`; CPU: the child's peak RSS, model
included, next to the RSS it had before denoising). Seconds per step cover the denoising only.

Seam figure (decoded output, 360° cases): |column W−1 − column 0| over the mean difference of
adjacent interior columns, and the share of interior pairs that differ less than the seam. The tiny
model's pictures are noise-like, so this figure says more about decoding across the seam than
about the denoiser; the tests measure the denoiser's seam with a smooth stand-in model.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

STEPS_CPU, STEPS_CUDA = 2, 20
SIZES = ((512, 2048), (512, 4096))  # (height, width) px
CASES = (("cinegen OSD", "plane"), ("cinegen OSD", "ring"),
         ("MultiDiffusion", "plain"), ("MultiDiffusion", "circular_padding"))
PROMPT = "a mountain range at dawn"


def _rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 3)


def _seam(image: torch.Tensor) -> dict[str, float]:
    adjacent = (image[..., 1:] - image[..., :-1]).abs().mean(dim=(0, 1))
    seam = (image[..., -1] - image[..., 0]).abs().mean()
    return {"seam_over_interior": round(float(seam / adjacent.mean()), 3),
            "interior_pairs_below_seam": round(float((adjacent < seam).float().mean()), 3)}


def _multidiffusion(adapter: Any) -> Any:
    from diffusers import StableDiffusionPanoramaPipeline

    p = adapter.pipe
    pipe = StableDiffusionPanoramaPipeline(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
                                           scheduler=adapter.new_scheduler(), safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_case(method: str, variant: str, height: int, width: int, steps: int, device_name: str) -> dict[str, Any]:
    """One case in this process: load, warm up, measure the denoising, then the seam of its output."""
    from ..models.registry import ModelRegistry
    from ..pipelines.base import Resolved, seeded_generator
    from ..pipelines.panorama import PanoramaSettings, decode_panorama_frames, generate_panorama

    device = torch.device(device_name)
    adapter = ModelRegistry(device=device, use_hf_cache=False).get("tiny-sd")
    r = Resolved(PROMPT, "", "tiny-sd", 0, steps, 7.5, width, height, 1, 24.0, 1001)
    wraps = variant in ("ring", "circular_padding")
    if method == "cinegen OSD":
        settings = PanoramaSettings(projection=variant)
        generate_panorama(adapter, Resolved(PROMPT, "", "tiny-sd", 0, 1, 7.5, 256, 64, 1, 24.0, 1001), settings)

        def denoise() -> torch.Tensor:
            return generate_panorama(adapter, r, settings)
    else:
        pipe = _multidiffusion(adapter)
        pipe(PROMPT, height=64, width=128, num_inference_steps=1, output_type="latent")  # warm-up

        def denoise() -> torch.Tensor:
            latents = pipe(PROMPT, height=height, width=width, num_inference_steps=steps, guidance_scale=r.guidance,
                           generator=seeded_generator(0), circular_padding=wraps, output_type="latent").images
            return latents.unsqueeze(2)
    rss_before = _rss_gib()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    latent = denoise()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    row = {"method": method, "variant": variant, "size": f"{height}x{width}", "steps": steps,
           "seconds_per_step": round(seconds / steps, 3),
           "peak_gpu_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None,
           "rss_before_gib": rss_before, "peak_rss_gib": _rss_gib()}
    if wraps:
        row.update(_seam(next(decode_panorama_frames(adapter, latent, wrap=True))))
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..service import resolve_device

    device = resolve_device(args.device)
    steps = STEPS_CUDA if device.type == "cuda" else STEPS_CPU
    context = multiprocessing.get_context("spawn")
    rows = []
    for height, width in SIZES:
        for method, variant in CASES:
            # A fresh process per case: its peak memory is its own.
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                row = pool.submit(run_case, method, variant, height, width, steps, str(device)).result()
            print(row, flush=True)
            rows.append(row)
    speedups = {}
    for height, width in SIZES:
        size = f"{height}x{width}"
        by = {(r["method"], r["variant"]): r["seconds_per_step"] for r in rows if r["size"] == size}
        speedups[size] = {"plane vs MultiDiffusion": round(by[("MultiDiffusion", "plain")] /
                                                           by[("cinegen OSD", "plane")], 2),
                          "ring vs MultiDiffusion circular": round(by[("MultiDiffusion", "circular_padding")] /
                                                                   by[("cinegen OSD", "ring")], 2)}
    return {"benchmark": "panorama", "device": str(device), "torch": torch.__version__, "model": "tiny-sd",
            "steps": steps, "rows": rows, "speedup_per_step": speedups}
