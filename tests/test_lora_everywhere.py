"""`--lora PATH[:WEIGHT]` on every pipeline and family: what peft computes is the merged model
(W + w·BA per layer; two LoRAs add), weight 0 is no LoRA bit for bit, the resident model is bit-equal
after every pipeline's job, a story gives each LoRA to the model it fits, and a LoRA that fits no
model of the job is refused at Submit with a sentence naming the file and the model."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tiny_checkpoints import tiny_sdxl

from cinegen.common.client import RequestRejected, build_request
from cinegen.common.exr import read_exr_frame
from cinegen.common.params import (CommonParams, ImageParams, PanoramaParams, StoryParams, TrajectoryParams,
                                   UpscaleParams, describe)
from cinegen.server.models.lora import LoraSpec, job_loras, loras_applied
from cinegen.server.models.registry import ModelRegistry
from cinegen.server.pipelines.base import JobSpec, RunContext
from cinegen.server.pipelines.image import ImagePipeline
from cinegen.server.pipelines.panorama import PanoramaPipeline
from cinegen.server.pipelines.story import StoryPipeline
from cinegen.server.pipelines.trajectory import TrajectoryPipeline
from cinegen.server.pipelines.upscale import UpscalePipeline

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture(scope="module")
def xl_registry(tmp_path_factory, tiny_model_cache):
    root = tmp_path_factory.mktemp("lora-sdxl")
    tiny_sdxl(0).save_pretrained(str(root / "tiny-xl"), safe_serialization=True)
    return ModelRegistry([root], use_hf_cache=False, cache_dir=tiny_model_cache)


def _adapter(name: str, registry, xl_registry):
    return xl_registry.get("tiny-xl") if name == "sdxl" else registry.get(
        {"sd": "tiny-sd", "cogvideox": "tiny-cogvideox", "motion": "tiny-animatediff"}[name])


def _targets(adapter, name: str) -> list[str]:
    if name == "motion":  # a motion LoRA: only the motion modules' attention
        return [n for n, _ in adapter.denoiser.named_modules() if "motion_modules" in n and n.endswith(("to_q", "to_v"))]
    return ATTENTION


def save_lora(adapter, folder: Path, name: str, targets: list[str], seed: int) -> Path:
    """A LoRA made with peft on a copy of the model's denoiser, saved as diffusers saves one."""
    denoiser = copy.deepcopy(adapter.denoiser)
    torch.manual_seed(seed)
    denoiser.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=targets, init_lora_weights=False))
    layers = get_peft_model_state_dict(denoiser)
    key = "transformer_lora_layers" if adapter.family in ("wan", "cogvideox") else "unet_lora_layers"
    type(adapter.pipe).save_lora_weights(str(folder), weight_name=f"{name}.safetensors", **{key: layers})
    return folder / f"{name}.safetensors"


def merged_deltas(adapter, path: Path, weight: float) -> dict[str, torch.Tensor]:
    """weight · B @ A for every layer of the file (r = alpha: peft's scale is the weight itself)."""
    tensors = load_file(str(path))
    out = {}
    for key, a in tensors.items():
        if ".lora_A." in key:
            layer = key.split(".lora_A.")[0].split(".", 1)[1]  # drop the unet./transformer. prefix
            out[layer] = weight * tensors[key.replace(".lora_A.", ".lora_B.")] @ a
    return out


@contextlib.contextmanager
def merged_into(adapter, *deltas: dict[str, torch.Tensor]):
    """The deltas added to the denoiser's weights by hand; the exact original tensors put back after."""
    modules = dict(adapter.denoiser.named_modules())
    layers = {name for d in deltas for name in d}
    saved = {name: modules[name].weight.detach().clone() for name in layers}
    with torch.no_grad():
        for d in deltas:
            for name, delta in d.items():
                modules[name].weight.add_(delta.to(modules[name].weight))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                modules[name].weight.copy_(weight)


