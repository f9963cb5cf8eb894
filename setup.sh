#!/usr/bin/env bash
# cinegen set-up: `./setup.sh demo` installs cinegen and runs the demo; `./setup.sh test` installs the
# development extras and runs the test suite. Re-running is cheap: what is installed is kept.
set -euo pipefail
cd "$(dirname "$0")"

what="${1:-demo}"
shift || true
PY="${PYTHON:-python3}"
VENV="${CINEGEN_VENV:-.venv}"

# cinegen needs Python 3.10+ (pyproject's requires-python): said here, before pip fails on torch
# in its own words, and before an old Python leaves a virtual environment every later run would reuse.
need_python() {  # $1: the interpreter, $2: what to do instead
    local version
    version=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || version=""
    local major="${version%%.*}" minor="${version#*.}"
    if [ -z "$version" ] || [ "$major" -lt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -lt 10 ]; }; then
        echo "cinegen: needs Python 3.10 or newer, but ${1} is ${version:+Python }${version:-not a working Python}. $2" >&2
        exit 2
    fi
}
newer="Install Python 3.10+ (3.11 is tested) and run: PYTHON=/path/to/python3.11 ./setup.sh $what"

# A virtual environment that still sees packages already on the machine, so a torch that is already
# installed (CPU or CUDA build) is kept instead of downloaded again.
if [ -z "${VIRTUAL_ENV:-}" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        need_python "$PY" "$newer"
        # Debian's and Ubuntu's Python leaves a venv without pip when python3-venv is missing: removed
        # again, or every later run would reuse it and fail on `-m pip` (what it was not made with).
        made=yes; [ ! -e "$VENV" ] || made=no  # a folder that was there (CINEGEN_VENV=an existing one) is not ours to delete
        if ! "$PY" -m venv --system-site-packages "$VENV"; then
            if [ "$made" = yes ]; then rm -rf "$VENV"; fi
            echo "cinegen: $PY could not make the virtual environment $VENV (on Debian or Ubuntu: sudo apt install python$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv), then run ./setup.sh $what again." >&2
            exit 2
        fi
    else
        need_python "$VENV/bin/python" "It is the Python of the existing $VENV: remove it (rm -rf $VENV), then: PYTHON=/path/to/python3.11 ./setup.sh $what"
    fi
    PY="$VENV/bin/python"
    if ! "$PY" -m pip --version >/dev/null 2>&1; then
        echo "cinegen: the virtual environment $VENV has no pip (made without ensurepip): remove it (rm -rf $VENV) and run ./setup.sh $what again." >&2
        exit 2
    fi
else
    need_python "$PY" "$newer (outside the active virtual environment, or in one made with a newer Python)"
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
        # No GPU: never pull the multi-GB CUDA wheels. PyPI's Linux torch *is* the CUDA build (it pulls
        # nvidia-* packages), so the pin names the CPU build's local version, which only a wheel house in
        # pip's configuration or PyTorch's CPU index has; macOS wheels on PyPI are CPU builds already.
        spec="torch==2.13.0+cpu"
        [ "$(uname -s)" = Darwin ] && spec="torch==2.13.0"
        cpu_index="https://download.pytorch.org/whl/cpu"
        # an active virtual environment has no $VENV folder of ours: its log goes to a temporary file
        if [ -n "${VIRTUAL_ENV:-}" ]; then log="$(mktemp -t cinegen-torch.XXXXXX)"; else log="$(cd "$VENV" && pwd)/torch-install.log"; fi
        echo "cinegen: installing the CPU build of torch (about 200 MB)"
        # pip's configured indexes first (a studio mirror without internet), then PyTorch's CPU index.
        if ! pip install -q "$spec" >"$log" 2>&1 \
            && ! pip install -q "$spec" --extra-index-url "$cpu_index" >>"$log" 2>&1; then
            pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
            echo "cinegen: no CPU build of torch ($spec) for Python $pyver was found in pip's indexes or at $cpu_index (pip's words: $log); install a CPU torch>=2.4,<3 into $("$PY" -c 'import sys; print(sys.prefix)') and run ./setup.sh $what again." >&2
            exit 2
        fi
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
        # Its own dependencies are installed with theirs (requests needs urllib3, idna, certifi, ...).
        if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
            "$PY" -c 'import bpy' >/dev/null 2>&1 \
                || echo "cinegen: bpy (headless Blender 5.0) is made for Python 3.11 only; the Blender tests will be skipped"
        elif ! "$PY" -c 'import bpy' >/dev/null 2>&1; then
            { pip install -q --no-deps "bpy==5.0.1" && pip install -q zstandard cython requests; } \
                || echo "cinegen: bpy not installed; Blender tests will be skipped"
        fi
        exec "$PY" -m pytest -q "$@"
        ;;
    *)
        echo "usage: ./setup.sh demo | test [pytest args]" >&2
        exit 2
        ;;
esac
