"""`cinegen export-cut CUT.otio --to edl|fcp7|fcpxml|otio`: the story cut for editorial tools, through the
real OpenTimelineIO adapters (otio-cmx3600-adapter, otio-fcp-adapter, otio-fcpx-xml-adapter).

Neither XML adapter writes an `ImageSequenceReference` (FCP 7: `UnboundLocalError: fallback_file_name`;
FCPXML: no `target_url`), and an EDL names one source file per event. So each shot's sequence becomes
an `ExternalReference` to its **first frame** (an absolute `file://` URL, resolved from the .otio's
folder): the form all three understand, and what editorial relinks to when conforming. The cut's
record start (01:00:00:00 by default) is kept: FCP 7 XML carries it itself; the CMX 3600 writer and
the FCPXML writer ignore `global_start_time`, so their record timecodes / `tcStart` are set here.
EDL and FCP 7 XML count SMPTE timecode, so other rates export as FCPXML or OTIO; a cut another tool made
exports as far as the format holds it (an EDL is one flat video track), else the error says why.
"""
from __future__ import annotations

import copy
import re
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import opentimelineio as otio

from cinegen.common.exr import fps_as_rational

from .otio_cut import start_time, write_text_atomically

FORMATS: dict[str, tuple[str, str]] = {  # --to: (OTIO adapter, file extension)
    "edl": ("cmx_3600", ".edl"),
    "fcp7": ("fcp_xml", ".xml"),
    "fcpxml": ("fcpx_xml", ".fcpxml"),
    "otio": ("otio_json", ".otio"),
}
REEL_LENGTH = 8  # CMX 3600 reel names: at most 8 characters
_EVENT = re.compile(r"^(\d{3,}\s+\S+\s+\S+\s+\S+(?:\s+\d+)?\s+)(\S+ \S+ )(\S+) (\S+)\s*$")


