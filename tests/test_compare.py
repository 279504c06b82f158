"""tools/compare.py end to end: several balancers profiled in turn, a table and paired counts;
the native reader (tools/native_reader.c) on its own and in place of the counting worker."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

COMPARE = Path(__file__).parent.parent / "tools" / "compare.py"
NO_CC = "no C compiler (`cc`) on PATH: the native reader cannot be built"


def compare(tmp_path, *args: str, path: str = "/usr/bin:/bin") -> subprocess.CompletedProcess:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, str(COMPARE), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"TB_CACHE": str(tmp_path / "cache"), "PATH": path, "TMPDIR": str(tmp),
             "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    )  # fmt: skip


def table_rows(stdout: str, workload: str) -> dict[tuple[str, str], list[str]]:
    """{(balancer, reader): the row's cells} of compare's markdown table."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith(f"| {workload} |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[(cells[1], cells[2])] = cells
    return rows


@pytest.fixture(scope="module")
def native_reader(tmp_path_factory):
    """The native reader, built by compare.py's own builder into a fresh cache."""
    if shutil.which("cc") is None:
        pytest.skip(NO_CC)
    spec = importlib.util.spec_from_file_location("compare", COMPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("TB_CACHE")
    os.environ["TB_CACHE"] = str(cache)
    try:
        return module.native_reader()
    finally:
        if old is None:
            del os.environ["TB_CACHE"]
        else:
            os.environ["TB_CACHE"] = old


def test_each_balancer_in_each_round_and_the_rounds_it_won(tmp_path):
    # (100,000 trades: a run must last a few of /proc's 10 ms CPU ticks, or its CPU reads 0)
    proc = compare(tmp_path, "--workloads", "quiet", "--quiet-trades", "100000", "--runs", "2",
                   "--pipes", "4", "--reader", "python",
                   "--balancer", f"tb lb={sys.executable} -m tb lb",
                   "--balancer", "missing=/nonexistent/lb")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    # one line per run on stderr, tb, tb lb and the missing one in turn, twice
    runs = re.findall(r"^quiet (.+?) \[python\]: ([0-9.]+) CPU s/M", proc.stderr, re.M)
    assert [name for name, _ in runs] == ["tb", "tb lb", "missing"] * 2, proc.stderr
    cpu_of = {name: [float(c) for n, c in runs if n == name] for name, _ in runs}
    rounds = list(zip(cpu_of["tb"], cpu_of["tb lb"], strict=True))
    wins, ties = sum(o < t for t, o in rounds), sum(o == t for t, o in rounds)
    rows = table_rows(proc.stdout, "quiet")
    assert set(rows) == {("tb", "python"), ("tb lb", "python"), ("missing", "python")}, proc.stdout
    assert rows[("tb", "python")][4] == "1.00"
    cpu = float(rows[("tb lb", "python")][3])
    assert cpu > 0, rows[("tb lb", "python")]
    assert "failed: cannot start the balancer /nonexistent/lb" in rows[("missing", "python")][3]
    said = re.search(r"^- quiet, tb lb against tb in the same round \(python reader\): lower CPU"
                     r" per million in (\d) of 2$", proc.stdout, re.M)  # fmt: skip
    assert said, proc.stdout
    # (a round that ties in the printed figures may differ past their third decimal)
    assert wins <= int(said[1]) <= wins + ties, (rounds, said[0])
    assert (
        "- quiet, missing against tb in the same round (python reader): no round where both ran"
        in proc.stdout
    )


def test_both_readers_in_each_round_each_counting_every_trade(tmp_path):
    if shutil.which("cc", path="/usr/bin:/bin") is None:
        pytest.skip(NO_CC)
    proc = compare(tmp_path, "--workloads", "quiet", "--quiet-trades", "100000", "--runs", "1",
                   "--pipes", "4", "--balancer", f"tb lb={sys.executable} -m tb lb")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert list(tmp_path.joinpath("cache").glob("native_reader-*")), "not built into TB_CACHE"
    runs = re.findall(r"^quiet (.+?) \[(\w+)\]: .*, ([0-9,]+) records$", proc.stderr, re.M)
    # each reader runs every balancer in turn; each counted every trade the server sent
    assert [(name, reader) for name, reader, _ in runs] == [
        ("tb", "python"), ("tb lb", "python"), ("tb", "native"), ("tb lb", "native")
    ], proc.stderr  # fmt: skip
    assert [int(n.replace(",", "")) for _, _, n in runs] == [100_000] * 4, proc.stderr
    rows = table_rows(proc.stdout, "quiet")
    assert set(rows) == {(b, r) for b in ("tb", "tb lb") for r in ("python", "native")}
    for reader in ("python", "native"):  # each reader's ratios are to tb with the same reader
        assert rows[("tb", reader)][4] == "1.00", rows
        tb_cpu, lb_cpu = float(rows[("tb", reader)][3]), float(rows[("tb lb", reader)][3])
        assert tb_cpu > 0 and lb_cpu > 0, rows
        assert float(rows[("tb lb", reader)][4]) == pytest.approx(lb_cpu / tb_cpu, abs=0.01)
        assert f"- quiet, tb lb against tb in the same round ({reader} reader): " in proc.stdout


def test_without_cc_both_falls_back_and_native_is_refused(tmp_path):
    bare = tmp_path / "bin"  # a PATH with no compiler on it
    bare.mkdir()
    proc = compare(tmp_path, "--reader", "native", path=str(bare))
    assert proc.returncode == 2, proc.stderr
    assert "--reader native: no C compiler: `cc` is not on PATH" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    proc = compare(tmp_path, "--workloads", "quiet", "--quiet-trades", "100000", "--runs", "1",
                   "--pipes", "2", path=str(bare))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "the native reader is skipped, the Python counting worker reads" in proc.stderr
    assert set(table_rows(proc.stdout, "quiet")) == {("tb", "python")}, proc.stdout


def _records(rnd: random.Random, n: int) -> bytes:
    bodies = [b'{"ev":"T","sym":"S%d","q":%d}' % (rnd.randrange(50), q) for q in range(n)]
    bodies += [b"", b"x" * 70_000]  # an empty record, and one longer than 64 KiB
    return b"".join(struct.pack("<I", len(b)) + b for b in bodies)


def test_native_reader_counts_records_split_anywhere(native_reader, tmp_path):
    rnd = random.Random(7)
    pipes = [os.pipe() for _ in range(3)]
    reads = [r for r, _ in pipes]
    streams = [_records(rnd, n) for n in (1000, 0, 2500)]
    out = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [str(native_reader), "--out", str(out), "--progress", str(tmp_path / "progress")],
        pass_fds=reads,
        env={"TB_PIPE_FDS": ",".join(map(str, reads))},  # the fds as tb names them
        stdout=subprocess.PIPE,
        text=True,
    )
    for r in reads:
        os.close(r)
    for (_, w), data in zip(pipes, streams, strict=True):
        pos = 0
        while pos < len(data):  # headers and bodies split at every kind of place
            step = rnd.choice((1, 2, 3, 5, 4096, 100_000))
            pos += os.write(w, data[pos : pos + step])
        os.close(w)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    summary = json.loads(stdout)
    assert summary["per_pipe"] == [1002, 2, 2502]
    assert summary["records"] == 3506
    assert summary["bytes"] == [len(s) for s in streams]
    assert json.loads(out.read_text()) == summary
    from tb.pipes.count_worker import read_progress

    total, first, last, per_pipe = read_progress((tmp_path / "progress").read_bytes(), 3)
    assert (total, per_pipe) == (3506, [1002, 2, 2502])
    assert 0 < first <= last


def test_native_reader_says_what_is_wrong(native_reader):
    r, w = os.pipe()
    os.write(w, struct.pack("<I", 10) + b"{}")  # a record cut short
    os.close(w)
    proc = subprocess.run([str(native_reader), str(r)], pass_fds=[r], capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    os.close(r)
    assert proc.returncode == 1
    assert f"pipe 0 (fd {r}) ended inside a record" in proc.stderr
    for args, env, says in [
        ([], {}, "no pipes: pass the pipe fds as arguments or set TB_PIPE_FDS"),
        ([], {"TB_PIPE_FDS": "3,x"}, "TB_PIPE_FDS is not a comma-separated list of fds"),
        (["999"], {}, "fd 999 is not open"),
        (["--latency", "3"], {}, "--latency is not supported"),
    ]:
        proc = subprocess.run([str(native_reader), *args], env=env, capture_output=True,
                              text=True, timeout=30)  # fmt: skip
        assert proc.returncode == 2, (args, proc.stderr)
        assert says in proc.stderr, (args, proc.stderr)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--balancer", "./lb"], "--balancer wants NAME=CMD"),
        (["--balancer", "tb=./lb"], "the name 'tb' is taken"),
        (["--workloads", "quiet,bogus"], "unknown workload 'bogus'"),
        (["--runs", "0"], "--runs: must be at least 1"),
        (["--rate", "-5"], "--rate: must be positive"),
        (["--reader", "rust"], "--reader: invalid choice: 'rust'"),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path, args, says):
    proc = compare(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
