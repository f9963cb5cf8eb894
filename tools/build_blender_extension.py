"""Build the installable Blender extension: `python tools/build_blender_extension.py` -> dist/cinegen-<version>.zip.

The zip holds the add-on (plugin/blender/) and every wheel it imports, so a stock Blender installs it
with nothing else (Blender unpacks the wheels into the extension's own site folder):

- cinegen's client side as a pure-Python wheel made here: the light `cinegen.common` modules
  (client, connection, params, sequence, trajectory export, proto stubs) and `cinegen.plugin`;
  no server code, nothing that needs OpenImageIO, OpenColorIO, PyYAML or torch;
- grpcio and protobuf (and grpcio's typing-extensions) for Blender's Python 3.11 (Blender 4.2 to 5.0)
  and 3.13 (5.1 on) on Linux x86-64, Windows x64 and macOS arm64/x86-64, fetched from PyPI with
  `pip download --only-binary` at build time into a cache folder (reused on the next build, so a
  rebuild needs no network).
numpy ships with Blender. The versions are the ones installed next to this script, the ones the
tests ran with.

Blender's own extension tool builds and validates the package: `blender --command extension build`
when `--blender PATH` is given, else the same tool inside the `bpy` module.
"""
from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package (dev extra)
    import tomli as tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDON_DIR = ROOT / "plugin" / "blender"
MANIFEST = "blender_manifest.toml"
# The CPython each Blender embeds: 4.2 to 5.0 have 3.11, 5.1 and later 3.13. Blender installs the wheels for
# its own and refuses an extension with none ("This Python version (3.13) isn't compatible with (3.11)").
BLENDER_PYTHONS = ("3.11", "3.13")
DEFAULT_CACHE = Path(os.environ.get("CINEGEN_WHEEL_CACHE", Path.home() / ".cache" / "cinegen-wheels"))


@dataclass(frozen=True)
class Platform:
    blender: str  # Blender's platform name in the manifest
    pip_tags: tuple[str, ...]  # pip expands each to the older compatible tags of its family


PLATFORMS = (
    Platform("linux-x64", ("manylinux2014_x86_64",)),
    Platform("windows-x64", ("win_amd64",)),
    Platform("macos-arm64", ("macosx_11_0_arm64",)),
    Platform("macos-x64", ("macosx_11_0_x86_64",)),  # Blender 4.2+ needs macOS 11.2; grpcio ships universal2 there
)
# What the add-on needs from PyPI; pinned to the installed versions (the ones the tests ran with).
BINARY_REQUIREMENTS = ("grpcio", "protobuf", "typing-extensions")

# The client wheel holds cinegen.plugin and every *light* cinegen.common module: one whose
# module-level imports are the standard library, these wheels (and numpy, which Blender ships) or
# other light common modules. exr (OpenImageIO), color (OpenColorIO), story_io (PyYAML) stay out.
LIGHT_THIRD_PARTY = ("grpc", "google", "numpy", "typing_extensions")
COMMON_DIR = ROOT / "shared" / "cinegen" / "common"
PROTO_SOURCE = ROOT / "protos" / "cinegen" / "v1" / "generator.proto"


class WheelDownloadError(RuntimeError):
    """pip could not fetch a wheel (no network, or no wheel for a platform)."""


class BlenderToolError(RuntimeError):
    """Blender's extension tool refused the package; the message is its own output."""


# ---- versions ------------------------------------------------------------------------------------
def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def manifest_version() -> str:
    return tomllib.loads((ADDON_DIR / MANIFEST).read_text())["version"]


def pinned_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in BINARY_REQUIREMENTS]


