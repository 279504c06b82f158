"""tb profile end to end: replay server -> balancer -> counting worker, real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def profile(tmp_path, *args: str, check: bool = True) -> dict:
    """tb profile --json; each run's work dir (logs, the worker's figures) under tmp_path/tmp:
    removed after a good run, kept and named in the error after a failed one."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    before = set(tmp.iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "tb", "profile", "--json", "--symbols", "50", "--pipes", "4", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"TB_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp)},
    )
    assert proc.returncode == (0 if check else 1), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    r = json.loads(proc.stdout)
    left = set(tmp.iterdir()) - before
    if r["ok"]:
        assert not left
    else:
        assert len(left) == 1 and str(left.pop()) in r["error"], (left, r["error"])
    return r


def test_quiet_run_reports_tb_counters(tmp_path):
    r = profile(tmp_path, "--workload", "quiet", "--trades", "30000")
    assert r["ok"] and r["error"] == ""
    assert r["delivered"] == r["trades"] == 30000
    # (the harness reads /proc in clock ticks: a run this short may round to 0; tb's own view
    # uses process_time)
    assert r["cpu_s_per_million"] >= 0 and float(r["tb"]["cpu_s_per_million"]) > 0
    assert r["trades_per_s"] > 0
    assert int(r["tb"]["routed"]) == 30000 and int(r["tb"]["malformed"]) == 0
    assert 0 < float(r["tb"]["syscalls_per_trade"]) < 3
    assert r["fair_share"] == pytest.approx(0.25) and r["max_pipe_share"] >= 0.25
    # a Python process with numpy, a 16 MiB arena: tens of MiB (the median is taken while
    # trades flow)
    assert 20 < r["median_rss_mib"] <= r["max_rss_mib"] < 1024


def test_a_spaced_feed_takes_the_fast_paths(tmp_path):
    # json.dumps' default style, as Python test servers send it: no trade goes the general way
    r = profile(tmp_path, "--workload", "burst", "--trades", "100000", "--style", "spaced")
    assert r["ok"] and r["delivered"] == 100000 and r["style"] == "spaced"
    assert int(r["tb"]["routed"]) == 100000 and int(r["tb"]["fallback"]) == 0
    assert int(r["tb"]["general"]) <= 3  # the session's statuses
    assert (tmp_path / "cache" / "profile-burst-100000-50-1-spaced.tbcap").exists()


@pytest.mark.parametrize(
    "worker", [[], ["--sleeping-worker"], ["--sleeping-worker", "--busy-poll", "20000"]]
)
def test_trickle_measures_latency(tmp_path, worker):
    r = profile(tmp_path, "--workload", "trickle", "--rate", "1000", "--trades", "800", *worker)
    assert r["ok"] and r["delivered"] == 800
    lat = r["latency_us"]
    assert lat["count"] > 200  # the first 250 ms are warm-up
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 1e6
    assert r["latency_kind"] == ("feed->worker" if worker else "feed->pipe")
    # tb's CPU while streaming: a few % of a core asleep between messages; spinning through
    # every gap (messages come every few ms, well within 20 ms) it is most of a core
    busy = float(r["tb"]["cpu_s_per_million"]) * 1000 / 1e6  # CPU s per second at 1000/s
    assert r["sched_slice_us"] == 100  # (tb run's default, passed on)
    if "--busy-poll" in worker:
        assert r["busy_poll_us"] == 20000 and busy > 0.5, busy
    else:
        assert r["busy_poll_us"] == 0 and busy < 0.3, busy


@pytest.mark.parametrize("splice", [True, False])
def test_burst_batches_are_spliced_unless_told_not_to(tmp_path, splice):
    # (how much depends on how closely the worker follows: a buffer is reused once read)
    r = profile(tmp_path, "--workload", "burst", "--trades", "300000",
                *([] if splice else ["--no-splice"]))  # fmt: skip
    assert r["ok"] and r["delivered"] == 300000 and r["splice"] is splice
    spliced = int(r["tb"]["spliced_bytes"])
    assert spliced > 1 << 20 if splice else spliced == 0, spliced


def test_other_balancer_through_the_original_cli(tmp_path):
    r = profile(tmp_path, "--workload", "quiet", "--trades", "2000",
                "--balancer", f"{sys.executable} -m tb lb")  # fmt: skip
    assert r["ok"] and r["delivered"] == 2000 and r["balancer"] != "tb"
    assert int(r["tb"]["routed"]) == 2000  # tb lb prints the same summary line


