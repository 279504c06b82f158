"""The io_uring backend: readiness through one-shot IORING_OP_POLL_ADD, re-armed after each event.

Theory of operation. Every watched (fd, direction) has a poll request in the ring, named by a
token (the request's user_data, never reused). A one-shot poll completes at once when the fd is
ready when it is armed, so re-arming it after its callback gives epoll's level-triggered
behaviour: data a callback left unread is reported again on the next turn. (A multishot poll
would report only new wake-ups, and a reader that stopped short of EAGAIN would stall.) The
re-arms, new watches and removals of one turn go to the kernel in the same io_uring_enter that
waits for the next completions, so a turn costs one system call, like epoll_wait.

A removed watch's token is forgotten at once: its cancellation, or a completion already on its
way, finds no entry and is dropped, so a closed and reused fd number cannot reach an old
callback. Remove a watch before closing its fd (tb always does): a pending poll holds its own
reference to the file, so unlike epoll, which forgets a closed fd, it keeps the file open (a
socket stays connected) until the poll completes. An error completion (e.g. EBADF) drops the
watch.

Needs the liburing bindings (`pip install -e '.[uring]'`, version 2024.5.3: the 2026 wheels
are built for AVX-512 and have another API). Side by side with epoll it costs the same within
the noise on every workload, so `--loop auto` keeps epoll, which needs nothing installed; and
completion-based I/O (submitting the recvs and pipe writes themselves) costs more through these
bindings than the system calls it saves (tools/uring_bench.py; figures in docs/performance.md).
"""

from __future__ import annotations

import errno
import itertools
import select
from collections.abc import Callable

import liburing as _u

from tb.loop.base import Loop, LoopError

if not hasattr(_u, "io_uring_cqe"):  # the 2026 rewrite: another API (and AVX-512 only wheels)
    raise ImportError(
        f"liburing {getattr(_u, '__version__', '?')} is not the version tb is written for "
        "(2024.5.3)"
    )

_IN = select.POLLIN
_OUT = select.POLLOUT
_READ_READY = select.POLLIN | select.POLLHUP | select.POLLERR
_WRITE_READY = select.POLLOUT | select.POLLERR
_ENTRIES = 1024  # submission slots; a turn that needs more submits in parts
_REMOVE = 1  # the token of poll-remove requests (their completions are dropped)


class UringLoop(Loop):
    name = "uring"

    def __init__(self) -> None:
        super().__init__()
        self._ring = _u.io_uring()
        self._cqe = _u.io_uring_cqe()
        try:
            _u.io_uring_queue_init(_ENTRIES, self._ring, 0)
        except OSError as exc:
            raise LoopError(f"io_uring_setup failed: {exc.strerror}") from None
        self._open = True
        self._tokens = itertools.count(2)
        # token -> (fd, is_writer); and the live token of each watched (fd, is_writer)
        self._polls: dict[int, tuple[int, bool]] = {}
        self._live: dict[tuple[int, bool], int] = {}
        self._callbacks: dict[tuple[int, bool], Callable[[], object]] = {}

    # -- requests -------------------------------------------------------------------------------
    def _sqe(self):
        sqe = _u.io_uring_get_sqe(self._ring)
        if not sqe:  # the submission queue is full: hand it to the kernel and take a fresh slot
            _u.io_uring_submit(self._ring)
            sqe = _u.io_uring_get_sqe(self._ring)
        return sqe

    def _arm(self, key: tuple[int, bool]) -> None:
        token = next(self._tokens)
        self._polls[token] = key
        self._live[key] = token
        sqe = self._sqe()
        _u.io_uring_prep_poll_add(sqe, key[0], _OUT if key[1] else _IN)
        sqe.user_data = token

    def _watch(self, key: tuple[int, bool], callback: Callable[[], object]) -> None:
        self._callbacks[key] = callback
        if key not in self._live:
            self._arm(key)

    def _unwatch(self, key: tuple[int, bool]) -> None:
        if self._callbacks.pop(key, None) is None:
            return
        token = self._live.pop(key, None)
        if token is not None:
            del self._polls[token]
            sqe = self._sqe()
            _u.io_uring_prep_poll_remove(sqe, token)
            sqe.user_data = _REMOVE

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        self._watch((fd, False), callback)

    def remove_reader(self, fd: int) -> None:
        self._unwatch((fd, False))

    def add_writer(self, fd: int, callback: Callable[[], object]) -> None:
        self._watch((fd, True), callback)

    def remove_writer(self, fd: int) -> None:
        self._unwatch((fd, True))

    # -- waiting --------------------------------------------------------------------------------
    def poll(self, timeout: float | None) -> bool:
        ring, cqe = self._ring, self._cqe
        try:
            if timeout is None:
                _u.io_uring_submit_and_wait_timeout(ring, cqe, 1)
            elif timeout <= 0:
                _u.io_uring_submit(ring)
            else:
                _u.io_uring_submit_and_wait_timeout(ring, cqe, 1, _u.timespec(timeout))
        except OSError as exc:
            if exc.errno not in (errno.ETIME, errno.EINTR, errno.EAGAIN):
                raise
        ready: list[tuple[tuple[int, bool], int]] = []
        polls, live = self._polls, self._live
        while _u.io_uring_peek_cqe(ring, cqe) == 0:  # -EAGAIN: none left
            token, res = cqe.user_data, cqe.res
            _u.io_uring_cqe_seen(ring, cqe)
            key = polls.pop(token, None)
            if key is None:  # a removal, or a poll removed before it completed
                continue
            del live[key]
            if res >= 0:
                ready.append((key, res))
            elif res != -errno.ECANCELED:  # an error (EBADF...): the watch is dropped
                self._callbacks.pop(key, None)
        callbacks = self._callbacks
        for key, revents in ready:
            cb = callbacks.get(key)
            if cb is None:  # removed by an earlier callback of this turn
                continue
            if revents & (_WRITE_READY if key[1] else _READ_READY):
                cb()
            # level-triggered: watch again whatever the callback did (unless it removed the watch)
            if key in callbacks and key not in live:
                self._arm(key)
        return bool(ready)

    def close(self) -> None:
        if self._open:
            self._open = False
            _u.io_uring_queue_exit(self._ring)
