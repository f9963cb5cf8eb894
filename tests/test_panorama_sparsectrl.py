"""Image-conditioned panoramas on AnimateDiff through SparseCtrl RGB at frame 0 (issue 18 §1): each window
is conditioned on the crop of the input under it, nothing is pasted."""
from __future__ import annotations

import torch

from cinegen.server.diffusion.panorama_denoise import WindowRegion
from cinegen.server.models.sparsectrl import build_tiny_sparsectrl, load_sparsectrl
from cinegen.server.pipelines.base import Resolved
from cinegen.server.pipelines.panorama import PanoramaSettings, generate_panorama
from cinegen.server.pipelines.panorama_sparsectrl import RegionSparseControl

WIDTH, HEIGHT, FRAMES = 128, 64, 2  # a 16×8-cell ring of 8×8-cell windows


def _resolved(steps: int = 2) -> Resolved:
    return Resolved("a red disc", "", "tiny-animatediff", 2, steps, 7.5, WIDTH, HEIGHT, FRAMES, 24.0, 1001)


def _input() -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    return torch.rand(3, HEIGHT, WIDTH, generator=g)  # the panorama's size: no resize between it and its latent


def _controlnet(adapter, folder, zero_outputs=False):
    build_tiny_sparsectrl(folder, seed=2, zero_outputs=zero_outputs)
    return load_sparsectrl(folder, adapter.device, adapter.dtype)


def test_each_window_gets_the_crop_of_the_input_under_it(registry, tmp_path, monkeypatch):
    adapter = registry.get("tiny-animatediff")
    controlnet = _controlnet(adapter, tmp_path / "sc")
    image = _input()
    latent = adapter.encode(image[None, :, None].to(adapter.device, adapter.dtype))[:, :, 0]  # (1, C, 8, 16)
    calls, seen = [], []
    predict = RegionSparseControl.__call__
    monkeypatch.setattr(RegionSparseControl, "__call__",
                        lambda self, x, t, regions: calls.append(list(regions)) or predict(self, x, t, regions))
    handle = controlnet.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw["controlnet_cond"].clone(), kw["conditioning_mask"].clone())),
        with_kwargs=True)
    try:
        # one step: the early overlap's 0.75, eight windows round the ring
        generate_panorama(adapter, _resolved(steps=1), PanoramaSettings(projection="ring", scale_down=None),
                          input_image=image, sparsectrl=controlnet)
    finally:
        handle.remove()
    assert len(calls) == len(seen) > 0
    wrapped = 0
    for regions, (condition, mask) in zip(calls, seen):
        assert condition.shape[0] in (len(regions), 2 * len(regions))  # CFG: [windows; windows]
        for b, region in enumerate(regions):
            assert isinstance(region, WindowRegion)
            w = region.window
            rows = slice(w.height.start, w.height.start + w.height.size)
            expected = torch.roll(latent, -w.width.start, dims=-1)[..., rows, :w.width.size]
            assert torch.equal(condition[b, :, 0], expected[0])  # frame 0: the input's crop under the window
            assert bool((condition[b, :, 1:] == 0).all())
            assert bool((mask[b, :, 0] == 1).all()) and bool((mask[b, :, 1:] == 0).all())
            wrapped += w.width.wraps
        if condition.shape[0] == 2 * len(regions):
            assert torch.equal(condition[:len(regions)], condition[len(regions):])
    assert wrapped > 0  # windows across the 360° seam read the crop wrapped, too


def test_zeroed_sparsectrl_panorama_is_the_unconditioned_one_bit_for_bit(registry, tmp_path):
    """The input acts only through SparseCtrl: nothing is pasted, so with zeroed output convs the panorama
    is the one without an input (GMG and early overlap on, the defaults)."""
    adapter = registry.get("tiny-animatediff")
    zeroed = _controlnet(adapter, tmp_path / "zero", zero_outputs=True)
    s = PanoramaSettings(projection="ring")
    plain = generate_panorama(adapter, _resolved(), s)
    conditioned = generate_panorama(adapter, _resolved(), s, input_image=_input(), sparsectrl=zeroed)
    assert torch.equal(conditioned, plain)
    live = generate_panorama(adapter, _resolved(), s, input_image=_input(),
                             sparsectrl=_controlnet(adapter, tmp_path / "live"))
    assert not torch.equal(live, plain)


def test_keep_first_frame_pins_the_inputs_latent_on_animatediff_too(registry, tmp_path):
    import pytest

    from cinegen.server.errors import InvalidArgument
    from cinegen.server.pipelines.panorama import check_request

    adapter = registry.get("tiny-animatediff")
    controlnet = _controlnet(adapter, tmp_path / "sc")
    image = _input()
    latent = adapter.encode(image[None, :, None].to(adapter.device, adapter.dtype))[:, :, 0]
    settings = PanoramaSettings(projection="ring", scale_down=None, keep_first_frame=True)
    kept = generate_panorama(adapter, _resolved(), settings, input_image=image, sparsectrl=controlnet)
    assert torch.equal(kept[:, :, 0], latent)  # clean after the last step: the input's own latent
    free = generate_panorama(adapter, _resolved(), PanoramaSettings(projection="ring", scale_down=None),
                             input_image=image, sparsectrl=controlnet)
    assert float((free[:, :, 0] - latent).abs().max()) > 1e-2, "without the pin the model redraws frame 0"
    with pytest.raises(InvalidArgument, match="give it with --input"):
        check_request(adapter, _resolved(), PanoramaSettings(projection="ring", keep_first_frame=True))
