"""Run one job from the command line: connect to `--server` (or an in-process server), submit, show
progress until it ends, and summarise the files it wrote. Used by `generate`, `pipelines`, `models`
and the demo."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Iterator

from cinegen.common.client import GeneratorClient, JobResult, RequestRejected, ServerUnavailable

from .paths import prove_writable
from .progress import ProgressBar

CANCEL_TIMEOUT = 5.0  # seconds an interrupted command waits for the server to take its Cancel


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while a job ran; `message` says what became of the job."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """`cinegen serve`: address, access (token, TLS), journal folder, path roots and request limits."""
    from .limits import Limits

    p.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 for the network: needs a "
                   "token and --output-root, or --insecure).")
    p.add_argument("--port", type=port_number, default=50051, help="Port to listen on (0: any free one). "
                   "Default: 50051.")
    p.add_argument("--state-dir", type=Path, default=None,
                   help=f"Folder of the job journal and uploads (default: {default_state_dir()}).")
    p.add_argument("--token-file", type=Path, help="File holding the access token clients must send "
                   "(or $CINEGEN_TOKEN; never on the command line, where `ps` shows it).")
    p.add_argument("--token", action=_RefuseArgvToken, help=argparse.SUPPRESS)
    p.add_argument("--insecure", action="store_true",
                   help="Allow listening off loopback without a token or path roots (a warning is logged).")
    p.add_argument("--tls-cert", type=Path, help="Server certificate chain (PEM): serve TLS instead of plain text.")
    p.add_argument("--tls-key", type=Path, help="Private key (PEM) of --tls-cert.")
    p.add_argument("--tls-client-ca", type=Path, help="CA (PEM) that signs client certificates: mutual TLS.")
    p.add_argument("--output-root", action="append", default=[], type=Path, metavar="DIR",
                   help="Folder jobs may write into (repeatable); outputs elsewhere are PERMISSION_DENIED. "
                   "Required off loopback.")
    p.add_argument("--input-root", action="append", default=[], type=Path, metavar="DIR",
                   help="Folder jobs may read plates, trajectories and stories from (repeatable; output roots "
                   "and uploads count too).")
    p.add_argument("--ray", metavar="ADDRESS|local", default=None,
                   help="Run jobs' work units on a Ray cluster (its address, or 'local' to start one here); "
                   "needs the ray extra: pip install 'cinegen[ray]'.")
    p.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="Ray workers to start (default: one per GPU of the cluster, 1 without GPUs).")
    defaults = Limits()
    for f in dataclasses.fields(Limits):
        p.add_argument(Limits.flag(f.name), dest=f"limit_{f.name}", type=int, default=getattr(defaults, f.name),
                       metavar="N", help=f"Limit (default {getattr(defaults, f.name)}).")


def add_client_access_options(p: argparse.ArgumentParser) -> None:
    """How a client reaches `--server`: token from a file or $CINEGEN_TOKEN, TLS with a CA or system roots."""
    p.add_argument("--token-file", type=Path, help="File holding the access token of --server "
                   "(or $CINEGEN_TOKEN).")
    p.add_argument("--token", action=_RefuseArgvToken, help=argparse.SUPPRESS)
    p.add_argument("--tls", action="store_true", help="Connect to --server with TLS (system root certificates).")
    p.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) of --server's TLS certificate (implies --tls).")


def port_number(text: str) -> int:
    """A TCP port, 0-65535 (gRPC takes 99999 as 34463 without a word)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number (0-65535)")
    return port


class _RefuseArgvToken(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("a token on the command line is visible to every user of this machine (`ps`); write it to "
                     "a file and pass --token-file FILE, or set $CINEGEN_TOKEN.")


def default_state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir("cinegen", appauthor=False))


def read_token(args: argparse.Namespace) -> str | None:
    """The token of --token-file, else $CINEGEN_TOKEN, else None."""
    path = getattr(args, "token_file", None)
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise SystemExit(f"Cannot read the token file {path} ({getattr(exc, 'strerror', None) or exc}).") from None
    return os.environ.get("CINEGEN_TOKEN") or None


def server_config(args: argparse.Namespace, host: str = "127.0.0.1", port: int = 0):
    from .limits import Limits
    from .service import ServerConfig

    config = ServerConfig(host=host, port=port, models_dirs=[Path(p) for p in args.models], device=args.device,
                          max_width=args.max_size, max_height=args.max_size,
                          max_frames=getattr(args, "max_frames", None) or ServerConfig.max_frames,
                          memory_budget=int(args.memory_budget * (1 << 30)) if args.memory_budget else None,
                          device_memory=getattr(args, "device_memory", None),
                          use_hf_cache=not args.no_hf_cache, compile=getattr(args, "compile", None),
                          channels_last=bool(getattr(args, "channels_last", False)))
    if getattr(args, "command", None) != "serve":
        return config  # an in-process server for one command: loopback, temporary state, default limits
    values = {f.name: getattr(args, f"limit_{f.name}") for f in dataclasses.fields(Limits)}
    bad = [f"{Limits.flag(k)} {v}" for k, v in values.items() if v < 1]
    if bad:
        raise SystemExit(f"Limits must be 1 or more: {', '.join(bad)}.")
    return dataclasses.replace(config, token=read_token(args), state_dir=usable_state_dir(args.state_dir),
                               limits=Limits(**values), output_roots=list(args.output_root),
                               input_roots=list(args.input_root), insecure=args.insecure, tls_cert=args.tls_cert,
                               tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, ray=args.ray,
                               ray_workers=args.ray_workers)