# ---- the cinegen client wheel --------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = path.relative_to(COMMON_DIR.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """Absolute names a module imports when it loads (imports inside functions are on demand: skipped)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def light_common_modules() -> list[Path]:
    """The cinegen.common modules whose imports a host's Python can satisfy with the bundled wheels."""
    modules = {_module_name(p): p for p in sorted(COMMON_DIR.rglob("*.py"))}
    imports = {name: _top_level_imports(path) for name, path in modules.items()}
    light = set(modules)
    changed = True
    while changed:  # drop modules with a heavy import, then the ones that import those, until stable
        changed = False
        for name in sorted(light):
            for imported in imports[name]:
                top = imported.split(".")[0]
                if top == "cinegen":
                    heavy = imported in modules and imported not in light
                else:
                    heavy = top not in sys.stdlib_module_names and top not in LIGHT_THIRD_PARTY and top != "__future__"
                if heavy:
                    light.discard(name)
                    changed = True
                    break
    return [modules[name] for name in sorted(light)]


def client_files() -> dict[str, Path]:
    """Archive name -> source file of every module in the client wheel."""
    files: dict[str, Path] = {}
    for path in light_common_modules():
        files[f"cinegen/common/{path.relative_to(COMMON_DIR).as_posix()}"] = path
    stubs = COMMON_DIR / "proto" / "generator_pb2.pyi"
    if stubs.is_file():
        files["cinegen/common/proto/generator_pb2.pyi"] = stubs
    files["cinegen/common/proto/generator.proto"] = PROTO_SOURCE
    plugin = ROOT / "plugin" / "cinegen" / "plugin"
    for path in sorted(plugin.rglob("*.py")):
        files[f"cinegen/plugin/{path.relative_to(plugin).as_posix()}"] = path
    return files


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_client_wheel(version: str, out_dir: Path) -> Path:
    """cinegen-<version>-py3-none-any.whl with the client modules only (a valid wheel: METADATA, WHEEL, RECORD)."""
    dist_info = f"cinegen-{version}.dist-info"
    metadata = "\n".join([
        "Metadata-Version: 2.1", "Name: cinegen", f"Version: {version}",
        "Summary: cinegen client and DCC plugin (the part a host's Python needs)",
        "Requires-Python: >=3.11", "Requires-Dist: grpcio", "Requires-Dist: protobuf", "Requires-Dist: numpy", ""])
    wheel_info = "Wheel-Version: 1.0\nGenerator: cinegen build_blender_extension\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries = {name: path.read_bytes() for name, path in client_files().items()}
    entries[f"{dist_info}/METADATA"] = metadata.encode()
    entries[f"{dist_info}/WHEEL"] = wheel_info.encode()
    record = [_record_line(name, data) for name, data in entries.items()] + [f"{dist_info}/RECORD,,"]
    entries[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    target = out_dir / f"cinegen-{version}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            # a fixed date: the same sources give the same wheel bytes
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data,
                             compress_type=zipfile.ZIP_DEFLATED)
    return target


# ---- the binary wheels ---------------------------------------------------------------------------
def _cached(folder: Path, requirements: list[str]) -> list[Path] | None:
    """The wheels already in `folder` for exactly these pinned requirements, or None if one is missing."""
    found = []
    for requirement in requirements:
        name, version = requirement.split("==")
        prefix = f"{name.replace('-', '_')}-{version}-"
        matches = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix.lower()))
        if not matches:
            return None
        found.append(matches[0])
    return found


def download_wheels(platform: Platform, cache: Path, requirements: list[str],
                    python: str = BLENDER_PYTHONS[0]) -> list[Path]:
    """The platform's wheels for one Blender Python, from the cache or `pip download` (binary only)."""
    folder = cache / f"py{python}-{platform.blender}"
    folder.mkdir(parents=True, exist_ok=True)
    cached = _cached(folder, requirements)
    if cached is not None:
        return cached
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
               "--disable-pip-version-check", "--python-version", python, "--implementation", "cp",
               "-d", str(folder)]
    for tag in platform.pip_tags:
        command += ["--platform", tag]
    done = subprocess.run(command + requirements, capture_output=True, text=True, timeout=600)
    wheels = _cached(folder, requirements)
    if done.returncode != 0 or wheels is None:
        raise WheelDownloadError(f"pip download for {platform.blender} (Python {python}) failed: "
                                 f"{(done.stderr or done.stdout).strip()[-1500:]}")
    return wheels


