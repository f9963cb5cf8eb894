"""--offload: diffusers' CPU offload hooks on every family, switched correctly between jobs; dtype per family.

The hooks are installed with the CPU as their execution device (what a GPU server does with its GPU):
the hooks only move tensors between devices, so with CPU on both sides the same ops run in the same
order and the results are bit-equal. accelerate 1.15 cannot *run* sequential offload with the CPU as
execution device (its tied-parameter cache hands back a plain tensor, TypeError in
`set_module_tensor_to_device`), so sequential is checked here by its hooks, its meta weights, and
the exact restore; running it needs a GPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cinegen.common.exr import read_exr_frame
from cinegen.common.params import CommonParams, ImageParams
from cinegen.common.proto import generator_pb2 as pb
from cinegen.server.errors import InvalidArgument
from cinegen.server.models.job_models import JobModels
from cinegen.server.models.offload import current_mode, execution_devices, normalise_mode, set_offload
from cinegen.server.models.precision import dtype_for
from cinegen.server.models.registry import ModelRegistry
from cinegen.server.pipelines.base import JobSpec, RunContext
from cinegen.server.pipelines.image import ImagePipeline

CPU = torch.device("cpu")
FAMILY_MODELS = ("tiny-sd", "tiny-animatediff", "tiny-wan", "tiny-cogvideox")
# The UNet families come out bit-equal under the hooks. Wan's and CogVideoX's transformers do not quite
# (Wan: 2.4e-6 at most on the tiny model's output, the decode of a given latent bit-equal; also after the
# hooks are gone and the weights are bit-equal again: it is where the weights lie in memory, which the
# CPU's matmul kernels see, not their values; cloning the transformer's weights, with no hooks at all,
# changes its output by the same 2.4e-6), so those are compared within 1e-5: far below the 1e-2 a
# different seed or step changes.
EXACT = {"tiny-sd", "tiny-animatediff"}


@pytest.fixture(scope="module")
def own_registry(tiny_model_cache):
    """Models of their own: hooks installed here never reach the session registry's models."""
    return ModelRegistry(use_hf_cache=False, cache_dir=tiny_model_cache)


def _modules(pipe) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def _one_step(adapter) -> torch.Tensor:
    """Prompt encoding, one guided denoiser call and the decode: every component runs once."""
    width, height = adapter.native_size
    cond = adapter.encode_prompt("a red disc", "blue", guidance=adapter.default_guidance)
    x = torch.randn(adapter.latent_shape(1, width, height, adapter.native_frames),
                    generator=torch.Generator().manual_seed(0))
    return adapter.decode(adapter.predict(x, torch.tensor(500), cond))


@pytest.mark.parametrize("model_id", FAMILY_MODELS)
def test_model_offload_hooks_every_component_and_gives_the_same_result(own_registry, model_id):
    adapter = own_registry.get(model_id)

    def same(a: torch.Tensor, b: torch.Tensor) -> None:
        if model_id in EXACT:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)

    weights = {k: v.clone() for k, v in adapter.denoiser.state_dict().items()}
    reference = _one_step(adapter)
    try:
        set_offload(adapter.pipe, "model", CPU)
        for name, module in _modules(adapter.pipe).items():
            assert execution_devices(module) == {"cpu:0"}, name  # a CpuOffload hook on each component
        same(_one_step(adapter), reference)

        set_offload(adapter.pipe, "sequential", CPU)  # straight from model to sequential: hooks replaced
        params = {p.device.type for p in adapter.denoiser.parameters()}
        assert params == {"meta"}, "sequential offload keeps the weights in CPU memory, not in the module"
        leaf_hooks = sum(1 for m in adapter.denoiser.modules() if getattr(m, "_hf_hook", None) is not None)
        assert leaf_hooks > 10, "a hook on each module with weights, not one for the whole model"
    finally:
        set_offload(adapter.pipe, "none", CPU)
    assert current_mode(adapter.pipe) == "none"
    assert all(not execution_devices(m) for m in _modules(adapter.pipe).values())
    restored = adapter.denoiser.state_dict()
    assert all(torch.equal(restored[k], v) and restored[k].device.type == "cpu" for k, v in weights.items())
    same(_one_step(adapter), reference)  # no hooks left, the weights bit-equal and back on their device


def _job(tmp_path, name: str, offload: str) -> JobSpec:
    return JobSpec(name, "image", CommonParams(prompt="a red disc", model="tiny-sd", seed=5, steps=2, width=64,
                                               height=64, frames=1, offload=offload,
                                               out=str(tmp_path / name / "f.####.exr")), ImageParams())


