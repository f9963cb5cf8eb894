"""Story motion on AnimateDiff conditioned on the keyframes through SparseCtrl (issue 18 §5).

A tiny SparseCtrl RGB model is built in code, saved as a diffusers folder and found/reloaded the
way a real one is (an add-on of kind sparsectrl beside the models)."""
from __future__ import annotations

import torch

from cinegen.server.models.checkpoint_kinds import classify_names
from cinegen.server.models.registry import ModelRegistry
from cinegen.server.models.sparsectrl import build_tiny_sparsectrl, sparsectrl_for
from cinegen.server.pipelines.base import Resolved
from cinegen.server.pipelines.story_motion import generate_motion

FRAMES, STEPS = 8, 3


def _resolved(**kw) -> Resolved:
    base = dict(prompt="a red disc", negative_prompt="", model="tiny-animatediff", seed=5, steps=STEPS,
                guidance=7.5, width=64, height=64, frames=FRAMES, fps=24.0, first_frame=1001)
    base.update(kw)
    return Resolved(**base)


def _sparsectrl(registry, adapter, tmp_path, zero_outputs: bool):
    """Built, saved, discovered by a registry over its folder, and loaded through the adapter's cache."""
    folder = tmp_path / ("sc-zero" if zero_outputs else "sc-rgb")
    build_tiny_sparsectrl(folder, seed=1, zero_outputs=zero_outputs)
    found = ModelRegistry([tmp_path], use_hf_cache=False, cache_dir=registry.cache_dir).addons()
    addon = next(a for a in found if a.id == folder.name)
    assert (addon.kind, addon.base) == ("sparsectrl", "sd1")
    return sparsectrl_for(adapter, addon.id, addon.path)


def _keyframes(adapter, seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, 8, 8, generator=g).to(adapter.dtype),
            torch.randn(1, 4, 8, 8, generator=g).to(adapter.dtype))


def test_zeroed_sparsectrl_is_plain_animatediff_bit_for_bit(registry, tmp_path):
    """SparseCtrl with zeroed output convs adds exact zeros: the clip is the stock AnimateDiffPipeline's."""
    from diffusers import AnimateDiffPipeline

    adapter = registry.get("tiny-animatediff")
    controlnet = _sparsectrl(registry, adapter, tmp_path, zero_outputs=True)
    first, last = _keyframes(adapter)
    r = _resolved()
    ours = generate_motion(adapter, r, first, last, sparsectrl=controlnet)
    stock = AnimateDiffPipeline(**{k: v for k, v in adapter.pipe.components.items()})
    stock.set_progress_bar_config(disable=True)
    reference = stock(prompt=r.prompt, num_frames=FRAMES, height=64, width=64, num_inference_steps=STEPS,
                      guidance_scale=r.guidance, generator=torch.Generator().manual_seed(r.seed),
                      output_type="latent").frames
    assert torch.equal(ours, reference)
    # and pinning would have put the keyframes in: SparseCtrl does not pin
    assert not torch.equal(ours[:, :, 0], first)


def test_condition_reaches_exactly_the_keyframe_indices(registry, tmp_path):
    """Every SparseCtrl call sees the keyframe latents at frames 0 and F−1, zeros elsewhere, and a mask that
    is 1 on exactly those frames; with trained (non-zero) outputs the clip then differs from the plain one
    only through that condition (the same condition twice gives the same clip)."""
    adapter = registry.get("tiny-animatediff")
    controlnet = _sparsectrl(registry, adapter, tmp_path, zero_outputs=False)
    first, last = _keyframes(adapter)
    seen = []
    handle = controlnet.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw["controlnet_cond"].clone(), kw["conditioning_mask"].clone())),
        with_kwargs=True)
    try:
        out = generate_motion(adapter, _resolved(), first, last, sparsectrl=controlnet)
    finally:
        handle.remove()
    assert len(seen) == STEPS
    for condition, mask in seen:
        assert condition.shape == (1, 4, FRAMES, 8, 8) and mask.shape == (1, 1, FRAMES, 8, 8)
        conditioned = [f for f in range(FRAMES) if bool((mask[:, :, f] == 1).all())]
        assert conditioned == [0, FRAMES - 1]
        assert bool((mask[:, :, 1:FRAMES - 1] == 0).all())
        assert torch.equal(condition[:, :, 0], first) and torch.equal(condition[:, :, -1], last)
        assert bool((condition[:, :, 1:FRAMES - 1] == 0).all())
    plain = generate_motion(adapter, _resolved(), first, last,
                            sparsectrl=_sparsectrl(registry, adapter, tmp_path / "z", zero_outputs=True))
    assert not torch.equal(out, plain)  # the condition acts (the zeroed model is the plain clip, test above)


