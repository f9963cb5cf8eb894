"""The `cinegen` command: serve, generate, pipelines, models, demo, bench.

`generate` options are built from the same parameter descriptions the server publishes, so the
CLI, the proto and the panel always agree on names. Without `--server`, `generate` starts an
in-process server on a free local port and talks to it like any client.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cinegen.common.client import JobResult, RequestRejected, ServerUnavailable, build_request, new_job_id
from cinegen.common.params import PIPELINE_PARAMS, CommonParams, ParamDescription, describe

from .cli_options import add_bench_options, memory_size  # noqa: F401 - memory_size: cinegen.server.cli API
from .cli_options import add_server_options as _add_server_options
from .job_client import add_client_access_options, add_serve_options, connect, run_job, server_config, summarise_paths
from .output.cut_export import add_export_cut_parser, cmd_export_cut
from .scaleout.export import add_export_parser, cmd_export_job

PIPELINES = tuple(PIPELINE_PARAMS)


# ---- argument parsing ------------------------------------------------------------------------
def _add_param_options(parser: argparse.ArgumentParser, descs: list[ParamDescription]) -> None:
    for d in descs:
        if not d.cli:
            continue
        # argparse %-formats help ("70% of the steps" broke --help); the default said where help does not
        kwargs: dict[str, Any] = dict(dest=d.name, help=_with_default(d).replace("%", "%%"), default=None)
        if d.type in ("model", "addon"):
            kwargs["metavar"] = "MODEL" if d.type == "model" else "NAME"
        if d.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif d.type == "int":
            kwargs["type"] = int
        elif d.type == "float":
            kwargs["type"] = float
        elif d.type == "enum":
            kwargs["choices"] = list(d.choices)
        elif d.type == "list":
            kwargs["type"] = lambda s: [p.strip() for p in s.split(",") if p.strip()]
        elif d.type == "lora":  # repeatable: --lora A.safetensors:0.8 --lora B.safetensors
            kwargs.update(action="append", metavar="PATH[:WEIGHT]", help=kwargs["help"] + " Repeat --lora for several.")
        parser.add_argument(d.option, **kwargs)


def _with_default(d: ParamDescription) -> str:
    """The help with the option's default appended, unless it has none or the help says it ("empty = …")."""
    if d.default in (None, "", []) or "default" in d.help.lower():
        return d.help
    shown = ("on" if d.default else "off") if isinstance(d.default, bool) else d.default
    return f"{d.help} Default: {shown}."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cinegen", description="Generative image and video for compositing.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log more.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="Run the generation server.")
    _add_server_options(serve)
    add_serve_options(serve)

    gen = sub.add_parser("generate", help="Generate frames with a pipeline.")
    gsub = gen.add_subparsers(dest="pipeline", required=True)
    for name, cls in PIPELINE_PARAMS.items():
        p = gsub.add_parser(name, help=(cls.__doc__ or name).strip().splitlines()[0])
        if name == "story":
            p.add_argument("story_file", nargs="?", help="Story YAML file.")
        p.add_argument("--server", help="HOST:PORT of a running `cinegen serve`; default: run one in-process.")
        p.add_argument("--job-id", default="", help="Client-chosen job id (resubmitting it is idempotent).")
        add_client_access_options(p)
        _add_param_options(p, describe(CommonParams, "common") + describe(cls, name))
        _add_server_options(p)

    for name, text in (("pipelines", "List pipelines and their options."), ("models", "List models.")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--server")
        add_client_access_options(p)
        _add_server_options(p)

    demo = sub.add_parser("demo", help="Generate sample sequences on the built-in tiny models.")
    demo.add_argument("--out", default="cinegen-demo", help="Folder for the demo outputs.")
    _add_server_options(demo)

    bench = sub.add_parser("bench", help="Benchmarks (time and memory), not tests.")
    add_bench_options(bench)
    add_export_parser(sub, _add_param_options)
    add_export_cut_parser(sub)
    return parser


# ---- commands ---------------------------------------------------------------------------------
def cmd_generate(args: argparse.Namespace) -> int:
    name = args.pipeline
    values = vars(args)
    common = CommonParams(**{f.name: values[f.name] for f in dataclasses.fields(CommonParams)
                             if values.get(f.name) is not None})
    cls = PIPELINE_PARAMS[name]
    # only the pipeline's own options: upscale's deprecated `lora` text shares its name with the common
    # --lora list, and taking that list for it crashed every `generate upscale --lora`
    offered = {d.name for d in describe(cls, name) if d.cli}
    params = cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)
                    if f.name in offered and values.get(f.name) is not None})
    if name == "story" and args.story_file:
        params.story = args.story_file
    _send_local_files(args, params)
    _absolute_paths(common, params)
    request = build_request(name, common, params, job_id=args.job_id or new_job_id(name), client="cinegen cli")
    with connect(args) as client:
        result = run_job(client, request, name)
    return _report(result)