def _run(registry, job: JobSpec, logs: list[str]) -> np.ndarray:
    models = JobModels(registry, job.common.offload, logs.append, on_cpu=True)
    ctx = RunContext(job=job, registry=models, report_progress=lambda *a: None, report_preview=lambda *a: None,
                     report_frame=lambda *a: None, report_log=logs.append, is_cancelled=lambda: False)
    try:
        outputs = ImagePipeline().run(ctx)
    finally:
        models.close()
    return read_exr_frame(outputs[0])[0]


def test_a_resident_model_follows_each_jobs_offload_setting(own_registry, tmp_path):
    logs: list[str] = []
    plain = _run(own_registry, _job(tmp_path, "a", "none"), logs)
    assert logs == [] and current_mode(own_registry.get("tiny-sd").pipe) == "none"
    offloaded = _run(own_registry, _job(tmp_path, "b", "model"), logs)
    assert logs == ["'tiny-sd': offload none -> model."]
    pipe = own_registry.get("tiny-sd").pipe
    assert current_mode(pipe) == "model" and execution_devices(pipe.unet) == {"cpu:0"}
    assert np.array_equal(offloaded, plain)  # the hooks only move tensors: the same ops, in the same order
    again = _run(own_registry, _job(tmp_path, "c", "none"), logs)
    assert logs[-1] == "'tiny-sd': offload model -> none."
    assert not execution_devices(pipe.unet) and np.array_equal(again, plain)


def test_offload_on_a_cpu_server_runs_the_job_as_it_is_and_says_so(client, tmp_path):
    request = pb.JobRequest(job_id="offload-cpu", pipeline="image",
                            common=pb.CommonParams(prompt="a red disc", model="tiny-sd", seed=2, steps=1, width=32,
                                                   height=32, offload="sequential",
                                                   out=str(tmp_path / "o" / "o.####.exr")))
    events = list(client.watch(client.submit(request).job_id))
    assert events[-1].WhichOneof("kind") == "completed", events[-1]
    logs = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
    assert any("Offload 'sequential' does nothing on this CPU-only server" in line for line in logs), logs


def test_an_unknown_offload_mode_is_refused_with_the_modes():
    assert normalise_mode("") == "none" and normalise_mode("Model") == "model"
    with pytest.raises(InvalidArgument, match="none, model, sequential"):
        normalise_mode("disk")


def test_offload_is_advertised_to_forms(client):
    image = next(p for p in client.capabilities().pipelines if p.name == "image")
    specs = {s.name: s for s in image.params}
    assert list(specs["offload"].choices) == ["none", "model", "sequential"]
    assert specs["offload"].default_json == '"none"'


@pytest.mark.parametrize("family, device, expected", [
    ("sd", "cuda", torch.float16), ("animatediff", "cuda", torch.float16),
    ("wan", "cuda", torch.bfloat16), ("cogvideox", "cuda:1", torch.bfloat16),
    ("sd", "cpu", torch.float32), ("wan", "cpu", torch.float32), ("cogvideox", "cpu", torch.float32)])
def test_dtype_per_family(family, device, expected):
    assert dtype_for(family, device) == expected


def test_dit_families_on_a_gpu_without_bfloat16_stay_in_float32():
    assert dtype_for("wan", "cuda", bf16_supported=False) == torch.float32
    assert dtype_for("sd", "cuda", bf16_supported=False) == torch.float16


def test_the_registry_loads_each_family_in_its_dtype(own_registry):
    assert own_registry.dtype is None  # no override: per family
    cuda = ModelRegistry(use_hf_cache=False, device="cuda:0", cache_dir=own_registry.cache_dir)
    cuda.bf16_supported = True
    assert [cuda.dtype_of(f) for f in ("sd", "animatediff", "wan", "cogvideox")] == [
        torch.float16, torch.float16, torch.bfloat16, torch.bfloat16]
    assert own_registry.get("tiny-sd").pipe.unet.dtype == torch.float32


