#!/usr/bin/env bash
# `cinegen bench gpu --real-size` from a clean checkout on a lent GPU machine, in one command:
#   tools/device/bench_gpu.sh [more bench options, e.g. --compile --channels-last]
# The device tool runs it as `bash tools/device/bench_gpu.sh` with `carry: [".whl"]` after
# `tools/device/fetch_wheels.sh` here. It needs no install: the source tree goes on PYTHONPATH, the
# carried wheels (if any) into /tmp, and the image's own torch/transformers are used. Figures land in
# $OUT (bench-gpu.json, bench-gpu.partial.json after each case, the log, nvidia-smi), or ./cinegen-bench.
# `--tiny --device cpu` runs the same path shrunk on any machine (what tests/test_device_bench.py does).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
out="${OUT:-$root/cinegen-bench}"
mkdir -p "$out"
PY="${PYTHON:-python3}"
wheels="${CINEGEN_WHEELS:-.whl}"  # what fetch_wheels.sh downloaded; absent = the machine has everything
if compgen -G "$wheels/*.whl" >/dev/null; then
    site="${CINEGEN_WHEEL_SITE:-/tmp/cinegen-site}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root/server:$root/shared${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/nvidia-smi.csv" 2>&1 || true
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--real-size)
set -o pipefail
"$PY" -m cinegen.server.bench gpu "${args[@]}" --json "$out/bench-gpu.json" --out "${TMPDIR:-/tmp}/cinegen-bench-reports" 2>&1 \
    | tee "$out/bench-gpu.log"