class CutExportError(ValueError):
    """The cut cannot be exported as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ExportOptions:
    to: str
    record_start: str | None = None  # None: keep the cut's own (01:00:00:00 for cinegen cuts)
    absolute_urls: bool = True  # otio only: file:// URLs (the other formats always need them)


def default_output(cut: Path, to: str) -> Path:
    return cut.with_suffix(FORMATS[to][1]) if to != "otio" else cut.with_name(cut.stem + ".export.otio")


def export_cut(cut: Path, out: Path, options: ExportOptions) -> Path:
    """Convert `cut` (an .otio) to `options.to`, written atomically at `out`; returns `out`."""
    if options.to not in FORMATS:
        raise CutExportError(f"'{options.to}' is not an export format: use one of {', '.join(FORMATS)}.")
    try:
        timeline = otio.adapters.read_from_file(str(cut))
    except Exception as exc:  # OTIO raises its own exception types for unreadable files
        raise CutExportError(f"{cut} could not be read as an OpenTimelineIO file ({exc}).") from exc
    if not isinstance(timeline, otio.schema.Timeline):
        raise CutExportError(f"{cut} holds a {timeline.schema_name()}, not a timeline: export a file with one cut.")
    _record_start_from_edl(timeline)
    if options.record_start is not None:
        rate = _rate(timeline)
        try:
            timeline.global_start_time = start_time(options.record_start, rate)
        except ValueError:
            raise CutExportError(f"'{options.record_start}' is not a timecode HH:MM:SS:FF at {rate:g} fps.") from None
    adapter, _ = FORMATS[options.to]
    rate = _rate(timeline)
    if options.to in ("edl", "fcp7") and not otio.opentime.RationalTime.is_valid_timecode_rate(rate):
        kind = {"edl": "an EDL", "fcp7": "FCP 7 XML"}[options.to]
        raise CutExportError(f"{cut.name} runs at {rate:g} fps and {kind} counts SMPTE timecode only "
                             f"(23.976, 24, 25, 29.97, 30, 47.952, 48, 50, 59.94 or 60 fps): export it --to fcpxml or "
                             f"--to otio, or make the story at one of those rates.")
    exported = for_editorial(timeline, cut.resolve().parent, sequences_as_first_frame=options.to != "otio",
                             absolute=options.absolute_urls or options.to != "otio")
    if options.to == "edl":
        _check_fits_an_edl(cut, exported)
        _names_on_one_line(exported)
    try:
        text = otio.adapters.write_to_string(exported, adapter_name=adapter)
    except Exception as exc:  # each adapter raises its own types (NotSupportedError, AttributeError, ...)
        raise CutExportError(f"the {adapter} adapter could not write {cut.name} ({type(exc).__name__}: {exc}); "
                             f"--to otio keeps everything.") from exc
    if options.to == "edl":
        label = options.record_start or timeline.metadata.get("cinegen", {}).get("record_start")
        text = _edl_with_record_start(text, exported, label if isinstance(label, str) else None)
    elif options.to == "fcpxml":
        text = _fcpxml_with_record_start(_fcpxml_with_frame_duration(text, rate), exported)
    return write_text_atomically(out, text)


def for_editorial(timeline: otio.schema.Timeline, base: Path, *, sequences_as_first_frame: bool,
                  absolute: bool) -> otio.schema.Timeline:
    """A copy whose media references the target format understands (see the module docstring)."""
    timeline = copy.deepcopy(timeline)
    for item in timeline.find_children(descended_from_type=otio.core.Item):
        if item.source_range is None and item.parent() is not timeline.tracks:
            # no source range means "all of the media" (OTIO); the writers need it spelled out
            try:
                item.source_range = item.trimmed_range()
            except Exception:  # OTIO raises CannotComputeAvailableRangeError and others here
                raise CutExportError(f"'{item.name}' has no source range and its media no available range: "
                                     f"give the clip a source range in the .otio.") from None
    for clip in timeline.find_clips():
        ref = clip.media_reference
        if ref.available_range is None:  # an EDL's media has none: the FCP writers need the file's extent
            ref.available_range = clip.source_range
        if isinstance(ref, otio.schema.ImageSequenceReference):
            if absolute:
                ref.target_url_base = _absolute_url(ref.target_url_base, base)
            if sequences_as_first_frame:
                clip.media_reference = otio.schema.ExternalReference(
                    target_url=ref.target_url_for_image_number(0), available_range=ref.available_range,
                    metadata={"cinegen": {"sequence": ref.target_url_base + ref.name_prefix
                                          + "#" * ref.frame_zero_padding + ref.name_suffix}})
    reels = _reel_names(clip.name for clip in timeline.find_clips()
                        if not clip.metadata.get("cmx_3600", {}).get("reel"))
    for clip in timeline.find_clips():
        meta = clip.metadata.setdefault("cmx_3600", {})
        if not meta.get("reel"):  # one the cut came with (read from an EDL) is the source's own: kept
            meta["reel"] = reels[clip.name]
    return timeline


def _reel_names(names) -> dict[str, str]:
    """A CMX 3600 reel name (8 characters) for each clip name, different for different names: conforming
    finds media by reel and timecode, and every shot's frames start at the same timecode (1001).
    The names' first 8 characters if those differ, else their last 8 (sq010_sh0010, sq010_sh0020 ->
    0_sh0010, 0_sh0020), else the first ones numbered; a name with no usable character is AX (no reel)."""
    clean = {name: re.sub(r"[^A-Za-z0-9_]", "", name) for name in dict.fromkeys(names)}
    named = {name: c for name, c in clean.items() if c}
    for cut in (lambda c: c[:REEL_LENGTH], lambda c: c[-REEL_LENGTH:]):
        reels = {name: cut(c) for name, c in named.items()}
        if len(set(reels.values())) == len(reels):
            break
    else:
        reels, used = {}, set()
        for name, c in named.items():
            reel, number = c[:REEL_LENGTH], 1
            while reel in used:
                number += 1
                reel = c[:REEL_LENGTH - len(str(number))] + str(number)
            reels[name] = reel
            used.add(reel)
    return {name: reels.get(name, "AX") for name in clean}


def _record_start_from_edl(timeline: otio.schema.Timeline) -> None:
    """The CMX 3600 reader keeps an EDL's record start as its track's negative source start (the FCPXML
    writer then fails, FCP 7 XML starts at 0); as the timeline's start it is what the writers know."""
    if timeline.global_start_time is not None or len(timeline.tracks) != 1:
        return
    track = timeline.tracks[0]
    if track.source_range is not None and track.source_range.start_time.value < 0:
        timeline.global_start_time = -track.source_range.start_time
        track.source_range = None


def _names_on_one_line(timeline: otio.schema.Timeline) -> None:
    """An EDL is lines: a title, clip or marker name with a line break (a YAML title can have one) would
    start a line no reader understands; breaks and other control characters become spaces."""
    def one_line(text: str) -> str:
        return re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()

    timeline.name = one_line(timeline.name)
    for item in timeline.find_children(descended_from_type=otio.core.Item):
        item.name = one_line(item.name)
        for marker in item.markers:
            marker.name = one_line(marker.name)