def test_a_sparsectrl_model_follows_the_offload_of_its_animatediff_model(own_registry, tmp_path, monkeypatch):
    """SparseCtrl is kept beside the pipeline (not a component), so diffusers' hooks miss it: `attach` puts
    it under the same mode. Model offload: hooked, the same result, and it goes back to CPU memory with the
    UNet (when the VAE runs), also after the chain is rebuilt at the end of a job; sequential: meta weights
    behind per-module hooks, restored bit-equal."""
    from accelerate.hooks import UserCpuOffloadHook

    from cinegen.server.models.offload import after_job
    from cinegen.server.models.sparsectrl import SparseControl, build_tiny_sparsectrl, sparsectrl_for

    adapter = own_registry.get("tiny-animatediff")
    build_tiny_sparsectrl(tmp_path / "sc", seed=1)
    controlnet = sparsectrl_for(adapter, "sc", tmp_path / "sc")
    g = torch.Generator().manual_seed(1)
    control = SparseControl(controlnet, torch.randn(1, 4, 8, 8, 8, generator=g), torch.ones(1, 1, 8, 8, 8))

    def step() -> torch.Tensor:
        cond = adapter.encode_prompt("a red disc", "blue", guidance=adapter.default_guidance)
        cond.extra["control"] = control
        x = torch.randn(adapter.latent_shape(1, 64, 64, 8), generator=torch.Generator().manual_seed(0))
        return adapter.predict(x, torch.tensor(500), cond)

    reference, weights = step(), {k: v.clone() for k, v in controlnet.state_dict().items()}
    try:
        set_offload(adapter.pipe, "model", CPU)
        assert sparsectrl_for(adapter, "sc", tmp_path / "sc") is controlnet
        assert execution_devices(controlnet) == {"cpu:0"}
        assert torch.equal(step(), reference)
        for rebuilt in (False, True):
            if rebuilt:
                after_job(adapter)  # maybe_free_model_hooks builds a new chain; the SparseCtrl is linked again
            own = next(h for h in adapter.pipe._all_hooks if h.model is controlnet)
            offloads: list[str] = []
            monkeypatch.setattr(own.hook, "init_hook", lambda module: offloads.append("sparsectrl") or module)
            previous = adapter.pipe.vae._hf_hook.prev_module_hook  # what the VAE's hook offloads when it runs
            assert isinstance(previous, UserCpuOffloadHook) and previous.model is adapter.pipe.unet
            previous.offload()
            assert offloads == ["sparsectrl"], rebuilt

        set_offload(adapter.pipe, "sequential", CPU)
        assert {p.device.type for p in controlnet.parameters()} == {"meta"}
        assert sum(1 for m in controlnet.modules() if getattr(m, "_hf_hook", None) is not None) > 10
    finally:
        set_offload(adapter.pipe, "none", CPU)
    assert not execution_devices(controlnet)
    assert all(torch.equal(controlnet.state_dict()[k], v) for k, v in weights.items())
    assert torch.equal(step(), reference)


def test_wan_upscales_ntk_rope_needs_no_hook_of_its_own_under_sequential_offload(own_registry):
    """Wan upscale swaps `transformer.rope` for an NTK-scaled one while the job runs, so it gets no offload
    hook. It needs none: the rope has no parameters, only non-persistent tables, and accelerate puts those on
    the execution device when it installs the hooks (they are not offloaded); the NTK rope is built on the
    stock rope's device, so its tables are where the transformer runs. Checked with the hooks diffusers'
    enable_sequential_cpu_offload installs per component; "meta" stands for the GPU (any device but the CPU
    the weights are kept on), then the CPU gives the values."""
    import copy

    from accelerate import cpu_offload

    from cinegen.server.diffusion.dit_rope import NTKWanRotaryPosEmbed, install_ntk_rope

    stock = own_registry.get("tiny-wan").pipe.transformer
    head_dim = stock.rope.attention_head_dim
    for device in (torch.device("meta"), CPU):
        transformer = copy.deepcopy(stock)
        cpu_offload(transformer, device, offload_buffers=len(transformer._parameters) > 0)
        assert not list(transformer.rope.parameters())
        assert {b.device.type for b in transformer.rope.buffers()} == {device.type}  # not left in CPU memory
        hidden = torch.zeros(1, 4, 3, 8, 8, device=device)
        with install_ntk_rope(transformer, (1.0, 20.0, 20.0)) as rope:
            assert transformer.rope is rope and getattr(rope, "_hf_hook", None) is None
            assert not list(rope.parameters()) and {b.device.type for b in rope.buffers()} == {device.type}
            cos, sin = rope(hidden)
        assert cos.device.type == device.type and transformer.rope is not rope
        if device == CPU:  # the values: those of an NTK rope that never saw a hook
            plain = NTKWanRotaryPosEmbed.like(stock.rope, (1.0, 20.0, 20.0))
            expected = plain(hidden)
            assert torch.equal(cos, expected[0]) and torch.equal(sin, expected[1])
