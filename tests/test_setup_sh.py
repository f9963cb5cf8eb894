"""`./setup.sh` on a machine without an NVIDIA GPU installs a CPU build of torch, never PyPI's CUDA build.

PyPI's Linux torch wheels are the CUDA builds (they pull ~3 GB of nvidia-* packages); `torch==2.13.0` only
resolved to the CPU build on the machine the project was developed on, whose wheel house had
`2.13.0+cpu` for Python 3.11. These tests run setup.sh against a stand-in virtual environment whose
`python` answers as a Python 3.12 without torch and records every `pip` command it is given.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "setup.sh"

FAKE_PYTHON = """#!/bin/sh
# Answers setup.sh's questions as a Python 3.12 without torch would; `-m pip ...` is recorded in $PIP_LOG,
# and the first $TORCH_FAILS installs of torch fail as pip does when no index has the build.
case "$1" in
  -c) case "$2" in
        *sys.prefix*) echo "$FAKE_PREFIX" ;;
        *"print("*version_info*) echo 3.12 ;;
        *) exit 1 ;;
      esac
      exit 0 ;;
  -) cat >/dev/null; exit 1 ;;
  -m) shift 2; echo "$*" >>"$PIP_LOG"
      case "$*" in
        *torch==*) tries=$(grep -c 'torch==' "$PIP_LOG")
                   [ "$tries" -le "$TORCH_FAILS" ] && { echo "ERROR: ResolutionImpossible: no such torch"; exit 1; } ;;
      esac
      exit 0 ;;
esac
exit 1
"""


def _setup(tmp_path: Path, torch_fails: int, system: str = "Linux",
           active: bool = False) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`active`: the stand-in is an activated virtual environment ($VIRTUAL_ENV), with no $CINEGEN_VENV folder."""
    venv, tools = tmp_path / "venv", tmp_path / "tools"
    (venv / "bin").mkdir(parents=True)
    tools.mkdir()
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    (venv / "bin" / "cinegen").write_text("#!/bin/sh\nexit 0\n")
    (tools / "uname").write_text(f"#!/bin/sh\necho {system}\n")
    for script in (python, venv / "bin" / "cinegen", tools / "uname"):
        script.chmod(0o755)
    path = f"{tools}:/usr/bin:/bin"
    if shutil.which("nvidia-smi", path=path):
        pytest.skip("this machine has nvidia-smi: setup.sh takes the GPU branch here, not the CPU one tested")
    log = tmp_path / "pip.log"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON")}
    env.update(PATH=path, CINEGEN_VENV=str(venv), PIP_LOG=str(log), TORCH_FAILS=str(torch_fails),
               FAKE_PREFIX=str(venv))
    if active:
        env.update(VIRTUAL_ENV=str(venv), PYTHON=str(python), CINEGEN_VENV=str(tmp_path / "no-such-venv"))
    done = subprocess.run(["bash", str(SETUP), "demo"], env=env, capture_output=True, text=True, timeout=60)
    return done, (log.read_text().splitlines() if log.exists() else [])


def _torch_installs(pip_calls: list[str]) -> list[str]:
    return [call for call in pip_calls if "torch==" in call]


def test_without_a_gpu_only_the_cpu_build_of_torch_can_satisfy_the_install(tmp_path):
    done, calls = _setup(tmp_path, torch_fails=0)
    assert done.returncode == 0, done.stdout + done.stderr
    installs = _torch_installs(calls)
    assert installs == ["install -q torch==2.13.0+cpu"], "a plain torch==2.13.0 is PyPI's CUDA build on Linux"
    assert any("-e .[server,plugin]" in call for call in calls), "cinegen itself is installed after torch"


def test_the_cpu_build_comes_from_pytorchs_cpu_index_when_pips_indexes_lack_it(tmp_path):
    done, calls = _setup(tmp_path, torch_fails=1)
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = _torch_installs(calls)
    assert "--extra-index-url" not in first
    assert second.endswith("torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu")
    assert "ResolutionImpossible" not in done.stdout + done.stderr, "pip's first refusal is not shown"