def _inputs(adapter):
    w, h = adapter.native_size
    shape = adapter.latent_shape(1, w, h, min(adapter.native_frames, 4) if adapter.kind == "video" else 1)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    return x, torch.tensor(500), adapter.encode_prompt("a red disc", "blue", 7.5)


def _predict(adapter, inputs) -> torch.Tensor:
    return adapter.predict(*inputs)


def model_state(adapter) -> dict[str, torch.Tensor]:
    return {f"{c}.{k}": v.detach().clone() for c, m in adapter.pipe.components.items()
            if isinstance(m, torch.nn.Module) for k, v in m.state_dict().items()}


def assert_as_before(adapter, before: dict[str, torch.Tensor]) -> None:
    after = model_state(adapter)
    assert after.keys() == before.keys(), "no LoRA layers left in the model's state"
    assert all(torch.equal(after[k], before[k]) for k in before), "weights bit-equal after the job"
    parts = [c for c in adapter.pipe.components.values() if isinstance(c, torch.nn.Module)]
    assert not any(isinstance(m, BaseTunerLayer) for c in parts for m in c.modules())
    assert not any(hasattr(c, "peft_config") for c in parts), "no adapter bookkeeping left either"


FAMILIES = ["sd", "sdxl", "cogvideox", "motion"]


# ---- what peft computes ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_weight_zero_is_no_lora_bit_for_bit(family, registry, xl_registry, tmp_path):
    adapter = _adapter(family, registry, xl_registry)
    path = save_lora(adapter, tmp_path, "style", _targets(adapter, family), seed=4)
    inputs = _inputs(adapter)
    before = _predict(adapter, inputs)
    with loras_applied(adapter, [LoraSpec(str(path), 0.0)]):
        zero = _predict(adapter, inputs)
    with loras_applied(adapter, [LoraSpec(str(path), 1.0)]):
        one = _predict(adapter, inputs)
    assert torch.equal(zero, before)
    assert (one - before).abs().max() > 1e-4, "the same LoRA at weight 1 does change the prediction"


