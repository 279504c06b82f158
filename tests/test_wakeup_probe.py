"""tools/wakeup_probe.py: tb lb with probes, run by tb profile as another balancer."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_profile import profile

PROBE = Path(__file__).resolve().parent.parent / "tools" / "wakeup_probe.py"


def test_timing_reports_every_step_of_a_trickle_wakeup(tmp_path):
    out = tmp_path / "timing.txt"
    r = profile(tmp_path, "--workload", "trickle", "--rate", "20000", "--trades", "20000",
                "--balancer", f"{sys.executable} {PROBE} --timing --out {out}")  # fmt: skip
    assert r["ok"] and r["delivered"] == 20000
    lines = out.read_text().splitlines()[1:]
    steps = {ln.split()[0]: ln for ln in lines}
    for step in ("on_readable", "recv_into", "text_frames", "small_runs", "submit_small",
                 "os.write"):  # fmt: skip
        calls, p50 = re.search(r"(\d+) calls +p50 +([\d.]+) µs", steps[step]).groups()
        assert int(calls) > 0 and float(p50) > 0, steps[step]


def test_opcodes_counts_the_wakeups_it_was_asked_for(tmp_path):
    out = tmp_path / "opcodes.txt"
    r = profile(tmp_path, "--workload", "trickle", "--rate", "20000", "--trades", "20000",
                "--balancer", f"{sys.executable} {PROBE} --opcodes --wakes 20:120 --out {out}")  # fmt: skip
    assert r["ok"] and r["delivered"] == 20000
    head, *rows = out.read_text().splitlines()
    per_wake, trades = re.search(
        r"wake-ups 20\.\.120: ([\d.]+) bytecodes per wake-up, ([\d.]+) trades", head
    ).groups()
    assert float(per_wake) > 100 and float(trades) >= 1
    names = [row.split()[-1] for row in rows]
    assert "small_runs" in names and "Ingest.on_readable" in names
    assert not any("probe" in n for n in names)  # (the probes' own steps are left out)


def test_a_probed_step_that_is_gone_is_an_error(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("wakeup_probe", PROBE)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    import tb.ingest

    monkeypatch.delattr(tb.ingest.Ingest, "_route_small")
    on_readable = tb.ingest.Ingest.on_readable
    with pytest.raises(SystemExit, match=r"Ingest\._route_small gone from tb"):
        probe.probe_timing(str(tmp_path / "timing.txt"))
    assert tb.ingest.Ingest.on_readable is on_readable  # (nothing was probed)


@pytest.mark.parametrize("args", [[], ["--timing"], ["--wakes", "9:3", "--opcodes", "k", "u", "1", ".", "w"],
                                  ["--bogus", "k", "u", "1", ".", "w"]])  # fmt: skip
def test_bad_command_lines_print_the_usage(args):
    proc = subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: wakeup_probe.py")
    assert "Traceback" not in proc.stderr