def test_no_cpu_build_anywhere_is_one_sentence_naming_the_python(tmp_path):
    done, calls = _setup(tmp_path, torch_fails=2)
    assert done.returncode == 2
    assert len(_torch_installs(calls)) == 2 and not any("[server,plugin]" in call for call in calls)
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "ResolutionImpossible" not in done.stderr, done.stderr
    assert "no CPU build of torch (torch==2.13.0+cpu) for Python 3.12" in err[0]
    log = tmp_path / "venv" / "torch-install.log"
    assert f"pip's words: {log}" in err[0] and "ResolutionImpossible" in log.read_text()
    assert f"install a CPU torch>=2.4,<3 into {tmp_path / 'venv'} and run ./setup.sh demo again." in err[0]


def test_macos_takes_pypis_torch_which_is_the_cpu_build_there(tmp_path):
    done, calls = _setup(tmp_path, torch_fails=0, system="Darwin")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _torch_installs(calls) == ["install -q torch==2.13.0"]


DEBIAN_PYTHON = """#!/bin/sh
# A Debian or Ubuntu Python 3.12 without the python3-venv package: `-m venv` makes the folder and its
# python, then fails at ensurepip.
case "$1" in
  -c) echo 3.12; exit 0 ;;
  -m) [ "$2" = venv ] || exit 1
      for last; do :; done
      mkdir -p "$last/bin" && ln -s /bin/false "$last/bin/python"
      echo "The virtual environment was not created successfully because ensurepip is not available." >&2
      exit 1 ;;
esac
exit 1
"""


def test_a_python_without_ensurepip_leaves_no_venv_behind_and_names_the_package(tmp_path):
    python, venv = tmp_path / "python3.12", tmp_path / "venv"
    python.write_text(DEBIAN_PYTHON)
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(PYTHON=str(python), CINEGEN_VENV=str(venv))
    done = subprocess.run(["bash", str(SETUP), "demo"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert not venv.exists(), "a half-made venv was reused by every later run, which then failed on `-m pip`"
    assert "could not make the virtual environment" in done.stderr
    assert "sudo apt install python3.12-venv), then run ./setup.sh demo again." in done.stderr


def test_an_existing_venv_without_pip_is_one_sentence(tmp_path):
    import sys

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON")}
    env["CINEGEN_VENV"] = str(venv)
    done = subprocess.run(["bash", str(SETUP), "demo"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (f"cinegen: the virtual environment {venv} has no pip (made without ensurepip): "
                                   f"remove it (rm -rf {venv}) and run ./setup.sh demo again.")


def test_an_active_virtual_environment_installs_torch_without_a_venv_folder_of_ours(tmp_path):
    """With $VIRTUAL_ENV set there is no .venv of ours: the install log went under it and set -e stopped the
    script silently ('cd: .venv: No such file or directory') before torch was installed."""
    done, calls = _setup(tmp_path, torch_fails=0, active=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _torch_installs(calls) == ["install -q torch==2.13.0+cpu"]


def test_a_failed_venv_in_a_folder_that_was_there_deletes_nothing_of_it(tmp_path):
    """CINEGEN_VENV naming a folder that already exists (a typo for its parent, a shared tools folder): the
    failed `-m venv` clean-up ran `rm -rf` on all of it, files that were never setup.sh's included."""
    python, venv = tmp_path / "python3.12", tmp_path / "tools"
    python.write_text(DEBIAN_PYTHON)
    python.chmod(0o755)
    venv.mkdir()
    (venv / "notes.txt").write_text("not setup.sh's\n")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(PYTHON=str(python), CINEGEN_VENV=str(venv))
    done = subprocess.run(["bash", str(SETUP), "demo"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert (venv / "notes.txt").read_text() == "not setup.sh's\n"
    assert "could not make the virtual environment" in done.stderr