def usable_state_dir(path: Path | None) -> Path:
    """--state-dir (or the default), created and proved writable, else a sentence (was a traceback)."""
    folder = Path(path).expanduser() if path else default_state_dir()
    try:
        prove_writable(folder)
    except OSError as exc:
        raise SystemExit(f"Cannot keep the job journal in {folder} ({exc.strerror or exc}); give --state-dir a "
                         "folder this user can write.") from None
    return folder


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[GeneratorClient]:
    """A client of `--server`, or of an in-process server started for this command."""
    address = getattr(args, "server", None)
    running = None
    if not address:
        from .server import start_server

        running = start_server(server_config(args))
        address = running.address
    if running is None:
        ca = getattr(args, "tls_ca", None)
        try:
            root = Path(ca).read_bytes() if ca else None
        except OSError as exc:
            raise SystemExit(f"Cannot read the TLS CA certificate {ca} ({exc.strerror}).") from None
        client = GeneratorClient(address, timeout=60.0, token=read_token(args),
                                 tls=bool(getattr(args, "tls", False)) or root is not None, root_certificates=root)
    else:
        client = GeneratorClient(address, timeout=60.0)
    try:
        _wait_for(client, remote=running is None)
        yield client
    finally:
        client.close()
        if running:
            running.stop()


SERVER_PATIENCE = 30.0  # seconds to wait for a server to answer (`cinegen serve` binds after ~10 s of imports)
QUIET_WAIT = 2.0  # seconds of that spent before saying so on stderr


def _wait_for(client: GeneratorClient, remote: bool) -> None:
    """Wait for the server; a --server that does not answer at once is said on stderr, not waited on in silence
    (a mistyped address), while one still starting gets its time."""
    if not remote:
        client.wait_ready(timeout=SERVER_PATIENCE)
        return
    try:
        client.wait_ready(timeout=QUIET_WAIT)
    except ServerUnavailable:
        print(f"cinegen: no answer yet from the server at {client.address}; waiting up to {SERVER_PATIENCE:.0f} s "
              "(check --server, or Ctrl-C to stop).", file=sys.stderr, flush=True)
        client.wait_ready(timeout=max(0.1, SERVER_PATIENCE - QUIET_WAIT))


def run_job(client: GeneratorClient, request, label: str) -> JobResult:
    """Submit and follow one job; Ctrl-C (or SIGTERM, see cli.main) cancels it on the server, then `Interrupted`."""
    bar = ProgressBar(label)
    try:
        return client.run(request, on_event=bar)
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(cancel_interrupted(client, request.job_id)) from None
    except ServerUnavailable as exc:  # lost mid-job: the journal may hold it, and the id finds it again
        raise ServerUnavailable(f"{exc} Once it is back, run this same command again with --job-id "
                                f"{request.job_id}: it follows the job if the server has it, else queues it "
                                "once.", exc.details) from None
    finally:
        bar.close()


def cancel_interrupted(client: GeneratorClient, job_id: str) -> str:
    """Cancel the job this command was following (it was ours: left running it would hold the GPU unseen)."""
    client.timeout = CANCEL_TIMEOUT  # an unreachable server must not hold up the exit for a minute
    try:
        reply = client.cancel(job_id)
    except RequestRejected as exc:
        if exc.code == "NOT_FOUND":  # interrupted before the server had the job
            return f"interrupted before job {job_id} was queued; nothing runs."
        return f"interrupted; job {job_id} could not be cancelled ({exc.message}) and may still run."
    except ServerUnavailable:
        return (f"interrupted; the server did not answer the cancel of job {job_id} within "
                f"{CANCEL_TIMEOUT:.0f} s, so it may still run.")
    if reply.state == "completed":
        return f"interrupted after job {job_id} completed; its frames are written."
    if not reply.cancelled:  # it had already ended otherwise (failed, cancelled)
        return f"interrupted after job {job_id} had ended ({reply.state})."
    return f"interrupted: job {job_id} cancelled (it stops at its next step; the frames it finished are kept)."


def summarise_paths(paths: list[str]) -> list[str]:
    """Show sequences as NAME.####.exr (first-last) rather than one line per frame."""
    groups: dict[str, dict[int, str]] = {}
    others = []
    for p in paths:
        # the frame number is the digits before .exr, whatever precedes them (NAME.####, NAME_####, padding 1+)
        m = re.match(r"^(.*?)(\d+)(\.exr)$", p)
        if m:
            groups.setdefault(m.group(1) + "#" * len(m.group(2)) + m.group(3), {})[int(m.group(2))] = p
        else:
            others.append(p)
    # one file is shown as it is: a still named pano_4096.exr is no sequence 'pano_####.exr (4096-4096)'
    return [f"{k} ({min(v)}-{max(v)}, {len(v)} frames)" if len(v) > 1 else next(iter(v.values()))
            for k, v in groups.items()] + others
