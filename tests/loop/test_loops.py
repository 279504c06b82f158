"""Every loop backend against real sockets and pipes: the behaviour the balancer relies on."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time

import pytest

from tb.loop import LoopError, available_loops, choose_loop

BACKENDS = ["epoll", "uring"]


@pytest.fixture(params=BACKENDS)
def loop(request):
    why = available_loops().get(request.param)
    assert why == "", f"{request.param} is not usable here: {why} (pip install -e '.[test]')"
    lp = choose_loop(request.param)
    assert lp.name == request.param
    yield lp
    lp.close()


@pytest.fixture
def sockets():
    """A connected pair (a, b), b nonblocking; both closed afterwards."""
    a, b = socket.socketpair()
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def run_for(loop, seconds: float) -> float:
    """Run until stop() or `seconds`; return the time it ran."""
    t0 = time.monotonic()
    guard = loop.call_later(seconds, loop.stop)
    loop.run()
    guard.cancel()
    return time.monotonic() - t0


def full_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 65536)
    except BlockingIOError:
        pass
    return r, w


def test_reader_is_level_triggered(loop, sockets):
    """A callback that reads less than what is there is called again without new data."""
    a, b = sockets
    got = []

    def on_read():
        got.append(b.recv(1))
        if len(got) == 5:
            loop.stop()

    loop.add_reader(b.fileno(), on_read)
    a.send(b"hello")
    assert run_for(loop, 5) < 4 and b"".join(got) == b"hello"
    loop.remove_reader(b.fileno())


def test_writer_fires_when_a_full_pipe_drains_and_not_before(loop):
    r, w = full_pipe()
    fired = []

    def on_write():
        fired.append(time.monotonic())
        loop.remove_writer(w)
        loop.stop()

    loop.add_writer(w, on_write)
    drained_at = []

    def drain():
        drained_at.append(time.monotonic())
        while os.read(r, 1 << 20):
            if not select_readable(r):
                break

    loop.call_later(0.2, drain)
    run_for(loop, 5)
    assert len(fired) == 1 and fired[0] >= drained_at[0]
    os.close(r)
    os.close(w)


def select_readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_removed_reader_is_not_called_and_a_new_one_is(loop, sockets):
    a, b = sockets
    calls = []
    loop.add_reader(b.fileno(), lambda: calls.append("old"))
    loop.remove_reader(b.fileno())

    def new():
        calls.append("new")
        b.recv(100)
        loop.stop()

    loop.add_reader(b.fileno(), new)
    a.send(b"x")
    run_for(loop, 5)
    assert calls == ["new"]
    # and once removed for good, data does not reach it
    loop.remove_reader(b.fileno())
    a.send(b"y")
    assert run_for(loop, 0.2) >= 0.19 and calls == ["new"]


def test_a_reused_fd_number_reaches_only_its_new_callback(loop):
    """remove_reader, close, and a new file on the same number: the old watch never fires."""
    r, w = os.pipe()
    calls = []
    loop.add_reader(r, lambda: calls.append("old"))
    os.write(w, b"x")
    loop.remove_reader(r)
    os.close(r)
    os.close(w)
    r2, w2 = os.pipe()
    assert r2 == r  # the lowest free number comes back

    def new():
        calls.append("new")
        os.read(r2, 10)
        loop.stop()

    loop.add_reader(r2, new)
    os.write(w2, b"y")
    run_for(loop, 5)
    assert calls == ["new"]
    loop.remove_reader(r2)
    os.close(r2)
    os.close(w2)


def test_a_callback_may_remove_another_ready_watch(loop):
    """Two fds ready in one turn; the first callback removes the second, which is not called."""
    pairs = [socket.socketpair() for _ in range(2)]
    for _, b in pairs:
        b.setblocking(False)
    calls = []

    def make(i):
        def cb():
            calls.append(i)
            pairs[i][1].recv(10)
            other = pairs[1 - i][1].fileno()
            loop.remove_reader(other)
            loop.remove_reader(pairs[i][1].fileno())
            loop.call_soon(loop.stop)

        return cb

    for i, (_, b) in enumerate(pairs):
        loop.add_reader(b.fileno(), make(i))
    for a, _ in pairs:
        a.send(b"x")
    time.sleep(0.05)  # both ready before the loop looks
    run_for(loop, 5)
    assert len(calls) == 1
    for a, b in pairs:
        a.close()
        b.close()


def test_reader_and_writer_on_one_fd(loop, sockets):
    a, b = sockets
    seen = set()

    def on_read():
        seen.add("r")
        b.recv(10)
        loop.remove_reader(b.fileno())

    def on_write():
        seen.add("w")
        loop.remove_writer(b.fileno())

    loop.add_reader(b.fileno(), on_read)
    loop.add_writer(b.fileno(), on_write)
    a.send(b"x")
    loop.call_later(0.3, loop.stop)
    loop.run()
    assert seen == {"r", "w"}


def test_hangup_reaches_the_reader(loop, sockets):
    a, b = sockets
    got = []

    def on_read():
        got.append(b.recv(10))
        loop.remove_reader(b.fileno())
        loop.stop()

    loop.add_reader(b.fileno(), on_read)
    a.close()
    run_for(loop, 5)
    assert got == [b""]


def test_fd_closed_without_removal_is_dropped(loop):
    """Closing a watched fd (against the rule: remove first) does not break the loop.

    epoll forgets the fd; io_uring's pending poll still holds the pipe, sees the hang-up and
    calls the callback once, then the watch is gone: at most one call either way."""
    r, w = os.pipe()
    calls = []
    loop.add_reader(r, lambda: calls.append(1))
    os.close(r)
    os.close(w)
    ran = run_for(loop, 0.2)
    assert ran >= 0.19 and len(calls) <= 1  # epoll may report the close once, or not at all


def test_timers_run_in_deadline_order_and_cancel(loop):
    order = []
    loop.call_later(0.05, lambda: order.append("b"))
    loop.call_later(0.01, lambda: order.append("a"))
    loop.call_later(0.03, lambda: order.append("x")).cancel()
    loop.call_soon(lambda: order.append("soon"))
    loop.call_later(0.1, loop.stop)
    t0 = time.monotonic()
    loop.run()
    assert order == ["soon", "a", "b"] and 0.09 <= time.monotonic() - t0 < 2


def test_busy_poll_spins_after_an_event_then_sleeps(loop, sockets):
    """After an event the loop polls without sleeping for busy_poll seconds (its CPU time grows
    while nothing arrives), then blocks (it stops growing); without busy_poll it blocks at once."""
    a, b = sockets
    got = []

    def cpu_while_idle(busy: float) -> float:
        loop.busy_poll = busy
        a.send(b"x")
        cpu = []
        loop.call_later(0.05, lambda: cpu.append(time.process_time()))  # the byte is read by now
        loop.call_later(1.0, lambda: cpu.append(time.process_time()))
        run_for(loop, 1.05)
        return cpu[1] - cpu[0]

    loop.add_reader(b.fileno(), lambda: got.append(b.recv(10)))
    sleeping = cpu_while_idle(0.0)
    spinning = cpu_while_idle(0.4)  # spins ~0.35 s of the idle 0.95 s, sleeps the rest
    assert got == [b"x", b"x"]
    assert sleeping < 0.05, sleeping
    assert 0.15 < spinning < 0.7, spinning
    loop.remove_reader(b.fileno())


def test_busy_poll_delivers_events_and_keeps_timers_on_time(loop, sockets):
    """Data arriving while the loop spins is read at once, and a spin longer than the next timer
    stops for it: the timer is not late."""
    a, b = sockets
    loop.busy_poll = 5.0
    arrivals, fired = [], []

    def on_read():
        b.recv(10)
        arrivals.append(time.monotonic())

    def send():
        sent.append(time.monotonic())
        a.send(b"y")

    sent: list[float] = []
    loop.add_reader(b.fileno(), on_read)
    t0 = time.monotonic()
    for k in range(1, 6):
        loop.call_later(0.02 * k, send)
    loop.call_later(0.3, lambda: fired.append(time.monotonic()))
    loop.call_later(0.35, loop.stop)
    run_for(loop, 3)
    assert len(arrivals) == 5 and all(r - s < 0.05 for r, s in zip(arrivals, sent, strict=True))
    assert len(fired) == 1 and 0.29 <= fired[0] - t0 < 0.4
    loop.remove_reader(b.fileno())


def test_busy_poll_gives_way_to_another_process_on_its_core(loop, sockets):
    """While it spins, the loop offers its core to whatever else is runnable there: pinned to
    one core with a CPU-bound process, it takes a sliver of that core (a spinner that does not
    yield takes its fair half, and a feed sender sharing the core waits for it)."""
    a, b = sockets
    cpu = min(os.sched_getaffinity(0))
    hog = subprocess.Popen(
        [sys.executable, "-c", f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\n"
         "end = time.monotonic() + 10\nwhile time.monotonic() < end: pass"]
    )  # fmt: skip
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.3)  # (the hog is spinning on that core by now)
        loop.busy_poll = 5.0
        loop.add_reader(b.fileno(), lambda: b.recv(10))
        a.send(b"x")  # the event after which the loop spins
        cpu0, wall0 = time.process_time(), time.monotonic()
        run_for(loop, 1.0)
        share = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    finally:
        os.sched_setaffinity(0, before)
        hog.kill()
        hog.wait()
        loop.remove_reader(b.fileno())
    assert share < 0.25, share


def test_more_watches_than_submission_slots(loop):
    """1,200 pipes watched at once (the io_uring backend's queue holds 1,024 requests)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 3000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(3000, hard), hard))
    pipes = [os.pipe() for _ in range(1200)]
    seen = set()

    def make(r):
        def cb():
            seen.add(r)
            os.read(r, 10)
            loop.remove_reader(r)
            if len(seen) == len(pipes):
                loop.stop()

        return cb

    for r, w in pipes:
        loop.add_reader(r, make(r))
        os.write(w, b"x")
    run_for(loop, 10)
    assert len(seen) == len(pipes)
    for r, w in pipes:
        os.close(r)
        os.close(w)


def test_unknown_backend_is_a_loop_error():
    with pytest.raises(LoopError, match="unknown loop backend"):
        choose_loop("kqueue")


def test_uring_without_the_bindings_says_how_to_get_them(tmp_path):
    """A Python where `import liburing` fails: tb run --loop uring is a usage error, one line."""
    (tmp_path / "liburing.py").write_text("raise ImportError('no liburing here')\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        [sys.executable, "-m", "tb", "run", "ws://127.0.0.1:1/", "--pipes", "2", "--key", "k",
         "--loop", "uring", "--", "true"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "io_uring loop is not available" in proc.stderr and "[uring]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_uring_bench_measures_every_case():
    """tools/uring_bench.py (the measurement behind --loop auto) runs and reports each case."""
    proc = subprocess.run(
        [sys.executable, "tools/uring_bench.py", "--iterations", "300", "--pipes", "3"],
        capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 5 and all(float(ln.split()[-2]) > 0 for ln in lines), proc.stdout
