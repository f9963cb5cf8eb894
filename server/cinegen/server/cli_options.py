"""argparse options shared by `cinegen` and the light `python -m cinegen.server.bench` (argparse only: no
torch, gRPC or OpenImageIO here, so `--help` stays fast and the bench entry runs on a bare GPU image)."""
from __future__ import annotations

import argparse
import re


def add_server_options(p: argparse.ArgumentParser) -> None:
    """Where and how a process that runs models loads them (serve, generate without --server, demo, bench)."""
    p.add_argument("--models", action="append", default=[], metavar="DIR",
                   help="Folder of diffusers models (repeatable; also $CINEGEN_MODELS).")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="Where the models run; auto = the GPU when torch sees one, else the CPU. Default: auto.")
    p.add_argument("--max-size", type=int, default=8192, help="Largest width/height the server accepts.")
    p.add_argument("--max-frames", type=positive_int, default=2000, metavar="N",
                   help="Most frames one job may ask for (--frames; the pixel budget --max-pixels applies too). "
                   "Default: 2000.")
    p.add_argument("--memory-budget", type=float, default=None, help="GB the model cache may use.")
    p.add_argument("--device-memory", type=memory_size, default=None, metavar="SIZE",
                   help="Device memory a job may use at its peak, such as 24GB or 512MB (default: the GPU's free "
                   "memory; unchecked on a CPU); Submit refuses a job whose estimate is larger, naming what to lower.")
    p.add_argument("--no-hf-cache", action="store_true", help="Ignore the local Hugging Face cache.")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   choices=("inductor", "eager", "aot_eager", "cudagraphs"),
                   help="torch.compile each model's UNet/transformer (default backend inductor; the first step "
                   "of each new size compiles, later ones run faster on a GPU).")
    p.add_argument("--channels-last", action="store_true",
                   help="UNet weights in channels-last memory format (faster convolutions in half precision on a GPU).")


def add_bench_options(bench: argparse.ArgumentParser) -> None:
    """`cinegen bench …` and `python -m cinegen.server.bench …` take the same options."""
    bench.add_argument("what", nargs="*", default=["image"],
                       help="Benchmarks to run (image, panorama, io, latency, gpu, …); several run interleaved.")
    bench.add_argument("--repeat", type=int, default=3, help="Rounds; figures are medians with their spread.")
    bench.add_argument("--json", default=None, metavar="FILE", help="Also write all the figures to FILE.")
    bench.add_argument("--tiny", action="store_true",
                       help="Shrunken configs and sizes: exercises a benchmark's code path in seconds (no figures).")
    bench.add_argument("--out", default="cinegen-bench", help="Folder for benchmark outputs and reports.")
    bench.add_argument("--real-size", action="store_true",
                       help="Real-size architectures with random weights (needs a GPU).")
    bench.add_argument("--model", default=None, help="Model id to measure (default: the benchmark's choice).")
    bench.add_argument("--video-model", default=None, help="Video model id for benchmarks that need one.")
    add_server_options(bench)


def memory_size(text: str) -> int:
    """'24GB', '24 GiB', '512MB' or a plain number of GB -> bytes (GB and GiB both 2^30: what GPUs are sold as)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?)?\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a memory size such as 24GB or 512MB")
    unit = (match.group(2) or "g")[0]
    return int(float(match.group(1)) * {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit])


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value
