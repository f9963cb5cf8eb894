"""The committed gRPC stubs are exactly what the .proto generates today."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "tools" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    gen = _generator()
    gen.generate(tmp_path)
    for name in gen.STUB_NAMES:
        fresh = (tmp_path / name).read_text()
        committed = (gen.STUB_DIR / name).read_text()
        assert fresh == committed, f"{name} is stale: run `python tools/gen_protos.py` and commit the result"


def test_stubs_import_from_the_common_package_without_torch():
    import subprocess
    import sys

    code = ("import sys; import cinegen.common.proto.generator_pb2_grpc, cinegen.common.client; "
            "assert 'torch' not in sys.modules, 'cinegen.common must not import torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
