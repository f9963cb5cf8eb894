#!/usr/bin/env bash
# cinegen set-up: `./setup.sh demo` installs cinegen and runs the demo; `./setup.sh test` installs the
# development extras and runs the test suite. Re-running is cheap: what is installed is kept.
set -euo pipefail
cd "$(dirname "$0")"

what="${1:-demo}"
shift || true
PY="${PYTHON:-python3}"
VENV="${CINEGEN_VENV:-.venv}"

# A virtual environment that still sees packages already on the machine, so a torch that is already
# installed (CPU or CUDA build) is kept instead of downloaded again.
if [ -z "${VIRTUAL_ENV:-}" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv --system-site-packages "$VENV"
    fi
    PY="$VENV/bin/python"
fi
pip() { "$PY" -m pip "$@"; }

torch_ok() {
    "$PY" - <<'PYEOF' 2>/dev/null
import torch, sys
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(0 if (2, 4) <= (major, minor) < (3, 0) else 1)
PYEOF
}

if ! torch_ok; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "cinegen: installing torch for the NVIDIA GPU"
        pip install "torch>=2.4,<3"
    else
        # No GPU: never pull the multi-GB CUDA wheels. 2.13.0 resolves to the CPU build here.
        echo "cinegen: installing the CPU build of torch"
        pip install "torch==2.13.0"
    fi
fi

case "$what" in
    demo)
        pip install -q -e ".[server,plugin]"
        exec "$(dirname "$PY")/cinegen" demo "$@"
        ;;
    test)
        pip install -q -e ".[dev]"
        # Real headless Blender for the add-on tests. bpy pins numpy<2 in its metadata but runs with
        # numpy 2, which OpenImageIO needs, so it is installed without its pins (Python 3.11 only).
        if "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
            && ! "$PY" -c 'import bpy' >/dev/null 2>&1; then
            pip install -q --no-deps "bpy==5.0.1" zstandard cython requests || echo "cinegen: bpy not installed; Blender tests will be skipped"
        fi
        exec "$PY" -m pytest -q "$@"
        ;;
    *)
        echo "usage: ./setup.sh demo | test [pytest args]" >&2
        exit 2
        ;;
esac
