"""Starting and supervising the worker process.

The worker contract (the C original's): the worker runs as `ARGV... FD0 FD1 ... FDn-1` with the
pipes' read ends appended, its environment is the balancer's plus TB_PIPE_FDS="FD0,FD1,...", its
cwd is the work dir, stdin is /dev/null, stdout/stderr are the balancer's. It inherits ONLY the
read ends (a worker holding a write end would never see EOF), and it gets SIGHUP when the
balancer dies (PR_SET_PDEATHSIG). It leads a process group of its own, so signals meant for
tb's group (Ctrl-C in a terminal, `kill -TERM -PGID`, a service manager stopping the group)
reach tb alone: tb stops the worker by closing the pipes after the flush (EOF), never by a
signal, unless it is still running --shutdown-timeout seconds after EOF. Note that the kernel sends the death signal when the *thread*
that forked exits, so spawn from the loop's thread.

A pidfd (os.pidfd_open) is opened for the worker so that its death can be watched on the loop:
the pidfd becomes readable when the process exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tb.pipes.errors import PipeError

__all__ = ["Worker", "spawn_worker"]

_PR_SET_PDEATHSIG = 1


@dataclass
class Worker:
    """A running (or finished) worker process."""

    pid: int
    argv: list[str]
    pidfd: int
    popen: subprocess.Popen

    def poll(self) -> int | None:
        """The return code if the worker has exited (negative: killed by that signal), else None."""
        return self.popen.poll()

    def wait(self, timeout: float | None) -> int | None:
        """Wait up to `timeout` seconds (None: forever); the return code, or None if still running."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self) -> None:
        """Send SIGTERM to the worker's process group (nothing if it has already been reaped)."""
        self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL to the worker's process group (nothing if it has already been reaped)."""
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        if self.popen.poll() is not None:
            return  # reaped: its pid (and group id) may belong to another process by now
        try:
            os.killpg(self.pid, signum)  # the worker leads its group: it and what it started
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Close the pidfd (the process itself is left alone)."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    @staticmethod
    def describe(returncode: int | None) -> str:
        """One phrase for a return code: "exited with status 3", "killed by signal 9 (SIGKILL)"."""
        if returncode is None:
            return "is still running"
        if returncode >= 0:
            return f"exited with status {returncode}"
        signum = -returncode
        try:
            name = signal.Signals(signum).name
        except ValueError:
            return f"killed by signal {signum}"
        return f"killed by signal {signum} ({name})"


def _death_signal_setter() -> object:
    """A preexec_fn asking the kernel for SIGHUP when the balancer dies.

    SIGHUP is set back to its default action first: a balancer started under nohup ignores it,
    an ignored disposition survives exec, and the worker would outlive the balancer.
    Everything that allocates or loads (ctypes, libc) is done here, before the fork."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    set_handler = libc.signal
    set_handler.argtypes = [ctypes.c_int, ctypes.c_void_p]
    set_handler.restype = ctypes.c_void_p
    parent = os.getpid()
    sighup = int(signal.SIGHUP)

    def set_death_signal() -> None:
        set_handler(sighup, None)  # SIG_DFL
        if prctl(_PR_SET_PDEATHSIG, sighup, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the balancer died before prctl took effect
            os.kill(os.getpid(), sighup)

    return set_death_signal


def spawn_worker(
    argv: Sequence[str],
    read_fds: Sequence[int],
    workdir: str,
    *,
    env: Mapping[str, str] | None = None,
) -> Worker:
    """Start the worker as argv + the read fds, in `workdir`, inheriting only those fds.

    env: the environment to start from (default os.environ); TB_PIPE_FDS is added to it.
    Raises PipeError if the worker or the work dir is missing or the worker is not executable.
    """
    if not argv:
        raise PipeError("no worker command given")
    if not os.path.isdir(workdir):
        raise PipeError(f"work dir {workdir!r} is not a directory")
    fds = [int(fd) for fd in read_fds]
    full_argv = [*argv, *(str(fd) for fd in fds)]
    child_env = dict(os.environ if env is None else env)
    child_env["TB_PIPE_FDS"] = ",".join(map(str, fds))
    try:
        popen = subprocess.Popen(
            full_argv,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=child_env,
            pass_fds=fds,
            close_fds=True,
            preexec_fn=_death_signal_setter(),
            # Its own process group: a signal for tb's group (Ctrl-C in a terminal, a service
            # manager's stop) reaches tb alone, which then ends the worker by EOF after flushing.
            process_group=0,
        )
    except FileNotFoundError:
        raise PipeError(f"worker {argv[0]!r} not found") from None
    except PermissionError:
        raise PipeError(f"worker {argv[0]!r} is not executable") from None
    except OSError as exc:
        raise PipeError(f"cannot start worker {argv[0]!r}: {exc.strerror}") from None
    except subprocess.SubprocessError as exc:
        raise PipeError(f"cannot start worker {argv[0]!r}: {exc}") from None
    try:
        pidfd = os.pidfd_open(popen.pid)
    except OSError:
        pidfd = -1  # already reaped is impossible here; a kernel without pidfd_open: poll instead
    return Worker(pid=popen.pid, argv=full_argv, pidfd=pidfd, popen=popen)
