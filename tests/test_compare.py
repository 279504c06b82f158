"""tools/compare.py end to end: several balancers profiled in turn, a table and paired counts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

COMPARE = Path(__file__).parent.parent / "tools" / "compare.py"


def compare(tmp_path, *args: str) -> subprocess.CompletedProcess:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, str(COMPARE), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"TB_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp)},
    )


def test_each_balancer_in_each_round_and_the_rounds_it_won(tmp_path):
    # (100,000 trades: a run must last a few of /proc's 10 ms CPU ticks, or its CPU reads 0)
    proc = compare(tmp_path, "--workloads", "quiet", "--quiet-trades", "100000", "--runs", "2",
                   "--pipes", "4", "--balancer", f"tb lb={sys.executable} -m tb lb",
                   "--balancer", "missing=/nonexistent/lb")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    # one line per run on stderr, tb, tb lb and the missing one in turn, twice
    runs = re.findall(r"^quiet (.+?): ([0-9.]+) CPU s/M", proc.stderr, re.M)
    assert [name for name, _ in runs] == ["tb", "tb lb", "missing"] * 2, proc.stderr
    cpu_of = {name: [float(c) for n, c in runs if n == name] for name, _ in runs}
    rounds = list(zip(cpu_of["tb"], cpu_of["tb lb"], strict=True))
    wins, ties = sum(o < t for t, o in rounds), sum(o == t for t, o in rounds)
    rows = {
        line.split(" | ")[1]: line
        for line in proc.stdout.splitlines()
        if line.startswith("| quiet")
    }
    assert set(rows) == {"tb", "tb lb", "missing"}, proc.stdout
    assert " | 1.00 | " in rows["tb"]
    cpu = float(rows["tb lb"].split(" | ")[2])
    assert cpu > 0, rows["tb lb"]
    assert "failed: cannot start the balancer /nonexistent/lb" in rows["missing"]
    said = re.search(r"^- quiet, tb lb against tb in the same round: lower CPU per million in "
                     r"(\d) of 2$", proc.stdout, re.M)  # fmt: skip
    assert said, proc.stdout
    # (a round that ties in the printed figures may differ past their third decimal)
    assert wins <= int(said[1]) <= wins + ties, (rounds, said[0])
    assert "- quiet, missing against tb in the same round: no round where both ran" in proc.stdout


@pytest.mark.parametrize(
    "args, says",
    [
        (["--balancer", "./lb"], "--balancer wants NAME=CMD"),
        (["--balancer", "tb=./lb"], "the name 'tb' is taken"),
        (["--workloads", "quiet,bogus"], "unknown workload 'bogus'"),
        (["--runs", "0"], "--runs: must be at least 1"),
        (["--rate", "-5"], "--rate: must be positive"),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path, args, says):
    proc = compare(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
