#!/usr/bin/env bash
# Run HERE (where PyPI is reachable), before `bench_gpu.sh` goes to a lent GPU machine: downloads into
# .whl/ (git-ignored; carried with the device tool's `carry: [".whl"]`) the wheels that the GPU image
# lacks for `python -m cinegen.server.bench gpu`: diffusers and importlib_metadata (pure Python),
# OpenImageIO and OpenColorIO (the pipelines' frame writer imports them). torch, transformers,
# accelerate, peft, safetensors, numpy, scipy, PyYAML and Pillow are the image's own (its KINDS.md list).
# About 22 MB; the working tree that travels with it is about 32 MB (the limit is 64 MiB).
#   tools/device/fetch_wheels.sh [PYTHON_VERSION]     # default 3.12, the GPU image's Python
set -euo pipefail
cd "$(dirname "$0")/../.."
version="${1:-3.12}"
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    "diffusers==0.42.1" "importlib_metadata" "OpenImageIO>=3.0,<3.3" "opencolorio>=2.3,<2.7"
ls -la .whl
du -sh .whl
