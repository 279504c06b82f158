"""tb publish and tb consume over tls:// with --cafile, against a nats-server with TLS on and a
certificate from a throwaway CA: a burst end to end, and a CA that does not sign the server's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from harness import Replay, run_tb, tb_cmd
from nats_harness import (
    Proc,
    count_lines,
    expected_pipes,
    log_worker,
    logged,
    wait_until,
    worker_pipes,
)

from tb.exitcode import ExitCode

NPIPES = 4


def tls_url(server) -> str:
    return f"tls://127.0.0.1:{server.port}"


def test_a_burst_over_tls_end_to_end(tmp_path, nats_tls):
    server, ca, _ = nats_tls
    capture = tmp_path / "burst.tbcap"
    gen = run_tb(["gen", str(capture), "--trades", "20000", "--symbols", "500", "--seed", "3"])
    assert gen.returncode == 0, gen.stderr
    want = expected_pipes(capture, NPIPES)
    total = sum(map(len, want))
    out = tmp_path / "worker.jsonl"
    nats = [tls_url(server), "--cafile", str(ca)]
    replay = Replay(str(capture), "--close-after")
    try:
        run = Proc(["run", replay.url, "--key", "k", "--pipes", str(NPIPES), "--once", "--",
                    sys.executable, "-m", "tb", "publish", *nats])  # fmt: skip
        wait_until(lambda: "tb.publish INFO: publishing" in run.text, 30, "tb publish to start")
        consume = Proc(["consume", *nats, "--partitions", f"0-{NPIPES - 1}", "--workdir",
                        str(tmp_path), "--", *log_worker(out)])  # fmt: skip
        assert run.wait(60) == 0, run.text[-3000:]
        wait_until(lambda: count_lines(out) >= total, 60, f"{total} records at the worker")
        consume.signal(signal.SIGTERM)
        assert consume.wait(30) == 0, consume.text[-2000:]
    finally:
        replay.stop()
    assert worker_pipes(logged(out), NPIPES) == want
    assert int(run.final("tb publish: final")["acked"]) == total
    assert f"from {tls_url(server)}" in consume.text  # (the log names the server, TLS and all)


def test_a_ca_that_did_not_sign_the_servers_certificate(tmp_path, nats_tls):
    server, _, other_ca = nats_tls
    url = tls_url(server)
    r, w = os.pipe()
    try:
        publish = subprocess.run(tb_cmd("publish", url, "--cafile", str(other_ca)),
                                 capture_output=True, text=True, timeout=30, pass_fds=(r,),
                                 env={**os.environ, "TB_PIPE_FDS": str(r)})  # fmt: skip
    finally:
        os.close(r)
        os.close(w)
    consume = run_tb(["consume", url, "--cafile", str(other_ca), "--partitions", "0-3",
                      "--workdir", str(tmp_path), "--", sys.executable, "-c", "pass"],
                     timeout=30)  # fmt: skip
    for proc, who in ((publish, "publish"), (consume, "consume")):
        assert proc.returncode == ExitCode.TLS, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
        assert len(errors) == 1, proc.stderr
        assert (
            f"tb {who}: error: TLS to NATS at {url} failed: CERTIFICATE_VERIFY_FAILED"
            in (errors[0])
        ), errors
        assert "--cafile" in errors[0]


def test_the_log_of_a_clean_tls_run_has_no_asyncio_noise(tmp_path, nats_tls):
    server, ca, _ = nats_tls
    r, w = os.pipe()
    proc = subprocess.Popen(tb_cmd("publish", tls_url(server), "--cafile", str(ca)),
                            stderr=subprocess.PIPE, text=True, pass_fds=(r,),
                            env={**os.environ, "TB_PIPE_FDS": str(r)})  # fmt: skip
    os.close(r)
    os.close(w)  # EOF on its one pipe: it connects, finds nothing to publish, and exits
    assert proc.wait(30) == 0
    stderr = proc.stderr.read()
    assert "tb publish: final" in stderr and "asyncio" not in stderr, stderr
