"""`image`: text to image on the SD family; `frames` images written as one sequence.

Exactly the stock `StableDiffusionPipeline` computation (same noise, same loop, same guidance), so
the cascade's first stage and this pipeline both equal diffusers for the same seed.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from diffusers.utils.torch_utils import randn_tensor

from cinegen.common.params import ImageParams
from cinegen.common.sequence import FrameRange, SequencePattern

from ..diffusion.sampler import DenoiseLoop, LoopCallbacks, scheduler_step_kwargs
from ..models.family import FamilyAdapter
from ..scaleout.units import frame_chunks
from .base import JobSpec, Pipeline, Resolved, RunContext, StepProgress, seeded_generator
from .frame_range import requested_range, wanted_indices
from .refiner import DEFAULT_SPLIT, RefinerStage, check_refiner_request

BATCH = 4  # images denoised together; a chunk of whole batches computes nothing twice


def generate_images(adapter: FamilyAdapter, r: Resolved, *, callbacks: LoopCallbacks | None = None,
                    hooks: tuple = (), batch_size: int | None = None, only: range | None = None,
                    refiner: RefinerStage | None = None, refiner_callbacks: LoopCallbacks | None = None) -> torch.Tensor:
    """Latents for `r.frames` images at (r.width, r.height), denoised like the stock pipeline.

    With `refiner` (SDXL), the base runs the schedule down to the split and the refiner the rest, per batch.

    With `only` (frame indices), just the batches holding those frames are denoised and the latents of
    `only` are returned: the same numbers as in a full run, since every batch sees the same noise slice
    and shape (with a deterministic sampler such as DDIM; an ancestral one draws per batch in turn)."""
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
    wanted = only if only is not None else range(r.frames)
    first_batch = wanted.start // batch_size * batch_size
    for start in range(first_batch, wanted.stop, batch_size):
        sched = scheduler if start == 0 else adapter.new_scheduler()
        if start:
            sched.set_timesteps(r.steps, device=adapter.device)
        loop = DenoiseLoop(sched, lambda x, t: adapter.predict(x, t, cond), hooks=hooks,
                           callbacks=callbacks or LoopCallbacks(),
                           step_kwargs=scheduler_step_kwargs(sched, generator))
        base_timesteps = None if refiner is None else sched.timesteps[:refiner.base_steps(sched)]
        x = loop.run(latents[start:start + batch_size], timesteps=base_timesteps)
        out.append(x if refiner is None else refiner.run(x, generator, refiner_callbacks).to(x.dtype))
    return torch.cat(out)[wanted.start - first_batch:wanted.stop - first_batch]


class ImagePipeline(Pipeline):
    name: ClassVar[str] = "image"
    description: ClassVar[str] = "Text to image on an SD-family model; several frames make a sequence of variations."
    params_type: ClassVar[type] = ImageParams
    families: ClassVar[tuple[str, ...]] = ("sd",)
    frame_ranges: ClassVar[bool] = True

    def validate(self, job: JobSpec, registry) -> None:
        self.check_family(job, registry)
        requested_range(job)  # a malformed --frame-range fails at submit
        c = job.common  # and one outside the sequence too, not once the job runs
        wanted_indices(job, c.first_frame if c.first_frame is not None else 1001, c.frames or 1)
        check_refiner_request(registry, self.model_id(job, registry), getattr(job.params, "refiner", ""),
                              getattr(job.params, "refiner_split", None))

    def work_units(self, job: JobSpec, registry, *, chunk: int, workers: int):
        # every image sees its own slice of one noise draw: chunks of frames give the full run's numbers
        c = job.common
        return frame_chunks(FrameRange.from_count(c.first_frame if c.first_frame is not None else 1001, c.frames or 1),
                            chunk)

    def run(self, ctx: RunContext) -> list[str]:
        adapter = ctx.model(self.model_id(ctx.job, ctx.registry))  # with the job's LoRAs, off after run
        r = self.resolve(ctx.job, adapter)
        sink = ctx.frame_sink(SequencePattern.parse(ctx.job.common.out), r)
        cancel = ctx.check_cancel
        wanted = wanted_indices(ctx.job, r.first_frame, r.frames)
        refiner, split = None, 1.0
        if getattr(ctx.job.params, "refiner", ""):
            split = ctx.job.params.refiner_split if ctx.job.params.refiner_split is not None else DEFAULT_SPLIT
            refiner = RefinerStage.prepare(ctx.registry.get(ctx.job.params.refiner), r.prompt, r.negative_prompt,
                                           r.guidance, split, r.steps, base=adapter)
        progress = StepProgress(ctx, [0.9 * split, 0.9 * (1 - split), 0.1])
        latents = generate_images(adapter, r, callbacks=LoopCallbacks(progress.callback(0, "denoise"), cancel,
                                                                         ctx.latent_preview(adapter)),
                                  batch_size=BATCH, only=wanted, refiner=refiner,
                                  refiner_callbacks=LoopCallbacks(progress.callback(1, "refine"), cancel,
                                                                  ctx.latent_preview(adapter)))
        for n, i in enumerate(wanted):
            ctx.check_cancel()
            image = adapter.decode(latents[n:n + 1])[0]
            ctx.preview(i, image.permute(1, 2, 0).float().cpu().numpy())
            sink.write(i, image)
            progress.callback(2, "write frames")(n + 1, len(wanted))
        return list(sink.written)
