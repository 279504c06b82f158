"""serve(): a worker that fans out over K processes, each reading its own share of the pipes.

Theory of operation. tb routes every symbol to one pipe, so a symbol's order holds as long as
each pipe is read by exactly one process. serve() deals the pipes out round-robin (pipe i to
sub-worker i % K), forks K sub-workers, and closes every pipe in the parent: each read end is
then open in one process only. A sub-worker polls its pipes, reads each ready one once into its
buffer (tb.pipes.reader.PipeBuffers) and hands the complete records to the handler -- one call per
record, or with batch=True one call per read with memoryviews into the buffer -- before it polls
again; so at any poll every complete record it has read has been handled, and only the start of
a record still being written can be lost with the process.

The parent does nothing but wait. Its exit status is the whole worker's, which is what tb
supervises:
- every sub-worker ends with status 0 (EOF on all its pipes, or a clean stop): 0;
- a sub-worker dies (a signal, an exception from the handler, a PipeError): the parent says which
  one, stops the others (SIGTERM; SIGKILL after `grace` seconds), waits for them, and exits 1. A
  half-worker never goes on silently with some pipes unread: tb sees a dead worker, cuts the torn
  records out of the pipes and starts a new one, which reads every pipe again.

Signals. SIGTERM or SIGINT to the parent is passed to the sub-workers; a sub-worker stops after
the read in hand, calls `finish` and exits 0 (what was left unread stays in the pipes for the
next worker). SIGHUP is what tb's death sends (PR_SET_PDEATHSIG): tb's write ends are closed by
then, so every pipe reaches EOF once what tb wrote before dying is read; serve() ignores SIGHUP
and reads to that EOF, so nothing that reached a pipe is lost. A sub-worker gets SIGKILL if the
parent dies without it (its death signal), so no orphan ever reads a pipe beside the next
worker. The sub-workers stay in the parent's process group, which tb leads the worker into: a
signal tb sends to the group reaches them all.

With processes=1 nothing is forked: the handler runs in the calling process (a debugger works),
exceptions propagate, and the signals behave as above.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tb.pipes.errors import PipeError
from tb.pipes.reader import BATCH_READ, MAX_RECORD, PipeBuffers, check_fds, pipe_fds
from tb.pipes.worker import Worker
from tb.worker.sequence import SequenceCheck

__all__ = ["SubWorker", "serve"]

_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_SLOT = struct.Struct("<QQQ")  # per sub-worker, shared with the parent: records, repeats, backwards


@dataclass(slots=True)
class SubWorker:
    """What a sub-worker is given: its index among `processes`, and the pipes it reads."""

    index: int
    processes: int
    pipes: list[int]  # pipe indices (into the worker's fds), each read by this process only
    records: int = 0  # records handed to the handler so far
    stopping: bool = field(default=False, repr=False)


def serve(
    handler: Callable,
    processes: int = 1,
    *,
    batch: bool = False,
    fds: Sequence[int] | None = None,
    start: Callable[[SubWorker], None] | None = None,
    finish: Callable[[SubWorker], None] | None = None,
    sequence: SequenceCheck | None = None,
    bufsize: int = BATCH_READ,
    max_record: int = MAX_RECORD,
    grace: float = 10.0,
) -> int:
    """Read every pipe to EOF in `processes` processes; return the exit status for sys.exit().

    handler(pipe, record): called for each record (bytes), in pipe order; with batch=True,
    handler(pipe, records) for each read, records being memoryviews into the read buffer, valid
    during the call only (bytes(view) keeps one). pipe is the index into fds.
    processes: sub-workers to fork (at most one per pipe; 0: one per core this process may run
    on); 1 runs in the calling process. fds: the read ends (default TB_PIPE_FDS); with more than
    one process they are closed here once forked (each stays open in its sub-worker only).
    start(sub) / finish(sub): called in each sub-worker before its first read / after its last
    (at EOF or on SIGTERM), with its SubWorker. sequence: count q anomalies (SequenceCheck; its
    callback runs in the sub-workers, its counters are summed here when serve() returns).
    grace: seconds the other sub-workers get to stop after one died, before SIGKILL.
    Raises PipeError for bad fds (before anything is forked).
    """
    fds = pipe_fds(fds)
    if processes < 0:
        raise ValueError(f"processes must be 0 (one per core) or more, not {processes}")
    if processes == 0:
        processes = len(os.sched_getaffinity(0))
    processes = min(processes, len(fds))
    check_fds(fds)  # (before anything is forked)
    subs = [
        SubWorker(k, processes, [i for i in range(len(fds)) if i % processes == k])
        for k in range(processes)
    ]
    args = (handler, batch, fds, start, finish, sequence, bufsize, max_record)
    if processes == 1:
        with _Signals() as signals:
            _run(subs[0], signals, *args)
        return 0
    return _Parent(subs, grace).run(args, sequence)


class _Signals:
    """A sub-worker's signals: SIGTERM/SIGINT ask it to stop (seen by poll through a wakeup fd),
    SIGHUP is ignored (tb died: read on to EOF). Restores what was there on exit."""

    def __enter__(self) -> _Signals:
        self.stop = False
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old = {s: signal.getsignal(s) for s in (*_STOP_SIGNALS, signal.SIGHUP)}
        for s in _STOP_SIGNALS:
            signal.signal(s, self._on_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._old_wakeup = signal.set_wakeup_fd(self.wfd)
        return self

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stop = True

    def drain(self) -> None:
        try:
            while os.read(self.rfd, 512):
                pass
        except BlockingIOError:
            pass

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for s, old in self._old.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        os.close(self.rfd)
        os.close(self.wfd)


def _run(
    sub: SubWorker,
    signals: _Signals,
    handler: Callable,
    batch: bool,
    fds: list[int],
    start: Callable | None,
    finish: Callable | None,
    sequence: SequenceCheck | None,
    bufsize: int,
    max_record: int,
) -> None:
    """One sub-worker's loop: its pipes to EOF (or a stop signal), then finish."""
    mine = [fds[i] for i in sub.pipes]
    pipes = PipeBuffers(mine, bufsize=bufsize, max_record=max_record)
    index = {fd: j for j, fd in enumerate(mine)}
    poller = select.poll()
    for fd in mine:
        poller.register(fd, select.POLLIN)
    poller.register(signals.rfd, select.POLLIN)
    check = sequence.check if sequence is not None else None
    if start is not None:
        start(sub)
    live = len(mine)
    while live and not signals.stop:
        for fd, events in poller.poll():
            if fd == signals.rfd:
                signals.drain()
                continue
            j = index[fd]
            pipe = sub.pipes[j]
            if events & select.POLLNVAL:
                raise PipeError(f"pipe {pipe}: fd {fd} is not open in this process")
            records = pipes.read(j)
            if records is None:
                poller.unregister(fd)
                live -= 1
                continue
            if not records:
                continue
            sub.records += len(records)
            if check is not None:
                for record in records:
                    check(record)
            if batch:
                handler(pipe, records)
            else:
                for record in records:
                    handler(pipe, bytes(record))
    sub.stopping = signals.stop
    if finish is not None:
        finish(sub)


