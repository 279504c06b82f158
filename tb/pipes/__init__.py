"""Pipes between the balancer and its worker: opening them, writing them, the worker, reading them.

Theory of operation. open_pipes() makes N pipes (CLOEXEC, nonblocking write ends, blocking read
ends, as large as the kernel grants). spawn_worker() starts the worker in a process group of its
own (a terminal's Ctrl-C or a signal to tb's group reaches tb only; tb stops the worker by
closing the pipes), with only the read ends, appended to its argv and named in TB_PIPE_FDS, and
with SIGHUP as its parent-death signal.
PipeWriter (on the balancer's loop) writes each batch's per-pipe runs of
`[u32 little-endian length][JSON]` records with one write per non-empty pipe, queues what a full
pipe cannot take and drains it when the pipe is writable. read_records() and read_batches() are
the worker's side: they multiplex the read ends and yield (pipe index, record bytes), or (pipe
index, the records of one read as memoryviews); tb.worker builds serve() and the rest of the
worker's library on them. Every error is a PipeError.
"""

from tb.pipes.errors import PipeError
from tb.pipes.pipeset import PipeSet, open_pipes, pipe_max_size
from tb.pipes.reader import fds_from_env, read_batches, read_records
from tb.pipes.worker import Worker, spawn_worker
from tb.pipes.writer import IOV_MAX, PipeWriter

__all__ = [
    "IOV_MAX",
    "PipeError",
    "PipeSet",
    "PipeWriter",
    "Worker",
    "fds_from_env",
    "open_pipes",
    "pipe_max_size",
    "read_batches",
    "read_records",
    "spawn_worker",
]
