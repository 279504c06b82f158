"""The worker's supervisor: start it, watch it, restart it, and hand it everything at the end.

Theory of operation. The worker is one process (started by tb.pipes.spawn_worker in a process
group of its own) reading N pipes that a PipeWriter fills. Its death arrives on its pidfd, an
ordinary reader on the loop. Then:

- what it left unread stays in the pipes for the next worker, minus the torn record it died
  inside, if any (PipeWriter.resync; counted as lost_in_worker);
- the restart policy decides: `never`, `on-failure` (a non-zero status or a signal), `always`;
  more than max_restarts deaths within restart_window seconds is a crash loop: give up. The
  delay before a restart doubles from 0.1 s, capped at 1 s (the feed keeps queueing meanwhile),
  and starts over once a worker has lived 30 s;
- giving up calls `on_gave_up`: the run ends with ExitCode.WORKER.

A pipe whose queue its reader has not taken from for stall_warning seconds is said once (a live
worker that does not read one of its pipes would otherwise go unnoticed until --max-buffer fills).

shutdown() is the end of every run: write out every queued record while the worker keeps taking
them (one that dies meanwhile is restarted under the same policy, so the flush can finish), close
the write ends (EOF on every pipe), wait for the worker to finish by itself, and count what never
reached it: records still queued plus records left unread in the pipes. That number,
undelivered_at_exit, is what makes a run that lost trades end non-zero.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from tb.counters import Counters
from tb.loop import Loop
from tb.pipes import PipeError, PipeSet, PipeWriter, Worker, spawn_worker
from tb.pipes.writer import unread_bytes

__all__ = ["RestartPolicy", "Supervisor"]

log = logging.getLogger("tb.worker")

RESTART_MODES = ("always", "on-failure", "never")


@dataclass(slots=True)
class RestartPolicy:
    """When a dead worker is started again, and when tb gives up on it."""

    mode: str = "on-failure"  # always | on-failure | never
    max_restarts: int = 10  # more deaths than this within `window` seconds: give up
    window: float = 60.0

    def wants_restart(self, returncode: int) -> bool:
        return self.mode == "always" or (self.mode == "on-failure" and returncode != 0)


class Supervisor:
    """Runs the worker over `pipeset` for as long as tb runs (see the module docstring)."""

    def __init__(
        self,
        loop: Loop,
        argv: list[str],
        workdir: str,
        pipeset: PipeSet,
        writer: PipeWriter,
        counters: Counters,
        *,
        policy: RestartPolicy,
        on_gave_up: Callable[[], None],
        stall_warning: float = 10.0,
    ) -> None:
        self.loop = loop
        self.argv = argv
        self.workdir = workdir
        self.pipeset = pipeset
        self.writer = writer
        self.c = counters
        self.policy = policy
        self.on_gave_up = on_gave_up
        self.stall_warning = stall_warning
        self.worker: Worker | None = None
        self.stopping = False  # the run is ending: shutdown() restarts, not the loop
        self.gave_up = False
        self.started_at = 0.0
        self._deaths: list[float] = []  # when workers died, within the policy's window
        self._delay = 0.1
        self._handled = True  # the current worker's death has been dealt with (or it lives)
        self._restart_due = False  # the policy allowed a restart that has not happened yet
        # pipe -> [its written_bytes when last seen moving, when, warned]: pipes with a queue
        self._stalls: dict[int, list] = {}

    @property
    def alive(self) -> bool:
        return self.worker is not None and self.worker.poll() is None

    @property
    def running(self) -> bool:
        """A worker was started and its death has not been seen (reads no process state: safe
        from another thread, e.g. a metrics scrape)."""
        return self.worker is not None and not self._handled

    # -- start and death ------------------------------------------------------------------------
    def start(self) -> bool:
        """Start a worker; False (said, and on_gave_up called) if it cannot be started."""
        if self.gave_up:
            return False
        try:
            self.worker = spawn_worker(self.argv, self.pipeset.read_fds, self.workdir)
        except PipeError as exc:
            log.error("%s", exc)
            self._give_up()
            return False
        self.started_at = time.monotonic()
        self._handled = False
        if self._deaths:
            self.c.worker_restarts += 1
        log.info("worker %s started (pid %d)", " ".join(self.argv), self.worker.pid)
        if self.worker.pidfd >= 0:
            self.loop.add_reader(self.worker.pidfd, self._on_exit)
        return True

    def _on_exit(self) -> None:
        """The worker's pidfd is readable: it died. Resync its pipes and apply the policy."""
        if self.worker.poll() is None:
            return
        rc = self._bury()
        if rc is None or not self._may_restart(rc):
            return
        self._restart_due = True
        if self.stopping:
            return  # shutdown()'s flush starts it if records still wait
        delay = self._next_delay()
        log.warning("restarting the worker in %.1f s (records keep queueing meanwhile)", delay)
        self.loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        if not self.stopping and self._restart_due:
            self._restart_due = False
            self.start()

    def _bury(self) -> int | None:
        """Deal once with the current worker's death: say it, resync the pipes. Its status."""
        worker = self.worker
        if worker is None or self._handled:
            return None
        rc = worker.poll()
        if rc is None:
            return None
        self._handled = True
        if worker.pidfd >= 0:
            self.loop.remove_reader(worker.pidfd)
        worker.close()
        w = self.writer
        log.error(
            "worker %s; %d records (%d bytes) queued for it",
            worker.describe(rc),
            w.queued_records,
            w.queued_bytes,
        )
        # What the dead worker left in the pipes stays there for the next one, minus the torn
        # record it died inside, if any (see PipeWriter.resync).
        for i, fd in enumerate(self.pipeset.read_fds):
            lost = w.resync(i, fd)
            if lost:
                self.c.lost_in_worker += lost
                log.warning("pipe %d: the worker died inside a record: %d record lost", i, lost)
        self._deaths.append(time.monotonic())
        return rc

    def _may_restart(self, rc: int) -> bool:
        """Whether the policy starts another worker after one that ended with `rc`; if not, the
        run is over (on_gave_up)."""
        if not self.policy.wants_restart(rc):
            self._give_up()
            return False
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < self.policy.window]
        if len(self._deaths) > self.policy.max_restarts:
            log.error(
                "the worker died %d times in %.0f s: giving up",
                len(self._deaths),
                self.policy.window,
            )
            self._give_up()
            return False
        return True

    def _next_delay(self) -> float:
        if time.monotonic() - self.started_at > 30:
            self._delay = 0.1  # it ran a good while: this is a fresh failure
        # Capped at 1 s: while the worker is down the feed queues up (1M trades/s at the open).
        delay, self._delay = self._delay, min(1.0, self._delay * 2)
        return delay

    def _give_up(self) -> None:
        self.gave_up = True
        self.on_gave_up()

    # -- watching the pipes ---------------------------------------------------------------------
    def check_stalls(self, now: float) -> None:
        """Warn once about each pipe whose queue its reader has not taken from for
        stall_warning seconds, and say when it moves again. Called once a second."""
        w, stalls, argv_fds = self.writer, self._stalls, self.pipeset.read_fds
        if not self.stall_warning or not (w.queued_bytes or stalls):
            return
        for i, queued in enumerate(w.queued_bytes_per_pipe):
            seen = stalls.get(i)
            if not queued:
                if seen is not None:
                    del stalls[i]
                    if seen[2]:
                        log.info(
                            "pipe %d (worker fd %d) drained: its reader is back", i, argv_fds[i]
                        )
                continue
            written = w.written_bytes[i]
            if seen is None or seen[0] != written:
                if seen is not None and seen[2]:
                    log.info("pipe %d (worker fd %d) is being read again", i, argv_fds[i])
                stalls[i] = [written, now, False]
            elif not seen[2] and now - seen[1] >= self.stall_warning:
                seen[2] = True
                log.warning(
                    "pipe %d (worker fd %d): its reader has taken nothing for %.0f s; %d records "
                    "(%d KiB) wait behind it. Is the worker reading every pipe it was given?",
                    i,
                    argv_fds[i],
                    now - seen[1],
                    w.queued_records_in(i),
                    queued >> 10,
                )

    # -- the end --------------------------------------------------------------------------------
    def shutdown(self, timeout: float) -> int:
        """Flush, EOF, wait for the worker; return how many routed records never reached one.

        `timeout`: how long the worker may take nothing before tb gives up on the flush, and how
        long it has after EOF before it is terminated."""
        self.stopping = True
        writer = self.writer
        self._flush(timeout)
        writer.close()
        # The worker sees EOF on every pipe once the write ends are closed.
        worker = self.worker
        rc = None
        if worker is not None:
            rc = worker.wait(timeout)
            if rc is None:
                log.warning("worker still running %.0f s after EOF: terminating it", timeout)
                worker.terminate()
                rc = worker.wait(2.0)
                if rc is None:
                    worker.kill()
                    rc = worker.wait(2.0)
            if not self._handled:
                log.info("worker %s", worker.describe(rc))
            self._handled = True
            if worker.pidfd >= 0:
                self.loop.remove_reader(worker.pidfd)
            worker.close()
        undelivered = writer.queued_records
        if rc is not None:  # (a worker that will not die may still be reading: not counted)
            for i, fd in enumerate(self.pipeset.read_fds):
                undelivered += writer.unread_records(i, fd)
        for fd in self.pipeset.read_fds:
            os.close(fd)
        return undelivered

    def _flush(self, timeout: float) -> None:
        """Write out every queued record while a worker takes them. A worker that dies
        meanwhile is restarted under the policy; tb gives up when no worker has taken anything
        for `timeout` seconds."""
        writer = self.writer
        if writer.queued_records:
            log.info("flushing %d queued records to the worker", writer.queued_records)
        stalled = 0.0
        while True:
            if not self.alive:
                rc = self._bury()  # (None: its death was judged already, on the loop)
                if rc is not None and self._may_restart(rc):
                    self._restart_due = True
                if not self._records_waiting():
                    return
                if self._restart_due and not self.gave_up:
                    self._restart_due = False
                    log.warning("restarting the worker to finish the flush")
                    time.sleep(self._next_delay())
                    if self.start():
                        continue
                break
            if not writer.queued_bytes:
                return
            before = sum(writer.written_bytes)
            t = time.monotonic()
            try:
                if writer.flush(min(0.2, timeout)):
                    continue  # all written: see whether the worker is still there to read it
            except PipeError as exc:  # (a broken pipe, a spool that cannot be read back)
                log.error("%s", exc)
                break
            if sum(writer.written_bytes) != before:
                stalled = 0.0
            else:
                stalled += time.monotonic() - t
                if stalled >= timeout:
                    break
        if writer.queued_bytes:
            log.error(
                "the worker %s: %d records (%d bytes) could not be written",
                f"took nothing for {timeout:.0f} s" if self.alive else "is gone",
                writer.queued_records,
                writer.queued_bytes,
            )

    def _records_waiting(self) -> bool:
        """Records still queued, or written to a pipe and not read (for the next worker)."""
        return bool(self.writer.queued_bytes) or any(
            unread_bytes(fd) for fd in self.pipeset.read_fds
        )
