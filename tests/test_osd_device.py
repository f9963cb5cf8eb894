"""OSD without host syncs: the advanced-before masks come from geometry decided on the host."""
from __future__ import annotations

import random

import pytest
import torch

from cinegen.server.diffusion import osd
from cinegen.server.diffusion.windows import AxisSpan, Window, read_window, write_window


def _reference_masks(windows, latent_size):
    """The masks as the device-reading loop built them (one `.any()` per window)."""
    advanced = torch.zeros(latent_size, dtype=torch.bool)
    masks = []
    for window in windows:
        part = read_window(advanced, window)
        masks.append(part if bool(part.any()) else None)
        write_window(advanced, window, torch.ones(window.shape, dtype=torch.bool))
    return masks


def _layout(seed: int, latent_size=(2, 9, 13)):
    rng = random.Random(seed)
    windows = [Window(*(AxisSpan(rng.randrange(e), rng.randint(1, e), e) for e in latent_size))
               for _ in range(rng.randint(2, 7))]
    whole = Window(*(AxisSpan(0, e, e) for e in latent_size))  # coverage, at a random place in the order
    windows.insert(rng.randrange(len(windows) + 1), whole)
    return windows, latent_size


@pytest.mark.parametrize("seed", range(12))
def test_masks_equal_the_device_reading_construction(seed):
    windows, size = _layout(seed)
    ours, reference = osd._advanced_before(windows, size, torch.device("cpu")), _reference_masks(windows, size)
    assert [m is None for m in ours] == [m is None for m in reference]
    assert all(torch.equal(a, b) for a, b in zip(ours, reference) if a is not None)


def test_masks_are_built_without_reading_device_values():
    windows, size = _layout(3)
    # meta tensors have no values: any host read (`bool(t.any())`) would raise
    masks = osd._advanced_before(windows, size, torch.device("meta"))
    assert any(m is not None and m.device.type == "meta" for m in masks)


def test_uncovered_positions_are_still_refused():
    windows = [Window(AxisSpan(0, 1, 1), AxisSpan(0, 4, 8), AxisSpan(0, 8, 8))]
    with pytest.raises(ValueError, match="32 latent positions uncovered"):
        osd._advanced_before(windows, (1, 8, 8), torch.device("cpu"))
