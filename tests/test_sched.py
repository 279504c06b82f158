"""tb.sched: the short CPU time slice, as the kernel reports it in /proc/PID/sched."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tb.sched import current_slice_ns


def _kernel_takes_custom_slices() -> bool:
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 12) and current_slice_ns() is not None


pytestmark = pytest.mark.skipif(
    not _kernel_takes_custom_slices(), reason="custom time slices need Linux 6.12+"
)

# (in a child: the slice is the calling process's, and it must not touch the test run's)
CHILD = """
import os, subprocess, sys
from tb.sched import current_slice_ns, request_slice
before = current_slice_ns()
why = request_slice(int(sys.argv[1]))
grandchild = subprocess.run([sys.executable, "-c",
    "from tb.sched import current_slice_ns; print(current_slice_ns())"],
    capture_output=True, text=True).stdout.strip()
print(why, before, current_slice_ns(), grandchild, os.getpriority(os.PRIO_PROCESS, 0))
"""


@pytest.mark.parametrize("usec", [100, 2500])
def test_the_slice_asked_for_is_the_one_the_kernel_shows_and_children_get_the_default(usec):
    out = subprocess.run(
        ["nice", "-n", "3", sys.executable, "-c", CHILD, str(usec)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    why, before, after, grandchild, nice = out
    assert why == "None"
    assert int(after) == usec * 1000 != int(before)
    assert int(grandchild) == int(before)  # SCHED_FLAG_RESET_ON_FORK
    assert int(nice) == 3  # the niceness it had is kept


@pytest.mark.parametrize(
    "chrt,policy,taken",
    [(["-b", "0"], os.SCHED_BATCH, True), (["-f", "10"], os.SCHED_FIFO, False)],
)
def test_the_policy_is_kept_and_a_realtime_one_is_left_alone(chrt, policy, taken):
    """Under SCHED_BATCH the slice is taken and the policy kept; under a realtime policy (its
    wake-ups preempt anyway) nothing changes, and the reason is said."""
    code = (
        "import os; from tb.sched import request_slice, current_slice_ns; "
        "print(request_slice(100), '|', os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK,"
        " '|', current_slice_ns())"
    )
    proc = subprocess.run(
        ["chrt", *chrt, sys.executable, "-c", code], capture_output=True, text=True
    )
    if proc.returncode and "chrt" in proc.stderr:
        pytest.skip(f"chrt {' '.join(chrt)}: {proc.stderr.strip()}")
    why, got_policy, slice_ns = (part.strip() for part in proc.stdout.split("|"))
    assert int(got_policy) == policy
    if taken:
        assert why == "None" and int(slice_ns) == 100_000
    else:
        assert "SCHED_FIFO" in why and "left as it is" in why
