from __future__ import annotations

import fcntl
import os

import pytest

from tb.pipes import PipeError, open_pipes, pipe_max_size
from tb.pipes.pipeset import F_GETPIPE_SZ


def test_default_size_is_what_the_kernel_granted(pipes):
    ps = pipes(3)
    assert len(ps.read_fds) == len(ps.write_fds) == 3
    for fd in ps.read_fds + ps.write_fds:
        assert fcntl.fcntl(fd, F_GETPIPE_SZ) >= ps.size
    assert {fcntl.fcntl(fd, F_GETPIPE_SZ) for fd in ps.write_fds} == {ps.size}
    if pipe_max_size() > 65536:
        assert ps.size > 65536
        assert ps.size == pipe_max_size()


def test_explicit_size(pipes):
    ps = pipes(2, 65536)
    assert ps.size == 65536
    assert all(fcntl.fcntl(fd, F_GETPIPE_SZ) == 65536 for fd in ps.write_fds)


def test_flags(pipes):
    ps = pipes(2)
    for fd in ps.write_fds:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    for fd in ps.read_fds:
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    for fd in ps.read_fds + ps.write_fds:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert not os.get_inheritable(fd)


def test_read_and_write_ends_pair_up(pipes):
    ps = pipes(4, 65536)
    for i, w in enumerate(ps.write_fds):
        os.write(w, bytes([i]))
    assert [os.read(r, 1) for r in ps.read_fds] == [bytes([i]) for i in range(4)]


def test_refused_size_is_halved(pipes, monkeypatch):
    """Asking for more than the kernel allows still gives a pipe, of a size it accepted."""
    import tb.pipes.pipeset as pipeset

    real = fcntl.fcntl

    def fussy(fd, cmd, arg=0):
        if cmd == pipeset.F_SETPIPE_SZ and arg > 131072:
            raise PermissionError(1, "Operation not permitted")
        return real(fd, cmd, arg)

    monkeypatch.setattr(pipeset.fcntl, "fcntl", fussy)
    ps = pipes(2, 1 << 20)
    assert ps.size == 131072


@pytest.mark.parametrize("n, size", [(0, None), (-1, None), (1, 0)])
def test_bad_arguments(n, size):
    with pytest.raises(PipeError):
        open_pipes(n, size)


def test_failure_closes_everything(monkeypatch):
    """An error half-way (here: the fd table is full) leaves no fd behind."""
    import tb.pipes.pipeset as pipeset

    before = set(os.listdir("/proc/self/fd"))
    real = os.pipe2
    made = []

    def pipe2_then_fail(flags):
        if len(made) == 2:
            raise OSError(24, "Too many open files")
        made.append(real(flags))
        return made[-1]

    monkeypatch.setattr(pipeset.os, "pipe2", pipe2_then_fail)
    with pytest.raises(PipeError, match="pipe 2 of 4"):
        open_pipes(4)
    assert set(os.listdir("/proc/self/fd")) == before
