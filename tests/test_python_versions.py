"""The host side runs on Nuke 15 (Python 3.10) and Nuke 16 (3.11), and installs without server packages.

No 3.10 interpreter is here, so `vermin` (a maintained minimum-version detector) checks every module of
`shared/` and `plugin/` against 3.10; a probe file with a 3.11-only feature proves it would notice.
"""
from __future__ import annotations

import subprocess
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package (dev extra)
    import tomli as tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGET = "3.10"
pytest.importorskip("vermin", reason="vermin is a dev dependency (pip install -e '.[dev]')")


def _vermin(*paths: Path) -> subprocess.CompletedProcess:
    # --eval-annotations: annotations count too (PEP 604 `X | None` is 3.10, fine; newer syntax is not)
    return subprocess.run([sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", f"-t={TARGET}-", "--no-tips", "--violations",
                           "--eval-annotations", "--no-parse-comments", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def test_shared_and_plugin_code_runs_on_python_3_10():
    proc = _vermin(ROOT / "shared", ROOT / "plugin")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    analysed = next(line for line in proc.stdout.splitlines() if line.startswith("Analyzing"))
    assert int(analysed.split()[1]) >= 50  # every module, Nuke's menu.py and the Blender add-on included


@pytest.mark.parametrize("source", ["import tomllib\n", "try:\n    pass\nexcept* ValueError:\n    pass\n",
                                    "from typing import Self\n"])
def test_the_version_check_fails_on_python_3_11_features(tmp_path, source):
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    if "except*" in source and sys.version_info < (3, 11):
        # vermin reads syntax with the running Python's parser, which here is the 3.10 that refuses it
        with pytest.raises(SyntaxError):
            compile(source, str(probe), "exec")
        return
    proc = _vermin(probe)
    assert proc.returncode != 0 and "3.11" in proc.stdout


def test_packaging_admits_python_3_10_and_keeps_server_libraries_out_of_the_base_install():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    base = {_name(spec) for spec in project["dependencies"]}
    assert base == {"grpcio", "protobuf", "numpy"}
    server = {_name(spec) for spec in project["optional-dependencies"]["server"]}
    assert {"openimageio", "opencolorio", "opentimelineio", "pyyaml", "pillow"} <= server


def _name(spec: str) -> str:
    return spec.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].split("~")[0].strip().lower()


@pytest.mark.parametrize("script", ["tools/check_dependencies.py", "tools/build_blender_extension.py",
                                    "tests/test_python_versions.py", "tests/test_blender_extension.py"])
def test_the_scripts_that_read_toml_import_without_tomllib_as_on_python_3_10(script):
    """`./setup.sh test` on Python 3.10 stopped at collection on `import tomllib` (3.11+), and
    `python tools/build_blender_extension.py` with it; there the dev extra's tomli is the same parser."""
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert "tomli>=2; python_version < '3.11'" in dev
    pytest.importorskip("tomli", reason="tomli stands in for tomllib on Python 3.10 only; this Python lacks it")
    probe = ("import importlib.util, sys\n"
             "sys.modules['tomllib'] = None  # unimportable, as on Python 3.10\n"
             f"sys.path[:0] = [{str(ROOT / 'tools')!r}, {str(ROOT / 'tests')!r}]\n"
             f"spec = importlib.util.spec_from_file_location('probe', {str(ROOT / script)!r})\n"
             "sys.modules['probe'] = module = importlib.util.module_from_spec(spec)  # for its dataclasses\n"
             "spec.loader.exec_module(module)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
