"""`cinegen bench gpu`: the real-size configs are the published architectures, the cases run shrunk on a
CPU (`--tiny`), the budget skips what does not fit, and a CPU without --tiny is told why nothing ran."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from cinegen.server.benchmarks import gpu


def _billions(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e9


@pytest.mark.parametrize("folder,name,cls,low,high", [
    ("sdxl", "unet", "UNet2DConditionModel", 2.5, 2.6),
    ("sd15", "unet", "UNet2DConditionModel", 0.85, 0.87),
    ("animatediff-motion-v1-5-2", "motion_adapter", "MotionAdapter", 0.45, 0.46),
    ("cogvideox-5b", "transformer", "CogVideoXTransformer3DModel", 5.5, 5.6),
])
def test_real_size_configs_have_the_published_parameter_counts(folder, name, cls, low, high):
    import diffusers

    with torch.device("meta"):  # shapes only: no memory, no time
        model = getattr(diffusers, cls).from_config(gpu.load_config(folder, name, tiny=False))
    assert low < _billions(model) < high


def test_tiny_overrides_only_name_keys_the_real_configs_have():
    for folder, files in gpu.TINY_OVERRIDES.items():
        for name, overrides in files.items():
            real = gpu.load_config(folder, name, tiny=False)
            assert set(overrides) <= set(real), (folder, name)


@pytest.mark.parametrize("case", ["wan", "tora", "animatediff"])
def test_the_video_cases_run_shrunk_on_a_cpu(case, tiny_model_cache):
    sizes, device = gpu.Sizes(tiny=True), torch.device("cpu")
    figures = {"wan": lambda: gpu.wan_refine(device, sizes),
               "tora": lambda: gpu.tora_steps(device, sizes, torch.float32),
               "animatediff": lambda: gpu.animatediff_steps(device, sizes, torch.float32)}[case]()
    if case == "wan":
        assert figures["frames_per_minute"] > 0 and figures["stages"][1]["steps_measured"] == 1
    else:
        assert figures["steps_timed"] == 2 and figures["seconds_per_step"] > 0


def test_cases_that_do_not_fit_the_budget_are_skipped_and_a_broken_case_spares_the_rest(monkeypatch, tmp_path):
    ran = []

    def broken():
        raise RuntimeError("a case that fails")

    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setattr(gpu, "cases", lambda device, sizes: [
        gpu.Case("broken", 1, broken),
        gpu.Case("fits", 1, lambda: ran.append("fits") or {"x": 1}),
        gpu.Case("too long", 10_000, lambda: ran.append("too long") or {})])
    monkeypatch.setattr("cinegen.server.devices.resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "stand-in")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: type("P", (), {"total_memory": 2**30}))
    report = gpu.run(argparse.Namespace(device="cuda", real_size=True, budget_s=60))
    assert ran == ["fits"]
    statuses = [r["status"] for r in report["rows"]]
    assert statuses[0] == "error: RuntimeError: a case that fails" and statuses[1] == "ok"
    assert statuses[2].startswith("skipped")
    assert "fits" in json.loads((tmp_path / "bench-gpu.partial.json").read_text())["cases"]


def test_real_size_without_a_gpu_says_what_to_do():
    report = gpu.run(argparse.Namespace(device="cpu", real_size=True))
    assert report["rows"] == [] and "--tiny" in report["notes"][0]
