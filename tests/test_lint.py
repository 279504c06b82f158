"""The formatter and linter are part of the test command (STYLE.md): the tree must be clean."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff")
    cmd = [exe] if exe else [sys.executable, "-m", "ruff"]
    return subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args", [("check", "tb", "tests", "tools"), ("format", "--check", "tb", "tests", "tools")]
)
def test_ruff_is_clean(args):
    proc = ruff(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
