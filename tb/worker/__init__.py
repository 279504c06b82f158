"""The worker's library: read tb's pipes, fan out over every core, decode fast.

tb writes each symbol's events, in feed order, to one of N pipes as `[u32 LE length][JSON]`
records; a worker reads them. The pieces, from the simplest:

- read_records(): one blocking generator of (pipe, bytes) over every pipe (tb.pipes.reader).
- read_batches(): (pipe, records) per read, the records memoryviews into one buffer, no copy each.
- serve(handler, processes=K, batch=...): K processes, each reading its own share of the pipes
  (so a symbol's order holds), supervised as one worker (tb.worker.serve).
- aread_records(): `async for pipe, record in aread_records()` on an asyncio loop.
- loads() / decode_batch(): orjson when installed, json otherwise (DECODER says which).
- SequenceCheck: counts a per-symbol `q` that repeats or goes backwards.

Every error about the pipes is a tb.pipes.PipeError with a one-line message.
"""

from tb.pipes.errors import PipeError
from tb.pipes.gap import GAP_EVENT, is_gap
from tb.pipes.reader import MAX_RECORD, PipeBuffers, fds_from_env, read_batches, read_records
from tb.worker.aio import aread_records
from tb.worker.decode import DECODER, decode_batch, loads
from tb.worker.sequence import Anomaly, SequenceCheck
from tb.worker.serve import SubWorker, serve

__all__ = [
    "GAP_EVENT",
    "is_gap",
    "DECODER",
    "MAX_RECORD",
    "Anomaly",
    "PipeBuffers",
    "PipeError",
    "SequenceCheck",
    "SubWorker",
    "aread_records",
    "decode_batch",
    "fds_from_env",
    "loads",
    "read_batches",
    "read_records",
    "serve",
]