def _absolute_paths(common: CommonParams, params: Any) -> None:
    """The server may run elsewhere or in another folder: never send it a path relative to this shell
    (a relative plate or LoRA was looked for in the server's working folder)."""
    def absolute(path: str) -> str:
        return str(Path(path).expanduser().absolute())

    if common.out:
        common.out = absolute(common.out)
    # PATH[:WEIGHT], several comma-separated: the weight stays a suffix of the absolute path
    common.lora = [",".join(absolute(part.strip()) for part in item.split(",") if part.strip())
                   for item in common.lora]
    if getattr(params, "input", ""):  # a plate pattern (####) or a still: its folder is what is relative
        params.input = absolute(params.input)


def _send_local_files(args: argparse.Namespace, params: Any) -> None:
    """Trajectory and story files live on this machine: a remote server gets their text, a local one the path."""
    for path_field, text_field in (("trajectory", "trajectory_json"), ("story", "story_yaml")):
        path = getattr(params, path_field, "")
        if not path or getattr(params, text_field, ""):
            continue
        if getattr(args, "server", None):
            try:
                raw = Path(path).read_bytes()
            except OSError as exc:
                raise SystemExit(f"Cannot read the {path_field} file {path}: {exc.strerror}.") from exc
            try:  # UTF-8 as the server reads a file, whatever this shell's locale (cp1252 on Windows)
                setattr(params, text_field, raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                line = raw[:exc.start].count(b"\n") + 1
                raise SystemExit(f"The {path_field} file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on "
                                 f"line {line}): save it as UTF-8.") from None
            setattr(params, path_field, "")
        else:
            setattr(params, path_field, str(Path(path).expanduser().absolute()))


def _report(result: JobResult) -> int:
    if result.state == "completed":
        print(f"done: {len(result.outputs)} file(s)")
        for path in summarise_paths(result.outputs):
            print(f"  {path}")
        return 0
    print(f"{result.state}: {result.message}", file=sys.stderr)
    if result.code == "UNAVAILABLE":  # the server stopped; the job waits in its journal for the restart
        print(f"To follow it once the server is back, run this same command again with --job-id {result.job_id} "
              "(the same request with the same id is the same job, not a new one).", file=sys.stderr)
    return 1 if result.state == "failed" else 130


def cmd_pipelines(args: argparse.Namespace) -> int:
    with connect(args) as client:
        caps = client.capabilities()
    for p in caps.pipelines:
        print(f"{p.name:11s} {p.description}")
        for spec in p.params:
            if spec.group == p.name:
                print(f"    --{spec.name.replace('_', '-'):22s} {spec.type:7s} default {spec.default_json:8s} {spec.help}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    with connect(args) as client:
        caps = client.capabilities()
    print(f"device: {caps.device.name} ({caps.device.kind})")
    for m in caps.models:
        print(f"{m.id:28s} {m.family:12s} {m.kind or 'model':13s} {m.source:12s} {'loaded' if m.loaded else '':7s} "
              f"{m.path or m.description}")
    for a in caps.addons:  # LoRAs, motion modules, VAEs, embeddings: used with a model, never as one
        print(f"{a.id:28s} {a.family or '-':12s} {a.kind:13s} {'add-on':12s} {'':7s} {a.path}")
    if caps.model_notes:  # why a folder a TD expected is missing, or listed but refused
        print("\nnot offered, or incomplete:")
        for note in caps.model_notes:
            print(f"  - {note}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve_until_signalled

    return serve_until_signalled(server_config(args, host=args.host, port=args.port))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if _runs_models_here(args):  # a client of a running server never imports torch (0.2 s, not 5 s)
        _quiet_libraries()
    commands = {"generate": cmd_generate, "pipelines": cmd_pipelines, "models": cmd_models,
                "serve": cmd_serve, "demo": cmd_demo, "bench": cmd_bench, "export-job": cmd_export_job,
                "export-cut": cmd_export_cut}
    received = [signal.SIGINT]
    try:
        with _sigterm_as_interrupt(args.command in ("generate", "pipelines", "models", "demo"), received):
            return commands[args.command](args)
    except ServerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RequestRejected as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM: run_job has cancelled the job it followed
        print(getattr(exc, "message", "") or "interrupted.", file=sys.stderr)
        return 128 + received[0]  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


@contextlib.contextmanager
def _sigterm_as_interrupt(wanted: bool, received: list[int]):
    """SIGTERM (a farm killing its task, `kill`) takes Ctrl-C's path: the job is cancelled, the in-process
    server stopped and its temporary state removed, instead of the process dying mid-frame."""
    if not wanted or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, _frame) -> None:
        received[0] = signum
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _runs_models_here(args: argparse.Namespace) -> bool:
    return args.command in ("serve", "demo", "bench") or (args.command not in ("export-job", "export-cut")
                                                            and not getattr(args, "server", None))


def _quiet_libraries() -> None:
    from .models.registry import quiet_library_progress

    quiet_library_progress()


if __name__ == "__main__":
    raise SystemExit(main())
