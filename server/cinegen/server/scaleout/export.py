"""`cinegen export-job PIPELINE [generate options] --frames-out DIR/NAME.####.exr --out JOB.yaml`.

Writes the job as an Open Job Description template for a studio farm (Deadline Cloud and other
OpenJD schedulers): the same options as `generate`, split into work units (units.py), one step each.
`--out` names the template; where the frames go is `--frames-out` (the `--out` of `generate`).
The seed is fixed now (chosen when not given) so every step makes its part of the same result.
"""
from __future__ import annotations

import argparse
import dataclasses
import secrets
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from cinegen.common.params import PIPELINE_PARAMS, UNIT_SELECTORS, CommonParams, ParamDescription, describe
from cinegen.common.sequence import FrameRange, SequencePattern, SequencePatternError
from cinegen.common.story_io import StoryError, load_story

from . import openjd
from .units import DEFAULT_CHUNK, WorkUnit, frame_chunks, single_unit, story_units

DEFAULT_NODES = 4  # video plates: steps their clips are split among (each boundary refines one clip twice)

# set per unit (units.py), never copied from the command line into every step (nor recorded in headers)
UNIT_OPTIONS = UNIT_SELECTORS


def add_export_parser(sub: Any, add_param_options: Callable[[argparse.ArgumentParser, list], None]) -> None:
    export = sub.add_parser("export-job", help="Write a job as an Open Job Description template for a farm.")
    esub = export.add_subparsers(dest="pipeline", required=True)
    for name, cls in PIPELINE_PARAMS.items():
        p = esub.add_parser(name, help=(cls.__doc__ or name).strip().splitlines()[0])
        if name == "story":
            p.add_argument("story_file", help="Story YAML file.")
        p.add_argument("--out", dest="template", required=True, metavar="JOB.yaml", help="The job template to write.")
        p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                       help=f"Frames per step for image sequences and plates (default {DEFAULT_CHUNK}; 0 = one step).")
        p.add_argument("--nodes", type=int, default=DEFAULT_NODES,
                       help="Video plates: the most steps their clips are split among, cut at clip starts (default "
                       f"{DEFAULT_NODES}; every cut refines one clip twice).")
        p.add_argument("--name", default="", help="Job name on the farm (default: cinegen PIPELINE ...).")
        p.add_argument("--job-id", default="", help="The job id every step's frames record (default: farm-PIPELINE-…).")
        p.add_argument("--models", action="append", default=[], metavar="DIR",
                       help="Folder of diffusers models on the farm nodes (repeatable).")
        p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="Device on the farm nodes.")
        p.add_argument("--no-hf-cache", action="store_true", help="The nodes ignore their Hugging Face cache.")
        add_param_options(p, [_frames_out(d) for d in describe(CommonParams, "common") + describe(cls, name)
                              if d.name not in UNIT_OPTIONS or d.name == "shots"])


def _frames_out(d: ParamDescription) -> ParamDescription:
    """`--out` is the template here; the frames' destination is `--frames-out`."""
    if d.name != "out":
        return d
    return ParamDescription(name="frames_out", type=d.type, default=d.default, group=d.group,
                            help="Where the farm writes the frames: DIR/NAME.####.exr (DIR for story).")


def cmd_export_job(args: argparse.Namespace) -> int:
    name = args.pipeline
    if not args.frames_out:
        raise SystemExit("Say where the farm writes the frames: --frames-out DIR/NAME.####.exr (DIR for story).")
    if args.seed is None:
        args.seed = secrets.randbelow(2**31)  # one seed for every step, recorded in the template
    if not args.job_id:  # one job id for every step: its frames' headers name the one job they belong to
        args.job_id = f"farm-{name}-{secrets.token_hex(4)}"
    units = plan(args)
    template = openjd.job_template(args.name or f"cinegen {name} {Path(args.frames_out).name}",
                                   base_args(args), units)
    try:
        openjd.validate(template)
    except ImportError:
        raise SystemExit("export-job checks the template with the Open Job Description model: "
                         "pip install 'cinegen[farm]'.") from None
    except openjd.TemplateError as exc:
        raise SystemExit(str(exc)) from None
    out = Path(args.template)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(template, sort_keys=False, width=120))
    print(f"{out}: {len(units)} step(s) ({', '.join(u.name for u in units[:6])}{', ...' if len(units) > 6 else ''}),"
          f" seed {args.seed}", file=sys.stderr)
    return 0


