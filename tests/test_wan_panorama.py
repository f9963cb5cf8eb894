"""Wan panoramas (ring, sphere, global motion guidance) at widths whose windows used to come out odd.

Wan's transformer takes 2×2 latent patches: a window of 3 latent columns crashed it (`size of tensor
a (3) must match … b (2)` at 80 and 112 px on tiny-wan, GMG at 96×32). Windows are now planned in
whole patches; every latent is still advanced once per step.
"""
from __future__ import annotations

import pytest
import torch

from cinegen.server.errors import InvalidArgument
from cinegen.server.pipelines.base import Resolved
from cinegen.server.pipelines.panorama import (PanoramaSettings, check_request, decode_panorama_frames,
                                               generate_panorama, global_motion_plan, panorama_plan)


def _resolved(width: int, height: int) -> Resolved:
    return Resolved(prompt="a red disc", negative_prompt="", model="tiny-wan", seed=3, steps=2, guidance=5.0,
                    width=width, height=height, frames=1, fps=24.0, first_frame=1)


@pytest.fixture(scope="module")
def wan(registry):
    return registry.get("tiny-wan")  # 32×32 native, 8 px per latent cell, 2×2 patches


@pytest.mark.parametrize("projection, width, height, scale_down", [
    ("ring", 80, 32, None),     # 10 cells: windows 2 + 4 + 4 (were 3 + 3 + 4)
    ("ring", 96, 32, 2.0),      # GMG pass at 6 cells wide
    ("plane", 112, 48, 2.0),    # GMG pass at 7 cells → rounded to whole patches
    ("sphere", 64, 32, None),
])
def test_wan_panoramas_run_at_widths_that_split_into_odd_windows(wan, projection, width, height, scale_down):
    # without the early explicit overlap (up to 16× the windows): the plan's sizes are what is tested
    s = PanoramaSettings(projection=projection, scale_down=scale_down, early_overlap=False)
    r = _resolved(width, height)
    check_request(wan, r, s)
    plans = [panorama_plan(wan, r, s)] + [p for p in [global_motion_plan(wan, r, s)] if p is not None]
    for plan in plans:
        assert all(n % 2 == 0 for n in plan.latent_size[1:]), plan.latent_size
    counts = {}
    latent = generate_panorama(wan, r, s, record_counts=lambda step, c: counts.setdefault((len(counts), step), c))
    assert latent.shape[-2:] == (height // 8, width // 8)
    assert counts and all(torch.equal(c.net_advances, torch.ones_like(c.net_advances)) for c in counts.values())
    frames = list(decode_panorama_frames(wan, latent, wrap=s.wraps))
    assert len(frames) == r.frames and frames[0].shape == (3, height, width)


def test_widths_that_are_not_whole_patches_are_refused_before_running(wan):
    with pytest.raises(InvalidArgument, match="multiples of 16"):
        check_request(wan, _resolved(72, 32), PanoramaSettings(projection="ring"))
