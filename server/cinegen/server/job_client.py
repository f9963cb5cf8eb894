"""Run one job from the command line: connect to `--server` (or an in-process server), submit, show
progress until it ends, and summarise the files it wrote. Used by `generate`, `pipelines`, `models`
and the demo."""
from __future__ import annotations

import argparse
import contextlib
import re
from pathlib import Path
from typing import Iterator

from cinegen.common.client import GeneratorClient, JobResult

from .progress import ProgressBar


def server_config(args: argparse.Namespace, host: str = "127.0.0.1", port: int = 0):
    from .service import ServerConfig

    return ServerConfig(host=host, port=port, models_dirs=[Path(p) for p in args.models], device=args.device,
                        max_width=args.max_size, max_height=args.max_size,
                        memory_budget=int(args.memory_budget * (1 << 30)) if args.memory_budget else None,
                        use_hf_cache=not args.no_hf_cache, token=getattr(args, "token", None))


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[GeneratorClient]:
    """A client of `--server`, or of an in-process server started for this command."""
    address = getattr(args, "server", None)
    running = None
    if not address:
        from .server import start_server

        running = start_server(server_config(args))
        address = running.address
    client = GeneratorClient(address, timeout=60.0, token=getattr(args, "token", None) if running is None else None)
    try:
        client.wait_ready(timeout=30.0)
        yield client
    finally:
        client.close()
        if running:
            running.stop()


def run_job(client: GeneratorClient, request, label: str) -> JobResult:
    bar = ProgressBar(label)
    try:
        return client.run(request, on_event=bar)
    finally:
        bar.close()


def summarise_paths(paths: list[str]) -> list[str]:
    """Show sequences as NAME.####.exr (first-last) rather than one line per frame."""
    groups: dict[str, list[int]] = {}
    others = []
    for p in paths:
        m = re.match(r"^(.*\.)(\d{4,})(\.exr)$", p)
        if m:
            groups.setdefault(m.group(1) + "#" * len(m.group(2)) + m.group(3), []).append(int(m.group(2)))
        else:
            others.append(p)
    return [f"{k} ({min(v)}-{max(v)}, {len(v)} frames)" for k, v in groups.items()] + others
