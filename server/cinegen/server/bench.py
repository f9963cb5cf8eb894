"""`cinegen bench NAME… [--repeat N] [--json FILE]`: time and peak memory. Benchmarks measure; tests never time.

Each benchmark module has `run(args) -> dict` with `rows` (and optionally `comparisons`). Modules
listed in `REPEATS_ITSELF` interleave their own compared cases over `args.repeat` rounds and report
figures as `measure.stat` dicts (median, spread, samples); the others are run `--repeat` times,
interleaved with each other (round 1: A B, round 2: B A, …), and bench.py turns each numeric figure
of their rows into the same median/spread form. Every report is printed as a table and saved as JSON
(`--json FILE` for all of them together; always `OUT/NAME.json`, and under `$OUT` when that is set).

`python -m cinegen.server.bench NAME…` is the same command without the rest of the CLI: it needs only
torch, diffusers and transformers (and OpenImageIO/OpenColorIO for the pipelines), not gRPC, protobuf
or OpenTimelineIO, so it runs from a source tree on a bare GPU image (`tools/device/bench_gpu.sh`).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .benchmarks.measure import stat

# name -> module with `run(args) -> dict` ; each pipeline adds its own entry
BENCHMARKS: dict[str, str] = {
    "image": "cinegen.server.benchmarks.image",
    "trajectory": "cinegen.server.benchmarks.trajectory",
    "upscale": "cinegen.server.benchmarks.upscale",
    "panorama": "cinegen.server.benchmarks.panorama",
    "upscale-dit": "cinegen.server.benchmarks.upscale_dit",
    "quality": "cinegen.server.benchmarks.quality",
    "io": "cinegen.server.benchmarks.io",
    "latency": "cinegen.server.benchmarks.latency",
    "gpu": "cinegen.server.benchmarks.gpu",
    "ray-story": "cinegen.server.benchmarks.ray_story",
    "ray-plate": "cinegen.server.benchmarks.ray_plate",
    "memory": "cinegen.server.benchmarks.memory",
}
REPEATS_ITSELF = {"panorama", "io", "latency", "gpu", "ray-story", "ray-plate"}


def run_bench(args: argparse.Namespace) -> int:
    names = _names(args)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"Unknown benchmark(s) {', '.join(unknown)}. Available: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    reports = run_benchmarks(names, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, report in reports.items():
        print(format_table(report))
        save_json(out / f"{name}.json", report)
        if os.environ.get("OUT"):  # the device machine brings back what lies under $OUT
            save_json(Path(os.environ["OUT"]) / f"bench-{name}.json", report)
    if getattr(args, "json", None):
        save_json(Path(args.json), reports if len(reports) > 1 else next(iter(reports.values())))
        print(f"report written to {args.json}")
    print(f"reports in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli_options import add_bench_options

    parser = argparse.ArgumentParser(prog="python -m cinegen.server.bench",
                                     description="cinegen benchmarks (time and memory), not tests.")
    add_bench_options(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as `cinegen`: nothing is fetched
    return run_bench(args)


def _names(args: argparse.Namespace) -> list[str]:
    what = getattr(args, "what", None) or ["image"]
    return [what] if isinstance(what, str) else list(what)


def run_benchmarks(names: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Self-repeating benchmarks run once each; the others `args.repeat` rounds, interleaved."""
    rounds = max(1, getattr(args, "repeat", 1) or 1)
    modules = {n: importlib.import_module(BENCHMARKS[n]) for n in names}
    reports: dict[str, dict[str, Any]] = {}
    plain = [n for n in names if n not in REPEATS_ITSELF]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in plain}
    for r in range(rounds):
        for name in (plain if r % 2 == 0 else list(reversed(plain))):
            runs[name].append(modules[name].run(args))
    for name in names:
        reports[name] = modules[name].run(args) if name in REPEATS_ITSELF else aggregate_runs(runs[name])
    return reports


def aggregate_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from repeated runs: each numeric row figure becomes a median/spread `stat`."""
    report = dict(runs[0])
    report["rounds"] = len(runs)
    for key, value in runs[0].items():  # top-level figures (e.g. a ratio) too
        if _is_figure(key, value) and all(_is_figure(key, run.get(key)) for run in runs):
            report[key] = stat([run[key] for run in runs])
    rows = []
    for i, row in enumerate(runs[0].get("rows", [])):
        merged = {}
        for key, value in row.items():
            if _is_figure(key, value):
                merged[key] = stat([run["rows"][i][key] for run in runs if i < len(run.get("rows", []))])
            else:
                merged[key] = value
        rows.append(merged)
    report["rows"] = rows
    return report


def _is_figure(key: str, value: Any) -> bool:
    """A measured number (not a setting such as steps or a size)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("steps", "frames", "size")


def format_table(report: dict[str, Any]) -> str:
    """The report's rows as an aligned text table: labels, then `median ±spread/2` for figures."""
    rows = report.get("rows", [])
    lines = [f"== {report.get('benchmark', '?')} on {report.get('device', '?')}"
             f" ({report.get('rounds', 1)} round(s); median ± half the spread)"]
    for group in _groups_with_same_columns(rows):
        columns = list(group[0])
        cells = [[_cell(row.get(c)) for c in columns] for row in group]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    for comparison in report.get("comparisons", []):
        extra = {k: v for k, v in comparison.items() if k not in ("name", "ratio")}
        lines.append(f"  {comparison['name']}: {_cell(comparison.get('ratio'))}"
                     + "".join(f"; {k} {_cell(v)}" for k, v in extra.items()))
    for note in report.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _groups_with_same_columns(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs of consecutive rows with the same keys: one header each."""
    groups: list[list[dict[str, Any]]] = []
    for row in rows:
        if groups and list(groups[-1][0]) == list(row):
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _cell(value: Any) -> str:
    if isinstance(value, dict) and "median" in value:
        return f"{value['median']:.4g} ±{value['spread'] / 2:.2g}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def save_json(path: Path, report: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