def plan(args: argparse.Namespace) -> list[WorkUnit]:
    if args.pipeline == "story":
        try:
            return story_units(load_story(Path(args.story_file)), args.shots or ())
        except StoryError as exc:
            raise SystemExit(str(exc)) from None
    if args.pipeline == "image":
        return frame_chunks(FrameRange.from_count(_first(args, 1001), args.frames or 1), args.chunk)
    if args.pipeline == "upscale" and args.input:  # plate and refine modes: frames of the plate
        return _plate_units(args)
    return single_unit()


def _plate_units(args: argparse.Namespace) -> list[WorkUnit]:
    """A plate splits as the server splits it for Ray (UpscalePipeline.work_units): frame chunks on image
    models, whole clips cut at clip starts on video models (the clip length from the model folder's sidecar,
    no weights loaded), one step for DiT plates. A model this workstation does not know: one step (exact)."""
    frames = _plate_frames(args)  # the plate's own sentence when it is missing
    if args.chunk <= 0:
        return frame_chunks(frames, 0)
    from ..errors import FailedPrecondition, NotFound, UserError
    from ..models.registry import ModelRegistry
    from ..pipelines.base import JobSpec
    from ..pipelines.upscale import UpscalePipeline

    registry = ModelRegistry([Path(p).expanduser() for p in args.models], device="cpu",
                             use_hf_cache=not args.no_hf_cache)
    job = JobSpec("export", "upscale", _dataclass_from(CommonParams, args), _dataclass_from(PIPELINE_PARAMS["upscale"], args))
    try:
        return UpscalePipeline().work_units(job, registry, chunk=args.chunk, workers=max(1, args.nodes))
    except (NotFound, FailedPrecondition):  # the model is on the nodes only: its clip length is unknown here
        print(f"The model {args.model or '(the default)'} is not on this workstation, so the plate is one step "
              "(pass --models DIR where it is to split it).", file=sys.stderr)
        return frame_chunks(frames, 0)
    except UserError as exc:
        raise SystemExit(str(exc)) from None


def _dataclass_from(cls: Any, args: argparse.Namespace) -> Any:
    values = vars(args)
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if values.get(f.name) is not None})


def _first(args: argparse.Namespace, default: int) -> int:
    return args.first_frame if args.first_frame is not None else default


def _plate_frames(args: argparse.Namespace) -> FrameRange:
    """The output frame numbers of a plate upscale: the plate's own, unless --first-frame moves them."""
    try:
        on_disk = SequencePattern.parse(args.input, any_extension=True, what="plate").glob_existing()
    except SequencePatternError as exc:
        raise SystemExit(str(exc)) from None
    if not on_disk:
        raise SystemExit(f"No frames of the plate {args.input} were found; the chunks are planned from it.")
    first = min(on_disk)
    count = args.frames or (max(on_disk) - first + 1)
    return FrameRange.from_count(_first(args, first), count)


def _has_weight(spec: str) -> bool:
    head, sep, tail = spec.rpartition(":")
    try:
        float(tail)
    except ValueError:
        return False
    return bool(sep and head)


def base_args(args: argparse.Namespace) -> list[str]:
    """`generate PIPELINE ...` with every option the artist gave (paths made absolute)."""
    name = args.pipeline
    out: list[str] = ["generate", name]
    if name == "story":
        out.append(str(Path(args.story_file).expanduser().absolute()))
    values = vars(args)
    for d in describe(CommonParams, "common") + describe(PIPELINE_PARAMS[name], name):
        key = "frames_out" if d.name == "out" else d.name
        value = values.get(key)
        if not d.cli or d.name in UNIT_OPTIONS or value is None:
            continue
        option = d.option
        if d.type == "bool":
            out.append(option if value else option.replace("--", "--no-", 1))
            continue
        if d.type == "lora":  # one --lora per file, the path made absolute (the weight kept)
            for spec in value:
                path, sep, weight = spec.rpartition(":") if _has_weight(spec) else (spec, "", "")
                out += [option, str(Path(path).expanduser().absolute()) + sep + weight]
            continue
        if d.type == "list":
            value = ",".join(value)
        elif d.type == "path" and value:
            value = str(Path(value).expanduser().absolute())
        out += [option, str(value)]
    if args.job_id:
        out += ["--job-id", args.job_id]
    for folder in args.models:
        out += ["--models", str(Path(folder).expanduser().absolute())]
    if args.device:
        out += ["--device", args.device]
    if args.no_hf_cache:
        out.append("--no-hf-cache")
    return out
