"""--creds against a real nats-server: a credentials file (user JWT + NKey seed) in operator
mode, as `nsc` sets it up, and a bare NKey seed for a server that lists the user's NKey; and
the files the server refuses, or that are not credentials at all."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys

import pytest
from harness import Replay, run_tb, tb_cmd
from nats_harness import (
    Proc,
    count_lines,
    expected_pipes,
    log_worker,
    logged,
    nkey_users,
    operator_mode,
    wait_until,
    worker_pipes,
)

from tb.exitcode import ExitCode

pytest.importorskip("nkeys", reason="nkeys is in the test extra (nats-py[nkeys])")

NPIPES = 2


def one_error(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def consume(url: str, tmp_path, *extra: str, env: dict | None = None):
    return run_tb(["consume", url, "--partitions", "0", "--workdir", str(tmp_path), *extra,
                   "--", sys.executable, "-c", "pass"], timeout=30, env=env)  # fmt: skip


def publish_records(url: str, records: list[bytes], *extra: str):
    """tb publish reading one pipe that holds `records`, then EOF (it publishes them, exits)."""
    r, w = os.pipe()
    os.write(w, b"".join(struct.pack("<I", len(x)) + x for x in records))
    os.close(w)
    try:
        return subprocess.run(tb_cmd("publish", url, *extra), capture_output=True, text=True,
                              timeout=30, pass_fds=(r,),
                              env={**os.environ, "TB_PIPE_FDS": str(r)})  # fmt: skip
    finally:
        os.close(r)


def test_a_burst_with_a_credentials_file_in_operator_mode(tmp_path, nats_factory):
    conf, creds, _ = operator_mode(tmp_path)
    server = nats_factory("-c", str(conf))
    capture = tmp_path / "burst.tbcap"
    gen = run_tb(["gen", str(capture), "--trades", "10000", "--symbols", "300", "--seed", "5"])
    assert gen.returncode == 0, gen.stderr
    want = expected_pipes(capture, NPIPES)
    total = sum(map(len, want))
    out = tmp_path / "worker.jsonl"
    replay = Replay(str(capture), "--close-after")
    try:
        # tb publish takes the file from --creds, tb consume from NATS_CREDS
        run = Proc(["run", replay.url, "--key", "k", "--pipes", str(NPIPES), "--once", "--",
                    sys.executable, "-m", "tb", "publish", server.url, "--creds", str(creds)])  # fmt: skip
        wait_until(lambda: "tb.publish INFO: publishing" in run.text, 30, "tb publish to start")
        reader = Proc(["consume", server.url, "--partitions", f"0-{NPIPES - 1}", "--workdir",
                       str(tmp_path), "--", *log_worker(out)], env={"NATS_CREDS": str(creds)})  # fmt: skip
        assert run.wait(60) == 0, run.text[-3000:]
        wait_until(lambda: count_lines(out) >= total, 60, f"{total} records at the worker")
        reader.signal(signal.SIGTERM)
        assert reader.wait(30) == 0, reader.text[-2000:]
    finally:
        replay.stop()
    assert worker_pipes(logged(out), NPIPES) == want
    seed = creds.read_text().split("USER NKEY SEED-----\n")[1].split()[0]
    assert seed not in run.text + reader.text


def test_credentials_of_an_account_the_server_does_not_know(tmp_path, nats_factory):
    conf, _, stranger = operator_mode(tmp_path)
    server = nats_factory("-c", str(conf))
    proc = consume(server.url, tmp_path, "--creds", str(stranger))
    assert proc.returncode == ExitCode.AUTH, proc.stderr
    line = one_error(proc)
    assert "authorization failed (tried the credentials file" in line, line


def test_a_bare_nkey_seed(tmp_path, nats_factory):
    conf, seed, other = nkey_users(tmp_path)
    server = nats_factory("-c", str(conf))
    records = [b'{"ev":"T","sym":"A","i":"%d"}' % i for i in range(5)]
    proc = publish_records(server.url, records, "--creds", str(seed))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "worker.jsonl"
    reader = Proc(["consume", server.url, "--partitions", "0", "--workdir", str(tmp_path),
                   "--creds", str(seed), "--", *log_worker(out)])  # fmt: skip
    wait_until(lambda: count_lines(out) >= len(records), 30, "the records at the worker")
    reader.signal(signal.SIGTERM)
    assert reader.wait(30) == 0, reader.text[-2000:]
    assert [r["raw"].encode() for r in logged(out)] == records
    # another user's seed: refused, said in one line, the seed never shown
    proc = consume(server.url, tmp_path, "--creds", str(other))
    assert proc.returncode == ExitCode.AUTH, proc.stderr
    assert "authorization failed (tried the NKey seed" in one_error(proc)
    assert other.read_text().strip() not in proc.stderr


@pytest.mark.parametrize(
    "content, says",
    [
        ("user: feed\n", "is not a NATS credentials file"),
        ("SUnotaseed\n", "is not valid"),
    ],
)
def test_a_file_that_is_not_credentials(tmp_path, nats_server, content, says):
    path = tmp_path / "bad.creds"
    path.write_text(content)
    proc = consume(nats_server.url, tmp_path, "--creds", str(path))
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    line = one_error(proc)
    assert says in line and "notaseed" not in line, line