def test_long_shot_windows_the_sparsectrl_motion_modules_too(registry, tmp_path):
    """A shot longer than the motion module's 16 frames: FreeNoise windows in the UNet and the SparseCtrl
    encoder alike (each temporal attention sees at most 16 frames), and the plain blocks come back after."""
    adapter = registry.get("tiny-animatediff")
    controlnet = _sparsectrl(registry, adapter, tmp_path, zero_outputs=False)
    first, last = _keyframes(adapter)
    lengths = []

    def record(module, args):  # the encoder's temporal attentions, as they are during the run (FreeNoise swaps them)
        temporal = {id(m) for n, m in controlnet.named_modules() if n.endswith("attn1") and "motion_modules" in n}
        if id(module) in temporal:
            lengths.append(args[0].shape[1])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        out = generate_motion(adapter, _resolved(frames=20, steps=1), first, last, sparsectrl=controlnet)
    finally:
        handle.remove()
    assert out.shape[2] == 20
    # 20 frames = windows [0, 16) and [4, 20), in each temporal layer of each CFG pass
    assert lengths and set(lengths) == {16}
    assert not any(type(b).__name__ == "FreeNoiseTransformerBlock" for b in controlnet.modules())


def test_sparsectrl_file_is_not_taken_for_a_motion_module():
    table = {"controlnet_cond_embedding.weight": {}, "down_blocks.0.motion_modules.0.proj_in.weight": {}}
    assert classify_names(table).kind == "sparsectrl"


def test_keyframe_motion_picks_sparsectrl_when_installed_and_pins_otherwise(registry, tmp_path):
    import pytest
    from types import SimpleNamespace

    from cinegen.common.params import StoryParams
    from cinegen.server.errors import FailedPrecondition, InvalidArgument
    from cinegen.server.models.sparsectrl import pick_sparsectrl
    from cinegen.server.pipelines.story import StoryPipeline

    assert pick_sparsectrl([], "auto", "", "animatediff") is None  # nothing installed: pinning
    with pytest.raises(FailedPrecondition, match="pinning"):
        pick_sparsectrl([], "sparsectrl", "", "animatediff")
    with pytest.raises(InvalidArgument, match="AnimateDiff"):
        pick_sparsectrl([], "sparsectrl", "", "wan")
    build_tiny_sparsectrl(tmp_path / "rgb", seed=1)
    beside = ModelRegistry([tmp_path], use_hf_cache=False, cache_dir=registry.cache_dir)
    assert pick_sparsectrl(beside.addons(), "pinning", "", "animatediff") is None
    with pytest.raises(InvalidArgument, match="no SparseCtrl model 'other'"):
        pick_sparsectrl(beside.addons(), "auto", "other", "animatediff")
    adapter = registry.get("tiny-animatediff")
    job = SimpleNamespace(params=StoryParams())  # the defaults: auto
    model = StoryPipeline().sparsectrl(job, beside, adapter, print)
    assert type(model).__name__ == "SparseControlNetModel"
    assert StoryPipeline().sparsectrl(job, registry, adapter, print) is None  # the plain registry: none there


def test_sparsectrl_asked_for_and_not_installed_is_refused_at_submit(client, tmp_path):
    import pytest

    from cinegen.common.client import RequestRejected, build_request
    from cinegen.common.params import CommonParams, StoryParams

    story = ("title: T\nfps: 24\nshots:\n  - id: sh010\n    prompt: a red disc\n    frames: 4\n")
    request = build_request("story", CommonParams(seed=1, steps=1, out=str(tmp_path / "cut")),
                            StoryParams(story_yaml=story, keyframe_motion="sparsectrl"), job_id="sc-missing")
    with pytest.raises(RequestRejected) as info:
        client.submit(request)
    assert info.value.code == "FAILED_PRECONDITION" and "--keyframe-motion pinning" in info.value.message


def test_a_story_job_conditions_its_shots_with_the_installed_sparsectrl(registry, tmp_path):
    """End to end: a server whose models folder holds a SparseCtrl folder makes the story's AnimateDiff motion
    through it (--keyframe-motion auto), once per denoising step of each shot."""
    from cinegen.common.client import GeneratorClient, build_request
    from cinegen.common.params import CommonParams, StoryParams
    from cinegen.server.server import start_server
    from cinegen.server.service import GeneratorService, ServerConfig

    models = tmp_path / "models"
    build_tiny_sparsectrl(models / "sparsectrl-rgb", seed=1)
    beside = ModelRegistry([models], use_hf_cache=False, cache_dir=registry.cache_dir)
    adapter = beside.get("tiny-animatediff")
    calls = []
    sparsectrl_for(adapter, "sparsectrl-rgb", str(models / "sparsectrl-rgb")).register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw["conditioning_mask"][0, 0, :, 0, 0].tolist()), with_kwargs=True)
    config = ServerConfig(port=0, use_hf_cache=False, max_width=256, max_height=256)
    running = start_server(config, GeneratorService(config, registry=beside))
    story = ("title: T\nfps: 24\nshots:\n  - id: sh010\n    prompt: a red disc\n    frames: 4\n    continuity: true\n"
             "  - id: sh020\n    prompt: a blue square\n    frames: 3\n")
    try:
        with GeneratorClient(running.address, timeout=60) as client:
            done = client.run(build_request("story", CommonParams(seed=1, steps=2, out=str(tmp_path / "cut")),
                                            StoryParams(story_yaml=story), job_id="sc-story"))
    finally:
        running.stop()
    assert done.state == "completed", done.message
    # sh010 ends on sh020's keyframe (frames 0 and 3 conditioned), sh020 starts on its own (frame 0)
    assert calls == [[1.0, 0.0, 0.0, 1.0]] * 2 + [[1.0, 0.0, 0.0]] * 2
