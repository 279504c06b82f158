"""The loop's kernel: timers, call_soon, run/stop and busy polling, over a backend's poll().

Theory of operation: one thread, one loop. `Loop` keeps the timers, a heap of (deadline, seq,
Timer), and the call_soon queue; each turn of `run()` runs what is due, then asks the backend's
`poll(timeout)` to wait for file descriptors until the next timer and run their callbacks. A
backend (tb.loop.epoll, tb.loop.uring) implements only fd watching and poll(); nothing here knows
about websockets or pipes.

Busy polling (`busy_poll`, seconds; 0 by default): after each event the loop keeps polling
without sleeping for up to that long (never past the next timer) before it blocks in the
kernel. A process woken from sleep runs its first microseconds with cold caches, which on a VM
costs more than the work it woke for (README, Performance); spinning trades a core for latency,
as a market-data host with a core to spare may choose to.
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from collections.abc import Callable

_monotonic = time.monotonic

__all__ = ["Loop", "Timer", "LoopError"]


class LoopError(Exception):
    """A loop backend cannot be used here."""


class Timer:
    """A pending call_later; cancel() makes it a no-op."""

    __slots__ = ("deadline", "callback", "cancelled")

    def __init__(self, deadline: float, callback: Callable[[], object]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """Base class: timers and the run/stop protocol. Backends implement fd watching and poll()."""

    name = "base"

    def __init__(self) -> None:
        self.busy_poll = 0.0  # seconds to keep polling without sleeping after an event
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._soon: list[Callable[[], object]] = []
        self._running = False

    # -- timers ---------------------------------------------------------------------------------
    def time(self) -> float:
        return _monotonic()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        timer = Timer(self.time() + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.deadline, next(self._seq), timer))
        return timer

    def call_soon(self, callback: Callable[[], object]) -> None:
        self._soon.append(callback)

    def _run_due(self) -> float | None:
        """Run due timers and soon-callbacks; return seconds until the next timer (None: none)."""
        while self._soon:
            soon, self._soon = self._soon, []
            for cb in soon:
                cb()
        timers = self._timers
        if not timers:
            return 0.0 if self._soon else None
        # (once per turn of the loop: a trickle's wake-up pays for each step here)
        now = _monotonic()
        while timers:
            deadline, _, timer = timers[0]
            if deadline > now and not timer.cancelled:
                break
            heapq.heappop(timers)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()
                now = _monotonic()
        if self._soon:
            return 0.0
        if not timers:
            return None
        return max(0.0, timers[0][0] - now)

    # -- run ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Run until stop() is called."""
        self._running = True
        clock = time.monotonic
        spin_until = 0.0  # with busy_poll: the last event's time + busy_poll
        timers = self._timers
        while self._running:
            now = clock()
            if not self._soon and timers and now < timers[0][0]:
                # (nothing due: the usual turn on a trickle, in fewer steps than _run_due)
                timeout = timers[0][0] - now
            else:
                timeout = self._run_due()
                if not self._running:
                    break
            if self.busy_poll and timeout != 0.0:
                now = clock()
                if now < spin_until:
                    # poll without sleeping, but not past the next timer (run first, then on)
                    if self._spin(
                        spin_until if timeout is None else min(spin_until, now + timeout)
                    ):
                        spin_until = clock() + self.busy_poll
                    continue
            if self.poll(timeout) and self.busy_poll:
                spin_until = clock() + self.busy_poll

    def _spin(self, until: float) -> bool:
        """Poll without sleeping until an event (True) or the time `until` (False).

        Between polls the core is offered to any other runnable thread (sched_yield: returns at
        once when there is none). A host with fewer cores than busy processes -- the feed's own
        sender among them, on a test machine -- would otherwise wait for the spinner's time
        slice to end before the data it is waiting for is even sent."""
        clock, poll, offer = time.monotonic, self.poll, os.sched_yield
        while self._running:
            if poll(0):
                return True
            if clock() >= until:
                return False
            offer()
        return True

    def stop(self) -> None:
        self._running = False

    # -- backend --------------------------------------------------------------------------------
    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        raise NotImplementedError

    def remove_reader(self, fd: int) -> None:
        raise NotImplementedError

    def add_writer(self, fd: int, callback: Callable[[], object]) -> None:
        raise NotImplementedError

    def remove_writer(self, fd: int) -> None:
        raise NotImplementedError

    def poll(self, timeout: float | None) -> bool:
        """Wait up to `timeout` seconds (None: forever, 0: not at all) and run the callbacks of
        what is ready; True if any ran."""
        raise NotImplementedError

    def close(self) -> None:
        pass