# ---- Blender's extension tool --------------------------------------------------------------------
_BPY_CLI = ("import sys, bpy\n"
            "from bl_pkg.bl_extension_cli import cli_extension_handler\n"
            "sys.exit(cli_extension_handler(sys.argv[1:]))\n")


def blender_extension_command(blender: str | None = None, python: str | None = None) -> list[str]:
    """`blender --command extension`, or the same tool run through the bpy module."""
    if blender:
        return [blender, "--factory-startup", "--command", "extension"]
    return [python or sys.executable, "-c", _BPY_CLI]


def run_extension_tool(args: list[str], blender: str | None = None, python: str | None = None) -> str:
    done = subprocess.run(blender_extension_command(blender, python) + args, capture_output=True, text=True,
                          timeout=600)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise BlenderToolError(f"blender --command extension {' '.join(args)} failed:\n{output}")
    return output


# ---- the package ---------------------------------------------------------------------------------
def stage_addon(stage: Path, wheels: list[Path]) -> Path:
    """A copy of the add-on folder with the wheels in wheels/ and listed in its manifest."""
    source = stage / "cinegen"
    shutil.copytree(ADDON_DIR, source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "wheels", "*.zip"))
    (source / "wheels").mkdir()
    for wheel in wheels:
        shutil.copy2(wheel, source / "wheels" / wheel.name)
    listed = ",\n".join(f'  "./wheels/{w.name}"' for w in sorted(wheels, key=lambda p: p.name))
    text = (source / MANIFEST).read_text()
    # top-level keys must come before the first [table]
    head, table, tail = text.partition("\n[permissions]")
    (source / MANIFEST).write_text(f"{head.rstrip()}\n\nwheels = [\n{listed},\n]\n{table}{tail}")
    return source


def build(output_dir: Path = ROOT / "dist", cache: Path = DEFAULT_CACHE, blender: str | None = None,
          python: str | None = None, platforms: tuple[Platform, ...] = PLATFORMS, log=print) -> Path:
    """Build and validate dist/cinegen-<version>.zip; returns its path."""
    version = project_version()
    if manifest_version() != version:
        raise SystemExit(f"{ADDON_DIR / MANIFEST} says version {manifest_version()}, pyproject.toml {version}: "
                         "make them equal.")
    output_dir.mkdir(parents=True, exist_ok=True)
    requirements = pinned_requirements()
    with tempfile.TemporaryDirectory(prefix="cinegen-blender-") as tmp:
        tmp_path = Path(tmp)
        wheels = [build_client_wheel(version, tmp_path)]
        for blender_python in BLENDER_PYTHONS:
            for platform in platforms:
                found = download_wheels(platform, cache, requirements, blender_python)
                log(f"{platform.blender}, Python {blender_python}: {', '.join(w.name for w in found)}")
                wheels += found
        # macOS universal2 wheels serve both Macs; abi3 and pure-Python wheels serve both Pythons
        unique = list({w.name: w for w in wheels}.values())
        source = stage_addon(tmp_path / "stage", unique)
        target = output_dir / f"cinegen-{version}.zip"
        target.unlink(missing_ok=True)
        run_extension_tool(["build", "--source-dir", str(source), "--output-filepath", str(target)], blender, python)
    report = run_extension_tool(["validate", str(target)], blender, python).splitlines()
    log(next((line for line in report if line.startswith("Success")), report[-1]))
    log(f"built {target} ({target.stat().st_size / 1e6:.1f} MB, {len(unique)} wheels)")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    parser.add_argument("--wheel-cache", type=Path, default=DEFAULT_CACHE,
                        help="Where downloaded wheels are kept between builds (default %(default)s).")
    parser.add_argument("--blender", help="A Blender executable to build with; default: the bpy module.")
    args = parser.parse_args(argv)
    try:
        build(args.output_dir, args.wheel_cache, args.blender)
    except (WheelDownloadError, BlenderToolError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