# fp32 reassociation only: W·x + w·B(A·x) vs (W + w·BA)·x; measured at most 7.8e-6 (SD 6.8e-6, SDXL 6.3e-6,
# CogVideoX 2.6e-6, motion LoRA 7.8e-6) where the deltas themselves are 0.08-0.4
TOLERANCE = dict(atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_weight_scales_the_delta_exactly_as_merging_weight_times_BA_into_the_layers(family, registry,
                                                                                     xl_registry, tmp_path):
    adapter = _adapter(family, registry, xl_registry)
    path = save_lora(adapter, tmp_path, "style", _targets(adapter, family), seed=5)
    inputs, weight = _inputs(adapter), 0.6
    before = _predict(adapter, inputs)
    with loras_applied(adapter, [LoraSpec(str(path), weight)]):
        with_lora = _predict(adapter, inputs)
    with merged_into(adapter, merged_deltas(adapter, path, weight)):
        merged = _predict(adapter, inputs)
    assert (merged - before).abs().max() > 1e-3, "the delta is large enough to tell"
    torch.testing.assert_close(with_lora, merged, **TOLERANCE)
    assert torch.equal(_predict(adapter, inputs), before)


@pytest.mark.parametrize("family", ["sd", "cogvideox"])
def test_two_loras_together_are_the_sum_of_their_merged_deltas(family, registry, xl_registry, tmp_path):
    adapter = _adapter(family, registry, xl_registry)
    a = save_lora(adapter, tmp_path, "a", ["to_q", "to_k", "to_v"], seed=6)
    b = save_lora(adapter, tmp_path, "b", ["to_k", "to_out.0"], seed=7)  # overlapping in to_k
    inputs = _inputs(adapter)
    with loras_applied(adapter, [LoraSpec(str(a), 0.7), LoraSpec(str(b), -0.4)]):
        both = _predict(adapter, inputs)
    with merged_into(adapter, merged_deltas(adapter, a, 0.7), merged_deltas(adapter, b, -0.4)):
        merged = _predict(adapter, inputs)
    with merged_into(adapter, merged_deltas(adapter, a, 0.7)):
        only_a = _predict(adapter, inputs)
    assert (merged - only_a).abs().max() > 1e-3, "the second LoRA counts"
    torch.testing.assert_close(both, merged, **TOLERANCE)


# ---- every pipeline --------------------------------------------------------------------------------
STORY = """\
title: Lora
fps: 24
characters:
  Mira: a keeper with a red scarf
shots:
  - id: sh010
    prompt: Mira climbs
    frames: 2
    characters: [Mira]
  - id: sh020
    prompt: the sea
    frames: 2
"""


def _run(pipeline, job: JobSpec, registry) -> tuple[list[str], list[str]]:
    logs: list[str] = []
    ctx = RunContext(job=job, registry=registry, report_progress=lambda *a: None,
                     report_preview=lambda *a: None, report_frame=lambda *a: None, report_log=logs.append,
                     is_cancelled=lambda: False)
    return pipeline.run(ctx), logs


def _common(tmp_path: Path, model: str, loras: list[str], **kw) -> CommonParams:
    base = dict(prompt="a red disc", model=model, seed=1, steps=2, width=64, height=64, frames=1, lora=loras,
                out=str(tmp_path / "out" / "f.####.exr"))
    base.update(kw)
    return CommonParams(**base)


@pytest.fixture(scope="module")
def loras(registry, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    sd, video = registry.get("tiny-sd"), registry.get("tiny-animatediff")
    return {"style": save_lora(sd, folder, "style", ATTENTION, seed=8),
            "zoom": save_lora(video, folder, "zoom", _targets(video, "motion"), seed=9)}


TRACK = ('{"origin": "top-left", "width": 64, "height": 64, "tracks": [{"name": "disc", "size": 20, "points": '
         '[{"frame": 1001, "x": 12, "y": 20}, {"frame": 1004, "x": 52, "y": 44}]}]}')


def _jobs(tmp_path: Path, loras: dict[str, Path]) -> dict[str, tuple]:
    style, zoom = f"{loras['style']}:0.8", str(loras["zoom"])
    return {
        "image": (ImagePipeline(), _common(tmp_path, "tiny-sd", [style]), ImageParams(), ["tiny-sd"]),
        "upscale": (UpscalePipeline(), _common(tmp_path, "tiny-sd", [], width=128, height=128),
                    UpscaleParams(lora=style), ["tiny-sd"]),  # the deprecated alias still works
        "panorama": (PanoramaPipeline(), _common(tmp_path, "tiny-sd", [style], width=128), PanoramaParams(),
                     ["tiny-sd"]),
        "trajectory": (TrajectoryPipeline(), _common(tmp_path, "tiny-animatediff", [zoom], frames=4),
                       TrajectoryParams(trajectory_json=TRACK), ["tiny-animatediff"]),
        "story": (StoryPipeline(), _common(tmp_path, "tiny-sd", [style, zoom], out=str(tmp_path / "cut"), frames=None),
                  StoryParams(story_yaml=STORY, video_model="tiny-animatediff"), ["tiny-sd", "tiny-animatediff"]),
    }


@pytest.mark.parametrize("name", ["image", "upscale", "panorama", "trajectory", "story"])
def test_every_pipeline_runs_with_its_loras_and_leaves_the_models_bit_equal(name, registry, loras, tmp_path):
    pipeline, common, params, model_ids = _jobs(tmp_path, loras)[name]
    adapters = [registry.get(m) for m in model_ids]
    before = [model_state(a) for a in adapters]
    outputs, logs = _run(pipeline, JobSpec(f"lora-{name}", name, common, params), registry)
    assert outputs
    said = [line for line in logs if line.startswith("LoRA on")]
    if name == "story":  # each LoRA on the model it fits: the style on the keyframes, the motion LoRA on AnimateDiff
        assert said == ["LoRA on keyframes model tiny-sd: style.safetensors x0.8",
                        "LoRA on motion model tiny-animatediff: zoom.safetensors x1"]
    else:
        assert len(said) == 1 and model_ids[0] in said[0], logs
    for adapter, state in zip(adapters, before):
        assert_as_before(adapter, state)


def test_an_image_job_at_weight_zero_writes_the_frames_of_a_job_without_it(registry, loras, tmp_path):
    def frame(loras_: list[str], sub: str):
        out = tmp_path / sub / "f.####.exr"
        _run(ImagePipeline(), JobSpec(sub, "image", _common(tmp_path, "tiny-sd", loras_, out=str(out)), ImageParams()),
             registry)
        return read_exr_frame(str(out).replace("####", "1001"))[0]

    plain, zero, one = frame([], "plain"), frame([f"{loras['style']}:0"], "zero"), frame([str(loras["style"])], "one")
    assert (plain == zero).all()
    assert abs(plain - one).max() > 1e-3


def test_the_lora_option_is_one_repeatable_common_field_and_upscales_alias_is_folded_in(loras):
    common = [d for d in describe(CommonParams, "common") if d.name == "lora"]
    assert len(common) == 1 and common[0].type == "lora"
    assert "lora" not in {d.name for d in describe(UpscaleParams, "upscale")}, "the alias is not offered"
    from cinegen.server.cli import build_parser

    args = build_parser().parse_args(["generate", "image", "--lora", "a.safetensors:0.5", "--lora", "b.safetensors"])
    assert args.lora == ["a.safetensors:0.5", "b.safetensors"]
    specs = job_loras(CommonParams(lora=["a.safetensors:0.5"]), UpscaleParams(lora="b.safetensors,c.safetensors:-1"))
    assert specs == [LoraSpec("a.safetensors", 0.5), LoraSpec("b.safetensors"), LoraSpec("c.safetensors", -1.0)]


# ---- refused at Submit -------------------------------------------------------------------------------
def _sdxl_kohya(folder: Path) -> Path:
    """The header of an SDXL LoRA (kohya names, 2048-wide context)."""
    path = folder / "xl_style.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 2048), f"{name}.lora_up.weight": torch.zeros(32, 4),
               f"{name}.alpha": torch.tensor(4.0)}, str(path))
    return path


