"""Event loops for tb: one interface, two backends, and `choose_loop()` to pick one.

Theory of operation (the layout of CPython's selectors): tb.loop.base holds `Loop`, the kernel
every backend shares (timers, call_soon, run/stop, busy polling), with `Timer` and `LoopError`;
each backend beside it implements fd watching and `poll()` on top:

    tb.loop.epoll   EpollLoop: level-triggered epoll; needs nothing installed
    tb.loop.uring   UringLoop: io_uring poll requests; needs the liburing bindings

`choose_loop()` picks one by name ("epoll", "uring") or by what the platform offers ("auto":
epoll, as io_uring has not measured faster). The uring backend is imported only when asked for,
since its bindings are optional. The interface is the asyncio-style subset tb needs:

    add_reader(fd, cb) / remove_reader(fd)
    add_writer(fd, cb) / remove_writer(fd)
    call_later(delay, cb) -> Timer    (Timer.cancel())
    call_soon(cb)
    run() / stop() / time()
"""

from __future__ import annotations

from tb.loop.base import Loop, LoopError, Timer
from tb.loop.epoll import EpollLoop

__all__ = ["Loop", "Timer", "LoopError", "EpollLoop", "choose_loop", "available_loops"]


def available_loops() -> dict[str, str]:
    """Map backend name -> "" if usable here, else the reason it is not."""
    out = {"epoll": ""}
    try:
        from tb.loop.uring import UringLoop

        UringLoop().close()
    except (ImportError, LoopError) as exc:
        out["uring"] = f"{exc}"
    else:
        out["uring"] = ""
    return out


def choose_loop(name: str = "auto") -> Loop:
    """Return a loop backend by name: "epoll", "uring" or "auto" (epoll until measured otherwise).

    Raises:
        LoopError: the name is unknown, or the backend cannot be used here (with the fix).
    """
    if name in ("auto", "epoll"):
        return EpollLoop()
    if name == "uring":
        try:
            from tb.loop.uring import UringLoop
        except ImportError as exc:
            raise LoopError(
                f"the io_uring loop is not available: {exc}; install the bindings with "
                "pip install 'tb[uring]' (in a checkout: pip install -e '.[uring]'), "
                "or use --loop epoll"
            ) from None
        return UringLoop()
    raise LoopError(f"unknown loop backend {name!r} (choose epoll, uring or auto)")
