"""Light commands (`--help`, `pipelines`, `models` of a running server) never import torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import contextlib, io, sys
from cinegen.server.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:  # --help exits
        code = exit.code
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
print(code, ",".join(heavy) or "-", len(out.getvalue().splitlines()))
"""


def _run_cli(*argv: str) -> tuple[int, str, int]:
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    code, heavy, lines = done.stdout.split()[-3:]
    return int(code), heavy, int(lines)


@pytest.mark.parametrize("command", ["pipelines", "models"])
def test_listing_a_running_server_imports_no_torch(running_server, command):
    code, heavy, lines = _run_cli(command, "--server", running_server.address)
    assert (code, heavy) == (0, "-") and lines > 3


def test_help_imports_no_torch():
    code, heavy, lines = _run_cli("--help")
    assert (code, heavy) == (0, "-") and lines > 3
