"""spawn_worker with real processes: argv, env, cwd, inherited fds, parent-death signal, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tb.pipes import PipeError, Worker, spawn_worker

INTROSPECT = r"""
import json, os, sys
fds = {}
for name in os.listdir("/proc/self/fd"):
    try:
        link = os.readlink(f"/proc/self/fd/{name}")
        with open(f"/proc/self/fdinfo/{name}") as f:
            flags = int(f.read().split("flags:")[1].split()[0], 8)
    except OSError:
        continue  # the listdir's own fd, gone by now
    fds[int(name)] = [link, flags & 3]
json.dump({"argv": sys.argv, "env": os.environ.get("TB_PIPE_FDS"), "cwd": os.getcwd(),
           "fds": fds, "stdin": os.readlink("/proc/self/fd/0"), "extra": os.environ.get("EXTRA")},
          open("introspect.json", "w"))
"""


def test_contract(pipes, reap, tmp_path):
    ps = pipes(3)
    worker = spawn_worker(
        [sys.executable, "-c", INTROSPECT, "--flag"],
        ps.read_fds,
        str(tmp_path),
        env={**os.environ, "EXTRA": "yes"},
    )
    reap.append(worker)
    assert worker.wait(30) == 0
    got = json.loads((tmp_path / "introspect.json").read_text())
    fd_args = [str(fd) for fd in ps.read_fds]
    assert got["argv"][-4:] == ["--flag", *fd_args]  # read ends appended, in pipe order
    assert worker.argv[-3:] == fd_args
    assert got["env"] == ",".join(fd_args)
    assert got["extra"] == "yes"
    assert os.path.samefile(got["cwd"], tmp_path)
    assert got["stdin"] == "/dev/null"
    inherited = {int(fd): v for fd, v in got["fds"].items() if int(fd) > 2}
    assert sorted(inherited) == sorted(
        ps.read_fds
    )  # only the read ends, and none of the write ends
    for fd in ps.read_fds:
        assert inherited[fd] == [os.readlink(f"/proc/self/fd/{fd}"), os.O_RDONLY]
    assert all(v[1] != os.O_WRONLY for fd, v in got["fds"].items() if int(fd) > 2)


def test_pidfd_becomes_readable_when_the_worker_dies(pipes, reap, tmp_path):
    import select

    ps = pipes(1)
    worker = spawn_worker([sys.executable, "-c", "import time; time.sleep(30)"], ps.read_fds, ".")
    reap.append(worker)
    assert worker.pidfd >= 0 and worker.poll() is None
    assert select.select([worker.pidfd], [], [], 0)[0] == []
    worker.kill()
    assert select.select([worker.pidfd], [], [], 10)[0] == [worker.pidfd]
    rc = worker.wait(10)
    assert rc == -signal.SIGKILL
    assert worker.describe(rc) == "killed by signal 9 (SIGKILL)"


def test_describe_and_exit_status(pipes, reap, tmp_path):
    ps = pipes(1)
    worker = spawn_worker(["sh", "-c", "exit 3"], ps.read_fds, str(tmp_path))
    reap.append(worker)
    assert worker.wait(10) == 3
    assert worker.describe(3) == "exited with status 3"
    assert Worker.describe(-15) == "killed by signal 15 (SIGTERM)"
    assert Worker.describe(None) == "is still running"


def test_wait_timeout_and_terminate(pipes, reap, tmp_path):
    ps = pipes(1)
    worker = spawn_worker([sys.executable, "-c", "import time; time.sleep(30)"], ps.read_fds, ".")
    reap.append(worker)
    assert worker.wait(0.05) is None
    worker.terminate()
    assert worker.describe(worker.wait(10)) == "killed by signal 15 (SIGTERM)"


# The worker is started by an intermediate process that is then SIGKILLed. A third process, made
# a child subreaper, adopts the orphaned worker and reports how it ended.
REAPER = r"""
import ctypes, json, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us
middle = subprocess.Popen([sys.executable, "-c", *sys.argv[1:]], stdout=subprocess.PIPE)
worker_pid = int(middle.stdout.readline())
os.kill(middle.pid, signal.SIGKILL)
middle.wait()
deadline = time.monotonic() + 10
status = None
while time.monotonic() < deadline:
    pid, st = os.waitpid(worker_pid, os.WNOHANG)
    if pid:
        status = st
        break
    time.sleep(0.01)
if status is None:
    os.kill(worker_pid, signal.SIGKILL)
    os.waitpid(worker_pid, 0)
    print(json.dumps({"timeout": True}))
