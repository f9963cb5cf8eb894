"""The memory estimate: conservative but not absurd against the measured peak on tiny models, and a
job that cannot fit is refused at Submit with the settings that would make it fit.

Measured = the peak of live tensor bytes during the phase (server/cinegen/server/benchmarks/live_memory.py: what a CUDA
allocator would hold for the same ops, weights apart). Band: the estimate of each phase's
activations is at least the measured peak and at most 2.5x it (the multipliers in
models/memory_estimate.py were measured on these models; 2.5x leaves room for the fixed costs that
dominate at tiny sizes).
"""
from __future__ import annotations

import dataclasses
import json

import grpc
import pytest
import torch

from cinegen.common.params import CommonParams
from cinegen.common.proto import generator_pb2 as pb
from cinegen.server.memory_check import job_estimate, model_architecture
from cinegen.server.models.memory_estimate import (GiB, Workload, advice, estimate, fewer_decode_frames,
                                                   kl_decode_frame_bytes)
from cinegen.server.pipelines.base import JobSpec
from cinegen.server.pipelines import load_pipelines

from cinegen.server.benchmarks.live_memory import live_peak
from server_kit import private_server, stub

BAND = (1.0, 2.5)
TRACK = {"origin": "top-left", "width": 64, "height": 64, "tracks": [
    {"name": "disc", "size": 20, "points": [{"frame": 1001, "x": 12, "y": 20}, {"frame": 1002, "x": 52, "y": 44}]}]}
CASES = [("tiny-sd", 128, 1), ("tiny-sd", 256, 1), ("tiny-animatediff", 64, 8), ("tiny-animatediff", 128, 8),
         ("tiny-wan", 64, 9), ("tiny-wan", 128, 17), ("tiny-cogvideox", 64, 9), ("tiny-cogvideox", 128, 17)]


def _measured(adapter, side: int, frames: int) -> tuple[int, int]:
    cond = adapter.encode_prompt("a red disc", "blue", guidance=adapter.default_guidance)
    x = torch.randn(adapter.latent_shape(1, side, side, frames), generator=torch.Generator().manual_seed(0))
    denoise = live_peak(lambda: adapter.predict(x, torch.tensor(500), cond))
    decode = live_peak(lambda: adapter.decode(x))
    return denoise, decode


@pytest.mark.parametrize("model_id, side, frames", CASES)
def test_estimate_brackets_the_measured_peak(registry, model_id, side, frames):
    adapter = registry.get(model_id)
    arch, _ = model_architecture(registry, model_id)
    assert sum(c.parameter_bytes for c in arch.components) == pytest.approx(adapter.parameter_bytes(), rel=0.02)
    video = adapter.kind == "video"
    work = Workload(width=side, height=side, frames=frames if video else 1, cfg=True,
                    decode_frames=min(frames, 16) if adapter.family == "animatediff" else 1)
    phases = estimate(arch, work).phases
    denoise, decode = _measured(adapter, side, frames)
    for name, measured in (("denoise", denoise), ("decode", decode)):
        ratio = phases[name][1] / measured
        assert BAND[0] <= ratio <= BAND[1], f"{model_id} {side}px {frames}f {name}: estimate/measured {ratio:.2f}"


def test_offload_lowers_the_weights_on_the_device(registry):
    arch, _ = model_architecture(registry, "tiny-cogvideox")
    work = Workload(width=64, height=64, frames=9)
    weights = {mode: max(w for w, _ in estimate(arch, dataclasses.replace(work, offload=mode)).phases.values())
               for mode in ("none", "model", "sequential")}
    assert weights["none"] == sum(c.parameter_bytes for c in arch.components)
    assert weights["sequential"] < weights["model"] < weights["none"]


