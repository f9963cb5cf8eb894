"""DiT upscale (CineScale on Wan): time and peak memory per stage.

Tiny model (any device): generate 32→64 px and plate 32→64 px, 5 frames, 3 steps, every stage measured.
Real size (`--real-size`, CUDA only): the Wan 2.1 1.3B architecture built from
`models/configs/wan2.1-1.3b` with random weights (transformer in bfloat16, VAE in float32, a 4096-wide
one-layer text encoder since only its output shape matters), plate mode 1080p→2K (2560×1440) and
1080p→4K (3840×2160): plate encode, latent upsample + re-noise, refinement steps (a few measured and
extrapolated to the schedule's remaining steps: every step costs the same), decode. Reports frames
per minute and the peak GPU memory of every stage.
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..diffusion.sampler import LoopCallbacks
from ..models.family import ModelEntry
from ..models.registry import ModelRegistry
from ..models.wan import WanAdapter, WanProfile, wan_dtype
from ..pipelines.base import seeded_generator
from ..pipelines.upscale_dit import (CineScaleOptions, encode_plate, generate_base_latents, plan_dit_stages,
                                     refine_latents, start_index_for)
from ..devices import resolve_device
from .measure import measure

REAL_SIZE_CONFIGS = Path(__file__).resolve().parents[1] / "models" / "configs" / "wan2.1-1.3b"
PLATE_1080P = (1920, 1080)
TARGETS = {"1080p->2K": (2560, 1440), "1080p->4K": (3840, 2160)}


class _StopAfter(Exception):
    """Raised by the loop's cancel check once the steps to measure are done."""


@dataclass
class StepClock:
    """Seconds of each denoising step (device synchronised), stopping the loop after `limit` steps."""
    device: torch.device
    limit: int | None = None

    def __post_init__(self) -> None:
        self.times: list[float] = []
        self._last = 0.0

    def start(self) -> None:
        import time

        self._sync()
        self._last = time.perf_counter()

    def on_step(self, done: int, todo: int) -> None:
        import time

        self._sync()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now

    def should_stop(self) -> None:
        if self.limit is not None and len(self.times) >= self.limit:
            raise _StopAfter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def callbacks(self) -> LoopCallbacks:
        return LoopCallbacks(self.on_step, self.should_stop)


def _stage_row(name: str, m, **extra) -> dict:
    return {"stage": name, **m.as_dict(), **extra}


def tiny_rows(device: torch.device, cache_dir: Path) -> list[dict]:
    """Generate and plate on tiny-wan, 32 → 64 px, 5 frames, 3 steps: every stage timed."""
    registry = ModelRegistry(device=device, use_hf_cache=False, cache_dir=cache_dir)
    adapter: WanAdapter = registry.get("tiny-wan")  # type: ignore[assignment]
    steps, frames = 3, 5
    options = CineScaleOptions()
    start_index = start_index_for(steps, 0.7)
    rows = []
    cond = adapter.encode_prompt("a red disc", "blue", 5.0)
    generator = seeded_generator(0)
    with measure(device) as m:
        latents = generate_base_latents(adapter, cond, 32, 32, frames, steps, generator)
    rows.append(_stage_row("generate: base 32x32", m, steps=steps))
    plan = plan_dit_stages(adapter, "generate", (32, 32), (64, 64), 2, start_index, options)
    with measure(device) as m:
        latents = refine_latents(adapter, cond, latents, plan[1], steps, generator)
    rows.append(_stage_row("generate: refine 64x64", m, steps=steps - start_index))
    with measure(device) as m:
        adapter.decode(latents)
    rows.append(_stage_row("generate: decode", m, frames=frames))
    clip = torch.rand(1, 3, frames, 32, 32, generator=torch.Generator().manual_seed(0))
    plate_plan = plan_dit_stages(adapter, "plate", (32, 32), (64, 64), 1, start_index, options)
    with measure(device) as m:
        latents = encode_plate(adapter, clip, 64, 64, False, None)
    rows.append(_stage_row("plate: encode 64x64", m, frames=frames))
    with measure(device) as m:
        latents = refine_latents(adapter, cond, latents, plate_plan[0], steps, generator)
    rows.append(_stage_row("plate: refine 64x64", m, steps=steps - start_index))
    with measure(device) as m:
        adapter.decode(latents)
    rows.append(_stage_row("plate: decode", m, frames=frames))
    return rows


def cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`dtype`, except the modules diffusers keeps in float32 when loading (Wan: rope, norms, time embedder)."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_floating_point() and not keep.intersection(name.split(".")):
            tensor.data = tensor.data.to(dtype)
    return model