else:
    print(json.dumps({"signaled": os.WIFSIGNALED(status),
                      "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}))
"""

MIDDLE = r"""
import signal, sys
if sys.argv[1:] == ["nohup"]:  # started as under nohup: SIGHUP ignored, and inherited so
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
from tb.pipes import open_pipes, spawn_worker
ps = open_pipes(1, 65536)
w = spawn_worker([sys.executable, "-c", "import time; time.sleep(30)"], ps.read_fds, ".")
print(w.pid, flush=True)
import time; time.sleep(30)
"""


@pytest.mark.parametrize("how", ["plain", "nohup"])
def test_worker_gets_sighup_when_the_balancer_dies(tmp_path, how):
    out = subprocess.run(
        [sys.executable, "-c", REAPER, MIDDLE, how],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"signaled": True, "signal": signal.SIGHUP}


def test_missing_worker(pipes, tmp_path):
    ps = pipes(1)
    with pytest.raises(PipeError, match=r"worker '/nonexistent/worker' not found"):
        spawn_worker(["/nonexistent/worker"], ps.read_fds, str(tmp_path))
    with pytest.raises(PipeError, match=r"worker 'no-such-worker-xyz' not found"):
        spawn_worker(["no-such-worker-xyz"], ps.read_fds, str(tmp_path))


def test_worker_not_executable(pipes, tmp_path):
    ps = pipes(1)
    script = tmp_path / "worker.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    with pytest.raises(PipeError, match="is not executable"):
        spawn_worker([str(script)], ps.read_fds, str(tmp_path))


def test_missing_workdir(pipes, tmp_path):
    ps = pipes(1)
    with pytest.raises(PipeError, match="work dir"):
        spawn_worker(["true"], ps.read_fds, str(tmp_path / "nope"))
    with pytest.raises(PipeError, match="no worker"):
        spawn_worker([], ps.read_fds, str(tmp_path))


def test_no_traceback_in_the_message(pipes, tmp_path):
    ps = pipes(1)
    with pytest.raises(PipeError) as info:
        spawn_worker(["/nonexistent/worker"], ps.read_fds, str(tmp_path))
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "\n" not in str(info.value)


def test_example_worker_end_to_end(pipes, reap, tmp_path, capfd, frame):
    """The example worker, started the way tb starts it, fed through a PipeWriter."""
    from tb.loop.epoll import EpollLoop
    from tb.pipes import PipeWriter

    ps = pipes(3, 65536)
    worker = spawn_worker(
        [sys.executable, "-m", "tb.pipes.example_worker", "--out", "summary.json"],
        ps.read_fds,
        str(tmp_path),
    )
    reap.append(worker)
    for fd in ps.read_fds:
        os.close(fd)
    loop = EpollLoop()
    w = PipeWriter(loop, ps.write_fds)
    syms = ["AAPL", "MSFT", "A", "SPY", "TSLA", "X"]
    expect_pipe, expect_sym = [0, 0, 0], dict.fromkeys(syms, 0)
    for batch in range(200):
        runs, counts = [bytearray(), bytearray(), bytearray()], [0, 0, 0]
        for k in range(50):
            sym = syms[(batch + k) % len(syms)]
            pipe = syms.index(sym) % 3
            runs[pipe] += frame(json.dumps({"ev": "T", "sym": sym, "p": 1.5, "k": k}).encode())
            counts[pipe] += 1
            expect_pipe[pipe] += 1
            expect_sym[sym] += 1
        w.submit(runs, counts)
        loop.poll(0)
    assert w.flush(20)
    w.close()
    loop.close()
    assert worker.wait(30) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {
        "records": 10000,
        "per_pipe": expect_pipe,
        "per_symbol": dict(sorted(expect_sym.items())),
        "undecodable": 0,
    }
    line = capfd.readouterr().out.strip().splitlines()[-1]
    assert line == (
        f"example_worker: 10000 records, 6 symbols; per pipe: "
        f"0={expect_pipe[0]} 1={expect_pipe[1]} 2={expect_pipe[2]}"
    )


def test_example_worker_truncated_record(pipes, reap, tmp_path, capfd):
    ps = pipes(1, 65536)
    worker = spawn_worker([sys.executable, "-m", "tb.pipes.example_worker"], [], str(tmp_path))
    reap.append(worker)
    assert worker.wait(30) == 1  # no fds at all: says how to start it
    assert "TB_PIPE_FDS" in capfd.readouterr().err
    worker = spawn_worker([sys.executable, "-m", "tb.pipes.example_worker"], ps.read_fds, ".")
    reap.append(worker)
    os.close(ps.read_fds[0])
    os.write(ps.write_fds[0], b"\x10\x00\x00\x00{}")
    os.close(ps.write_fds[0])
    assert worker.wait(30) == 1
    err = capfd.readouterr().err
    assert "pipe 0" in err and "6 bytes left over" in err and "Traceback" not in err