def _cogvideox_lora(registry, folder: Path) -> Path:
    return save_lora(registry.get("tiny-cogvideox"), folder, "cog_style", ["to_q", "to_k"], seed=3)


def _vae_file(folder: Path) -> Path:
    path = folder / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3), "decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)},
              str(path))
    return path


@pytest.mark.parametrize("case, pipeline, make, expected", [
    ("sdxl-on-sd1", "image", lambda r, f, l: _sdxl_kohya(f), ["xl_style.safetensors", "tiny-sd", "2048", "SDXL"]),
    ("dit-on-unet", "image", lambda r, f, l: _cogvideox_lora(r, f), ["cog_style.safetensors", "tiny-sd",
                                                                       "none of its"]),
    ("motion-on-image", "image", lambda r, f, l: l["zoom"], ["zoom.safetensors", "tiny-sd", "motion LoRA"]),
    ("not-a-lora", "image", lambda r, f, l: _vae_file(f), ["vae.safetensors", "not a LoRA"]),
    ("story-fits-neither", "story", lambda r, f, l: _sdxl_kohya(f), ["xl_style.safetensors", "tiny-sd",
                                                                       "tiny-animatediff"]),
])
def test_a_lora_that_fits_no_model_of_the_job_is_refused_at_submit(case, pipeline, make, expected, client, registry,
                                                                   loras, tmp_path):
    path = make(registry, tmp_path, loras)
    common = _common(tmp_path, "tiny-sd", [str(path)], frames=None)
    params = ImageParams()
    if pipeline == "story":
        common.out, params = str(tmp_path / "cut"), StoryParams(story_yaml=STORY, video_model="tiny-animatediff")
    with pytest.raises(RequestRejected) as err:
        client.submit(build_request(pipeline, common, params))
    assert err.value.code == "INVALID_ARGUMENT"
    for fragment in expected:
        assert fragment in err.value.message, err.value.message


