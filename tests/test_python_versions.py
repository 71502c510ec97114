"""scripts/find_python.sh: the Makefile's choice of interpreter (newest supported first)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "find_python.sh"


def _fake(bin_dir: Path, name: str, works: bool) -> Path:
    """A python3.X that answers the version check yes (or no, as a pyenv shim of an unselected version)."""
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\nexit {0 if works else 1}\n")
    path.chmod(0o755)
    return path


def _find(bin_dir: Path, *args: str, pyenv: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "PYENV_ROOT": str(pyenv or bin_dir / "no-pyenv")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, check=False)


def test_the_newest_supported_interpreter_is_preferred(tmp_path):
    _fake(tmp_path, "python3.12", True)
    newest = _fake(tmp_path, "python3.13", True)
    assert _find(tmp_path).stdout.strip() == str(newest)


def test_a_shim_that_does_not_answer_is_passed_over_for_pyenv_or_an_older_version(tmp_path):
    _fake(tmp_path, "python3.13", False)  # a pyenv shim for a version pyenv has not selected
    older = _fake(tmp_path, "python3.12", True)
    assert _find(tmp_path).stdout.strip() == str(older)
    pyenv = tmp_path / "pyenv"
    (pyenv / "versions" / "3.13.1" / "bin").mkdir(parents=True)
    under_pyenv = _fake(pyenv / "versions" / "3.13.1" / "bin", "python3.13", True)
    assert _find(tmp_path, pyenv=pyenv).stdout.strip() == str(under_pyenv)


def test_one_version_can_be_asked_for_and_none_found_is_exit_1(tmp_path):
    _fake(tmp_path, "python3.13", True)
    assert _find(tmp_path, "3.14").returncode == 1
    assert _find(tmp_path, "3.14").stdout == ""
    assert _find(tmp_path, "3.13").returncode == 0


def test_this_interpreter_is_one_the_script_finds():
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    found = subprocess.run(["bash", str(SCRIPT), version], capture_output=True, text=True, check=False)
    assert found.returncode == 0, f"find_python.sh does not find CPython {version}"


def test_the_makefile_says_what_is_needed_when_nothing_is_found(tmp_path):
    result = subprocess.run(["make", "-s", "venv", f"VENV={tmp_path / 'venv'}", "PYTHON="], capture_output=True,
                            text=True, cwd=SCRIPT.parents[1], check=False)
    assert result.returncode != 0
    assert "CPython 3.11, 3.12 or 3.13" in result.stdout and "PyEval_CallObject(c,a)" in result.stdout
    assert not (tmp_path / "venv").exists()
