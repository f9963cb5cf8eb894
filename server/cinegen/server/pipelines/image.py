"""`image`: text to image on the SD family; `frames` images written as one sequence.

Exactly the stock `StableDiffusionPipeline` computation (same noise, same loop, same guidance), so
the cascade's first stage and this pipeline both equal diffusers for the same seed.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from diffusers.utils.torch_utils import randn_tensor

from cinegen.common.params import ImageParams
from cinegen.common.sequence import SequencePattern

from ..diffusion.sampler import DenoiseLoop, LoopCallbacks, scheduler_step_kwargs
from ..models.family import FamilyAdapter
from .base import JobSpec, Pipeline, Resolved, RunContext, StepProgress, seeded_generator


def generate_images(adapter: FamilyAdapter, r: Resolved, *, callbacks: LoopCallbacks | None = None,
                    hooks: tuple = (), batch_size: int | None = None) -> torch.Tensor:
    """Latents for `r.frames` images at (r.width, r.height), denoised like the stock pipeline."""
    generator = seeded_generator(r.seed)
    cond = adapter.encode_prompt(r.prompt, r.negative_prompt, r.guidance)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(r.steps, device=adapter.device)
    shape = adapter.latent_shape(r.frames, r.width, r.height)
    # one draw for all frames, as diffusers does for num_images_per_prompt, then denoise in batches
    noise = randn_tensor(shape, generator=generator, device=adapter.device, dtype=adapter.dtype)
    latents = noise * scheduler.init_noise_sigma
    batch_size = batch_size or r.frames
    out = []
    for start in range(0, r.frames, batch_size):
        sched = scheduler if start == 0 else adapter.new_scheduler()
        if start:
            sched.set_timesteps(r.steps, device=adapter.device)
        loop = DenoiseLoop(sched, lambda x, t: adapter.predict(x, t, cond), hooks=hooks,
                           callbacks=callbacks or LoopCallbacks(),
                           step_kwargs=scheduler_step_kwargs(sched, generator))
        out.append(loop.run(latents[start:start + batch_size]))
    return torch.cat(out)


class ImagePipeline(Pipeline):
    name: ClassVar[str] = "image"
    description: ClassVar[str] = "Text to image on an SD-family model; several frames make a sequence of variations."
    params_type: ClassVar[type] = ImageParams
    families: ClassVar[tuple[str, ...]] = ("sd",)

    def validate(self, job: JobSpec, registry) -> None:
        self.check_family(job, registry)

    def run(self, ctx: RunContext) -> list[str]:
        adapter = ctx.registry.get(self.model_id(ctx.job, ctx.registry))
        r = self.resolve(ctx.job, adapter)
        sink = ctx.frame_sink(SequencePattern.parse(ctx.job.common.out), r)
        progress = StepProgress(ctx, [0.9, 0.1])
        cancel = ctx.check_cancel
        latents = generate_images(adapter, r, callbacks=LoopCallbacks(progress.callback(0, "denoise"), cancel),
                                  batch_size=4)
        for i in range(r.frames):
            ctx.check_cancel()
            image = adapter.decode(latents[i:i + 1])[0]
            ctx.preview(i, image.permute(1, 2, 0).float().cpu().numpy())
            sink.write(i, image)
            ctx.progress("write frames", i + 1, r.frames, 0.9 + 0.1 * (i + 1) / r.frames)
        return list(sink.written)
