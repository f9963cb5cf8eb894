"""Generate the Python stubs of protos/cinegen/v1/generator.proto into shared/cinegen/common/proto/.

grpc_tools writes `from cinegen.v1 import generator_pb2`; the stubs live in `cinegen.common.proto`,
so that one import line is rewritten. tests/test_protos.py regenerates into a temporary folder and
fails when the committed stubs differ.
"""
from __future__ import annotations

import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
PROTO_FILE = "cinegen/v1/generator.proto"
STUB_DIR = ROOT / "shared" / "cinegen" / "common" / "proto"
STUB_NAMES = ("generator_pb2.py", "generator_pb2.pyi", "generator_pb2_grpc.py")


def generate(out_dir: pathlib.Path) -> None:
    from grpc_tools import protoc  # imported here: only needed by developers

    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            PROTO_FILE,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed on " + PROTO_FILE)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in STUB_NAMES:
            text = (pathlib.Path(tmp) / "cinegen" / "v1" / name).read_text()
            text = text.replace("from cinegen.v1 import generator_pb2", "from cinegen.common.proto import generator_pb2")
            (out_dir / name).write_text(text)


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else STUB_DIR)
    print("stubs written")
