"""What one request and the whole server may ask for, checked at Submit (never at run time).

Every refusal names the limit, the value asked for and the `cinegen serve` flag that changes it, as
RESOURCE_EXHAUSTED (too much) or INVALID_ARGUMENT (not a usable value). Ranges of the numeric
parameters come from their descriptions in `cinegen.common.params` (the same ones the panel's forms
use), so a form and the server never disagree.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from cinegen.common.params import CommonParams, describe

from .errors import InvalidArgument, ResourceExhausted

MAX_PATH_CHARS = 4096  # longer than any real path (Linux PATH_MAX); a bigger string is not a path
MAX_NAME_CHARS = 256  # ids, model names, modes, client labels, shot ids
LAST_FRAME = 10_000_000  # the largest frame number a pattern may be asked to write
ASSUMED_SIDE = 1024  # pixels counted for an unset width/height (the model's native size, at most this)


@dataclass(frozen=True)
class Limits:
    """Server limits; each field is the `cinegen serve` flag of the same name (`--max-pixels` ...)."""
    max_pixels: int = 1_000_000_000  # width × height × frames of one job (a 2K clip of 480 frames)
    max_steps: int = 500  # denoising steps of one job
    max_prompt: int = 4000  # characters of a prompt or negative prompt
    max_text: int = 1 << 20  # bytes of a story/trajectory document, inline or read from a file
    max_tracks: int = 64  # tracks in one trajectory
    max_points: int = 20_000  # points over all tracks of one trajectory
    max_shots: int = 200  # shots in one story (and shot ids asked for)
    max_queue: int = 500  # jobs queued on the server
    max_queue_per_client: int = 100  # jobs queued by one client
    max_streams: int = 256  # open Watch/Upload/Download streams
    max_upload: int = 2 << 30  # bytes of one uploaded file
    max_upload_total: int = 50 << 30  # bytes of all uploads kept by the server

    @staticmethod
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")


def over(limits: Limits, name: str, what: str, value: object) -> ResourceExhausted:
    """The RESOURCE_EXHAUSTED error for `value` over limit `name`."""
    return ResourceExhausted(f"{what} is {value}, over this server's limit of {getattr(limits, name)} "
                             f"(`cinegen serve {Limits.flag(name)} N` changes it).")


def check_text(what: str, text: str, max_chars: int, flag: str | None = None) -> None:
    """Length and characters of a string field: no NUL or other control characters but tab/newline."""
    if len(text) > max_chars:
        where = f" (`cinegen serve {flag} N` changes it)" if flag else ""
        raise ResourceExhausted(f"{what} has {len(text)} characters, over this server's limit of "
                                f"{max_chars}{where}.")
    bad = next((i for i, ch in enumerate(text) if (ord(ch) < 32 and ch not in "\t\n\r") or ord(ch) == 127), None)
    if bad is not None:
        raise InvalidArgument(f"{what} contains a control character (code {ord(text[bad])}) at position {bad}; "
                              "remove it.")


def check_numbers(obj: object, group: str) -> None:
    """Every int/float parameter that is set is finite and inside its published range."""
    for desc in describe(type(obj), group):
        value = getattr(obj, desc.name)
        if desc.type not in ("int", "float") or value is None or isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(f"{desc.label} ({desc.name}) is {value}; it must be a finite number "
                                  f"between {_num(desc.minimum)} and {_num(desc.maximum)}.")
        low = desc.minimum if desc.minimum is not None else -math.inf
        high = desc.maximum if desc.maximum is not None else math.inf
        if not low <= value <= high:
            bound = f"at least {_num(desc.minimum)}" if value < low else f"at most {_num(desc.maximum)}"
            raise InvalidArgument(f"{desc.label} ({desc.name}) is {_num(value)}; it must be {bound} "
                                  f"(between {_num(desc.minimum)} and {_num(desc.maximum)}).")


def check_job(limits: Limits, common: CommonParams, params: object, pipeline: str) -> None:
    """Per-job limits: numbers in range, texts short, steps and the pixel budget."""
    check_numbers(common, "common")
    check_numbers(params, pipeline)
    check_text("The prompt", common.prompt, limits.max_prompt, "--max-prompt")
    check_text("The negative prompt", common.negative_prompt, limits.max_prompt, "--max-prompt")
    check_text("The model id", common.model, MAX_NAME_CHARS)
    check_text("The output path (out)", common.out, MAX_PATH_CHARS)
    for f in dataclasses.fields(params):  # type: ignore[arg-type]
        value = getattr(params, f.name)
        if isinstance(value, str) and not f.name.endswith(("_json", "_yaml")):
            check_text(f"The {f.name} parameter", value, MAX_PATH_CHARS)
        elif isinstance(value, str):
            if len(value.encode("utf-8")) > limits.max_text:
                raise over(limits, "max_text", f"The {f.name} document's size in bytes", len(value.encode("utf-8")))
            check_text(f"The {f.name} document", value, limits.max_text)
        elif isinstance(value, list):
            if len(value) > limits.max_shots:
                raise over(limits, "max_shots", f"The number of {f.name}", len(value))
            for item in value:
                check_text(f"An entry of {f.name}", str(item), MAX_NAME_CHARS)
    if common.steps is not None and common.steps > limits.max_steps:
        raise over(limits, "max_steps", "Steps", common.steps)
    first = common.first_frame if common.first_frame is not None else 1001
    frames = common.frames or 1
    if first + frames - 1 > LAST_FRAME:
        raise InvalidArgument(f"The last frame would be {first + frames - 1} (first frame {first} + {frames} "
                              f"frames); frame numbers stop at {LAST_FRAME}. Lower --first-frame or --frames.")
    pixels = (common.width or ASSUMED_SIDE) * (common.height or ASSUMED_SIDE) * frames
    scale = getattr(params, "scale", None)
    if scale and not common.width and not common.height:
        pixels = int(pixels * scale * scale / 4)  # an upscale of a (at most 512 px) native picture
    if pixels > limits.max_pixels:
        raise over(limits, "max_pixels", f"The pixel budget width × height × frames ({_size(common)})", pixels)


def _size(c: CommonParams) -> str:
    def side(v: int | None) -> str:
        return str(v) if v else f"{ASSUMED_SIDE} (unset)"
    return f"{side(c.width)} × {side(c.height)} × {c.frames or 1}"


def _num(value: float | None) -> str:
    if value is None:
        return "any"
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"
