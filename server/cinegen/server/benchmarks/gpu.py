"""`cinegen bench gpu --real-size`: one command for a lent GPU — real-size architectures, random weights.

Builds each architecture from the JSON configs in `models/configs/` (SDXL, SD 1.5 + AnimateDiff motion
adapter, Wan 2.1 1.3B, CogVideoX 5B + Tora) directly on the device, half precision, and measures
seconds per step and peak `torch.cuda.max_memory_allocated` of:

  1. SDXL cascade 1024² → 4096² against direct generation at 4096² (same 4 steps); 8192² (cascade alone)
     when the budget has room;
  2. panorama 512×4096 on SD 1.5: OSD (raster and disjoint window order) against MultiDiffusion (native
     64² window, stride 8), and an OSD sphere 1024×2048 (its 44 views a projecting step batched);
  3. AnimateDiff (SD 1.5 + motion adapter) 16 frames at 512²: seconds per step;
  4. Wan 2.1 1.3B plate refine 480p → 1080p: frames per minute (2 steps timed, the schedule extrapolated);
  5. CogVideoX 5B + Tora, 49 frames at 720×480 with one track: seconds per step (2 steps timed).

Cases run in that order within `BUDGET_S` (8 minutes): one whose estimate does not fit what is left is
reported as skipped, never half run. Models are freed between cases. The prompts are random embeddings
(SDXL, SD 1.5) or tiny text encoders (Wan, CogVideoX): text encoding is not what is measured. The JSON
goes to `$OUT/bench-gpu.json` when `$OUT` is set (the device machine brings `$OUT` back).

`--compile [BACKEND]` and `--channels-last` apply `models/speedups.py` to every case's denoiser.

`--tiny` shrinks every config (`TINY_OVERRIDES`) and every size so the whole path runs on a CPU in
about a minute: it proves the code, not the figures.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..models.family import Conditioning, ModelEntry
from ..models.speedups import Speedups
from .measure import device_peak, reset_peak, synchronize

CONFIGS = Path(__file__).resolve().parents[1] / "models" / "configs"
BUDGET_S = 8 * 60

# Per config folder and file: the keys `--tiny` replaces (channel widths, depths, sizes); the rest,
# and every code path that reads them, stay the real ones.
TINY_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "sdxl": {"unet": {"block_out_channels": [32, 64, 64], "attention_head_dim": [2, 4, 4], "layers_per_block": 1,
                      "transformer_layers_per_block": [1, 1, 1], "cross_attention_dim": 32, "norm_num_groups": 8,
                      "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 6 * 8 + 32,
                      "sample_size": 8},
             "vae": {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4},
             "profile": {"native_width": 64, "native_height": 64, "text_embed_dim": 32, "pooled_embed_dim": 32}},
    "sd15": {"unet": {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1, "cross_attention_dim": 32,
                      "norm_num_groups": 8, "sample_size": 8},
             "vae": {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4},
             "profile": {"native_width": 64, "native_height": 64, "text_embed_dim": 32}},
    "animatediff-motion-v1-5-2": {"motion_adapter": {"block_out_channels": [32, 64, 64, 64],
                                                     "motion_layers_per_block": 1, "motion_num_attention_heads": 2,
                                                     "motion_norm_num_groups": 8}},
    "wan2.1-1.3b": {"transformer": {"num_attention_heads": 2, "attention_head_dim": 12, "ffn_dim": 48,
                                    "num_layers": 1, "text_dim": 32, "freq_dim": 16},
                    "vae": {"base_dim": 8, "num_res_blocks": 1},
                    "profile": {"native_width": 32, "native_height": 32, "native_frames": 5}},
    "cogvideox-5b": {"transformer": {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2,
                                     "text_embed_dim": 32, "time_embed_dim": 32, "sample_width": 8,
                                     "sample_height": 8, "sample_frames": 9},
                     "vae": {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4,
                             "sample_height": 64, "sample_width": 64},
                     "tora": {"num_layers": 2, "hidden_dim": 32, "feature_channels": 16, "norm_groups": 4}},
}


def half_for(device: torch.device, family: str = "sd") -> torch.dtype:
    """The dtype a case builds its models in: the serving policy (`models/precision.py`), float16 for
    the SD family and bfloat16 for CogVideoX/Wan on CUDA, float32 on a CPU. Tests replace it to run the
    CUDA dtypes on a CPU."""
    from ..models.precision import dtype_for

    return dtype_for(family, device)


def load_config(folder: str, name: str, tiny: bool) -> dict[str, Any]:
    config = json.loads((CONFIGS / folder / f"{name}.json").read_text())
    return {**config, **TINY_OVERRIDES[folder].get(name, {})} if tiny else config


@dataclass
class Budget:
    seconds: float
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)


@dataclass(frozen=True)
class Sizes:
    """Every size the cases use: real, or shrunk with `--tiny`; and the denoiser speed-ups asked for."""
    tiny: bool
    speedups: Speedups = field(default_factory=Speedups)  # --compile / --channels-last, on every case's denoiser

    def pick(self, real: Any, tiny: Any) -> Any:
        return tiny if self.tiny else real


# ---- builders ------------------------------------------------------------------------------------
def _random_cond(profile: dict, device: torch.device, dtype: torch.dtype, pooled: bool = False) -> Conditioning:
    generator = torch.Generator("cpu").manual_seed(0)
    embeds = torch.randn(2, profile["text_tokens"], profile["text_embed_dim"], generator=generator)
    extra = {}
    if pooled:
        extra["text_embeds"] = torch.randn(2, profile["pooled_embed_dim"], generator=generator).to(device, dtype)
    return Conditioning(embeds=embeds.to(device, dtype), guidance=profile["guidance"], do_cfg=True, extra=extra)


def _fixed_prompt(adapter: Any, cond: Conditioning) -> Any:
    """The adapter's prompt encoding answers with `cond` (random embeddings: no text encoder is built)."""
    adapter.encode_prompt = lambda *args, **kwargs: cond  # instance attribute: this adapter only
    return adapter


