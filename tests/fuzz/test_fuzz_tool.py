"""tools/fuzz.py as its docstring tells people to run it (a real libFuzzer run under atheris)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def test_fuzzing_into_a_new_directory_creates_it_and_fills_it(tmp_path):
    pytest.importorskip("atheris")  # (optional: without it the tool runs hypothesis instead)
    new = tmp_path / "fuzz-scan"
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "fuzz.py"),
            "scan",
            "-runs=300",
            str(new),
            str(ROOT / "tests" / "corpus" / "scan"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"created {new}" in out.stderr
    assert any(new.iterdir())  # libFuzzer wrote its corpus there
    assert "Done 300 runs" in out.stderr
