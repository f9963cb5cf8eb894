"""FreeTraj on AnimateDiff beyond the motion module's length: one clip in FreeNoise windows, each window's
temporal masks from its own slice of the track (issue 18 §4)."""
from __future__ import annotations

import pytest
import torch

from cinegen.common.trajectory_io import parse_trajectory
from cinegen.server.diffusion import freetraj
from cinegen.server.diffusion.freetraj import FreeTrajAttnProcessor, FreeTrajGuide
from cinegen.server.pipelines.base import Resolved
from cinegen.server.pipelines.long_video import free_noise_spans
from cinegen.server.pipelines.trajectory import check_geometry, generate_freetraj

FRAMES, NATIVE, STRIDE = 25, 16, 4  # 25 frames: windows every 4 and one more ending at the last frame


@pytest.mark.parametrize("frames", [20, 25, 33])
def test_free_noise_spans_are_the_windows_diffusers_runs(frames):
    """The spans the FreeTraj masks are cut by are the frames each FreeNoise window really holds, in the order
    diffusers' FreeNoiseTransformerBlock runs them (each frame tagged by its index, read at norm1)."""
    from diffusers.models.attention import FreeNoiseTransformerBlock

    block = FreeNoiseTransformerBlock(dim=8, num_attention_heads=1, attention_head_dim=8, context_length=NATIVE,
                                      context_stride=STRIDE, double_self_attention=True)
    seen = []
    block.norm1.register_forward_pre_hook(lambda m, a: seen.append(tuple(int(v) for v in a[0][0, :, 0])))
    tags = torch.arange(frames, dtype=torch.float32)[None, :, None].expand(1, frames, 8).contiguous()
    with torch.no_grad():
        block(tags)
    assert [(w[0], w[-1] + 1) for w in seen] == free_noise_spans(frames, NATIVE, STRIDE)
    assert all(list(w) == list(range(w[0], w[-1] + 1)) for w in seen)


def _diagonal(width: int, height: int, frames: int):
    return parse_trajectory({"width": width, "height": height, "tracks": [{
        "name": "disc", "size": 20, "points": [{"frame": 1001, "x": 10, "y": 10},
                                               {"frame": 1000 + frames, "x": width - 10, "y": height - 10}]}]})


def test_each_window_masks_with_its_own_slice_of_the_track_and_shares_its_overlap(registry, monkeypatch):
    adapter = registry.get("tiny-animatediff")
    r = Resolved("a red disc", "", "tiny-animatediff", 3, 1, 1.0, 64, 64, FRAMES, 24.0, 1001)  # no CFG: one row
    current, calls = [], {}  # temporal processor → [(span, mask)] in call order
    attend, label_scaled, span_of = FreeTrajAttnProcessor.attend, freetraj.label_scaled_attention, \
        FreeTrajGuide.temporal_span

    def spy_attend(self, *args, **kwargs):
        current.append(self)
        try:
            return attend(self, *args, **kwargs)
        finally:
            current.pop()

    def spy_span(self, call, frames):
        span = span_of(self, call, frames)
        calls.setdefault(current[-1], []).append([span])
        return span

    def spy_label_scaled(query, key, value, same, *args):
        if current[-1].kind == "temporal":
            calls[current[-1]][-1].append(same(0, query.shape[2])[:, 0])  # (rows, window, window)
        return label_scaled(query, key, value, same, *args)

    monkeypatch.setattr(FreeTrajAttnProcessor, "attend", spy_attend)
    monkeypatch.setattr(freetraj, "label_scaled_attention", spy_label_scaled)
    monkeypatch.setattr(FreeTrajGuide, "temporal_span", spy_span)
    latents = generate_freetraj(adapter, r, _diagonal(64, 64, FRAMES))
    assert latents.shape == (1, 4, FRAMES, 8, 8)

    windows = free_noise_spans(FRAMES, NATIVE, STRIDE)
    assert len(windows) == 4 and windows[-1] == (FRAMES - NATIVE, FRAMES)
    assert len(calls) == len(adapter.temporal_attention_names())  # every temporal layer was masked
    wrong_slice_differs = 0
    for processor, seen in calls.items():
        guide = processor.guide
        assert [span for span, _ in seen] == windows  # one step, one forward: each window once, in order
        for (start, stop), mask in seen:
            locations = mask.shape[0] // guide.batch
            labels = guide.plan.labels(*guide.grid(locations))  # (F, N) of the whole clip
            own = labels[start:stop].T  # (N, window): this window's own slice of the track
            assert torch.equal(mask[:locations], own[:, :, None] == own[:, None, :])
            first = labels[:stop - start].T
            wrong_slice_differs += not torch.equal(mask[:locations], first[:, :, None] == first[:, None, :])
        for ((a0, a1), mask_a), ((b0, b1), mask_b) in zip(seen, seen[1:]):
            assert b0 < a1  # neighbours overlap, and see their shared frames alike
            assert torch.equal(mask_a[:, b0 - a0:, b0 - a0:], mask_b[:, :a1 - b0, :a1 - b0])
    assert wrong_slice_differs > 0  # the track moves: masks cut from the first frames would be wrong


def test_a_long_freetraj_clip_is_not_refused():
    class Adapter:
        family, max_frames, native_frames = "animatediff", 32, 16

    check_geometry(Adapter(), Resolved("a", "", "m", 0, 1, 7.5, 64, 64, 48, 24.0, 1001))
