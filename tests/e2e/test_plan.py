"""`tb plan` and `tb run --plan` as real processes: the plan file, the pipes, the errors."""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest
from harness import VERIFY_WORKER, check_delivery, expected_events, read_log, run_tb

from tb.capture import read_capture
from tb.route import load_plan
from tb.route.hashing import pipe_mixed


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Two days of a flattened Zipf feed (another seed, another universe size: some symbols of
    the second day are not in the first's plan), and the plan made from the first."""
    d = tmp_path_factory.mktemp("days")
    made = {}
    for name, seed, symbols in (("day1", 3, 1500), ("day2", 4, 2000)):
        path = d / f"{name}.tbcap"
        proc = run_tb(
            ["gen", str(path), "--trades", "30000", "--symbols", str(symbols), "--seed",
             str(seed), "--zipf-offset", "10"]
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        made[name] = (path, list(read_capture(str(path))))
    plan = d / "plan.json"
    proc = run_tb(["plan", str(made["day1"][0]), "--pipes", "8", "-o", str(plan)])
    assert proc.returncode == 0, proc.stderr
    made["plan"] = plan
    made["summary"] = proc.stderr
    return made


def test_the_plan_weighs_every_symbol_and_balances_its_day(days):
    _, payloads = days["day1"]
    plan = load_plan(days["plan"])
    weights = Counter(o["sym"].encode() for o in expected_events(payloads))
    assert set(plan.symbols) == set(weights) and plan.pipes == 8 and plan.hash == "mixed"
    loads = [0] * 8
    for sym, n in weights.items():
        loads[plan.symbols[sym]] += n
    total = sum(loads)
    assert plan.expected_share == pytest.approx(max(loads) / total)
    # heaviest first to the least loaded: no pipe ends more than its lightest symbol over fair
    for pipe in range(8):
        lightest = min(n for sym, n in weights.items() if plan.symbols[sym] == pipe)
        assert loads[pipe] <= total / 8 + lightest
    ratio = max(loads) / (total / 8)
    assert f"= {ratio:.3f}x the fair share" in days["summary"] and "\n" == days["summary"][-1]


def test_the_plan_goes_to_standard_output_and_by_bytes(days):
    path, payloads = days["day1"]
    proc = run_tb(["plan", str(path), "--pipes", "3", "--by", "bytes", "--hash", "compat"])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["pipes"], doc["hash"], doc["by"]) == (3, "compat", "bytes")
    assert "bytes in 1 capture(s), 3 pipes" in proc.stderr


@pytest.mark.parametrize("day,pace", [("day1", []), ("day2", []), ("day2", ["--rate", "20000"])])
def test_run_with_a_plan_puts_planned_symbols_on_their_pipes(
    tmp_path, days, replay_factory, day, pace
):
    path, payloads = days[day]
    plan = load_plan(days["plan"])
    replay = replay_factory(str(path), "--close-after", *pace)
    log = tmp_path / "log.jsonl"
    proc = run_tb(
        ["run", replay.url + "/stocks", "--pipes", "8", "--key", "k", "--once", "--plan",
         str(days["plan"]), "--workdir", str(tmp_path), "--",
         sys.executable, VERIFY_WORKER, str(log)]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = read_log(log)
    check_delivery(records, payloads, 8, plan=plan)
    unplanned = {r["sym"] for r in records} - {s.decode() for s in plan.symbols}
    assert bool(unplanned) == (day == "day2")
    assert all(
        pipe_mixed(r["sym"].encode(), 8) == r["pipe"] for r in records if r["sym"] in unplanned
    )
    final = [line for line in proc.stderr.splitlines() if "tb: final" in line]
    assert final and f"plan_share={plan.expected_share * 100:.1f}%" in final[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_plan_no_plan_share(tmp_path, days, replay_factory):
    path, _ = days["day1"]
    replay = replay_factory(str(path), "--close-after")
    proc = run_tb(
        ["run", replay.url + "/stocks", "--pipes", "8", "--key", "k", "--once",
         "--workdir", str(tmp_path), "--", sys.executable, VERIFY_WORKER, str(tmp_path / "l")]
    )  # fmt: skip
    assert proc.returncode == 0 and "max_pipe_share=" in proc.stderr
    assert " plan_share=" not in proc.stderr


@pytest.mark.parametrize(
    "text, pipes, says",
    [
        (None, "4", "is for 8 pipes, not --pipes 4: make it again with tb plan --pipes 4"),
        ("{not json", "8", "is not a plan file: not JSON"),
        ('{"format": "tb-plan", "version": 2, "pipes": 8}', "8", "a plan of version 2"),
        ('{"format": "tb-plan", "version": 1, "pipes": 8, "hash": "mixed", "symbols": {"A": 9}}',
         "8", "pipe 9 is not 0 to 7"),
        ("missing", "8", "cannot read plan"),
    ],
)  # fmt: skip
def test_a_plan_that_does_not_fit_is_exit_2_with_one_line(tmp_path, days, text, pipes, says):
    plan = days["plan"]
    if text == "missing":
        plan = tmp_path / "nowhere.json"
    elif text is not None:
        plan = tmp_path / "bad.json"
        plan.write_text(text)
    for cmd in (["run", "ws://127.0.0.1:9/stocks", "--pipes", pipes, "--key", "k", "--plan",
                 str(plan), "--", "true"],
                ["lb", "--plan", str(plan), "k", "ws://127.0.0.1:9/stocks", pipes, str(tmp_path),
                 "true"]):  # fmt: skip
        proc = run_tb(cmd)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0] and "error" in lines[0], proc.stderr


def test_plan_errors_are_exit_2(tmp_path):
    proc = run_tb(["plan", str(tmp_path / "none.tbcap"), "--pipes", "4"])
    assert proc.returncode == 2 and "cannot read" in proc.stderr
    (tmp_path / "x").write_bytes(b"hello")
    proc = run_tb(["plan", str(tmp_path / "x"), "--pipes", "4"])
    assert proc.returncode == 2 and "not a capture" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
