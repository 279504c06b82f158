"""tools/floor_relay.py and tools/naive_client.py at their edges: a bad command line, a server
that is not there. One line saying why, no traceback, and the worker wound down."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).parent.parent / "tools"
RELAYS = ["floor_relay.py", "naive_client.py"]


def relay(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOLS / tool), *args], capture_output=True, text=True, timeout=30
    )


def refused_port() -> int:
    """A loopback port with nothing listening (bound, never listened on, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("tool", RELAYS)
@pytest.mark.parametrize(
    "args, says",
    [
        ([], "KEY URL NPIPES WORKDIR WORKER are required"),
        (
            ["k", "ws://127.0.0.1:1/", "0", ".", "cat"],
            "NPIPES must be a whole number of at least 1",
        ),
        (["k", "ws://127.0.0.1:1/", "2", "/nonexistent-dir", "cat"], "WORKDIR is not a directory"),
        (["k", "ws://127.0.0.1:1/", "2", ".", "/nonexistent/worker"], "cannot start the worker"),
    ],
)
def test_a_bad_command_line_is_a_usage_error(tool, args, says):
    if tool == "naive_client.py":
        pytest.importorskip("websockets")
    proc = relay(tool, *args)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("tool", RELAYS)
def test_a_refused_connection_is_one_line_and_the_worker_gets_eof(tool, tmp_path):
    if tool == "naive_client.py":
        pytest.importorskip("websockets")
    done = tmp_path / "worker-done"
    # the worker reads its first pipe to EOF, then says so: it must have been let go
    worker = [sys.executable, "-c",
              f"import os, sys; os.read(int(sys.argv[1]), 1); open({str(done)!r}, 'w').close()"]  # fmt: skip
    proc = relay(tool, "k", f"ws://127.0.0.1:{refused_port()}/", "2", str(tmp_path), *worker)
    assert proc.returncode == 1, proc.stderr
    assert "Connection refused" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert done.exists()
