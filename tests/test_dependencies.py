"""The dependency check (tools/check_dependencies.py) passes, and each of its checks can fail."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location("check_dependencies", ROOT / "tools" / "check_dependencies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = _load_tool()


@pytest.mark.parametrize("name", list(check.CHECKS))
def test_dependency_check_passes(name):
    ok, out = check.CHECKS[name]()
    assert ok, f"{name}:\n{out}"


def test_server_packages_are_blocked_on_the_plugin_side():
    blocked = check._server_only_modules()
    for module in ("torch", "diffusers", "transformers", "scipy"):
        assert module in blocked
    for module in ("grpc", "numpy", "PySide6", "cinegen"):
        assert module not in blocked


def test_plugin_import_check_fails_when_a_needed_package_is_missing():
    ok, out = check.check_plugin_imports(extra_blocked=("grpc",))  # every client module needs grpc
    assert not ok and "grpc" in out


def test_deptry_reports_an_undeclared_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("import scipy\nimport yaml\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "probe"\nversion = "0"\ndependencies = ["PyYAML"]\n')
    code, out = check._deptry([str(tmp_path / "pkg")], tmp_path / "pyproject.toml")
    assert code != 0 and "scipy" in out and "DEP00" in out
