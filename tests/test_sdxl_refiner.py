"""SDXL base + refiner as diffusers' ensemble of experts, on a tiny SDXL and a tiny refiner."""
from __future__ import annotations

import pytest
import torch

from cinegen.server.models.family import ModelEntry
from cinegen.server.models.sd import SDAdapter
from cinegen.server.pipelines.base import Resolved
from cinegen.server.pipelines.image import generate_images
from cinegen.server.errors import InvalidArgument
from cinegen.server.pipelines.refiner import RefinerStage, check_refiner_request, split_schedule
from ldm_layout import write_single_file
from tiny_checkpoints import tiny_refiner, tiny_sdxl


@pytest.fixture(scope="module")
def adapters():
    cpu = torch.device("cpu")
    base = SDAdapter(tiny_sdxl(0), ModelEntry("tiny-sdxl", "sd", "single-file", "", kind="sdxl"), cpu, torch.float32)
    refiner = SDAdapter(tiny_refiner(100), ModelEntry("tiny-refiner", "sd", "single-file", "", kind="sdxl-refiner"),
                        cpu, torch.float32)
    return base, refiner


def _r(steps: int = 5, frames: int = 1) -> Resolved:
    return Resolved(prompt="a red disc", negative_prompt="blur", model="tiny-sdxl", seed=3, steps=steps, guidance=5.0,
                    width=64, height=64, frames=frames, fps=24.0, first_frame=1001)


def _stage(refiner, r: Resolved, split: float) -> RefinerStage:
    return RefinerStage.prepare(refiner, r.prompt, r.negative_prompt, r.guidance, split, r.steps)


def _timesteps_seen(unet) -> tuple[list, object]:
    seen: list[int] = []
    handle = unet.register_forward_pre_hook(lambda m, args: seen.append(int(args[1])))
    return seen, handle


def test_split_1_is_the_base_alone_bit_for_bit(adapters):
    base, refiner = adapters
    seen, handle = _timesteps_seen(refiner.pipe.unet)
    try:
        with_refiner = generate_images(base, _r(), refiner=_stage(refiner, _r(), 1.0))
    finally:
        handle.remove()
    assert torch.equal(with_refiner, generate_images(base, _r()))
    assert seen == []


@pytest.mark.parametrize("split, refined", [(0.8, 2), (0.5, 5), (0.3, 7)])
def test_the_refiner_runs_exactly_the_last_share_of_the_timesteps(adapters, split, refined):
    base, refiner = adapters
    r = _r(steps=10)
    scheduler = base.new_scheduler()
    scheduler.set_timesteps(r.steps)
    schedule = [int(t) for t in scheduler.timesteps]  # 901, 801, ..., 1 (leading spacing)
    seen_base, h1 = _timesteps_seen(base.pipe.unet)
    seen_refiner, h2 = _timesteps_seen(refiner.pipe.unet)
    try:
        generate_images(base, r, refiner=_stage(refiner, r, split))
    finally:
        h1.remove()
        h2.remove()
    assert seen_refiner == schedule[-refined:]  # round((1 - split) * steps) steps, the last ones
    assert seen_base == schedule[:-refined]
    assert all(t < round(1000 - split * 1000) <= b for t in seen_refiner for b in seen_base)


@pytest.mark.parametrize("split", [0.8, 0.5])
def test_base_and_refiner_equal_diffusers_ensemble_of_experts_bit_for_bit(adapters, split):
    base, refiner = adapters
    r = _r(steps=5)
    ours = generate_images(base, r, refiner=_stage(refiner, r, split))
    generator = torch.Generator().manual_seed(r.seed)
    common = dict(prompt=r.prompt, negative_prompt=r.negative_prompt, num_inference_steps=r.steps,
                  guidance_scale=r.guidance, generator=generator, output_type="latent")
    with torch.no_grad():
        latents = base.pipe(height=r.height, width=r.width, denoising_end=split, **common).images
        stock = refiner.pipe(image=latents, denoising_start=split, **common).images
    assert torch.equal(ours, stock)


def test_split_schedule_matches_a_second_order_scheduler_rule():
    from diffusers import HeunDiscreteScheduler

    heun = HeunDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                 timestep_spacing="leading", steps_offset=1)
    heun.set_timesteps(5)
    base, start = split_schedule(heun, 0.8)
    # Heun evaluates twice per step (9 timesteps for 5 steps); an even refiner count gets one more
    assert (len(heun.timesteps) - start) % 2 == 1 and base + (len(heun.timesteps) - start) >= len(heun.timesteps)


# ---- the job: CLI, refusals -------------------------------------------------------------------
@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """The pair twice: as original single files and as diffusers folders."""
    root = tmp_path_factory.mktemp("refiner-models")
    base, refiner = tiny_sdxl(0), tiny_refiner(100)
    write_single_file(base, "sdxl", root / "tiny-sdxl.safetensors")
    write_single_file(refiner, "sdxl-refiner", root / "tiny-refiner.safetensors")
    base.save_pretrained(str(root / "folder-sdxl"))
    refiner.save_pretrained(str(root / "folder-refiner"))
    return root