def random_weight_wan(configs: Path, device: torch.device, dtype: torch.dtype) -> WanAdapter:
    """A Wan adapter of the architecture in `configs` (transformer/vae/scheduler/profile JSON), random weights."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    from ..models.wan_text import byte_level_t5_tokenizer, tiny_umt5_encoder

    def config(name: str) -> dict:
        return json.loads((configs / f"{name}.json").read_text())

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: a 1.3B model builds in seconds there
        transformer = cast_like_from_pretrained(WanTransformer3DModel.from_config(config("transformer")), dtype)
        vae = AutoencoderKLWan.from_config(config("vae"))  # float32, as the Wan VAE is run
    text_dim = int(transformer.config.text_dim)
    text_encoder = tiny_umt5_encoder(text_dim, layers=1, heads=2, d_kv=8, d_ff=32).to(device, dtype)
    pipe = WanPipeline(tokenizer=byte_level_t5_tokenizer(), text_encoder=text_encoder, vae=vae,
                       transformer=transformer, scheduler=UniPCMultistepScheduler.from_config(config("scheduler")))
    pipe.set_progress_bar_config(disable=True)
    entry = ModelEntry(f"{configs.name}-random", "wan", "builtin", str(configs), "random weights (benchmark)")
    return WanAdapter(pipe, entry, device, dtype, WanProfile(**config("profile")))


def plate_upscale_rows(adapter: WanAdapter, plate: tuple[int, int], target: tuple[int, int], frames: int,
                       steps: int = 50, strength: float = 0.7, measured_steps: int = 2,
                       vae_tile: int | None = 256, label: str = "") -> dict:
    """Plate mode at `target`: encode, refine (measured_steps timed, the rest extrapolated), decode."""
    device = adapter.device
    start_index = start_index_for(steps, strength)
    plan = plan_dit_stages(adapter, "plate", plate, target, 1, start_index, CineScaleOptions())
    stage = plan[0]
    clip = torch.rand(1, 3, frames, plate[1], plate[0], generator=torch.Generator().manual_seed(0))
    stages = []
    cond = adapter.encode_prompt("a city street at night, rain", "", 5.0)
    with measure(device) as m:
        latents = encode_plate(adapter, clip, stage.width, stage.height, False, vae_tile)
    stages.append(_stage_row("encode plate", m))
    clock = StepClock(device, measured_steps)
    with measure(device) as m:
        clock.start()
        try:
            latents = refine_latents(adapter, cond, latents, stage, steps, seeded_generator(0), clock.callbacks())
        except _StopAfter:  # only the steps to measure were run; the latents keep their shape
            latents = torch.zeros(adapter.latent_shape(1, stage.width, stage.height, frames), device=device)
    remaining = steps - start_index
    per_step = sum(clock.times[1:] or clock.times) / max(1, len(clock.times[1:] or clock.times))  # step 1 warms up
    stages.append(_stage_row("refine (measured)", m, steps_measured=len(clock.times),
                             seconds_per_step=round(per_step, 3), steps_in_schedule=remaining,
                             refine_settings=str(stage.refine)))
    with measure(device) as m:
        with adapter.vae_tiling(vae_tile):
            adapter.decode(latents)
    stages.append(_stage_row("decode", m))
    total = stages[0]["seconds"] + per_step * remaining + stages[-1]["seconds"]
    return {"case": label or f"{plate[0]}x{plate[1]}->{target[0]}x{target[1]}", "frames": frames,
            "steps": steps, "start_index": start_index, "stages": stages,
            "seconds_total_extrapolated": round(total, 2),
            "frames_per_minute": round(frames * 60.0 / total, 3) if total > 0 else None,
            "peak_gpu_gib": max(s["peak_gpu_gib"] for s in stages)}


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(getattr(args, "device", "auto"))
    with tempfile.TemporaryDirectory(prefix="cinegen-bench-") as cache:
        rows = tiny_rows(device, Path(cache))
    report: dict = {"benchmark": "upscale-dit", "device": str(device), "torch": torch.__version__,
                    "tiny": rows}
    if not getattr(args, "real_size", False):
        report["real_size"] = "not run (pass --real-size on a CUDA machine)"
    elif device.type != "cuda":
        report["real_size"] = "not run: the real-size Wan 1.3B benchmark needs a CUDA GPU"
    else:
        frames = int(getattr(args, "frames", None) or 17)
        adapter = random_weight_wan(REAL_SIZE_CONFIGS, device, wan_dtype(torch.float16))
        report["real_size"] = {
            "model": "Wan 2.1 1.3B architecture, random weights, bfloat16 transformer, float32 VAE",
            "gpu": torch.cuda.get_device_name(device),
            "cases": [plate_upscale_rows(adapter, PLATE_1080P, size, frames, label=name)
                      for name, size in TARGETS.items()],
            "anchor": "CineScale: 1.3B reaches 2K on one GPU; 14B at 4K needed 8xA100",
        }
    return report