def _death_signal() -> Callable[[], None]:
    """A function for a freshly forked sub-worker: SIGKILL when the parent dies (loaded here,
    before the fork)."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return set_death_signal


class _Parent:
    """Forks the sub-workers and waits for them (see the module docstring)."""

    def __init__(self, subs: list[SubWorker], grace: float) -> None:
        self.subs = subs
        self.grace = grace
        self.pids: dict[int, SubWorker] = {}

    def run(self, args: tuple, sequence: SequenceCheck | None) -> int:
        fds = args[2]
        stats = mmap.mmap(-1, _SLOT.size * len(self.subs))  # MAP_SHARED: the children write it
        set_death_signal = _death_signal()
        sys.stdout.flush()
        sys.stderr.flush()
        handled = (*_STOP_SIGNALS, signal.SIGHUP)
        # Blocked across the forks: a child must not run the parent's handlers before its own.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        old = {s: signal.getsignal(s) for s in handled}
        try:
            for s in _STOP_SIGNALS:
                signal.signal(s, self._forward)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            for sub in self.subs:
                try:
                    pid = os.fork()
                except OSError as exc:
                    self._forward(signal.SIGTERM, None)
                    for pid in self.pids:
                        os.waitpid(pid, 0)
                    raise PipeError(
                        f"cannot start sub-worker {sub.index}: {exc.strerror}"
                    ) from None
                if pid == 0:
                    _child(sub, args, set_death_signal, stats, old_mask)  # never returns
                self.pids[pid] = sub
            for fd in fds:
                os.close(fd)  # each pipe is open in its sub-worker only
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            status = self._wait()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            for s, handler in old.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if sequence is not None:
            for k in range(len(self.subs)):
                _, repeats, backwards = _SLOT.unpack_from(stats, k * _SLOT.size)
                sequence.repeats += repeats
                sequence.backwards += backwards
        stats.close()
        return status

    def _forward(self, signum: int, frame: object) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _wait(self) -> int:
        """Wait for every sub-worker (on pidfds: only our own children are reaped); 1 if one
        failed, after the others were stopped."""
        pidfds = {os.pidfd_open(pid): pid for pid in self.pids}
        poller = select.poll()
        for pidfd in pidfds:
            poller.register(pidfd, select.POLLIN)
        failed = False
        deadline = None
        while pidfds:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
            ready = poller.poll(timeout)
            if not ready:  # the grace is over: the survivors are killed
                for pid in self.pids:
                    os.kill(pid, signal.SIGKILL)
                deadline = None
                continue
            for pidfd, _ in ready:
                pid = pidfds.pop(pidfd)
                poller.unregister(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                sub = self.pids.pop(pid)
                if status == 0:
                    continue
                pipes = ",".join(map(str, sub.pipes))
                print(
                    f"serve: sub-worker {sub.index} (pid {pid}, pipes {pipes}) {Worker.describe(os.waitstatus_to_exitcode(status))}",
                    file=sys.stderr,
                    flush=True,
                )
                if not failed:
                    failed = True
                    if self.pids:
                        print(
                            f"serve: stopping the other {len(self.pids)} sub-workers; the worker "
                            "exits with status 1 (tb restarts it under its --restart policy)",
                            file=sys.stderr,
                            flush=True,
                        )
                    self._forward(signal.SIGTERM, None)
                    deadline = time.monotonic() + self.grace
        return 1 if failed else 0


def _child(sub: SubWorker, args: tuple, set_death_signal, stats: mmap.mmap, mask) -> None:
    """A forked sub-worker: close the pipes that are not its own, run, exit (never returns)."""
    status = 1
    try:
        set_death_signal()
        fds = args[2]
        for i, fd in enumerate(fds):
            if i % sub.processes != sub.index:
                os.close(fd)
        sequence = args[5]  # (this process's copy: it counts this sub-worker's pipes)
        with _Signals() as signals:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            try:
                _run(sub, signals, *args)
                status = 0
            finally:
                repeats, backwards = (sequence.repeats, sequence.backwards) if sequence else (0, 0)
                _SLOT.pack_into(stats, sub.index * _SLOT.size, sub.records, repeats, backwards)
    except PipeError as exc:
        print(f"serve: sub-worker {sub.index}: {exc}", file=sys.stderr)
    except BaseException:
        print(f"serve: sub-worker {sub.index} (pid {os.getpid()}) failed:", file=sys.stderr)
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