@pytest.mark.parametrize("model, refiner", [("tiny-sdxl", "tiny-refiner"), ("folder-sdxl", "folder-refiner")])
def test_generate_image_with_a_refiner_from_the_command_line(models_dir, tmp_path, capsys, model, refiner):
    from cinegen.common.exr import read_exr_frame
    from cinegen.server.cli import main

    def run(name, *extra):
        code = main(["generate", "image", "--model", model, "--steps", "4", "--seed", "5", "--out",
                     str(tmp_path / f"{name}.####.exr"), "--models", str(models_dir), "--no-hf-cache", *extra])
        assert code == 0, capsys.readouterr().err
        return read_exr_frame(tmp_path / f"{name}.1001.exr")[0]

    alone = run("alone")
    refined = run("refined", "--refiner", refiner, "--refiner-split", "0.5")
    assert "refine" in capsys.readouterr().err  # the refiner's steps are a stage of their own
    assert refined.shape[:2] == (64, 64)
    assert (refined != alone).any()  # the last half of the steps came from the other model


@pytest.mark.parametrize("model, refiner, says", [
    ("tiny-sd", "tiny-refiner", "runs after an SDXL base model, and 'tiny-sd' is not one"),
    ("tiny-sdxl", "tiny-sdxl", "'tiny-sdxl' is not an SDXL refiner"),
    ("tiny-refiner", "", "'tiny-refiner' is an SDXL refiner"),
])
def test_a_refiner_request_that_cannot_work_is_refused_with_a_sentence(models_dir, tmp_path, capsys, model, refiner, says):
    from cinegen.server.cli import main

    args = ["generate", "image", "--model", model, "--steps", "2", "--out", str(tmp_path / "x.####.exr"),
            "--models", str(models_dir), "--no-hf-cache"] + (["--refiner", refiner] if refiner else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and says in err
    assert not list(tmp_path.iterdir())


def test_a_refiner_split_without_a_refiner_is_refused_not_ignored(registry):
    with pytest.raises(InvalidArgument, match="give the refiner with --refiner, or drop --refiner-split"):
        check_refiner_request(registry, "tiny-sd", "", 0.5)
    check_refiner_request(registry, "tiny-sd", "", None)  # neither: the base alone


def test_cinegen_models_shows_both_refiners_as_refiners(models_dir, tmp_path):
    from cinegen.server.models.registry import ModelRegistry

    kinds = {e.id: e.kind for e in ModelRegistry([models_dir], use_hf_cache=False, cache_dir=tmp_path).entries()}
    assert kinds["tiny-refiner"] == kinds["folder-refiner"] == "sdxl-refiner"
    assert kinds["tiny-sdxl"] == "sdxl" and kinds["folder-sdxl"] == "model"


def test_under_model_offload_the_base_unet_leaves_the_device_before_the_refiners_first_step(adapters, monkeypatch):
    """diffusers' two chains would keep both UNets on the device while the refiner runs. The hooks are installed
    with the CPU as execution device (as tests/test_offload.py does): the order of the offloads against the
    UNets' calls is what a GPU server sees, and the numbers are bit-equal."""
    from cinegen.server.models.offload import set_offload

    base, refiner = adapters
    r = _r(steps=5, frames=2)
    reference = generate_images(base, r, batch_size=1, refiner=_stage(refiner, r, 0.6))
    events: list[str] = []
    handles = []
    try:
        for name, adapter in (("base", base), ("refiner", refiner)):
            set_offload(adapter.pipe, "model", torch.device("cpu"))
            hook = next(h for h in adapter.pipe._all_hooks if h.model is adapter.pipe.unet)
            init = hook.hook.init_hook
            monkeypatch.setattr(hook.hook, "init_hook",
                                lambda module, n=name, init=init: events.append(f"{n} offloaded") or init(module))
            handles.append(adapter.pipe.unet.register_forward_pre_hook(
                lambda m, args, n=name: events.append(f"{n} step")))
        stage = RefinerStage.prepare(refiner, r.prompt, r.negative_prompt, r.guidance, 0.6, r.steps, base=base)
        out = generate_images(base, r, batch_size=1, refiner=stage)
    finally:
        for handle in handles:
            handle.remove()
        for adapter in adapters:
            set_offload(adapter.pipe, "none", torch.device("cpu"))
    steps = [e for e in events if e.endswith("step")]
    assert steps == (["base step"] * 3 + ["refiner step"] * 2) * 2  # two batches, 60 % of 5 steps on the base
    for first_refined in (i for i, e in enumerate(events) if e == "refiner step" and events[i - 1] != e):
        last_base = max(i for i in range(first_refined) if events[i] == "base step")
        assert "base offloaded" in events[last_base:first_refined], events
    last_refined = max(i for i, e in enumerate(events) if e == "refiner step")
    assert "refiner offloaded" in events[last_refined:], "the refiner's UNet leaves room for the base's next batch"
    assert torch.equal(out, reference)  # the hooks only move tensors: the same ops in the same order