def sd15_random_weights(device: torch.device, dtype: torch.dtype, tiny: bool) -> Any:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from ..models.sd import SDAdapter, keep_vae_in_float32

    with torch.device(device):  # weights are made where they run
        unet = UNet2DConditionModel.from_config(load_config("sd15", "unet", tiny)).to(dtype).eval()
        vae = AutoencoderKL.from_config(load_config("sd15", "vae", tiny)).to(dtype).eval()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet,
                                   scheduler=DDIMScheduler.from_config(load_config("sd15", "scheduler", tiny)),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    keep_vae_in_float32(pipe, dtype)  # as serving loads it: the figures are the served model's
    adapter = SDAdapter(pipe, ModelEntry("sd15-random", "sd", "builtin", "", "SD 1.5 architecture, random weights"),
                        device, dtype)
    return _fixed_prompt(adapter, _random_cond(load_config("sd15", "profile", tiny), device, dtype))


def animatediff_random_weights(device: torch.device, dtype: torch.dtype, tiny: bool) -> Any:
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNetMotionModel

    from ..models.animatediff import AnimateDiffAdapter

    image = sd15_random_weights(device, dtype, tiny)
    with torch.device(device):
        motion = MotionAdapter.from_config(load_config("animatediff-motion-v1-5-2", "motion_adapter", tiny))
        unet = UNetMotionModel.from_unet2d(image.pipe.unet, motion).to(dtype).eval()
    pipe = AnimateDiffPipeline(vae=image.pipe.vae, text_encoder=None, tokenizer=None, unet=unet,
                               motion_adapter=motion, scheduler=image.pipe.scheduler)
    entry = ModelEntry("animatediff-random", "animatediff", "builtin", "", "SD 1.5 + motion adapter, random weights")
    adapter = AnimateDiffAdapter(pipe, entry, device, dtype)
    return _fixed_prompt(adapter, _random_cond(load_config("sd15", "profile", tiny), device, dtype))