def test_advice_names_settings_that_fit(registry):
    pipelines = load_pipelines()
    spec = JobSpec("m", "image", CommonParams(prompt="a", model="tiny-animatediff", width=256, height=256,
                                              frames=16, out="/tmp/x.####.exr"), None)
    pipeline = pipelines["image"]
    arch, work, needed = job_estimate(pipeline, spec, registry)
    budget = int(needed.total * 0.8)
    message = advice(arch, work, budget, video=True)
    assert message.startswith(f"This job needs about {needed.total / GiB:.1f} GB")
    assert "lower frames to " in message
    frames = int(message.split("lower frames to ")[1].split()[0].rstrip("."))
    assert 1 <= frames < 16
    assert estimate(arch, dataclasses.replace(work, frames=frames)).total <= budget
    assert estimate(arch, dataclasses.replace(work, frames=frames + 1)).total > budget
    assert advice(arch, work, needed.total, video=True) is None


def test_submit_refuses_a_job_that_cannot_fit_and_takes_the_one_the_sentence_names(registry, tmp_path):
    request = pb.JobRequest(job_id="too-big", pipeline="trajectory",
                            common=pb.CommonParams(prompt="a red disc", model="tiny-animatediff", steps=1, width=256,
                                                   height=256, frames=16, out=str(tmp_path / "t" / "t.####.exr")),
                            trajectory=pb.TrajectoryParams(trajectory_json=json.dumps(TRACK)))
    with private_server(registry, device_memory=int(0.9 * GiB), max_frames=64) as running:
        channel, generator = stub(running.address)
        with channel:
            with pytest.raises(grpc.RpcError) as refused:
                generator.Submit(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            text = refused.value.details()
            assert "this server (--device-memory) has 0.9 GB" in text and "lower frames to " in text, text
            frames = int(text.split("lower frames to ")[1].split()[0].rstrip("."))
            assert 2 <= frames < 16  # the track's two frames fit
            request.common.frames, request.job_id = frames, "fits"
            assert generator.Submit(request, timeout=30).job_id == "fits"  # the setting it names is accepted
            caps = generator.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
            assert caps.device.device_memory == int(0.9 * GiB)


def test_device_memory_flag_reads_sizes_as_gpus_are_sold():
    from cinegen.server.cli import memory_size

    assert memory_size("24GB") == memory_size("24 GiB") == memory_size("24") == 24 * GiB
    assert memory_size("512MB") == 512 << 20
    with pytest.raises(Exception, match="not a memory size"):
        memory_size("lots")


def test_variant_weights_beside_the_plain_ones_are_counted_once(tmp_path):
    from safetensors.torch import save_file

    from cinegen.server.models.architecture import architecture_of
    from cinegen.server.models.family import ModelEntry

    unet = tmp_path / "m" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text(json.dumps({"block_out_channels": [8, 16], "layers_per_block": 1}))
    save_file({"conv.weight": torch.zeros(10, 10)}, str(unet / "diffusion_pytorch_model.safetensors"))
    save_file({"conv.weight": torch.zeros(10, 10, dtype=torch.float16)},
              str(unet / "diffusion_pytorch_model.fp16.safetensors"))
    arch = architecture_of(ModelEntry("m", "sd", "folder", str(tmp_path / "m")), "sd", torch.float32)
    assert [(c.name, c.parameter_bytes) for c in arch.components] == [("unet", 100 * 4)]


def test_a_model_the_estimate_cannot_read_is_accepted_unchecked(registry, monkeypatch):
    import cinegen.server.memory_check as memory_check

    def broken(*_a, **_k):
        raise KeyError("a config key the estimate does not know")

    monkeypatch.setattr(memory_check, "job_estimate", broken)
    spec = JobSpec("m", "image", CommonParams(prompt="a", model="tiny-sd", out="/tmp/x.####.exr"), None)
    memory_check.check_fits(load_pipelines()["image"], spec, registry, 1, torch.device("cpu"))  # no refusal


def test_sequential_offload_of_a_long_animatediff_clip_is_refused_on_a_gpu(registry):
    """FreeNoise's rebuilt blocks get meta weights under sequential offload (seen on the CPU: every
    parameter of the six FreeNoiseTransformerBlocks is on the meta device, with no hook)."""
    from cinegen.server.errors import InvalidArgument
    from cinegen.server.memory_check import check_fits

    def job(frames: int, offload: str) -> JobSpec:
        return JobSpec("m", "trajectory", CommonParams(prompt="a", model="tiny-animatediff", frames=frames,
                                                       offload=offload, out="/tmp/x.####.exr"), None)

    pipeline, cuda = load_pipelines()["trajectory"], torch.device("cuda")
    with pytest.raises(InvalidArgument, match="set offload to model, or frames to 16 or fewer"):
        check_fits(pipeline, job(24, "sequential"), registry, None, cuda)
    check_fits(pipeline, job(24, "model"), registry, None, cuda)
    check_fits(pipeline, job(16, "sequential"), registry, None, cuda)
    check_fits(pipeline, job(24, "sequential"), registry, None, torch.device("cpu"))  # a no-op there


def test_a_short_budget_decodes_animatediff_in_smaller_batches_instead_of_refusing(registry):
    arch, _ = model_architecture(registry, "tiny-animatediff")
    work = Workload(width=256, height=256, frames=16, decode_frames=16)
    full, four = estimate(arch, work), estimate(arch, dataclasses.replace(work, decode_frames=4))
    assert full.phase == "decode" and four.total < full.total  # the decode batch is what peaks here
    budget = (four.total + full.total) // 2
    assert advice(arch, work, budget, video=True) is not None  # 16 frames a call would not fit
    smaller = fewer_decode_frames(arch, work, budget)
    assert smaller.decode_frames in (4, 8) and advice(arch, smaller, budget, video=True) is None
    assert fewer_decode_frames(arch, work, full.total) == work  # nothing changes where 16 fit


def test_animatediff_decode_batches_follow_the_free_memory_and_give_the_same_frames(registry):
    adapter = registry.get("tiny-animatediff")
    assert adapter.decode_chunk(512, 512) == 16  # a CPU server decodes as the stock pipeline does
    c0 = adapter.pipe.vae.config.block_out_channels[0]
    frame = kl_decode_frame_bytes(512, 512, c0, 4, adapter.vae_scale_factor)
    assert [adapter.decode_chunk(512, 512, free_bytes=int(n * frame / 0.9) + 1) for n in (1, 3, 4, 16, 40)] \
        == [1, 2, 4, 16, 16]
    x = torch.randn(adapter.latent_shape(1, 64, 64, 8), generator=torch.Generator().manual_seed(1))
    # smaller conv batches may take other CPU kernels: equal within float32 rounding, not bit for bit
    torch.testing.assert_close(adapter.decode(x, chunk=3), adapter.decode(x, chunk=16), atol=1e-5, rtol=0)


# ---- models a job adds beside its main one ---------------------------------------------------------------
def _phase_weights(arch, work, offload: str) -> dict[str, int]:
    return {p: w for p, (w, _a) in estimate(arch, dataclasses.replace(work, offload=offload)).phases.items()}


def _grown(pipeline, with_model: JobSpec, without: JobSpec, registry, offload: str) -> dict[str, int]:
    """Per phase, the weights on the device the added model brings (same request otherwise)."""
    out = []
    for spec in (with_model, without):
        spec.common.offload = offload
        arch, work, _ = job_estimate(pipeline, spec, registry)
        out.append(_phase_weights(arch, work, offload))
    return {p: out[0][p] - out[1][p] for p in out[0]}


def _module_bytes(*modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


@pytest.fixture(scope="module")
def refiner_registry(tmp_path_factory, tiny_model_cache):
    from cinegen.server.models.registry import ModelRegistry
    from tiny_checkpoints import tiny_refiner, tiny_sdxl

    root = tmp_path_factory.mktemp("estimate-refiner")
    base, refiner = tiny_sdxl(0), tiny_refiner(100)
    base.save_pretrained(str(root / "xl-base"))
    refiner.save_pretrained(str(root / "xl-refiner"))
    return ModelRegistry([root], use_hf_cache=False, cache_dir=tiny_model_cache), refiner, base


def test_the_sdxl_refiner_is_counted_beside_the_base_and_where_model_offload_leaves_it(refiner_registry):
    from cinegen.common.params import ImageParams

    registry, refiner, base = refiner_registry

    def job(refiner_id: str) -> JobSpec:
        return JobSpec("r", "image", CommonParams(prompt="a", model="xl-base", width=64, height=64,
                                                  out="/tmp/x.####.exr"), ImageParams(refiner=refiner_id))

    pipeline = load_pipelines()["image"]
    resident = _grown(pipeline, job("xl-refiner"), job(""), registry, "none")
    everything = _module_bytes(refiner.unet, refiner.vae, refiner.text_encoder_2)
    assert set(resident.values()) == {resident["text"]}  # resident in every phase
    assert resident["text"] == pytest.approx(everything, rel=0.02)
    # model offload: its text encoder in the text phase; its UNet takes turns with the base's (pipelines/refiner.py
    # sends each back to CPU memory before the other runs): the denoise phase grows by what the larger UNet adds
    offloaded = _grown(pipeline, job("xl-refiner"), job(""), registry, "model")
    assert offloaded["text"] == pytest.approx(_module_bytes(refiner.text_encoder_2), rel=0.02)
    larger_by = max(0, _module_bytes(refiner.unet) - _module_bytes(base.unet))  # 0 on the tiny pair
    assert offloaded["denoise"] == pytest.approx(larger_by, rel=0.02, abs=1024)  # both UNets: + all of the refiner's
    assert offloaded["denoise"] < _module_bytes(refiner.unet) / 2
    assert offloaded["decode"] == 0  # the refiner's UNet went back to CPU memory before the base's VAE decodes
    # the refiner's UNet (64-wide context, 5 time ids) denoises too: the denoise activations take the larger UNet
    arch, work, _ = job_estimate(pipeline, job("xl-refiner"), registry)
    assert arch.extra_denoisers and estimate(arch, work).phases["denoise"][1] >= \
        estimate(dataclasses.replace(arch, extra_denoisers=()), work).phases["denoise"][1]


@pytest.fixture(scope="module")
def sparsectrl_registry(tmp_path_factory, tiny_model_cache):
    from cinegen.server.models.registry import ModelRegistry
    from cinegen.server.models.sparsectrl import build_tiny_sparsectrl

    root = tmp_path_factory.mktemp("estimate-sparsectrl")
    build_tiny_sparsectrl(root / "sc-rgb", seed=1)
    return ModelRegistry([root], use_hf_cache=False, cache_dir=tiny_model_cache), root / "sc-rgb"


def test_a_sparsectrl_model_is_counted_with_the_unet_on_story_and_panorama_jobs(sparsectrl_registry, tmp_path):
    from diffusers import SparseControlNetModel

    from cinegen.common.params import PanoramaParams, StoryParams

    registry, folder = sparsectrl_registry
    added = _module_bytes(SparseControlNetModel.from_pretrained(str(folder)))

    def story(motion: str) -> JobSpec:
        return JobSpec("s", "story", CommonParams(prompt="a", model="tiny-sd", frames=8, out="/tmp/x.####.exr"),
                       StoryParams(video_model="tiny-animatediff", keyframe_motion=motion))

    pipelines = load_pipelines()
    resident = _grown(pipelines["story"], story("sparsectrl"), story("pinning"), registry, "none")
    assert set(resident.values()) == {resident["text"]} and resident["text"] == pytest.approx(added, rel=0.02)
    offloaded = _grown(pipelines["story"], story("auto"), story("pinning"), registry, "model")
    assert offloaded["text"] == offloaded["decode"] == 0  # it goes back to CPU memory with the UNet
    assert offloaded["denoise"] == pytest.approx(added, rel=0.02)
    # its residuals are held through the UNet call: more denoise activations than the weights alone
    arch, work, _ = job_estimate(pipelines["story"], story("sparsectrl"), registry)
    assert estimate(arch, work).phases["denoise"][1] > estimate(dataclasses.replace(arch, control=None), work).phases["denoise"][1]

    def panorama(image: str) -> JobSpec:
        return JobSpec("p", "panorama", CommonParams(prompt="a", model="tiny-animatediff", width=128, height=64,
                                                     frames=8, out="/tmp/x.####.exr"), PanoramaParams(input=image))

    grown = _grown(pipelines["panorama"], panorama(str(tmp_path / "in.png")), panorama(""), registry, "none")
    assert grown["denoise"] == pytest.approx(added, rel=0.02)


def test_job_loras_add_the_parameters_peft_puts_on_the_model(registry, tmp_path):
    """A UNet LoRA made with peft: the estimate grows by what loading it adds to the model; a text-encoder
    LoRA (kohya names, with alphas that are no parameters) counts in the text phase under model offload."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from cinegen.server.models.lora import LoraSpec, loras_applied

    adapter = registry.get("tiny-sd")
    unet = __import__("copy").deepcopy(adapter.pipe.unet)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    type(adapter.pipe).save_lora_weights(str(tmp_path), unet_lora_layers=get_peft_model_state_dict(unet),
                                         weight_name="style.safetensors")
    before = _module_bytes(adapter.pipe.unet)
    with loras_applied(adapter, [LoraSpec(str(tmp_path / "style.safetensors"))]):
        peft_added = _module_bytes(adapter.pipe.unet) - before
    assert peft_added > 0

    def job(*loras: str) -> JobSpec:
        return JobSpec("l", "image", CommonParams(prompt="a", model="tiny-sd", lora=list(loras), out="/tmp/x.####.exr"),
                       None)

    pipeline = load_pipelines()["image"]
    resident = _grown(pipeline, job(str(tmp_path / "style.safetensors")), job(), registry, "none")
    assert resident["denoise"] == peft_added
    offloaded = _grown(pipeline, job(str(tmp_path / "style.safetensors")), job(), registry, "model")
    assert offloaded == {"text": 0, "denoise": peft_added, "decode": 0}

    name = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    save_file({f"{name}.lora_down.weight": torch.zeros(2, 32), f"{name}.lora_up.weight": torch.zeros(32, 2),
               f"{name}.alpha": torch.tensor(2.0)}, str(tmp_path / "te.safetensors"))
    text = _grown(pipeline, job(str(tmp_path / "te.safetensors")), job(), registry, "model")
    assert text == {"text": 128 * 4, "denoise": 0, "decode": 0}  # 2x32 + 32x2 float32 elements


def test_tora_weights_count_apart_from_the_transformer_and_stay_on_the_device(tmp_path, registry):
    """A ToraPipeline folder keeps Tora's modules in the transformer's files; they load beside the model,
    outside its offload hooks: role other, every phase. The tiny model's tora/ folder is counted the same way."""
    from safetensors.torch import save_file

    from cinegen.server.models.architecture import architecture_of
    from cinegen.server.models.family import ModelEntry

    transformer = tmp_path / "tora-model" / "transformer"
    transformer.mkdir(parents=True)
    (transformer / "config.json").write_text(json.dumps({"num_attention_heads": 2, "attention_head_dim": 8}))
    save_file({"transformer_blocks.0.attn1.to_q.weight": torch.zeros(16, 16, dtype=torch.bfloat16),
               "traj_extractor.conv.weight": torch.zeros(8, 8, dtype=torch.bfloat16),
               "fuser.0.proj.weight": torch.zeros(4, 4, dtype=torch.bfloat16)},
              str(transformer / "diffusion_pytorch_model.safetensors"))
    arch = architecture_of(ModelEntry("t", "cogvideox", "folder", str(tmp_path / "tora-model")), "cogvideox",
                           torch.float32)
    assert {(c.name, c.role, c.parameter_bytes) for c in arch.components} == {
        ("transformer", "denoiser", 256 * 4), ("tora", "other", (64 + 16) * 4)}
    work = Workload(width=64, height=64, frames=9)
    assert min(_phase_weights(arch, work, "model").values()) == (64 + 16) * 4  # on the device in every phase

    tiny, _ = model_architecture(registry, "tiny-cogvideox")
    tora = [c for c in tiny.components if c.name == "tora"]
    assert len(tora) == 1 and tora[0].role == "other" and tora[0].parameter_bytes > 0
    loaded = registry.get("tiny-cogvideox").tora  # its BatchNorm statistics are on the device too
    on_device = _module_bytes(loaded) + sum(b.numel() * b.element_size() for b in loaded.buffers())
    assert tora[0].parameter_bytes == pytest.approx(on_device, rel=0.01)
