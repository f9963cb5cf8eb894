"""Dependency check of the test suite: every third-party import is declared, every declaration is used.

Three checks, each of which fails the test command:
1. the product (`shared/`, `server/`, `plugin/`) against everything `pyproject.toml` declares —
   deptry: no undeclared import (DEP001/DEP003), no unused declaration (DEP002), no dev-only tool
   imported by product code (DEP004);
2. the plugin (`plugin/`) against the base install plus the `plugin` extra alone — deptry again, with a
   pyproject that declares only those, so the host's Python never needs a server package;
3. every `cinegen.plugin` module imported in a fresh interpreter in which the packages of the other extras
   cannot be imported — this catches what deptry cannot see: a plugin module importing a `cinegen.common`
   module that itself needs a server package.

    python tools/check_dependencies.py        # exit 0 when all three pass
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package (dev extra)
    import tomli as tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Modules the host application provides; a plugin module may need them to import at all.
HOST_MODULES = ("bpy", "bpy_extras", "nuke", "nukescripts", "PySide2", "_bpy")


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s\[<>=!~;]", spec.strip(), maxsplit=1)[0]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _deptry(roots: list[str], config: Path, ignore: str = "") -> tuple[int, str]:
    cmd = [sys.executable, "-m", "deptry", *roots, "--config", str(config), "--no-ansi"]
    if ignore:
        cmd += ["--ignore", ignore]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def check_product() -> tuple[bool, str]:
    code, out = _deptry(["shared", "server", "plugin"], ROOT / "pyproject.toml")
    return code == 0, out


def check_plugin_alone() -> tuple[bool, str]:
    """deptry over plugin/ with a pyproject that declares only the base install and the plugin extra."""
    project = _pyproject()
    deps = list(project["project"]["dependencies"]) + list(project["project"]["optional-dependencies"]["plugin"])
    deptry_cfg = project["tool"]["deptry"]
    lines = ["[project]", 'name = "cinegen-plugin-check"', 'version = "0"', f"dependencies = {json.dumps(deps)}", "",
             "[tool.deptry]", f"known_first_party = {json.dumps(deptry_cfg['known_first_party'])}", "",
             "[tool.deptry.per_rule_ignores]"]
    lines += [f"{rule} = {json.dumps(names)}" for rule, names in deptry_cfg["per_rule_ignores"].items()]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "pyproject.toml"
        config.write_text("\n".join(lines) + "\n")
        # Unused declarations are fine here: the base install also serves the server.
        code, out = _deptry(["plugin"], config, ignore="DEP002")
    return code == 0, out


def _server_only_modules() -> list[str]:
    """Top-level modules of packages declared only by the server/dev extras (and what they pull in)."""
    from importlib import metadata

    project = _pyproject()["project"]
    allowed = _closure([_requirement_name(s) for s in project["dependencies"]
                        + project["optional-dependencies"]["plugin"]])
    others = set()
    for extra, specs in project["optional-dependencies"].items():
        if extra != "plugin":
            others.update(_closure([_requirement_name(s) for s in specs if _requirement_name(s) != "cinegen"]))
    blocked_dists = others - allowed
    modules = set()
    for module, dists in metadata.packages_distributions().items():
        if any(_canonical(d) in blocked_dists for d in dists) and not any(_canonical(d) in allowed for d in dists):
            modules.add(module)
    return sorted(m for m in modules if m.isidentifier())


def _closure(names: list[str]) -> set[str]:
    """The installed distributions named and everything they require (extras markers ignored)."""
    from importlib import metadata

    seen: set[str] = set()
    todo = [_canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            todo.append(_canonical(_requirement_name(req)))
    return seen


_IMPORT_ALL = r"""
import importlib, importlib.abc, json, pkgutil, sys
blocked, hosts = set(json.loads(sys.argv[1])), tuple(json.loads(sys.argv[2]))

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"server-only package {name!r} imported by the plugin side", name=name)
        return None

sys.meta_path.insert(0, Blocker())
import cinegen.plugin
failures, imported = [], 0
for info in pkgutil.walk_packages(cinegen.plugin.__path__, "cinegen.plugin."):
    try:
        importlib.import_module(info.name)
        imported += 1
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in hosts:
            continue  # needs the host application itself (Nuke, Blender)
        failures.append(f"{info.name}: {exc}")
    except Exception as exc:
        failures.append(f"{info.name}: {type(exc).__name__}: {exc}")
print(json.dumps({"failures": failures, "imported": imported}))
"""


def check_plugin_imports(extra_blocked: tuple[str, ...] = ()) -> tuple[bool, str]:
    blocked = sorted(set(_server_only_modules()) | set(extra_blocked))
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    proc = subprocess.run([sys.executable, "-c", _IMPORT_ALL, json.dumps(blocked), json.dumps(HOST_MODULES)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        return False, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    failures = result["failures"]
    summary = (f"{result['imported']} plugin modules imported with {len(blocked)} server-side modules blocked "
               f"({', '.join(m for m in blocked if not m.startswith('_'))[:120]}, ...)")
    return not failures and result["imported"] > 0, "\n".join([summary, *failures])


CHECKS = {"product against pyproject.toml": check_product,
          "plugin against the base install + plugin extra": check_plugin_alone,
          "plugin modules import without server packages": check_plugin_imports}


def main() -> int:
    ok_all = True
    for title, check in CHECKS.items():
        ok, out = check()
        ok_all &= ok
        print(f"{'ok  ' if ok else 'FAIL'} {title}")
        if not ok or "-v" in sys.argv:
            print("\n".join("     " + line for line in out.splitlines()))
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
