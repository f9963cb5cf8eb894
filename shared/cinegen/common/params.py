"""Pipeline parameters as typed dataclasses, shared by the server, the CLI and the panel.

Each field carries its form description (type, default, range, help) in `dataclasses.field`
metadata; the server publishes them as `ParamSpec`s in `GetCapabilities`, the CLI turns them into
options (`negative_prompt` -> `--negative-prompt`) and the panel into widgets. Field names equal the
proto field names of `CommonParams` and of each pipeline's message, so conversion is generic.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, get_type_hints


def param(default: Any, *, help: str, kind: str | None = None, minimum: float | None = None,
          maximum: float | None = None, choices: tuple[str, ...] = (), label: str = "",
          step: float = 0.0, cli: bool = True, families: tuple[str, ...] = (), kinds: tuple[str, ...] = (),
          deprecated: bool = False) -> Any:
    """A dataclass field with its form description (`families`: the model families a "model" option takes;
    `kinds`: the model kinds a "model" option takes, or the add-on kinds an "addon" option picks from;
    `deprecated`: still read from requests, but no longer advertised, offered on the CLI or named in `values`)."""
    meta = dict(help=help, kind=kind, minimum=minimum, maximum=maximum, choices=choices,
                label=label, step=step, cli=cli, families=families, kinds=kinds, deprecated=deprecated)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamDescription:
    """What a client needs to build one widget or CLI option."""
    name: str
    type: str  # int | float | bool | string | text | enum | path | list | model | lora (a list of PATH[:WEIGHT]) | addon
    default: Any
    help: str
    group: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    label: str = ""
    step: float = 0.0
    cli: bool = True
    families: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()  # "model": ModelInfo kinds; "addon": add-on kinds (the id is the value)

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


_PY_TO_KIND = {int: "int", float: "float", bool: "bool", str: "string"}


def _base_type(hint: Any) -> type:
    args = getattr(hint, "__args__", None)
    if args:  # Optional[X] / X | None / list[X]
        non_none = [a for a in args if a is not type(None)]
        origin = getattr(hint, "__origin__", None)
        if origin is list:
            return list
        return non_none[0]
    return hint


def describe(cls: type, group: str) -> list[ParamDescription]:
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("deprecated"):
            continue  # an alias kept for old clients (UpscaleParams.lora): read, never offered
        base = _base_type(hints[f.name])
        kind = meta.get("kind") or ("list" if base is list else _PY_TO_KIND.get(base, "string"))
        if meta.get("choices") and not meta.get("kind"):
            kind = "enum"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(ParamDescription(
            name=f.name, type=kind, default=default, help=meta.get("help", ""), group=group,
            minimum=meta.get("minimum"), maximum=meta.get("maximum"),
            choices=tuple(meta.get("choices", ())), label=meta.get("label") or f.name.replace("_", " ").capitalize(),
            step=meta.get("step", 0.0), cli=meta.get("cli", True), families=tuple(meta.get("families", ())),
            kinds=tuple(meta.get("kinds", ()))))
    return out


DISPLAY_TRANSFORMS = ("view", "srgb")  # color.display_to_scene_linear's choices
OFFLOAD_MODES = ("none", "model", "sequential")  # diffusers' CPU offload modes (models/offload.py)


# --------------------------------------------------------------------------------------------
@dataclass
class CommonParams:
    """Options every pipeline takes (same names in the CLI, the proto and the panel)."""
    prompt: str = param("", label="Prompt", help="What to generate.", kind="text")
    negative_prompt: str = param("", label="Negative prompt", help="What to keep out of the picture.", kind="text")
    model: str = param("", label="Model", help="The model to use; empty = the pipeline's default model.", kind="model")
    seed: int | None = param(None, label="Seed", help="The random seed; empty = a new one each time (it is recorded in the EXR header).",
                             minimum=0, maximum=2**63 - 1)
    steps: int | None = param(None, label="Steps", help="Denoising steps; empty = the model's recommended number.",
                              minimum=1, maximum=1000)
    guidance: float | None = param(None, label="Guidance", help="Classifier-free guidance scale; empty = the model's default.",
                                   minimum=0.0, maximum=50.0, step=0.5)
    guidance_2: float | None = param(None, label="Guidance, low noise", help="Wan 2.2 A14B: guidance of the "
                                     "low-noise expert (diffusers' guidance_scale_2); empty = --guidance.",
                                     minimum=0.0, maximum=50.0, step=0.5)
    width: int | None = param(None, label="Width", help="Output width in pixels (multiple of 8); empty = native.",
                              minimum=8, maximum=16384, step=8)
    height: int | None = param(None, label="Height", help="Output height in pixels (multiple of 8); empty = native.",
                               minimum=8, maximum=16384, step=8)
    frames: int | None = param(None, label="Frames", help="Number of frames; empty = 1 for images, the model's clip length for video.",
                               minimum=1, maximum=10000)
    fps: float | None = param(None, label="Frames per second", help="Frame rate recorded in the output; empty = 24.",
                              minimum=1.0, maximum=240.0)
    out: str = param("", label="Output", help="Where the frames go: a folder and a file name with #### for the frame number "
                   "(a folder for story); empty = a new version folder.", kind="path")
    first_frame: int | None = param(None, label="First frame", help="Number of the first frame written; empty = 1001.",
                                    minimum=0, maximum=10_000_000)
    compression: str = param("zip", label="EXR compression", help="EXR compression.", choices=("zip", "piz", "dwaa", "none"))
    overwrite: bool = param(False, label="Overwrite", help="Replace frames that already exist; otherwise a job whose frames exist "
                            "is refused (and a frame that appears meanwhile stops the job).")
    frame_range: str = param("", label="Only frames", help="Only write these frames of the sequence, first-last such as 1001-1010 (a farm "
                             "or cluster chunk); the same seed gives the same frames as a full run; empty = all.")
    display_transform: str = param("view", label="Display to linear", choices=DISPLAY_TRANSFORMS,
                                   help="How the model's display-referred picture becomes scene-linear light. view: "
                                   "through the inverse of the config's SDR view (ACES), so bright skies and lights "
                                   "rise above 1 and light a scene; srgb: the plain sRGB curve (values stay 0 to 1). "
                                   "A plate goes in through the same transform forward, so it comes back as it was; beyond "
                                   "what the transform can carry the output keeps the plate's own values.")
    offload: str = param("none", label="Offload to CPU", choices=OFFLOAD_MODES,
                         help="Keep the model's weights in CPU memory and move them to the GPU only while they "
                         "run, for GPUs too small for the whole model: none (fastest); model: one whole part "
                         "(text encoder, denoiser, VAE) on the GPU at a time; sequential: one layer at a time "
                         "(least memory, much slower). A CPU-only server runs the job as it is and says so.")
    lora: list[str] = param([], label="LoRAs", kind="lora",
                            help="LoRA files applied for this job only and removed after it, each PATH[:WEIGHT] "
                            "(weight 1 when omitted), as many as needed. The server's LoRAs and motion LoRAs are "
                            "offered as add-ons; a LoRA that does not fit the model is refused when the job is "
                            "sent. Story: each goes to the keyframe or the motion model it fits (motion LoRAs "
                            "to AnimateDiff).")


@dataclass
class ImageParams:
    """Text to image (SD family)."""
    refiner: str = param("", label="Refiner", kind="model", families=("sd",), kinds=("sdxl-refiner",),
                         help="An SDXL refiner that finishes the picture of an SDXL base model: the base denoises "
                         "the noisy first part of the steps and the refiner the rest (diffusers' ensemble of "
                         "experts); empty = the base alone.")
    # (0, 1]: the smallest share the base can take is one step's worth; 0 is refused at Submit, so no widget offers it
    refiner_split: float | None = param(None, label="Refiner split", minimum=0.05, maximum=1.0, step=0.05,
                                        help="With --refiner: the share of the steps the base model takes before "
                                        "the refiner takes over; empty = 0.8 (1 = the base alone).")


@dataclass
class UpscaleParams:
    mode: str = param("generate", label="Mode", help="generate: a new picture, then made larger stage by stage; plate: a sequence "
                      "made larger with detail added; refine: an upsampled clip re-noised and denoised.",
                      choices=("generate", "plate", "refine"))
    input: str = param("", label="Input plate", help="The image sequence to upscale, its frame number written as #### (plate and "
                       "refine modes; with the default mode an input means plate, except on a Wan image-to-video model, "
                       "where generate starts from its first frame).", kind="path")
    scale: float | None = param(None, label="Scale", help="Upscale factor over native/plate size; empty = use width/height, "
                                "or 2 when neither is given.",
                                minimum=1.0, maximum=16.0, step=0.5)
    stages: int | None = param(None, label="Cascade stages", help="Cascade stages; empty = one stage per x2.", minimum=1, maximum=8)
    strength: float | None = param(None, label="Strength", help="How much may change (0 = none, 1 = all); empty = the mode's default "
                                   "(generate 0.7, plate 0.5, refine 0.6 on UNet models).",
                                   minimum=0.0, maximum=1.0, step=0.05)
    cosine_scale: float | None = param(None, label="Detail mix", help="How much of the lower stage's layout is kept while detail is added (1 to 2 "
                                       "usual, 1 or less for 8K).",
                                       minimum=0.0, maximum=10.0, step=0.1)
    dilate_tau: int | None = param(None, label="Dilation steps", help="For how many of the first steps of each upscaled stage the wider "
                                   "(dilated) convolutions hold the layout; empty = 70% of the steps.",
                                   minimum=0, maximum=1000)
    fast: bool = param(False, label="Fast global attention", help="Dilated-sampling global attention (faster, slightly less coherent); on a Wan plate, the plate is encoded at its own size and resized as latents (faster, softer), as Latent resize.")
    vae_tile: int | None = param(None, label="VAE tile size", help="VAE tile size in pixels for large frames; empty = automatic.",
                                 minimum=64, maximum=8192, step=64)
    lora: str = param("", label="LoRA weights", help="Deprecated: use the common --lora (CommonParams.lora). LoRA "
                      "files for this job, PATH[:WEIGHT] each, comma-separated; still read, and added to --lora.",
                      kind="path", deprecated=True)
    input_colorspace: str = param("", label="Plate colour space",
                                  help="The colour space the plate's files are in (a name from the OpenColorIO "
                                  "config, such as ACEScg or ACES2065-1); empty = float files are scene-linear, "
                                  "8- and 16-bit files sRGB. Filled from the selected Read node or image.")
    latent_resize: bool = param(False, label="Resize in latent space", help="Resize between cascade stages in latent space (cheaper, softer) "
                                "instead of decode -> bicubic -> encode.")
    matte_cosine_scale: float | None = param(None, label="Detail mix in the matte", help="Plate mode: the cosine exponent where the plate's matte "
                                             "is 1 (Detail mix where it is 0, blended by alpha); higher = more "
                                             "new detail there (FreeScale: foreground 2-3, background 0.5-1); "
                                             "empty = one exponent everywhere.", minimum=0.0, maximum=10.0,
                                             step=0.1)


@dataclass
class PanoramaParams:
    projection: str = param("plane", label="Projection", help="plane: wide picture; ring: seamless 360° cylinder; "
                            "sphere: full 360°×180° equirectangular (2:1).", choices=("plane", "ring", "sphere"))
    loop: bool = param(False, label="Seamless loop", help="Make the video loop seamlessly (video models).")
    input: str = param("", label="Input plate", help="Optional image that fills its place in the panorama and is kept; on a Wan "
                       "image-to-video model, the panorama's first frame (resized to the panorama).", kind="path")
    input_colorspace: str = param("", label="Input colour space",
                                  help="The colour space of the input image (a name from the OpenColorIO config); "
                                  "empty = float files are scene-linear, 8- and 16-bit files sRGB.")
    guidance_scale_down: float | None = param(2.0, label="Motion guidance scale", help="Global motion guidance: generate at 1/N size first, "
                                              "then refine at full size (DynamicScaler: 2); 1 = off.",
                                              minimum=1.0, maximum=8.0)
    early_overlap: bool = param(True, label="Early window overlap", help="Overlapping windows in the early steps (0.75 -> 0.5 -> 0.25 -> 0 over "
                                "the schedule, as DynamicScaler); off = plain offset shifting (faster).")
    band_prompts: list[str] = param([], label="Band prompts", help="Sphere: a prompt per latitude band, zenith first, comma separated "
                                    "(3 = sky, horizon, ground; up to 9, one per view row); '-' = the prompt.")
    keep_first_frame: bool = param(False, label="Keep the first frame", help="Wan image-to-video or AnimateDiff with SparseCtrl: "
                                   "frame 0 stays the input image (as the VAE draws it) instead of the model's redrawing "
                                   "of it; off = as the stock image-to-video pipeline.")
    window_order: str = param("plan", label="Window order", help="The order the overlapping windows of a step are "
                              "denoised in: plan = one after another in raster order, as the reference; disjoint = "
                              "grouped into sets that do not overlap, one model call per set (fewer calls, a slightly "
                              "different picture where windows overlap).", choices=("plan", "disjoint"))
    view_order: str = param("disjoint", label="View order", help="Sphere: the order of the perspective views of a "
                            "step: disjoint = grouped into sets that do not overlap, one model call per set; plan = by "
                            "latitude row, then longitude, one after another (every view overlaps the one before it).",
                            choices=("disjoint", "plan"))
    view_batch: int = param(0, label="Views per call", help="Sphere: at most this many perspective views in one model "
                            "call (less memory, the same picture); 0 = automatic, from the memory the device has free.",
                            minimum=0, maximum=64)


@dataclass
class TrajectoryParams:
    trajectory: str = param("", label="Trajectory file", help="Trajectory JSON file (tracks of points over frames).", kind="path")
    trajectory_json: str = param("", label="Trajectory", help="The trajectory JSON itself (instead of a file).", kind="text", cli=False)
    tora_sampler: str = param("dpm", label="Tora sampler", help="Tora (CogVideoX): dpm = CogVideoX's DPM scheduler with trailing timesteps, "
                              "as Tora's reference; ddim = the model folder's DDIM schedule.", choices=("dpm", "ddim"))
    dynamic_cfg: bool = param(True, label="Growing guidance", help="Tora (CogVideoX): guidance that grows over the steps, as Tora's reference "
                              "samples with DPM; off = a constant Guidance.")
    flow_latents: str = param("sample", label="Flow latents", help="Tora (CogVideoX): the flow video's VAE latents drawn from the posterior "
                              "(sample, as Tora; seeded by the Seed) or its mode (deterministic).",
                              choices=("sample", "mode"))
    flow_kernel: str = param("fixed", label="Flow spread", help="Tora (CogVideoX): the Gaussian that spreads each track's flow: fixed = "
                             "Tora's 99 px, sigma 10 at any size; scaled = scaled with the frame from 720x480.",
                             choices=("fixed", "scaled"))


@dataclass
class StoryParams:
    story: str = param("", label="Story file", help="Story YAML file (title, fps, style, characters, shots).", kind="path")
    story_yaml: str = param("", label="Story", help="The story YAML itself (instead of a file).", kind="text", cli=False)
    shots: list[str] = param([], label="Only shots", help="Only these shots (to re-run them), comma separated; empty = all.")
    video_model: str = param("", label="Video model", help="The model that makes the motion between keyframes (Model picks the "
                             "keyframe image model); empty = the server's first real video model, else the tiny one.",
                             kind="model", families=("animatediff", "wan", "cogvideox"))
    stage: str = param("all", label="Farm stage", help="What this run makes (farm steps): all; keyframes (and the cut); motion of the "
                       "selected shots from keyframes on disk; timeline (the contact sheet and cut only).",
                       choices=("all", "keyframes", "motion", "timeline"))
    keyframe_motion: str = param("auto", label="Keyframe motion", help="AnimateDiff: how a shot's clip follows its keyframes: "
                                 "sparsectrl = SparseCtrl RGB conditions at the keyframes' frames; pinning = the keyframe "
                                 "latents pinned (inpainted); auto = sparsectrl when a SparseCtrl model is installed.",
                                 choices=("auto", "sparsectrl", "pinning"))
    sparsectrl: str = param("", label="SparseCtrl model", kind="addon", kinds=("sparsectrl",), help="AnimateDiff: the SparseCtrl RGB model (one of the server's "
                            "add-ons); empty = the first one installed.")


# Options that only pick which part of a job a run writes (a farm step's or a cluster unit's share), not
# what the frames hold: frames' headers record them at their defaults, so every part reads as the whole job.
UNIT_SELECTORS: tuple[str, ...] = ("frame_range", "stage", "shots")


# Common options a pipeline does not read (story takes its prompts from the story file): not advertised.
UNUSED_COMMON: dict[str, tuple[str, ...]] = {"story": ("prompt", "negative_prompt", "frame_range"),
                                             # whole-sequence pipelines: no --frame-range chunks
                                             "panorama": ("frame_range",), "trajectory": ("frame_range",)}

PIPELINE_PARAMS: dict[str, type] = {
    "image": ImageParams,
    "upscale": UpscaleParams,
    "panorama": PanoramaParams,
    "trajectory": TrajectoryParams,
    "story": StoryParams,
}


_OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")
_COMMAND = re.compile(r"`(cinegen [^`]*)`")


def plain_help(text: str, labels: Mapping[str, str]) -> str:
    """Help as a form shows it: `--steps` becomes the option's label (Steps), backticks go.

    The CLI keeps the option syntax; the panel and Blender show labels, so help there names labels.
    A command to run (`cinegen serve --max-steps N`, for whoever runs the server) keeps its flags."""
    def label(match: re.Match) -> str:
        return labels.get(match.group(1).replace("-", "_"), match.group(1).replace("-", " "))
    parts = _COMMAND.split(text)  # odd items: the commands' own text
    return "".join(part if i % 2 else _OPTION.sub(label, part).replace("`", "") for i, part in enumerate(parts))


# --------------------------------------------------------------------------------------------
# proto <-> dataclass, by field name

def from_proto(msg: Any, cls: type) -> Any:
    values = {}
    for f in dataclasses.fields(cls):
        if not hasattr(msg, f.name):
            continue
        fd = msg.DESCRIPTOR.fields_by_name[f.name]
        if fd.has_presence and not msg.HasField(f.name):
            continue  # keep the dataclass default (None = model decides)
        value = getattr(msg, f.name)
        if value == "" and not fd.is_repeated and fd.type == fd.TYPE_STRING:
            continue  # proto3 cannot send an unset string apart from "": it means the documented default
        values[f.name] = list(value) if fd.is_repeated else value
    return cls(**values)


def to_proto(obj: Any, msg: Any) -> Any:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or not hasattr(msg, f.name):
            continue
        if isinstance(value, list):
            del getattr(msg, f.name)[:]
            getattr(msg, f.name).extend(value)
        else:
            setattr(msg, f.name, value)
    return msg


def params_json(*objs: Any) -> str:
    """All parameters of a job as one JSON object (for the EXR header and the history)."""
    merged: dict[str, Any] = {}
    for obj in objs:
        for key, value in dataclasses.asdict(obj).items():
            if key not in merged or value not in ("", None, []):  # an unset alias (upscale's lora) keeps --lora
                merged[key] = value
    return json.dumps(merged, sort_keys=True, default=str)
