"""`tb demo`, the README's first command, end to end (small, so it is quick)."""

from __future__ import annotations

import json

import pytest
from harness import run_tb


@pytest.mark.parametrize("extra", [[], ["--tls", "--profile", "quiet"]])
def test_demo_delivers_every_trade(tmp_path, extra):
    out = tmp_path / "demo"
    proc = run_tb(["demo", "--trades", "30000", "--out", str(out), *extra], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: server sent 30,000 trades, worker received 30,000" in proc.stdout
    summary = json.loads((out / "worker-summary.json").read_text())
    assert summary["records"] == 30000 and sum(summary["per_pipe"]) == 30000
    assert (out / "tb-run.log").exists() and "Traceback" not in proc.stderr
