"""`tb run` and `tb lb` as real processes against `tb replay` on 127.0.0.1."""

from __future__ import annotations

import json
import random
import sys
from collections import Counter

import pytest
from harness import VERIFY_WORKER, check_delivery, expected_events, read_log, run_tb

from tb.capture import CaptureWriter, read_capture
from tb.sched import current_slice_ns


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    d = tmp_path_factory.mktemp("captures")
    made = {}
    for name, args in {
        "burst": ["--profile", "burst", "--trades", "30000", "--symbols", "2000", "--seed", "3"],
        "quiet": ["--profile", "quiet", "--trades", "5000", "--seed", "4", "--style", "spaced"],
        "trickle": ["--profile", "quiet", "--trades", "6000", "--seed", "5"],
    }.items():
        path = d / f"{name}.tbcap"
        proc = run_tb(["gen", str(path), *args])
        assert proc.returncode == 0, proc.stderr
        made[name] = (path, list(read_capture(str(path))))
    return made


def worker(log) -> list[str]:
    return [sys.executable, VERIFY_WORKER, str(log)]


@pytest.mark.parametrize(
    "profile,pipes,hash_name,loop,busy_poll",
    [
        # paced: receives of a few trades, the small lane's (text_frames, small_runs,
        # submit_small), as a trickle's are
        ("trickle", 32, "mixed", "epoll", "0"),
        ("trickle", 4, "compat", "epoll", "0"),
        ("burst", 4, "mixed", "epoll", "0"),
        ("quiet", 7, "compat", "epoll", "0"),
        ("burst", 32, "compat", "epoll", "0"),
        ("burst", 4, "mixed", "uring", "0"),
        ("quiet", 7, "compat", "uring", "0"),
        ("quiet", 7, "mixed", "epoll", "2000"),
        ("burst", 4, "mixed", "uring", "2000"),
    ],
)
def test_every_trade_arrives_once_in_order(
    tmp_path, captures, replay_factory, profile, pipes, hash_name, loop, busy_poll
):
    path, payloads = captures[profile]
    pace = ["--rate", "6000"] if profile == "trickle" else []
    replay = replay_factory(str(path), "--close-after", *pace)
    log = tmp_path / "log.jsonl"
    proc = run_tb(
        ["run", replay.url + "/stocks", "--pipes", str(pipes), "--key", "k", "--once",
         "--hash", hash_name, "--loop", loop, "--busy-poll", busy_poll, "--workdir", str(tmp_path),
         "--", *worker(log)]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = read_log(log)
    check_delivery(records, payloads, pipes, hash_name)
    n = len(expected_events(payloads))
    final = [line for line in proc.stderr.splitlines() if "tb: final" in line]
    assert final and f"routed={n} written={n} queued=0" in final[0], proc.stderr[-2000:]
    busiest = max(Counter(r["pipe"] for r in records).values())
    assert f"max_pipe_share={busiest / n * 100:.1f}%" in final[0]  # what the worker got
    # the statuses take the general router, the trades (nearly all) the span router or small lane
    counters = dict(kv.split("=", 1) for kv in final[0].split() if "=" in kv)
    assert int(counters["statuses"]) <= int(counters["general"]) < n // 2, final[0]
    if profile == "trickle":  # (paced: receives of a few trades each, as meant)
        assert int(counters["recvs"]) > n // 30, final[0]
    assert "Traceback" not in proc.stderr


def forex_capture(path, messages: int, seed: int) -> list[bytes]:
    """Forex quotes (ev C, the pair in p) with aggregates (ev CA, pair) among them, in messages
    of 1-5 events and now and then a burst of 300."""
    rng = random.Random(seed)
    pairs = [f"{a}/{b}" for a in CURRENCIES for b in CURRENCIES if a != b]
    payloads = []
    with CaptureWriter(path) as w:
        for _ in range(messages):
            objs = []
            for _ in range(300 if rng.random() < 0.02 else rng.randint(1, 5)):
                pair, t = rng.choice(pairs), 1536036818784 + rng.randrange(10**6)
                if rng.random() < 0.9:
                    obj = {"ev": "C", "p": pair, "x": 48, "a": rng.random(), "b": 1.5, "t": t}
                else:
                    obj = {"ev": "CA", "pair": pair, "o": 1.1, "c": 1.2, "v": 9, "s": t}
                objs.append(obj)
            payloads.append(json.dumps(objs, separators=(",", ":")).encode())
            w.write(payloads[-1])
    return payloads


CURRENCIES = ["USD", "EUR", "GBP", "JPY", "AUD", "CAD", "CHF", "NZD", "CNH", "SEK", "NOK", "MXN"]


@pytest.mark.parametrize("hash_name", ["mixed", "compat"])
def test_a_forex_feed_arrives_by_pair_on_the_span_router(tmp_path, replay_factory, hash_name):
    payloads = forex_capture(tmp_path / "forex.tbcap", 3000, seed=11)
    replay = replay_factory(str(tmp_path / "forex.tbcap"), "--close-after")
    log = tmp_path / "log.jsonl"
    proc = run_tb(
        ["run", replay.url + "/forex", "--pipes", "6", "--key", "k", "--once", "--hash",
         hash_name, "--workdir", str(tmp_path), "--", *worker(log)]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    check_delivery(read_log(log), payloads, 6, hash_name)
    n = len(expected_events(payloads))
    final = [line for line in proc.stderr.splitlines() if "tb: final" in line]
    assert final and f"routed={n} written={n} queued=0" in final[0], proc.stderr[-2000:]
    # only the server's statuses take the general router
    counters = dict(kv.split("=", 1) for kv in final[0].split() if "=" in kv)
    assert int(counters["general"]) == int(counters["statuses"]), final[0]


def test_lb_positional_form_is_the_original_cli(tmp_path, captures, replay_factory):
    path, payloads = captures["burst"]
    replay = replay_factory(str(path), "--close-after")
    log = tmp_path / "log.jsonl"
    proc = run_tb(
        [
            "lb",
            "--once",
            "--hash",
            "compat",
            "KEY",
            replay.url + "/stocks",
            "5",
            str(tmp_path),
            *worker(log),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    check_delivery(read_log(log), payloads, 5, "compat")


def test_wrong_key_exits_3_and_names_the_source(tmp_path, captures, replay_factory):
    path, _ = captures["quiet"]
    replay = replay_factory(str(path), "--key", "right-key")
    proc = run_tb(
        [
            "run",
            replay.url,
            "--pipes",
            "2",
            "--workdir",
            str(tmp_path),
            "--",
            *worker(tmp_path / "l"),
        ],
        env={"POLYGON_API_KEY": "wrong-key-123"},
    )
    assert proc.returncode == 3, proc.stderr
    assert "POLYGON_API_KEY" in proc.stderr and "authentication failed" in proc.stderr
    assert "wrong-key-123" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_massive_key_variable_is_used(tmp_path, captures, replay_factory):
    path, payloads = captures["quiet"]
    replay = replay_factory(str(path), "--key", "mk", "--close-after")
    log = tmp_path / "log.jsonl"
    proc = run_tb(
        [
            "run",
            replay.url,
            "--pipes",
            "3",
            "--once",
            "--workdir",
            str(tmp_path),
            "--",
            *worker(log),
        ],
        env={"MASSIVE_API_KEY": "mk"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "MASSIVE_API_KEY" in proc.stderr and "mk" not in proc.stderr.replace("MASSIVE", "")
    check_delivery(read_log(log), payloads, 3)


def run_with_worker_script(tmp_path, replay_factory, captures, source: str, *args: str):
    """tb run --once on 3 pipes against the quiet capture, its worker the Python `source` (run
    in tmp_path, the pipes' fds on its argv); the finished process."""
    path, _ = captures["quiet"]
    replay = replay_factory(str(path), "--close-after")
    script = tmp_path / "worker_script.py"
    script.write_text(source)
    return run_tb(
        ["run", replay.url, "--pipes", "3", "--once", "--workdir", str(tmp_path), *args,
         "--", sys.executable, str(script)]
    )  # fmt: skip


def test_key_is_not_on_the_workers_argv(tmp_path, replay_factory, captures):
    source = (
        "import sys, os\n"
        "open('argv.txt','w').write(repr(sys.argv) + '\\n' + os.environ['TB_PIPE_FDS'])\n"
        "from tb.pipes import read_records\n"
        "for _ in read_records([int(a) for a in sys.argv[1:]]): pass\n"
    )
    proc = run_with_worker_script(tmp_path, replay_factory, captures, source, "--key", "sekrit-77")
    assert proc.returncode == 0, proc.stderr
    argv_text, fds = (tmp_path / "argv.txt").read_text().split("\n")
    assert "sekrit-77" not in argv_text
    argv = eval(argv_text)
    assert argv[1:] == fds.split(",") and len(argv) == 4


@pytest.mark.parametrize("flag,want_us", [([], 100), (["--sched-slice", "500"], 500), (["--sched-slice", "0"], None)])  # fmt: skip
def test_tb_asks_for_a_short_time_slice_and_its_worker_does_not_inherit_it(
    tmp_path, replay_factory, captures, flag, want_us
):
    """tb runs with the CPU time slice it asked for (by default 100 us; 0: the kernel's own),
    as /proc/PID/sched shows it while tb streams; its worker has the kernel's default."""
    default_ns = current_slice_ns()
    if default_ns is None:
        pytest.skip("this kernel's /proc/PID/sched shows no se.slice")
    source = (
        "import os, sys\n"
        "from tb.pipes import read_records\n"
        "from tb.sched import current_slice_ns\n"
        "seen = None\n"
        "for _ in read_records([int(a) for a in sys.argv[1:]]):\n"
        "    if seen is None:  # tb is streaming: its loop runs\n"
        "        seen = (current_slice_ns(os.getppid()), current_slice_ns())\n"
        "open('slices.txt', 'w').write(repr(seen))\n"
    )
    proc = run_with_worker_script(tmp_path, replay_factory, captures, source, "--key", "k", *flag)
    assert proc.returncode == 0, proc.stderr
    if "CPU time slice: the kernel's default (" in proc.stderr and want_us:
        pytest.skip(proc.stderr.split("CPU time slice: ", 1)[1].splitlines()[0])
    tb_ns, worker_ns = eval((tmp_path / "slices.txt").read_text())
    assert tb_ns == (want_us * 1000 if want_us else default_ns)
    assert worker_ns == default_ns


RUN_ARGS = ["run", "ws://127.0.0.1:1/", "--pipes", "2", "--key", "k"]  # all it needs but a worker


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["run", "ws://127.0.0.1:1/", "--pipes", "2", "--bogus", "--", "true"],
            "tb run: error: unrecognized arguments: --bogus (see tb run --help)",
        ),
        (["replay", "--bogus"], "tb replay: error: unrecognized arguments: --bogus (see tb replay"),
        (["check", "--bogus"], "(see tb check --help)"),
        (["--bogus"], "tb: error: unrecognized arguments: --bogus (see tb --help)"),
        (["run", "ws://127.0.0.1:1/", "--pipes", "0", "--", "true"], "--pipes"),
        (["run", "http://x/", "--pipes", "2", "--key", "k", "--", "true"], "ws://"),
        (["run", "ws://127.0.0.1:1/", "--pipes", "2", "--", "true"], "no API key"),
        (["run", "ws://127.0.0.1:1/", "--pipes", "2", "--key", "k"], "no worker"),
        ([*RUN_ARGS, "--max-buffer", "lots", "--", "true"], "not a size"),
        ([*RUN_ARGS, "--busy-poll", "-5", "--", "true"], "--busy-poll"),
        ([*RUN_ARGS, "--busy-poll", "0.5", "--", "true"], "microseconds"),
        ([*RUN_ARGS, "--sched-slice", "50", "--", "true"], "--sched-slice: must be 0"),
        ([*RUN_ARGS, "--sched-slice", "200000", "--", "true"], "100 to 100,000"),
        ([*RUN_ARGS, "--stats", "-1", "--", "true"], "--stats"),
        ([*RUN_ARGS, "--idle-timeout", "nan", "--", "true"], "--idle-timeout"),
        (["demo", "--pipes", "0"], "--pipes"),
        (["demo", "--trades", "-3"], "--trades"),
        (["record", "ws://127.0.0.1:1/", "out.tbcap", "--messages", "-1"], "--messages"),
        ([*RUN_ARGS, "--cafile", "/nonexistent/ca.pem", "--", "true"], "cannot read --cafile"),
        ([*RUN_ARGS, "--cafile", __file__, "--", "true"], "holds no usable certificate"),
        (
            ["record", "wss://127.0.0.1:1/", "o.tbcap", "--key", "k", "--cafile", "/nonexistent"],
            "cannot read --cafile",
        ),  # fmt: skip
        (["record", "ws://127.0.0.1:1/", "/nonexistent/o.tbcap", "--key", "k"], "cannot write"),
        (["demo", "--out", "/proc/no-such-dir"], "cannot write to --out"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(args, needle):
    proc = run_tb(args, timeout=20)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr


def test_missing_worker_exits_4(tmp_path, replay_factory, captures):
    replay = replay_factory(str(captures["quiet"][0]))
    proc = run_tb(["run", replay.url, "--pipes", "2", "--key", "k", "--workdir", str(tmp_path),
                   "--", str(tmp_path / "no-such-worker")])  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    assert "no-such-worker" in proc.stderr and "Traceback" not in proc.stderr


def test_worker_that_dies_is_reported_and_tb_exits_4(tmp_path, replay_factory, captures):
    replay = replay_factory(str(captures["burst"][0]))
    proc = run_tb(["run", replay.url, "--pipes", "2", "--key", "k", "--workdir", str(tmp_path),
                   "--restart", "never", "--", sys.executable, "-c", "import sys; sys.exit(7)"])  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    assert "exited with status 7" in proc.stderr and "Traceback" not in proc.stderr
