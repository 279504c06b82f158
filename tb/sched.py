"""tb's request to the CPU scheduler: a short time slice, so a wake-up runs at once.

Theory of operation. Linux's fair scheduler (EEVDF, Linux 6.6+) gives each task a virtual
deadline one time slice after it becomes eligible; when a sleeping task wakes, it preempts the
task on the CPU only if its deadline comes first. With the default slice (0.7-3 ms, by the
number of CPUs) a woken tb that has used its share of the CPU waits for whatever runs there --
another busy process, a worker's thread -- to sleep or use up its own slice: tens of
microseconds to milliseconds between a message's arrival and tb's receive. Since Linux 6.12 a
task may ask for its own slice (sched_setattr's sched_runtime, fair policies, 0.1-100 ms); a
short one gives tb an early deadline on each wake-up, so it preempts at once, while its share
of the CPU stays what it was. (docs/performance.md, "The CPU time slice", has the traces and
the latencies measured with and without it.)

The request carries SCHED_FLAG_RESET_ON_FORK: a worker started (or restarted) by tb gets the
default slice, not tb's.

No privileges are needed. There is no wrapper in the os module, so the syscall goes through
ctypes once at start-up.
"""

from __future__ import annotations

import os
import struct

__all__ = ["request_slice", "current_slice_ns", "DEFAULT_SLICE_US", "MIN_SLICE_US", "MAX_SLICE_US"]

MIN_SLICE_US = 100  # the kernel clamps a custom slice to 0.1-100 ms
MAX_SLICE_US = 100_000
DEFAULT_SLICE_US = MIN_SLICE_US  # tb run's --sched-slice

# sched_setattr's number by architecture (x86_64's own table; the others use the generic one)
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "riscv64": 274, "loongarch64": 274}
_SCHED_FLAG_RESET_ON_FORK = 0x01
_POLICY_NAMES = {1: "SCHED_FIFO", 2: "SCHED_RR", 5: "SCHED_IDLE", 6: "SCHED_DEADLINE"}
# struct sched_attr (linux/sched/types.h): size, policy, flags, nice, priority, runtime,
# deadline, period, util_min, util_max
_SCHED_ATTR = struct.Struct("IIQiIQQQII")


def current_slice_ns(pid: int | str = "self") -> int | None:
    """The task's time slice in ns as /proc/PID/sched shows it (se.slice), None if not shown."""
    try:
        with open(f"/proc/{pid}/sched") as f:
            for line in f:
                if line.startswith("se.slice"):
                    return int(line.rsplit(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def request_slice(usec: int) -> str | None:
    """Ask the kernel for a time slice of `usec` µs for this process (its fair-class policy
    and nice kept); None if it took it, else one line saying why not (an older kernel, another
    architecture, a realtime policy, which is left alone).
    """
    import ctypes  # (here: the CLI imports this module for its bounds)

    machine = os.uname().machine
    number = _SYS_SCHED_SETATTR.get(machine)
    if number is None:
        return f"sched_setattr is not known on {machine}"
    policy = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK
    if policy not in (os.SCHED_OTHER, os.SCHED_BATCH):  # (a realtime policy is left as it is)
        name = _POLICY_NAMES.get(policy, f"policy {policy}")
        return f"tb runs under {name}, not the fair scheduler: its policy is left as it is"
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    attr = _SCHED_ATTR.pack(
        _SCHED_ATTR.size, policy, _SCHED_FLAG_RESET_ON_FORK, nice, 0, usec * 1000, 0, 0, 0, 0
    )
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError) as exc:  # (no C library to call through)
        return f"cannot call sched_setattr: {exc}"
    if syscall(number, 0, ctypes.create_string_buffer(attr), 0) != 0:
        return f"sched_setattr failed: {os.strerror(ctypes.get_errno())}"
    got = current_slice_ns()
    if got != usec * 1000:
        # kernels before 6.12 accept the call and ignore sched_runtime for SCHED_OTHER
        return "this kernel does not take a custom time slice (Linux 6.12 and later do)"
    return None