def test_the_panels_lora_picker_offers_the_servers_loras_and_motion_loras_and_fills_the_request():
    from cinegen.common.proto import generator_pb2 as pb
    from cinegen.plugin.model.forms import FieldSpec, lora_addons, request_from_values
    from cinegen.plugin.qt import QtWidgets
    from cinegen.plugin.ui.fields import LoraEditor, make_editor

    QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    caps = pb.Capabilities()
    caps.addons.add(id="style", kind="lora", family="sd1", path="/m/style.safetensors")
    caps.addons.add(id="zoom", kind="motion-lora", family="sd1", path="/m/zoom.safetensors")
    caps.addons.add(id="vae", kind="vae", path="/m/vae.safetensors")
    addons = lora_addons(caps)
    assert [path for _, path in addons] == ["/m/style.safetensors", "/m/zoom.safetensors"], "no VAE in a LoRA picker"
    spec = FieldSpec(name="lora", type="lora", default=[], label="LoRAs")
    editor = make_editor(spec, addons=addons)
    assert isinstance(editor, LoraEditor) and editor.picker.count() == 3
    editor._pick(1)
    editor.weight.setValue(0.5)
    editor._pick(2)
    assert editor.value() == ["/m/style.safetensors", "/m/zoom.safetensors:0.5"]
    assert list(request_from_values("story", [spec], {"lora": editor.value()}).common.lora) == editor.value()


def test_a_kohya_lora_is_converted_with_its_alpha_and_merges_as_weight_times_alpha_over_rank(registry, tmp_path):
    """kohya names (lora_unet_..., lora_down/lora_up, alpha): diffusers converts them; peft's scale is
    weight · alpha / rank, so the merged delta is w · (alpha / r) · up @ down."""
    adapter = registry.get("tiny-sd")
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    gen = torch.Generator().manual_seed(11)
    down, up = torch.randn(4, 32, generator=gen) * 0.3, torch.randn(32, 4, generator=gen) * 0.3
    name = "lora_unet_" + layer.replace(".", "_")
    path = tmp_path / "kohya_style.safetensors"
    save_file({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(2.0)},
              str(path))
    inputs, weight = _inputs(adapter), 0.8
    before = _predict(adapter, inputs)
    with loras_applied(adapter, [LoraSpec(str(path), weight)]):
        with_lora = _predict(adapter, inputs)
    with merged_into(adapter, {layer: weight * (2.0 / 4) * up @ down}):
        merged = _predict(adapter, inputs)
    assert (merged - before).abs().max() > 1e-3
    torch.testing.assert_close(with_lora, merged, **TOLERANCE)


@pytest.mark.parametrize("text, fragment", [("a\x00b.safetensors", "control character"),
                                            ("{style}:nan", "give a number"),
                                            ("{folder}/missing.safetensors", "not a .safetensors file")])
def test_a_malformed_lora_option_is_refused_with_a_sentence(text, fragment, client, loras, tmp_path):
    text = text.format(style=loras["style"], folder=tmp_path)
    with pytest.raises(RequestRejected) as err:
        client.submit(build_request("image", _common(tmp_path, "tiny-sd", [text]), ImageParams()))
    assert err.value.code == "INVALID_ARGUMENT" and fragment in err.value.message, err.value.message


def test_a_farm_job_passes_each_lora_on_with_its_path_made_absolute_and_its_weight_kept(tmp_path, monkeypatch):
    from cinegen.server.cli import build_parser
    from cinegen.server.scaleout.export import base_args

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["export-job", "image", "--lora", "loras/a.safetensors:0.5", "--lora",
                                      "b.safetensors", "--frames-out", str(tmp_path / "f.####.exr"),
                                      "--out", str(tmp_path / "job.yaml")])
    out = base_args(args)
    loras = [out[i + 1] for i, word in enumerate(out) if word == "--lora"]
    assert loras == [f"{tmp_path}/loras/a.safetensors:0.5", f"{tmp_path}/b.safetensors"]
