"""`python -m cinegen.server.bench` and tools/device/bench_gpu.sh: the GPU benchmark runs from the source
tree on a machine without gRPC, protobuf or OpenTimelineIO (the lent GPU image has torch but not those)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Modules the GPU image lacks (or holds in an older protobuf than the generated stubs ask for):
# importing any of them on the benchmark path fails, as it would there.
WITHOUT = textwrap.dedent("""
    import runpy, sys
    MISSING = {"grpc", "google", "opentimelineio", "grpc_health", "grpc_reflection", "PySide6", "ray"}
    class Missing:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in MISSING:
                raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU image)")
    sys.meta_path.insert(0, Missing())
    sys.argv = ["bench"] + sys.argv[1:]
    runpy.run_module("cinegen.server.bench", run_name="__main__")
""")


def test_bench_gpu_tiny_runs_without_grpc_protobuf_or_otio(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", WITHOUT, "gpu", "--tiny", "--device", "cpu",
                             "--out", str(tmp_path / "reports")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench-gpu.json").read_text())
    assert report["tiny"] is True and len(report["rows"]) == 6
    assert [row["status"] for row in report["rows"]] == ["ok"] * 6, report["rows"]


def test_device_script_runs_the_bench_entry_from_the_source_tree(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "CINEGEN_WHEELS": str(tmp_path / "none")}
    result = subprocess.run(["bash", str(ROOT / "tools" / "device" / "bench_gpu.sh"), "--help"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "python -m cinegen.server.bench" in result.stdout and "--real-size" in result.stdout
    assert (tmp_path / "bench-gpu.log").read_text() == result.stdout.split("\n", 1)[1]  # after torch's line
    subprocess.run(["bash", "-n", str(ROOT / "tools" / "device" / "fetch_wheels.sh")], check=True)