def test_the_floor_relay_delivers_every_trade(tmp_path):
    # tools/floor_relay.py, the README's floor for a trickle's latency, must measure a whole run
    relay = Path(__file__).parent.parent / "tools" / "floor_relay.py"
    r = profile(tmp_path, "--workload", "trickle", "--rate", "1000", "--trades", "800",
                "--balancer", f"{sys.executable} {relay}")  # fmt: skip
    assert r["ok"] and r["delivered"] == 800 and r["latency_us"]["count"] > 200


def test_the_window_starts_at_the_servers_first_trade(tmp_path):
    # The balancer routes trades into its pipes (and queues the rest) from the first one the
    # server streams, while its worker is still starting: that time and CPU count. Measured
    # from the worker's first record, this run's 2 s head start would vanish from the window.
    slow = tmp_path / "slow-worker-lb"
    slow.write_text(
        "#!/bin/sh\n"
        "key=$1 url=$2 n=$3 dir=$4; shift 4\n"
        f'exec {sys.executable} -m tb lb "$key" "$url" "$n" "$dir" '
        """/bin/sh -c 'sleep 2; exec "$@"' sh "$@"\n"""
    )
    slow.chmod(0o755)
    r = profile(tmp_path, "--workload", "quiet", "--trades", "30000", "--balancer", str(slow))
    assert r["ok"] and r["delivered"] == 30000
    assert r["seconds"] > 1.0, r["seconds"]
    assert r["trades_per_s"] < 30000, r["trades_per_s"]


def test_a_plan_shows_its_expected_share_beside_the_measured_one(tmp_path):
    # the plan made from the very capture profiled: the busiest pipe is the planned one
    cap, plan = tmp_path / "day.tbcap", tmp_path / "plan.json"
    gen = ["gen", str(cap), "--profile", "quiet", "--trades", "30000", "--symbols", "50"]
    for args in (gen, ["plan", str(cap), "--pipes", "4", "-o", str(plan)]):
        subprocess.run([sys.executable, "-m", "tb", *args], check=True, capture_output=True)
    expected = json.loads(plan.read_text())["expected_share"]
    r = profile(tmp_path, "--workload", "quiet", "--trades", "30000", "--plan", str(plan))
    assert r["ok"] and r["delivered"] == 30000 and r["plan_share"] == expected
    assert r["max_pipe_share"] == pytest.approx(expected)
    proc = subprocess.run(
        [sys.executable, "-m", "tb", "profile", "--pipes", "8", "--plan", str(plan)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "is for 4 pipes, not --pipes 8" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "option",
    [
        ["--busy-poll", "100"],
        ["--sched-slice", "0"],
        ["--loop", "epoll"],
        ["--hash", "compat"],
        ["--no-splice"],
        ["--plan", "plan.json"],
    ],
)
def test_tb_options_with_another_balancer_are_usage_errors(tmp_path, option):
    # another balancer has none of tb run's options: saying so beats profiling without them
    proc = subprocess.run(
        [sys.executable, "-m", "tb", "profile", "--balancer", "./lb", *option],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (
        f"tb profile: error: {option[0]} applies to tb only, not to a --balancer command"
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--trades", "-5"], "--trades"),
        (["--pipes", "0"], "--pipes"),
        (["--symbols", "0"], "--symbols"),
        (["--rate", "0"], "--rate"),
        (["--timeout", "0"], "--timeout"),
        (["--runs", "0"], "--runs"),
        (["--balancer", ""], "--balancer needs a command"),
        (["--balancer", 'lb "unclosed'], "No closing quotation"),
        (["--plot", "/nonexistent-dir/out.png"], "no such directory"),
    ],
)
def test_bad_flags_are_one_line_usage_errors(tmp_path, args, needle):
    proc = subprocess.run(
        [sys.executable, "-m", "tb", "profile", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"TB_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_balancer_that_cannot_start_is_a_failed_run(tmp_path):
    r = profile(tmp_path, "--workload", "quiet", "--trades", "1000",
                "--balancer", str(tmp_path / "no-such-lb"), check=False)  # fmt: skip
    assert not r["ok"] and "cannot start the balancer" in r["error"] and "no-such-lb" in r["error"]


def test_a_balancer_that_exits_early_is_reported_with_its_error(tmp_path):
    failing = tmp_path / "failing-lb"
    failing.write_text("#!/bin/sh\necho '12:00:00.000 lb ERROR: broken on purpose' >&2\nexit 3\n")
    failing.chmod(0o755)
    r = profile(tmp_path, "--workload", "quiet", "--trades", "1000", "--balancer", str(failing),
                check=False)  # fmt: skip
    assert not r["ok"] and "exited early: broken on purpose" in r["error"], r["error"]
