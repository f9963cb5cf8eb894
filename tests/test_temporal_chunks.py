"""Long clips through a denoiser in overlapping temporal windows, blended every step: no seam in time."""
from __future__ import annotations

import torch

from cinegen.server.diffusion.temporal_chunks import (default_overlap, predict_in_temporal_windows,
                                                      temporal_windows)
from cinegen.server.pipelines.upscale_dit import temporal_windows_predict


def _blur_in_time(x: torch.Tensor, passes: int = 6) -> torch.Tensor:
    """Box blur along frames (dim 2), edges replicated: smooth within what it sees, blind beyond."""
    n = x.shape[2]
    for _ in range(passes):
        padded = torch.cat([x[:, :, :1], x, x[:, :, -1:]], dim=2)
        x = (padded[:, :, :n] + padded[:, :, 1:n + 1] + padded[:, :, 2:]) / 3
    return x


def _smooth_flow_model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A flow-matching velocity whose clean prediction is the window blurred in time."""
    return (x - _blur_in_time(x)) / sigma


def _denoise(window: int, overlap: int, frames: int = 24, steps: int = 8) -> torch.Tensor:
    x = torch.randn(1, 2, frames, 4, 4, generator=torch.Generator().manual_seed(5))
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    for sigma, after in zip(sigmas[:-1], sigmas[1:]):
        v = predict_in_temporal_windows(_smooth_flow_model, x, sigma, window, overlap)
        x = x + (after - sigma) * v  # Euler, as FlowMatchEulerDiscreteScheduler
    return x


def _jumps(x: torch.Tensor) -> torch.Tensor:
    """Mean |frame f+1 − frame f| for every f."""
    return (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(0, 1, 3, 4))


def test_windows_cover_the_clip_with_the_last_one_flush_with_the_end():
    assert temporal_windows(21, 8, 2) == [0, 6, 12, 13]
    assert temporal_windows(5, 8, 2) == [0]
    assert default_overlap(21) == 5 and default_overlap(2) == 1 and default_overlap(1) == 0


def test_a_clip_no_longer_than_the_window_is_one_unchanged_model_call():
    x = torch.randn(1, 2, 6, 3, 3)
    calls = []
    out = predict_in_temporal_windows(lambda z, t: calls.append(z.shape) or z * 3, x, torch.tensor(1.0), 6, 2)
    assert calls == [x.shape] and torch.equal(out, x * 3)


def test_blending_is_exact_for_a_model_that_works_frame_by_frame():
    x = torch.randn(1, 2, 13, 3, 3)
    seen = []

    def per_frame(z, t):
        seen.append(z.shape[2])
        return torch.sin(z) * t

    out = predict_in_temporal_windows(per_frame, x, torch.tensor(0.5), 4, 1)
    assert max(seen) == 4 and len(seen) == 4
    # the ramps sum to one everywhere: only float rounding differs from the whole-clip call
    torch.testing.assert_close(out, torch.sin(x) * 0.5, atol=1e-6, rtol=1e-6)


def test_no_seam_in_time_where_independent_chunks_leave_one():
    """With the windows blended every step, the jump between frames at a window border is like any
    other; denoised as independent chunks (no overlap) the borders stand out."""
    window = 8
    cut = _jumps(_denoise(window, overlap=0))
    borders = [window - 1, 2 * window - 1]  # jump index f: between frames f and f + 1
    interior = [f for f in range(cut.shape[0]) if f not in borders]
    assert float(cut[borders].min()) > 3 * float(cut[interior].mean()), "the stand-in shows chunk seams"
    blended = _jumps(_denoise(window, overlap=default_overlap(window)))
    assert float(blended.max()) < 2 * float(blended.mean()), blended


def test_the_wan_refinement_sees_at_most_its_native_latent_frames(registry):
    adapter = registry.get("tiny-wan")  # 5 native frames = 2 latent frames
    cond = adapter.encode_prompt("a red disc", "", 5.0)
    seen = []
    handle = adapter.denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].shape[2]), with_kwargs=True)
    try:
        predict = temporal_windows_predict(adapter, cond)
        x = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
        t = torch.tensor(500.0)
        assert torch.equal(predict(x, t), adapter.predict(x, t, cond)), "a native-length clip is untouched"
        seen.clear()
        long = torch.randn(1, 4, 5, 4, 4, generator=torch.Generator().manual_seed(2))  # 17 frames
        assert predict(long, t).shape == long.shape
    finally:
        handle.remove()
    assert seen and max(seen) == 2, seen


def test_overlapping_clips_fade_into_each_other_and_every_frame_comes_out_once():
    """Clip k is the constant k: inside an overlap the frames step evenly from one clip to the next,
    never jump by a whole clip (the hard cut of independent clips)."""
    from cinegen.server.diffusion.temporal_chunks import ClipBlend

    blend = ClipBlend(length=21, window=8, overlap=2)
    out = {}
    for index, start in enumerate(blend.starts):
        size = min(8, 21 - start)
        for frame, image in blend.add(index, torch.full((size, 1), float(index))):
            assert frame not in out, "each frame is handed out once"
            out[frame] = float(image)
    values = [out[f] for f in range(21)]
    assert sorted(out) == list(range(21))
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(0 <= s < 1 for s in steps), values  # monotone, and no step as big as a clip change
    assert values[0] == 0 and values[-1] == len(blend.starts) - 1


def test_clip_blending_leaves_frames_that_agree_unchanged():
    from cinegen.server.diffusion.temporal_chunks import ClipBlend

    video = torch.randn(10, 3, 2, 2)
    blend = ClipBlend(length=10, window=4, overlap=1)
    out = {}
    for index, start in enumerate(blend.starts):
        out.update(blend.add(index, video[start:start + 4]))
    torch.testing.assert_close(torch.stack([out[f] for f in range(10)]), video)  # float rounding of the weights


def test_a_unet_video_plate_is_refined_in_overlapping_clips_and_chunks_agree_with_the_full_run(
        registry, tmp_path, monkeypatch):
    from cinegen.common.params import UpscaleParams
    from test_upscale_pipeline import run_upscale, write_plate

    pattern, _ = write_plate(tmp_path, frames=range(1, 11), size=(32, 32))
    adapter = registry.get("tiny-animatediff")
    monkeypatch.setattr(adapter.pipe, "_cinegen_native_frames", 4, raising=False)  # clips of 4: overlap 1
    clip_frames = []
    original = adapter.predict
    monkeypatch.setattr(adapter, "predict", lambda x, t, c: clip_frames.append(x.shape[2]) or original(x, t, c))
    params = UpscaleParams(mode="plate", input=pattern, scale=2.0, stages=1)
    full = run_upscale(registry, model="tiny-animatediff", steps=2, first_frame=101, params=params)
    assert set(clip_frames) == {4}, "the UNet sees clips of its native length only"
    assert sorted(full.sink.frames) == list(range(101, 111)), "every frame written once"
    chunk = run_upscale(registry, model="tiny-animatediff", steps=2, first_frame=101, params=params,
                        frame_range="104-105")  # frames 3 and 4: frame 3 is faded between clips 0 and 1
    assert sorted(chunk.sink.frames) == [104, 105]
    for frame in (104, 105):
        assert torch.equal(chunk.sink.frames[frame], full.sink.frames[frame])
