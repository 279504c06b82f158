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