def cogvideox_tora_random_weights(device: torch.device, dtype: torch.dtype, tiny: bool) -> Any:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from ..diffusion.tora import ToraConfig, ToraModules
    from ..models.cogvideox import CogVideoXAdapter, tiny_t5_tokenizer

    config = load_config("cogvideox-5b", "transformer", tiny)
    tokenizer = tiny_t5_tokenizer()
    with torch.device(device):
        transformer = CogVideoXTransformer3DModel.from_config(config).to(dtype).eval()
        vae = AutoencoderKLCogVideoX.from_config(load_config("cogvideox-5b", "vae", tiny)).to(dtype).eval()
        # a one-layer T5 of the transformer's text width: prompt encoding is not what is measured
        text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=config["text_embed_dim"], d_kv=8,
                                               d_ff=32, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
                                               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).to(dtype)
        tora = ToraModules(ToraConfig(**load_config("cogvideox-5b", "tora", tiny))).to(dtype).eval()
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler.from_config(load_config("cogvideox-5b", "scheduler", tiny)))
    pipe.set_progress_bar_config(disable=True)
    entry = ModelEntry("cogvideox-5b-tora-random", "cogvideox", "builtin", "", "CogVideoX 5B + Tora, random weights")
    return CogVideoXAdapter(pipe, entry, device, dtype, tora=tora)


