"""The signals that stop tb, delivered onto its loop.

SIGINT, SIGTERM and SIGHUP (a closed terminal) all mean "stop": tb run flushes the pipes and tb
record closes its capture. The handler only notes the signal and calls back; the wakeup fd (a
socketpair read by the loop) makes sure a loop asleep in epoll_wait or io_uring wakes for it.
A second stop signal means "now": the process exits at once with 130.

The worker runs in a process group of its own (tb.pipes.worker), so a signal sent to tb's group
-- Ctrl-C in a terminal, `kill -TERM -PGID`, a service manager stopping the control group --
reaches tb alone, and tb stops the worker through the pipes: EOF after the flush.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable

from tb.exitcode import ExitCode
from tb.logs import write_line
from tb.loop import Loop

__all__ = ["STOP_SIGNALS", "StopSignals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """Installs handlers for STOP_SIGNALS that call `on_stop(name)` on the first one."""

    def __init__(self, loop: Loop, on_stop: Callable[[str], None]) -> None:
        self.loop = loop
        self.on_stop = on_stop
        self.received = 0
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        self._old = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        loop.add_reader(self._r.fileno(), self._drain)

    def restore(self) -> None:
        """Put the previous handlers back (the loop is closed by now: nothing to unregister)."""
        signal.set_wakeup_fd(self._old_wakeup)
        for s, h in self._old.items():
            signal.signal(s, h)
        self._r.close()
        self._w.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        if self.received > 1:
            # A second signal: the user wants out now, queued records or not.
            write_line(f"tb: second {name}: exiting at once")
            os._exit(ExitCode.INTERRUPTED)
        self.on_stop(name)

    def _drain(self) -> None:
        try:
            while self._r.recv(512):
                pass
        except BlockingIOError:
            pass
