"""tb publish and tb consume against a server that refuses them: one clear line, no traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from harness import run_tb, tb_cmd
from nats_harness import free_port

from tb.exitcode import ExitCode


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, stderr
    return errors[0]


def consume(url: str, tmp_path, *extra: str, env: dict | None = None):
    return run_tb(
        ["consume", url, "--partitions", "0-3", "--workdir", str(tmp_path), *extra]
        + ["--", sys.executable, "-c", "pass"],
        timeout=30,
        env=env,
    )


def publish(url: str, *extra: str, env: dict | None = None):
    """tb publish given a pipe of its own (as tb run would give it one)."""
    r, w = os.pipe()
    try:
        full_env = {"TB_PIPE_FDS": str(r), **(env or {})}
        proc = subprocess.run(
            tb_cmd("publish", url, *extra),
            capture_output=True,
            text=True,
            timeout=30,
            pass_fds=(r,),
            env={**os.environ, **full_env},
        )
    finally:
        os.close(r)
        os.close(w)
    return proc


def test_unreachable_server(tmp_path):
    url = f"nats://127.0.0.1:{free_port()}"
    for proc, who in ((consume(url, tmp_path), "consume"), (publish(url), "publish")):
        assert proc.returncode == ExitCode.CONNECT, proc.stderr
        line = one_line_error(proc.stderr)
        assert f"tb {who}: error: cannot reach NATS at {url}: connection refused" in line


def test_bad_credentials_are_refused_and_never_shown(tmp_path, nats_factory):
    server = nats_factory("--user", "feed", "--pass", "s3cret-pass")
    env = {"NATS_USER": "feed", "NATS_PASSWORD": "wrong-pass"}
    for proc in (consume(server.url, tmp_path, env=env), publish(server.url, env=env)):
        assert proc.returncode == ExitCode.AUTH, proc.stderr
        line = one_line_error(proc.stderr)
        assert "authorization failed" in line and "user and password" in line
        assert "wrong-pass" not in proc.stderr
    # in the URL: refused too, and the URL is shown without them
    bad = server.url.replace("nats://", "nats://feed:wrong-pass@")
    proc = publish(bad)
    assert proc.returncode == ExitCode.AUTH and "wrong-pass" not in proc.stderr
    # the right ones get through to the stream check
    good = {"NATS_USER": "feed", "NATS_PASSWORD": "s3cret-pass"}
    proc = consume(server.url, tmp_path, env=good)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "no stream TRADES" in one_line_error(proc.stderr)


def test_a_stream_whose_subjects_do_not_fit(tmp_path, nats_server):
    import nats

    async def make() -> None:
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().add_stream(name="OTHER", subjects=["elsewhere.*"])
        await nc.close()

    asyncio.run(make())
    for proc in (
        consume(nats_server.url, tmp_path, "--stream", "OTHER"),
        publish(nats_server.url, "--stream", "OTHER"),
    ):
        assert proc.returncode == ExitCode.USAGE, proc.stderr
        line = one_line_error(proc.stderr)
        assert "stream OTHER has subjects elsewhere.*, which do not hold OTHER.0" in line


@pytest.mark.parametrize(
    "args,says",
    [
        (["--partitions", "3-1"], "bad partition range"),
        (["--partitions", "0-3,2"], "listed twice"),
        (["--partitions", "a"], "not a partition list"),
    ],
)
def test_bad_partitions(tmp_path, args, says):
    proc = run_tb(
        ["consume", "nats://127.0.0.1:1", "--workdir", str(tmp_path), *args, "--", "true"]
    )
    assert proc.returncode == ExitCode.USAGE
    assert says in one_line_error(proc.stderr)