def _free() -> None:
    """Drop what the finished case left (its models went out of scope with it)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- cases ---------------------------------------------------------------------------------------
def sdxl_cascade(device: torch.device, sizes: Sizes, target_side: int, direct: bool) -> dict[str, Any]:
    from .upscale import bench_cascade, sdxl_random_weights

    config = {name: load_config("sdxl", name, sizes.tiny) for name in ("unet", "vae", "scheduler", "profile")}
    adapter, cond = sdxl_random_weights(device, half_for(device), config)
    sizes.speedups.apply(adapter)
    steps = sizes.pick(4, 2)  # per-step figures: a few steps say it; the 8-minute budget has four more cases
    report = bench_cascade(adapter, cond, (target_side, target_side), steps=steps, device=device, direct=direct)
    return report


def panorama_osd_vs_multidiffusion(device: torch.device, sizes: Sizes, dtype: torch.dtype) -> dict[str, Any]:
    from .architectures import count_denoiser_work
    from .panorama import multidiffusion_latent, osd_latent

    adapter = sd15_random_weights(device, dtype, sizes.tiny)
    sizes.speedups.apply(adapter)
    work = count_denoiser_work(adapter)
    height, width = sizes.pick((512, 4096), (64, 192))
    sphere = sizes.pick((1024, 2048), (64, 128))  # 44 views of one window each a projecting step
    steps = sizes.pick(8, 2)
    runs: dict[str, tuple[tuple[int, int], Callable[[int, int, int], torch.Tensor]]] = {
        "OSD plane": ((height, width), lambda h, w, n: osd_latent(adapter, h, w, n, "plane", seed=0)),
        "MultiDiffusion plane": ((height, width),
                                 lambda h, w, n: multidiffusion_latent(adapter, h, w, n, False, 0, device)),
        "OSD disjoint plane": ((height, width),
                               lambda h, w, n: osd_latent(adapter, h, w, n, "plane", seed=0, window_order="disjoint")),
        "OSD sphere": (sphere, lambda h, w, n: osd_latent(adapter, h, w, n, "sphere", seed=0)),
    }
    rows = []
    for name, ((h, w), run) in runs.items():
        run(*sizes.pick((512, 1024), (64, 128)), 1)  # warm-up
        work.reset()
        reset_peak(device)
        start = time.perf_counter()
        run(h, w, steps)
        synchronize(device)
        seconds = time.perf_counter() - start
        rows.append({"case": name, "size": f"{h}x{w}", "steps": steps,
                     "seconds_per_step": round(seconds / steps, 3), "denoiser_calls_per_step": work.calls / steps,
                     "latent_cells_per_step": work.cells / steps, **device_peak(device)})
    osd, md, disjoint = rows[:3]
    return {"rows": rows, "ratio_multidiffusion_over_osd": round(md["seconds_per_step"] / osd["seconds_per_step"], 3),
            "ratio_multidiffusion_over_osd_disjoint": round(md["seconds_per_step"] / disjoint["seconds_per_step"], 3),
            "physical_ratio": round(md["latent_cells_per_step"] / osd["latent_cells_per_step"], 3)}


def animatediff_steps(device: torch.device, sizes: Sizes, dtype: torch.dtype) -> dict[str, Any]:
    from ..diffusion.sampler import DenoiseLoop, LoopCallbacks
    from .upscale_dit import StepClock, _StopAfter

    adapter = animatediff_random_weights(device, dtype, sizes.tiny)
    sizes.speedups.apply(adapter)
    frames, side, steps = sizes.pick((16, 512, 25), (4, 64, 3))
    cond = adapter.encode_prompt("", "", 7.5)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(steps, device=device)
    x = torch.randn(adapter.latent_shape(1, side, side, frames), device=device, dtype=dtype)
    clock = StepClock(device, limit=sizes.pick(3, 2))
    reset_peak(device)
    clock.start()
    try:
        DenoiseLoop(scheduler, lambda z, t: adapter.predict(z, t, cond),
                    callbacks=LoopCallbacks(clock.on_step, clock.should_stop)).run(x)
    except _StopAfter:
        pass
    per_step = _steady(clock.times)
    return {"frames": frames, "size": f"{side}x{side}", "steps_timed": len(clock.times),
            "seconds_per_step": round(per_step, 3), **device_peak(device)}


def wan_refine(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    import tempfile

    from .upscale_dit import plate_upscale_rows, random_weight_wan

    with tempfile.TemporaryDirectory(prefix="cinegen-bench-wan-") as tmp:
        folder = Path(tmp) / "wan2.1-1.3b"  # the configs as the builder reads them (shrunk with --tiny)
        folder.mkdir()
        for name in ("transformer", "vae", "scheduler", "profile"):
            (folder / f"{name}.json").write_text(json.dumps(load_config("wan2.1-1.3b", name, sizes.tiny)))
        adapter = random_weight_wan(folder, device, half_for(device, "wan"))
    sizes.speedups.apply(adapter)
    plate, target = sizes.pick(((848, 480), (1920, 1088)), ((32, 32), (64, 48)))
    frames = sizes.pick(17, 5)
    row = plate_upscale_rows(adapter, plate, target, frames=frames, steps=sizes.pick(50, 4), measured_steps=sizes.pick(2, 1),
                             vae_tile=sizes.pick(256, None), label=f"{plate[0]}x{plate[1]}->{target[0]}x{target[1]}")
    return row


def tora_steps(device: torch.device, sizes: Sizes, dtype: torch.dtype) -> dict[str, Any]:
    from cinegen.common.trajectory_io import load_trajectory

    from ..diffusion.sampler import LoopCallbacks
    from ..pipelines.base import Resolved
    from ..pipelines.trajectory import generate_tora
    from .upscale_dit import StepClock, _StopAfter

    adapter = cogvideox_tora_random_weights(device, dtype, sizes.tiny)
    sizes.speedups.apply(adapter)
    width, height, frames = sizes.pick((720, 480, 49), (64, 64, 9))
    steps = sizes.pick(50, 3)
    document = {"origin": "top-left", "width": width, "height": height,
                "tracks": [{"name": "a", "size": 32, "points": [{"frame": 1001, "x": width * 0.2, "y": height * 0.5},
                                                                {"frame": 1000 + frames, "x": width * 0.8,
                                                                 "y": height * 0.4}]}]}
    trajectory = load_trajectory(json.dumps(document)).to_top_left().scaled_to(width, height)
    r = Resolved("a boat", "", adapter.entry.id, 0, steps, 6.0, width, height, frames, 8.0, 1001)
    clock = StepClock(device, limit=sizes.pick(2, 2))
    reset_peak(device)
    clock.start()
    try:
        generate_tora(adapter, r, trajectory, callbacks=LoopCallbacks(clock.on_step, clock.should_stop))
    except _StopAfter:
        pass
    per_step = _steady(clock.times)
    return {"frames": frames, "size": f"{width}x{height}", "steps_timed": len(clock.times),
            "seconds_per_step": round(per_step, 3), "seconds_for_the_schedule": round(per_step * steps, 1),
            **device_peak(device)}


def _steady(times: list[float]) -> float:
    """Seconds per step without the first (it pays for kernel selection), when there are more."""
    rest = times[1:] or times
    return sum(rest) / max(1, len(rest))


# ---- the run -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    estimate_s: float  # on an H100-class GPU, building included; a case is skipped when it does not fit
    run: Callable[[], dict[str, Any]]


def cases(device: torch.device, sizes: Sizes) -> list[Case]:
    half = half_for(device)
    return [
        Case("sdxl cascade 1024->4096 vs direct", 150, lambda: sdxl_cascade(device, sizes, sizes.pick(4096, 128), True)),
        Case("panorama 512x4096 SD 1.5: OSD vs MultiDiffusion", 60,
             lambda: panorama_osd_vs_multidiffusion(device, sizes, half)),
        Case("wan 1.3B refine 480p->1080p", 60, lambda: wan_refine(device, sizes)),
        Case("cogvideox 5B + tora 49 frames 480p", 60, lambda: tora_steps(device, sizes, half_for(device, "cogvideox"))),
        Case("animatediff (SD 1.5 + motion adapter) 16 frames 512", 30, lambda: animatediff_steps(device, sizes, half)),
        Case("sdxl cascade 1024->8192 (cascade alone)", 150,
             lambda: sdxl_cascade(device, sizes, sizes.pick(8192, 128), False)),
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..devices import resolve_device

    device = resolve_device(args.device)
    tiny = bool(getattr(args, "tiny", False))
    report: dict[str, Any] = {"benchmark": "gpu", "device": str(device), "torch": torch.__version__, "tiny": tiny}
    if not tiny and not getattr(args, "real_size", False):
        return {**report, "rows": [], "notes": ["pass --real-size (on a CUDA GPU) or --tiny (any machine)"]}
    if not tiny and device.type != "cuda":
        return {**report, "rows": [], "notes": ["--real-size needs a CUDA GPU; --tiny runs the same path shrunk"]}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
        report["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    budget = Budget(getattr(args, "budget_s", None) or BUDGET_S)
    speedups = Speedups(getattr(args, "compile", None), None, bool(getattr(args, "channels_last", False)))
    report["speedups"] = {"compile": speedups.compile, "channels_last": speedups.channels_last}
    sizes = Sizes(tiny, speedups)
    rows, details = [], {}
    for case in cases(device, sizes):
        if not tiny and budget.left() < case.estimate_s:
            rows.append({"case": case.name, "status": f"skipped: {budget.left():.0f} s of the budget left"})
            continue
        start = time.perf_counter()
        try:
            figures = case.run()
            rows.append({"case": case.name, "status": "ok", "seconds": round(time.perf_counter() - start, 1)})
            details[case.name] = figures
        except torch.cuda.OutOfMemoryError as error:  # reported, and the next case still runs
            rows.append({"case": case.name, "status": f"out of memory: {(str(error).splitlines() or [''])[0]}"})
        except Exception as error:  # noqa: BLE001 - one broken case must not cost the others their GPU time
            rows.append({"case": case.name, "status": f"error: {type(error).__name__}: {error}"[:500]})
        # outside the handlers: a caught error's traceback holds the failed case's frames (its models and
        # tensors) until the handler ends, so freeing inside it would leave them on the GPU for the next case
        _free()
        print(rows[-1], flush=True)
        _save_partial({**report, "rows": rows, "cases": details})
    return {**report, "budget_s": budget.seconds, "rows": rows, "cases": details}


def _save_partial(report: dict[str, Any]) -> None:
    """After every case, what is measured so far under `$OUT`: a run cut short still brings figures back."""
    import os

    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "bench-gpu.partial.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