def _check_fits_an_edl(cut: Path, timeline: otio.schema.Timeline) -> None:
    """A CMX 3600 EDL is one flat video track; the writer drops nested stacks without a word."""
    video = timeline.video_tracks()
    if not video:
        raise CutExportError(f"{cut.name} has no video track: there is nothing to put in an EDL.")
    if len(video) != 1:
        raise CutExportError(f"{cut.name} has {len(video)} video tracks and an EDL holds one: export --to fcp7 or "
                             f"fcpxml, or flatten it first (otiotool -i {cut.name} --flatten video -o flat.otio).")
    nested = [child.name or child.schema_name() for child in video[0] if isinstance(child, otio.core.Composition)]
    if nested:
        raise CutExportError(f"{cut.name} nests {', '.join(repr(n) for n in nested)} inside its track and an EDL "
                             f"is flat: export --to fcp7 or fcpxml.")


def _absolute_url(url: str, base: Path) -> str:
    if urllib.parse.urlparse(url).scheme:
        return url
    folder = (base / urllib.request.url2pathname(url)).resolve()
    return folder.as_uri() + ("/" if url.endswith("/") else "")


def _rate(timeline: otio.schema.Timeline) -> float:
    if timeline.global_start_time is not None:
        return timeline.global_start_time.rate
    clips = list(timeline.find_clips())
    return clips[0].source_range.duration.rate if clips and clips[0].source_range else 24.0


def _edl_with_record_start(text: str, timeline: otio.schema.Timeline, label: str | None = None) -> str:
    """CMX 3600 record in/out counted from the cut's record start (the writer counts from 0).
    With the start's `label` (cinegen cuts keep theirs), the EDL starts at that label in its own notation:
    the writer writes drop-frame at 29.97 and 59.94, where non-drop 01:00:00:00 would read 01:00:03;18."""
    start = timeline.global_start_time
    if start is None or start.value == 0:
        return text
    lines = []
    for line in text.splitlines():
        match = _EVENT.match(line)
        if match:
            separator = ";" if ";" in match.group(3) else ":"
            origin = start if label is None else otio.opentime.from_timecode(
                re.sub(r"[:;](\d+)$", separator + r"\1", label), start.rate)
            record_in, record_out = (otio.opentime.from_timecode(tc, start.rate) + origin
                                     for tc in (match.group(3), match.group(4)))
            line = (match.group(1) + match.group(2) + otio.opentime.to_timecode(record_in, start.rate) + " "
                    + otio.opentime.to_timecode(record_out, start.rate))
        lines.append(line)
    return "\n".join(lines) + "\n"


def _fcpxml_with_frame_duration(text: str, rate: float) -> str:
    """The writer knows frame durations for 23.98, 24, 25, 29.97, 30, 50, 59.94 and 60 by key and leaves
    `frameDuration=""` (FCP rejects the file) for an exact NTSC rate (24000/1001) or any other: fill it in."""
    if 'frameDuration=""' not in text:
        return text
    numerator, denominator = fps_as_rational(rate)
    return text.replace('frameDuration=""', f'frameDuration="{denominator}/{numerator}s"')


def _fcpxml_with_record_start(text: str, timeline: otio.schema.Timeline) -> str:
    """FCPXML's `<sequence tcStart=...>` from the cut's record start (the writer leaves it out)."""
    start = timeline.global_start_time
    if start is None or start.value == 0:
        return text
    seconds = Fraction(start.value).limit_denominator(1_000_000) / Fraction(start.rate).limit_denominator(1001)
    value = f"{seconds.numerator}s" if seconds.denominator == 1 else f"{seconds.numerator}/{seconds.denominator}s"
    root = ET.fromstring(text)
    for sequence in root.iter("sequence"):
        sequence.set("tcStart", value)
    doctype = "<!DOCTYPE fcpxml>\n" if "<!DOCTYPE fcpxml>" in text else ""
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + doctype + ET.tostring(root, encoding="unicode") + "\n"


# ---- command line -------------------------------------------------------------------------------
def add_export_cut_parser(sub) -> None:
    p = sub.add_parser("export-cut", help="Convert a story cut (.otio) to EDL, FCP 7 XML or FCPXML.")
    p.add_argument("cut", help="The .otio file `generate story` wrote.")
    p.add_argument("--to", required=True, choices=tuple(FORMATS), help="The format editorial needs.")
    p.add_argument("--out", default=None, help="Where to write it; default: beside the cut, same name.")
    p.add_argument("--record-start", default=None, metavar="HH:MM:SS:FF",
                   help="Record start timecode; default: the cut's own (01:00:00:00).")
    p.add_argument("--relative-urls", action="store_true",
                   help="--to otio only: keep media URLs relative to the file (default: absolute file:// URLs).")


def cmd_export_cut(args) -> int:
    import sys

    cut = Path(args.cut)
    out = Path(args.out) if args.out else default_output(cut, args.to)
    try:
        written = export_cut(cut, out, ExportOptions(args.to, args.record_start, absolute_urls=not args.relative_urls))
    except (CutExportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(written)
    return 0
