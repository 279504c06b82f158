"""The epoll backend: level-triggered, one callback per (fd, direction)."""

from __future__ import annotations

import select
from collections.abc import Callable

from tb.loop.base import Loop

_IN = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
_OUT = select.EPOLLOUT
_OUT_ERR = _OUT | select.EPOLLERR


class EpollLoop(Loop):
    name = "epoll"

    def __init__(self) -> None:
        super().__init__()
        self._ep = select.epoll()
        self._readers: dict[int, Callable[[], object]] = {}
        self._writers: dict[int, Callable[[], object]] = {}
        self._masks: dict[int, int] = {}

    def _update(self, fd: int) -> None:
        mask = (select.EPOLLIN if fd in self._readers else 0) | (_OUT if fd in self._writers else 0)
        old = self._masks.get(fd)
        if mask == 0:
            if old is not None:
                del self._masks[fd]
                try:
                    self._ep.unregister(fd)
                except OSError:
                    pass  # already closed: the kernel dropped it
        elif old is None:
            self._ep.register(fd, mask)
            self._masks[fd] = mask
        elif old != mask:
            self._ep.modify(fd, mask)
            self._masks[fd] = mask

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        self._readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callable[[], object]) -> None:
        self._writers[fd] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def poll(self, timeout: float | None) -> bool:
        try:
            events = self._ep.poll(-1 if timeout is None else timeout)
        except InterruptedError:
            return True  # a signal: its handler ran
        readers, writers = self._readers, self._writers
        for fd, ev in events:
            if ev & _IN:
                cb = readers.get(fd)
                if cb is not None:
                    cb()
            if ev & _OUT_ERR:
                cb = writers.get(fd)
                if cb is not None:
                    cb()
        return bool(events)

    def close(self) -> None:
        self._ep.close()
