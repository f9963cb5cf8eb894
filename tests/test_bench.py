"""`cinegen bench`: interleaved rounds, median/spread figures, tables and JSON; the panorama peer is
diffusers' MultiDiffusion; the benchmarks' tiny modes run their code paths (figures are not checked)."""
from __future__ import annotations

import argparse
import functools
import json
import sys
import types

import pytest
import torch

from cinegen.server import bench
from cinegen.server.benchmarks.measure import interleaved, stat
from cinegen.server.benchmarks.multidiffusion import multidiffusion_denoise, multidiffusion_views


def test_cases_are_interleaved_and_alternate_which_runs_first():
    order = []
    interleaved(["A", "B"], 3, lambda case, r: order.append((r, case)) or {})
    assert order == [(0, "A"), (0, "B"), (1, "B"), (1, "A"), (2, "A"), (2, "B")]


def test_repeated_plain_benchmarks_become_medians_with_spreads(monkeypatch, tmp_path, capsys):
    calls = []

    def fake(name, values):
        module = types.ModuleType(f"fake_{name}")

        def run(args):
            calls.append(name)
            value = values[len([c for c in calls if c == name]) - 1]
            return {"benchmark": name, "device": "cpu", "ratio": value / 2, "rows": [{"case": "x", "size": 64,
                                                                                     "seconds": value}]}
        module.run = run
        monkeypatch.setitem(sys.modules, module.__name__, module)
        monkeypatch.setitem(bench.BENCHMARKS, name, module.__name__)

    fake("a", [3.0, 1.0, 2.0])
    fake("b", [5.0, 5.0, 9.0])
    out = tmp_path / "all.json"
    args = argparse.Namespace(what=["a", "b"], repeat=3, json=str(out), out=str(tmp_path / "reports"))
    assert bench.run_bench(args) == 0
    assert calls == ["a", "b", "b", "a", "a", "b"]
    report = json.loads(out.read_text())
    assert report["a"]["rows"][0]["seconds"] == stat([3.0, 1.0, 2.0]) and report["a"]["rows"][0]["size"] == 64
    assert report["b"]["rows"][0]["seconds"]["median"] == 5.0 and report["b"]["rows"][0]["seconds"]["spread"] == 4.0
    assert report["a"]["ratio"]["median"] == 1.0, "top-level figures are aggregated too"
    assert (tmp_path / "reports" / "a.json").exists()
    table = capsys.readouterr().out
    assert "== a on cpu (3 round(s)" in table and "2 ±1" in table


def test_unknown_benchmarks_are_refused_with_the_list(tmp_path, capsys):
    args = argparse.Namespace(what=["nope"], repeat=1, json=None, out=str(tmp_path))
    assert bench.run_bench(args) == 2 and "panorama" in capsys.readouterr().err


def test_views_wrap_with_several_rows():
    views = multidiffusion_views(16, 32, (8, 8), 4, circular=True)
    assert len(views) == 3 * 8 and max(v.left for v in views) == 28  # the last views run past the edge


@pytest.mark.parametrize("circular,height", [(False, 96), (True, 64)])
def test_the_multidiffusion_peer_is_diffusers_panorama_pipeline(registry, circular, height):
    """Where diffusers' pipeline runs (wrapped views in one row only), the peer equals its loop. Its
    views are fixed at 64 latents; this instance's `get_views` is given tiny-sd's 8 (stride 4)."""
    from diffusers import StableDiffusionPanoramaPipeline

    adapter = registry.get("tiny-sd")
    p = adapter.pipe
    pipe = StableDiffusionPanoramaPipeline(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
                                           scheduler=adapter.new_scheduler(), safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.get_views = functools.partial(StableDiffusionPanoramaPipeline.get_views, pipe, window_size=8, stride=4)
    width = 128
    latents = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(0))
    theirs = pipe("a hill", height=height, width=width, num_inference_steps=2, guidance_scale=7.5,
                  latents=latents.clone(), circular_padding=circular, view_batch_size=3,
                  output_type="latent").images
    cond = adapter.encode_prompt("a hill", "", 7.5)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(2)
    ours = multidiffusion_denoise(latents * scheduler.init_noise_sigma, scheduler,
                                  lambda x, t: adapter.predict(x, t, cond), window=(8, 8), stride=4,
                                  circular=circular, view_batch=3, step_kwargs={"eta": 0.0, "generator": None})
    # same arithmetic; guidance batches rows (uncond, cond) interleaved there, stacked here
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours, latents * scheduler.init_noise_sigma, atol=1e-2), "the loop denoised"
