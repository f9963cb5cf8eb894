"""The built extension zip in a stock headless Blender: built with Blender's own tool, validated,
installed with `bpy.ops.extensions.package_install_files` into a clean user folder where only its
bundled wheels provide grpc, protobuf and cinegen, then used through the native panel's operators
against a running tiny-model server (image queued, panorama without a plate, story from a file,
re-run from the history, the farm helper).

The zip's wheels are downloaded from PyPI once into ~/.cache/cinegen-wheels (or $CINEGEN_WHEEL_CACHE);
without network and without a cache the test is skipped, saying so.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package (dev extra)
    import tomli as tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("blender_extension_child.py")
MARKER = "CINEGEN-FACTS "
sys.path.insert(0, str(ROOT / "tools"))
import build_blender_extension as builder  # noqa: E402  (a tool script, not a package)

pytestmark = [pytest.mark.bpy, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module")]


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    try:
        return builder.build(output_dir=out, cache=builder.DEFAULT_CACHE, log=lambda line: None)
    except builder.WheelDownloadError as exc:
        pytest.skip(f"PyPI unreachable and no cached wheels: {exc}")


def _isolated_path_folder(folder: Path) -> Path:
    """A folder with links to bpy and numpy only (the two modules a real Blender brings itself)."""
    folder.mkdir()
    for name in ("bpy", "numpy", "numpy.libs"):
        spec_root = Path(importlib.util.find_spec(name.split(".")[0]).submodule_search_locations[0]).parent
        if (spec_root / name).exists():
            (folder / name).symlink_to(spec_root / name, target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def facts(tmp_path_factory, extension_zip, running_server) -> dict:
    work = tmp_path_factory.mktemp("blender-ext")
    shim = _isolated_path_folder(work / "shim")
    (work / "shot").mkdir()
    args = {"zip": str(extension_zip), "server": running_server.address, "workdir": str(work / "shot"),
            "config": str(work / "config")}
    (work / "args.json").write_text(json.dumps(args))
    # -I -S: only the standard library is importable; the shim folder adds bpy and numpy
    bootstrap = (f"import sys, runpy; sys.path.append({str(shim)!r}); sys.argv = [{str(CHILD)!r}, "
                 f"{str(work / 'args.json')!r}]; runpy.run_path({str(CHILD)!r}, run_name='__main__')")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(work / "home"),
           "BLENDER_USER_RESOURCES": str(work / "blender-user"), "CINEGEN_CONFIG_DIR": args["config"],
           "TMPDIR": str(work)}
    done = subprocess.run([sys.executable, "-I", "-S", "-c", bootstrap], env=env, capture_output=True, text=True,
                          timeout=240)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    assert done.returncode == 0 and lines, f"Blender child failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return {**json.loads(lines[-1][len(MARKER):]), "user": str(work / "blender-user"), "shot": args["workdir"]}


def test_the_zip_is_blenders_own_build_and_bundles_every_wheel(extension_zip):
    with zipfile.ZipFile(extension_zip) as archive:
        names = archive.namelist()
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
        client = [n for n in names if n.startswith("wheels/cinegen-")]
        with archive.open(client[0]) as handle, zipfile.ZipFile(handle) as wheel:
            modules = set(wheel.namelist())
    assert manifest["wheels"] == sorted(f"./{n}" for n in names if n.endswith(".whl"))
    wheels = [n.split("/")[-1] for n in names if n.endswith(".whl")]
    for package, pythons in (("grpcio-", ("cp311", "cp313")), ("protobuf-", ("abi3",))):
        # one wheel per platform and Blender Python (4.2-5.0: 3.11, 5.1 on: 3.13; protobuf's abi3 serves both);
        # macOS universal2 serves both arm64 and x86-64 Macs
        for platform_tag in ("manylinux2014_x86_64", "win_amd64", "universal2"):
            for python in pythons:
                assert any(w.startswith(package) and platform_tag in w and python in w for w in wheels), \
                    (package, platform_tag, python, wheels)
    assert any(w.startswith("typing_extensions-") for w in wheels)  # grpcio needs it
    assert all("cp311" in n or "cp313" in n or "abi3" in n or "py3-none-any" in n for n in names if n.endswith(".whl"))
    # the client wheel: plugin and light common modules only, nothing that needs OIIO/OCIO/YAML/torch
    assert {"cinegen/common/client.py", "cinegen/common/proto/generator_pb2.py", "cinegen/plugin/hosts/blender_host.py",
            "cinegen/common/trajectory_io.py"} <= modules
    assert not any(n.startswith("cinegen/server") or n in ("cinegen/common/exr.py", "cinegen/common/color.py",
                                                          "cinegen/common/story_io.py") for n in modules)
    assert manifest["platforms"] == ["linux-x64", "windows-x64", "macos-arm64", "macos-x64"]


def test_blenders_validator_accepts_the_source_folder_and_the_zip(extension_zip):
    for target in (ROOT / "plugin" / "blender", extension_zip):
        report = builder.run_extension_tool(["validate", str(target)])
        assert "Success" in report, report


def test_blender_takes_the_zip_on_python_3_11_and_on_the_3_13_of_blender_5_1_and_installs_its_own(facts):
    # with cp311 wheels only, Blender 5.1+ said "This Python version (3.13) isn't compatible with (3.11)"
    assert facts["python_compat"] == {"3.11": None, "3.13": None}
    assert facts["grpc_binaries"] and all("311" in name for name in facts["grpc_binaries"])  # this Blender's 3.11


def test_only_the_bundled_wheels_provide_grpc_protobuf_and_cinegen(facts):
    assert facts["before"] == {"grpc": None, "google.protobuf": None, "cinegen": None}
    assert facts["install"] == ["FINISHED"] and facts["enabled"]
    site = str(Path(facts["user"]) / "extensions")
    for name, origin in facts["after"].items():
        assert origin and origin.startswith(site), (name, origin)


def test_the_pipeline_menu_and_options_work_before_connecting(facts):
    offline = facts["offline"]
    assert offline["pipelines"] == ["image", "upscale", "panorama", "trajectory", "story"]
    assert offline["origin"] == "this plugin's defaults"
    assert offline["projection"]["type"] == "ENUM" and offline["projection"]["items"] == ["plane", "ring", "sphere"]
    assert offline["story"]["subtype"] == "FILE_PATH"


def test_options_are_built_from_the_servers_capabilities_and_cached(facts):
    online = facts["online"]
    assert facts["connect"] == ["FINISHED"] and online["status"].startswith("Connected")
    assert online["origin"].startswith("cinegen ") and online["cache"]
    assert {"image", "panorama", "story"} <= set(online["pipelines"])
    # the next session's menu, before any Connect: this server's pipelines, from the cache
    assert online["next_start"]["pipelines"] == online["pipelines"]
    assert online["next_start"]["origin"].startswith("last seen on cinegen ")
    steps, strength = online["steps"], online["strength"]
    assert (steps["type"], steps["min"], steps["max"], steps["name"]) == ("INT", 1, 1000, "Steps")
    assert "Denoising steps" in steps["description"] and "Range: 1 to 1000" in steps["description"]
    assert online["use_steps"]["type"] == "BOOLEAN" and online["use_steps"]["default"] is False  # auto by default
    assert (strength["type"], strength["min"], strength["max"]) == ("FLOAT", 0.0, 1.0)
    assert online["projection"]["default"] == "plane"
    assert online["panorama_input"]["subtype"] == "FILE_PATH" and online["panorama_input"]["default"] == ""
    # the model field suggests the server's models of the pipeline's families (image: sd, not video models)
    assert "tiny-sd" in online["model_suggestions"] and "tiny-animatediff" not in online["model_suggestions"]


def test_a_queued_image_job_is_followed_by_the_timer_and_loaded_at_the_scene_frames(facts):
    assert facts["image_queued"] == ["FINISHED"] and facts["returned_before_done"]  # never blocks the UI
    assert facts["timer_registered"]  # bpy.app.timers follows the job (called by hand below: no UI loop headless)
    image = facts["image"]
    assert image["state"] == "completed", image["error"]
    assert image["progress_seen"][-1] == 1.0 and len(image["progress_seen"]) >= 2
    (result,) = image["results"]
    node, strip = result["node"], result["strip"]
    assert (node["frame_duration"], node["frame_start"], node["frame_offset"]) == (2, 1, 0)
    assert node["source"] == "SEQUENCE" and node["image"].endswith("shot010_image_v001.0001.exr")
    assert strip["files"] == ["shot010_image_v001.0001.exr", "shot010_image_v001.0002.exr"]
    assert (strip["frame_start"], strip["duration"]) == (1, 2) and "seed 77" in strip["name"]
    # the live preview reached bpy.utils.previews (headless Blender gives it no icon id: no UI to draw it in)
    assert image["preview_size"] and min(image["preview_size"]) > 0, image


def test_panorama_runs_without_a_plate(facts):
    panorama = facts["panorama"]
    assert facts["panorama_run"] == ["FINISHED"] and panorama["state"] == "completed", panorama["error"]
    (result,) = panorama["results"]
    assert result["node"]["frame_duration"] == 1 and result["strip"]["files"] == ["shot010_panorama_v001.0001.exr"]


def test_a_story_from_the_file_picker_loads_one_sequence_per_shot(facts):
    story = facts["story"]
    assert facts["story_run"] == ["FINISHED"] and story["state"] == "completed", story["error"]
    by_name = {Path(r["node"]["image"]).name: r for r in story["results"]}
    assert set(by_name) == {"sh010.0001.exr", "sh020.0001.exr"}  # numbered like the scene, from frame 1
    # one after the other as in the story's cut (its .otio), not both stacked at frame 1
    for name, start in (("sh010.0001.exr", 1), ("sh020.0001.exr", 3)):
        result, shot = by_name[name], name.split(".")[0]
        assert (result["node"]["frame_duration"], result["node"]["frame_start"], result["node"]["frame_offset"]) \
            == (2, start, 0)
        assert result["strip"]["files"] == [f"{shot}.0001.exr", f"{shot}.0002.exr"]
        assert result["strip"]["frame_start"] == start
    assert by_name["sh010.0001.exr"]["strip"]["channel"] == by_name["sh020.0001.exr"]["strip"]["channel"]


def test_history_keeps_seed_model_prompt_and_reruns_the_job_as_it_was(facts):
    history = facts["history"]
    assert facts["rerun"] == ["FINISHED"]
    assert history["pipelines"][:4] == ["image", "story", "panorama", "image"]  # newest first: the re-run on top
    assert (history["image_seed"], history["image_model"], history["image_prompt"]) == (77, "tiny-sd", "a fox")
    assert (history["rerun_pipeline"], history["rerun_seed"], history["rerun_state"]) == ("image", 77, "completed")
    assert history["rerun_model"] == "tiny-sd"  # the options came back too


def test_the_farm_helper_waits_and_prints_progress(facts):
    farm = facts["farm"]
    assert farm["loaded"] == 1
    assert any(" running " in line for line in farm["lines"]), farm["lines"]
    assert farm["lines"][-1].startswith("cinegen: image-") and " completed: " in farm["lines"][-1]


def test_options_and_results_are_kept_in_the_saved_blend(facts):
    reopened = facts["reopened"]
    assert (reopened["model"], reopened["projection"]) == ("tiny-sd", "ring")
    assert reopened["story"].endswith("story.yaml")
    # image, panorama, two story shots, the re-run and the farm job: one node and one strip each
    assert reopened["image_nodes"] == reopened["strips"] == 6
