"""`story`: a story file in, a cut of generated shots out (ALGORITHMS.md §4, Captain Cinema).

Stages, as the method reads:
1. **Keyframes, top-down** (image model: `sd` family, or a Wan text-to-video model drawing one frame,
   `story_wan_keyframes.py`): one keyframe per shot in story order. Each
   attends, through shared self-attention (`diffusion/shared_attention.py`), to the GoldenMem memory
   of all earlier keyframes (`diffusion/goldenmem.py`: the k-th most recent at 1/φ^k of the size),
   so characters and places persist. With no earlier keyframe this is exactly the image pipeline.
2. **Motion, bottom-up** (video model, `story_motion.py`): a clip per shot that starts on its keyframe
   and, with `continuity: true`, ends on the next shot's keyframe: on `animatediff` SparseCtrl RGB
   conditions at those frames when a SparseCtrl model is installed (`--keyframe-motion`), else latent
   pinning of those frames; Wan 2.1 first-last-frame-to-video on Wan image-to-video models, flow-matching
   pinning on Wan text-to-video ones. Shots longer than the motion model's clip are made of clips
   chained by their shared boundary frame.
3. **Outputs**: `OUT/<shot>/<shot>.####.exr`, `OUT/<title>.keyframes.png` (contact sheet) and
   `OUT/<title>.otio` (output/otio_cut.py), the last two rebuilt from every shot on disk.

Keyframe latents are kept in `OUT/.cinegen/keyframes/<shot>.safetensors` (+ a PNG for the contact
sheet), so re-running one shot (`--shots sh020`) rebuilds its memory without regenerating earlier
shots; only the selected shots, and keyframes they need that are missing or stale, are generated.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from cinegen.common.params import StoryParams
from cinegen.common.sequence import SequencePattern
from cinegen.common.story_io import Shot, Story, StoryError, compose_shot_prompt, load_story, select_shots

from ..output.contact_sheet import ContactTile, write_contact_sheet
from ..output.temporary import temporary_beside
from ..diffusion.goldenmem import build_memory_latents
from ..diffusion.sampler import DenoiseLoop, LoopCallbacks, scheduler_step_kwargs
from ..diffusion.shared_attention import MemoryWriteHook, shared_self_attention
from ..errors import FailedPrecondition, InvalidArgument
from ..models.family import FamilyAdapter
from ..models.sparsectrl import pick_sparsectrl, sparsectrl_for
from ..output.otio_cut import (STATE_DIR, MissingShot, ShotRecord, forget_shot_record, load_shot_record,
                           safe_file_stem, save_shot_record, shot_folder, write_story_timeline)
from ..scaleout.units import single_unit, story_units
from .base import JobSpec, Pipeline, Resolved, RunContext, StepProgress, log_duration, seeded_generator
from .upscale_dit_i2v import entry_is_image_to_video
from .story_motion import MOTION_FAMILIES, motion_for_family, same_vae
from .story_wan_keyframes import generate_wan_keyframe, keyframe_display
# the motion building blocks live in story_motion; they stay importable from here
from .story_motion import FramePinning, clip_spans, generate_motion, keyframe_for_video  # noqa: F401

MEMORY_MIN_SIDE = 2  # latent pixels; smaller memory frames carry nothing and are dropped
STAGES = ("all", "keyframes", "motion", "timeline")  # what one run makes (farm and cluster steps)


# ------------------------------------------------------------------------------------------ keyframes
@dataclass
class MemoryKeyframe:
    latent: torch.Tensor  # (1, C, h, w) clean keyframe latent of the image model
    prompt: str  # the prompt it was made with: its write pass sees the same text


def generate_keyframe(adapter: FamilyAdapter, r: Resolved, memory: list[MemoryKeyframe], *,
                      callbacks: LoopCallbacks | None = None) -> torch.Tensor:
    """(1, C, h, w) latent of one keyframe: the stock image loop (as `generate_images` with one frame)
    with every self-attention also attending to the GoldenMem memory of `memory` (oldest → newest).
    Wan text-to-video models draw one-frame keyframes (story_wan_keyframes.py): (1, C, 1, h, w)."""
    if adapter.family == "wan":
        return generate_wan_keyframe(adapter, r, memory, callbacks=callbacks)
    generator = seeded_generator(r.seed)
    cond = adapter.encode_prompt(r.prompt, r.negative_prompt, r.guidance)
    scheduler = adapter.new_scheduler()
    scheduler.set_timesteps(r.steps, device=adapter.device)
    noise = randn_tensor(adapter.latent_shape(1, r.width, r.height), generator=generator, device=adapter.device,
                         dtype=adapter.dtype)
    small = build_memory_latents([m.latent[0] for m in memory], min_short_side=MEMORY_MIN_SIDE)
    kept = memory[len(memory) - len(small):]  # GoldenMem drops the oldest first
    conds = [adapter.encode_prompt(m.prompt, "", 1.0) for m in kept]  # positive only: one pass per frame
    passes = [lambda x, t, c=c: adapter.predict(x, t, c) for c in conds]
    with shared_self_attention(adapter.denoiser, adapter.self_attention_names()) as bank:
        memory_hook = MemoryWriteHook(bank, small, passes, noise_to=scheduler.add_noise,
                                      model_input=scheduler.scale_model_input,
                                      generator=seeded_generator(r.seed + 1))
        loop = DenoiseLoop(scheduler, lambda x, t: adapter.predict(x, t, cond), hooks=(memory_hook,),
                           callbacks=callbacks or LoopCallbacks(),
                           step_kwargs=scheduler_step_kwargs(scheduler, generator))
        return loop.run(noise * scheduler.init_noise_sigma)


@dataclass
class KeyframeInfo:
    shot: str
    prompt: str
    negative_prompt: str
    seed: int
    model: str
    width: int
    height: int


class KeyframeStore:
    """`OUT/.cinegen/keyframes/<shot>.safetensors` (latent + info) and `<shot>.png` (display image)."""

    def __init__(self, out_dir: Path):
        self.root = Path(out_dir) / STATE_DIR / "keyframes"

    def latent_path(self, shot_id: str) -> Path:
        return self.root / f"{shot_id}.safetensors"

    def image_path(self, shot_id: str) -> Path:
        return self.root / f"{shot_id}.png"

    def save(self, info: KeyframeInfo, latent: torch.Tensor, image: np.ndarray) -> None:
        tensors = {"latent": latent.detach().float().cpu().contiguous()}
        self._write(self.image_path(info.shot), lambda p: Image.fromarray(image).save(p, format="PNG"))
        self._write(self.latent_path(info.shot), lambda p: save_file(
            tensors, p, metadata={"cinegen": json.dumps(dataclasses.asdict(info))}))

    def _write(self, path: Path, write: Callable[[str], None]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_beside(path)
        mode = os.fstat(fd).st_mode & 0o777  # the umask's; safetensors' save_file makes its file 0600
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, mode)
            os.replace(tmp, path)  # a keyframe is visible under its name only when complete
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, shot_id: str) -> tuple[torch.Tensor, KeyframeInfo] | None:
        try:
            with safe_open(str(self.latent_path(shot_id)), framework="pt") as f:
                return f.get_tensor("latent"), KeyframeInfo(**json.loads(f.metadata()["cinegen"]))
        except (OSError, KeyError, TypeError, ValueError, RuntimeError):
            return None

    def image(self, shot_id: str) -> np.ndarray | None:
        try:
            return np.asarray(Image.open(self.image_path(shot_id)).convert("RGB"))
        except OSError:
            return None


def keyframes_to_generate(story: Story, selected: list[Shot], usable: set[str]) -> list[Shot]:
    """Story order: the selected shots' keyframes, and those they need (every earlier one, for
    memory; the next one, for continuity) that are not usable from disk."""
    index = {shot.id: k for k, shot in enumerate(story.shots)}
    chosen = {shot.id for shot in selected}
    needed: set[str] = set()
    for shot in selected:
        k = index[shot.id]
        needed |= {s.id for s in story.shots[:k]}
        if shot.continuity:
            needed.add(story.shots[k + 1].id)
    return [shot for shot in story.shots if shot.id in chosen or (shot.id in needed and shot.id not in usable)]


# ------------------------------------------------------------------------------------------ pipeline
class StoryPipeline(Pipeline):
    name: ClassVar[str] = "story"
    description: ClassVar[str] = ("Story file to a cut: consistent keyframes (GoldenMem shared attention), motion "
                                  "between them, one EXR sequence per shot, a contact sheet and an .otio timeline.")
    params_type: ClassVar[type] = StoryParams
    families: ClassVar[tuple[str, ...]] = ("sd", "wan")  # wan: text-to-video run for one frame
    output_is_folder: ClassVar[bool] = True

    # ---- submit time -------------------------------------------------------------------------
    @staticmethod
    def story_and_shots(params: StoryParams) -> tuple[Story, list[Shot]]:
        """The story of the request and the shots to make; problems as INVALID_ARGUMENT with the line."""
        if bool(params.story) == bool(params.story_yaml):
            raise InvalidArgument("Give the story as a file (cinegen generate story STORY.yaml --out DIR) or as "
                                  "text (story_yaml), exactly one of them.")
        try:
            story = load_story(Path(params.story) if params.story else params.story_yaml)
            return story, select_shots(story, params.shots)
        except StoryError as exc:
            raise InvalidArgument(str(exc)) from exc

    def work_units(self, job: JobSpec, registry, *, chunk: int, workers: int):
        # keyframes are sequential (GoldenMem), then each shot needs only the keyframes on disk
        if job.params.stage != "all":  # a farm-style single stage is one unit already
            return single_unit()
        story, _ = self.story_and_shots(job.params)
        return story_units(story, job.params.shots)

    def model_id(self, job: JobSpec, registry) -> str:
        # keyframes from an SD-family model unless --model names a Wan one (as before Wan keyframes)
        return job.common.model or registry.default_model(("sd",))

    def video_model_id(self, job: JobSpec, registry) -> str:
        return job.params.video_model or registry.default_model(MOTION_FAMILIES)

    def lora_models(self, job: JobSpec, registry) -> dict[str, str]:
        # a LoRA goes on the keyframe model when it fits it, else on the motion model (motion LoRAs: AnimateDiff)
        return {"keyframes": self.model_id(job, registry), "motion": self.video_model_id(job, registry)}

    def validate(self, job: JobSpec, registry) -> None:
        if job.params.stage not in STAGES:
            raise InvalidArgument(f"Story stage '{job.params.stage}' is not one of {', '.join(STAGES)}.")
        self.story_and_shots(job.params)
        self.check_family(job, registry)
        keyframes = registry.entry(self.model_id(job, registry))
        if keyframes.family == "wan" and entry_is_image_to_video(registry, keyframes):
            raise InvalidArgument(f"'{keyframes.id}' is an image-to-video model and keyframes are drawn from text: "
                                  "use a Wan text-to-video model or an SD-family model with --model.")
        entry = registry.entry(self.video_model_id(job, registry))
        if entry.family not in MOTION_FAMILIES:
            raise InvalidArgument(f"--video-model '{entry.id}' is a {entry.family} model; the story pipeline makes "
                                  f"motion on {' or '.join(MOTION_FAMILIES)} models.")
        pick_sparsectrl(registry.addons(), job.params.keyframe_motion, job.params.sparsectrl, entry.family)

    def sparsectrl(self, job: JobSpec, registry, video_adapter: FamilyAdapter, log: Callable[[str], None]):
        """The SparseCtrl model AnimateDiff motion is conditioned with, or None (pinning); `auto` falls back
        to pinning, with a log line, when the installed one does not fit the video model."""
        p = job.params
        addon = pick_sparsectrl(registry.addons(), p.keyframe_motion, p.sparsectrl, video_adapter.family)
        if addon is None:
            return None
        try:
            return sparsectrl_for(video_adapter, addon.id, addon.path)
        except FailedPrecondition as exc:
            if (p.keyframe_motion or "auto") != "auto" or p.sparsectrl:
                raise
            log(f"story: {exc} Keyframes are pinned instead.")
            return None

    # ---- run ---------------------------------------------------------------------------------
    def run(self, ctx: RunContext) -> list[str]:
        job = ctx.job
        story, selected = self.story_and_shots(job.params)
        models = ctx.models(self.lora_models(job, ctx.registry))  # each LoRA on the model it fits
        image_adapter, video_adapter = models["keyframes"], models["motion"]
        r_key = replace(self.resolve(job, image_adapter), frames=1, fps=story.fps)
        r_vid = replace(self.resolve(job, video_adapter), fps=story.fps)  # the video model's native size
        # unless --width/--height: keyframes are resized to it (an SDXL 1024² keyframe into a 512² AnimateDiff)
        if job.common.prompt or job.common.frames:
            ctx.log("story: prompts and lengths come from the story file; --prompt and --frames are ignored")
        moves = job.params.stage in ("all", "motion")
        cut = StoryRun(ctx, story, Path(job.common.out).expanduser().absolute(), image_adapter, video_adapter,
                       self.sparsectrl(job, ctx.registry, video_adapter, ctx.log) if moves else None)
        seeds = {shot.id: shot.seed if shot.seed is not None else (r_key.seed + k) % 2**63
                 for k, shot in enumerate(story.shots)}
        stage = job.params.stage
        usable = cut.usable_keyframes(r_key)
        plan = keyframes_to_generate(story, selected, usable) if stage != "timeline" else []
        if stage == "motion":  # keyframes come from disk (a farm's keyframes step); only missing ones are made
            plan = [shot for shot in plan if shot.id not in usable]
        moving = selected if stage in ("all", "motion") else []
        progress = StepProgress(ctx, [2.5] * len(plan) + [float(s.frames) for s in moving] + [0.5])
        try:
            for k, shot in enumerate(plan):
                cut.make_keyframe(shot, replace(r_key, prompt=compose_shot_prompt(story, shot), seed=seeds[shot.id]),
                                  progress.callback(k, f"{shot.id} keyframe"))
            for k, shot in enumerate(moving):
                cut.make_shot(shot, replace(r_vid, prompt=compose_shot_prompt(story, shot), seed=seeds[shot.id],
                                            frames=shot.frames), progress.callback(len(plan) + k, f"{shot.id} motion"))
        except BaseException:
            try:  # keep what is done: the partial cut marks the shots that are missing
                if stage != "motion":
                    cut.write_sheet_and_timeline()
            except Exception as exc:  # never hide the first error behind this one
                ctx.log(f"could not write the partial timeline: {exc}")
            raise
        if stage == "motion":  # shots run side by side: the cut is written once, by a timeline step after them
            ctx.progress("motion", 1, 1, 1.0)
            return list(ctx.outputs)
        outputs = list(ctx.outputs) + cut.write_sheet_and_timeline()
        ctx.progress("timeline", 1, 1, 1.0)
        return outputs


@dataclass
class StoryRun:
    """One run of a story into `out`: keyframes and shots on disk, then the sheet and the cut."""
    ctx: RunContext
    story: Story
    out: Path
    image_adapter: FamilyAdapter
    video_adapter: FamilyAdapter
    sparsectrl: Any = None  # AnimateDiff: the SparseCtrl model the keyframes condition (None: pinned)

    def __post_init__(self) -> None:
        self.store = KeyframeStore(self.out)
        self.shared_vae = same_vae(self.image_adapter, self.video_adapter)

    def usable_keyframes(self, r: Resolved) -> set[str]:
        """Shots whose keyframe on disk was made for the same prompt, size and model (and seed, if fixed)."""
        usable = set()
        for shot in self.story.shots:
            found = self.store.load(shot.id)
            same = found is not None and (found[1].model, found[1].width, found[1].height, found[1].negative_prompt,
                                          found[1].prompt) == (r.model, r.width, r.height, r.negative_prompt,
                                                               compose_shot_prompt(self.story, shot))
            if same and shot.seed in (None, found[1].seed):
                usable.add(shot.id)
        return usable

    def make_keyframe(self, shot: Shot, r: Resolved, on_step: Callable[[int, int], None]) -> None:
        started, adapter, index = time.perf_counter(), self.image_adapter, self.story.shots.index(shot)
        memory = []
        for earlier in self.story.shots[:index]:
            found = self.store.load(earlier.id)
            if found is None:  # cannot happen for planned keyframes; tolerate a file deleted meanwhile
                self.ctx.log(f"{shot.id}: the keyframe of {earlier.id} is missing; it is left out of the memory")
                continue
            memory.append(MemoryKeyframe(found[0].to(adapter.device, adapter.dtype), found[1].prompt))
        latent = generate_keyframe(adapter, r, memory, callbacks=LoopCallbacks(on_step, self.ctx.check_cancel,
                                                                                     self.ctx.latent_preview(adapter)))
        image = keyframe_display(adapter, latent).float().cpu().numpy()
        self.store.save(KeyframeInfo(shot.id, r.prompt, r.negative_prompt, r.seed, r.model, r.width, r.height),
                        latent, (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
        self.ctx.preview(index, image)
        log_duration(self.ctx, f"{shot.id} keyframe ({len(memory)} in memory)", started)

    def make_shot(self, shot: Shot, r: Resolved, on_step: Callable[[int, int], None]) -> None:
        self.ctx.check_cancel()
        started, out = time.perf_counter(), self.out
        forget_shot_record(out, shot.id)  # until its last frame lands, the cut shows this shot as missing
        following = self.story.shots[self.story.shots.index(shot) + 1] if shot.continuity else None
        own = self.store.load(shot.id)
        following_key = self.store.load(following.id) if following is not None else None
        if own is None or (following is not None and following_key is None):
            raise InvalidArgument(f"{shot.id}: a keyframe it needs is missing from {self.store.root}; "
                                  "run all shots again.")
        last = following_key[0] if following_key is not None and shot.frames > 1 else None
        frames = motion_for_family(self.video_adapter, self.sparsectrl)(
            self.image_adapter, self.video_adapter, r, own[0], last, shared_vae=self.shared_vae,
            callbacks=LoopCallbacks(on_step, self.ctx.check_cancel,
                                    self.ctx.latent_preview(self.video_adapter)))[0]  # (3, F, H, W)
        sink = self.ctx.frame_sink(SequencePattern.parse(str(shot_folder(out, shot.id) / f"{shot.id}.####.exr")), r,
                                   sequence=shot.id, prompt=r.prompt, seed=r.seed)
        for i in range(r.frames):
            self.ctx.check_cancel()
            sink.write(i, frames[:, i])
        sink.flush()  # every frame on disk before the shot record says so
        remove_stale_frames(shot_folder(out, shot.id), shot.id, range(r.first_frame, r.first_frame + r.frames))
        save_shot_record(out, ShotRecord(
            shot=shot.id, prompt=r.prompt, seed=r.seed, model=r.model, keyframe_model=own[1].model,
            job=self.ctx.job.job_id, first_frame=r.first_frame, frames=r.frames, fps=r.fps,
            keyframes=[0] + ([r.frames - 1] if last is not None else []),
            next_keyframe=following.id if following is not None else ""))
        log_duration(self.ctx, f"{shot.id} motion ({r.frames} frames)", started)

    def write_sheet_and_timeline(self) -> list[str]:
        """The contact sheet and the timeline, from every shot on disk."""
        story, out = self.story, self.out
        entries = [load_shot_record(out, shot.id)
                   or MissingShot(shot.id, compose_shot_prompt(story, shot), shot.frames, story.fps)
                   for shot in story.shots]
        timeline = write_story_timeline(out, story.title, story.fps, entries)
        tiles = [ContactTile(shot.id, shot.prompt, self.store.image(shot.id)) for shot in story.shots]
        sheet = write_contact_sheet(out / f"{safe_file_stem(story.title)}.keyframes.png", tiles)
        missing = [e.shot for e in entries if isinstance(e, MissingShot)]
        if missing:
            self.ctx.log(f"{timeline.name}: {', '.join(missing)} missing from the cut")
        other_rate = [f"{e.shot} ({e.fps:g})" for e in entries if isinstance(e, ShotRecord) and e.fps != story.fps]
        if other_rate:  # the cut times them at the story's rate; their frames' headers keep the old one
            self.ctx.log(f"{timeline.name}: {', '.join(other_rate)} made at another fps than the story's "
                         f"{story.fps:g}; re-run them (--shots) to match")
        return [str(sheet), str(timeline)]


def remove_stale_frames(folder: Path, shot_id: str, keep: range) -> None:
    """Frames of an earlier, longer take of this shot would otherwise linger after the new ones."""
    pattern = re.compile(rf"^{re.escape(shot_id)}\.(\d{{4,}})\.exr$")
    for path in folder.iterdir():
        m = pattern.match(path.name)
        if m and int(m.group(1)) not in keep:
            path.unlink(missing_ok=True)
