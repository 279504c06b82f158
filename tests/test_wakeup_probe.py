"""tools/wakeup_probe.py: tb lb with probes, run by tb profile as another balancer."""

from __future__ import annotations

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


@pytest.mark.parametrize("args", [[], ["--timing"], ["--wakes", "9:3", "--opcodes", "k", "u", "1", ".", "w"],
                                  ["--bogus", "k", "u", "1", ".", "w"],
                                  ["--opcodes", "--time", "tb.balancer:small_runs", "k", "u", "1", ".", "w"],
                                  ["--timing", "--time", "small_runs", "k", "u", "1", ".", "w"]])  # fmt: skip
def test_bad_command_lines_print_the_usage(args):
    proc = subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: wakeup_probe.py")
    assert "Traceback" not in proc.stderr


def test_every_probed_name_is_there_and_is_the_function_it_names():
    """The tables at the top of the tool name tb's steps as they are now: a rename in tb fails
    here (and the tool itself refuses to start) until the tables follow."""
    sys.path.insert(0, str(PROBE.parent))
    try:
        import wakeup_probe
    finally:
        sys.path.remove(str(PROBE.parent))
    names = [(m, n) for m, n, *_ in wakeup_probe.TIMED] + list(wakeup_probe.OPCODE_HOOKS.values())
    for module, name in names:
        _, attr, f = wakeup_probe.resolve(module, name)
        assert f.__name__ == attr == name.rsplit(".", 1)[-1]


@pytest.mark.parametrize(
    "target,why",
    [
        ("tb.balancer:no_such_step", "tb.balancer.no_such_step is gone"),
        (
            "tb.balancer:NoSuchClass.step",
            "tb.balancer.NoSuchClass.step is gone: tb.balancer has no NoSuchClass",
        ),  # fmt: skip
        ("tb.no_such_module:step", "cannot import tb.no_such_module"),
        ("tb.replay.server:CHUNK", "tb.replay.server.CHUNK is not a function but int"),
        ("importlib.resources._common:as_file", "is a wrapper"),  # (like a tracing hook)
    ],
)
def test_a_name_that_is_gone_or_wrapped_stops_the_probe_with_one_line(target, why):
    proc = subprocess.run(
        [sys.executable, str(PROBE), "--timing", "--time", target, "k", "u", "1", ".", "w"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("wakeup_probe.py: ") and why in proc.stderr, proc.stderr
    assert "nothing was probed" in proc.stderr and "tools/wakeup_probe.py" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
