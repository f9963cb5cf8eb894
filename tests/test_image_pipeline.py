"""The image pipeline is the stock diffusers computation, and its loop is reusable."""
from __future__ import annotations

import torch

from cinegen.server.pipelines.base import Resolved
from cinegen.server.pipelines.image import generate_images


def _resolved(**kw) -> Resolved:
    base = dict(prompt="a red disc", negative_prompt="blue", model="tiny-sd", seed=7, steps=4, guidance=7.5,
                width=64, height=64, frames=2, fps=24.0, first_frame=1001)
    base.update(kw)
    return Resolved(**base)


def test_image_pipeline_equals_stock_stable_diffusion_bit_for_bit(registry):
    adapter = registry.get("tiny-sd")
    r = _resolved()
    ours = adapter.decode(generate_images(adapter, r))
    stock = adapter.pipe(r.prompt, negative_prompt=r.negative_prompt, num_inference_steps=r.steps,
                         guidance_scale=r.guidance, generator=torch.Generator().manual_seed(r.seed),
                         height=r.height, width=r.width, num_images_per_prompt=r.frames, output_type="pt").images
    assert torch.equal(ours, stock)


def test_batched_frames_equal_one_batch(registry):
    adapter = registry.get("tiny-sd")
    r = _resolved(frames=3, guidance=1.0)
    whole = generate_images(adapter, r)
    batched = generate_images(adapter, r, batch_size=1)
    torch.testing.assert_close(batched, whole, atol=1e-5, rtol=1e-5)


def test_different_seeds_give_different_frames(registry):
    adapter = registry.get("tiny-sd")
    a = generate_images(adapter, _resolved(frames=1, seed=1))
    b = generate_images(adapter, _resolved(frames=1, seed=2))
    assert not torch.allclose(a, b)


def test_hooks_see_every_step_once(registry):
    adapter = registry.get("tiny-sd")
    seen = []

    class Spy:
        def before_step(self, index, t, x):
            seen.append(index)
            return x

    generate_images(adapter, _resolved(frames=1, steps=5), hooks=(Spy(),))
    assert seen == [0, 1, 2, 3, 4]
