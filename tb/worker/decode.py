"""Decoding records: orjson when it is installed, the standard library's json otherwise.

loads(record) decodes one record (bytes, bytearray or a memoryview out of read_batches).
decode_batch(records) decodes many: orjson one call each (its per-call cost is small); json one
call for the whole batch, by joining the records into one JSON array (`[` rec `,` rec ... `]`),
which saves json's per-call overhead (tools/bench_worker.py measures both). A batch with a
record that is not valid JSON raises ValueError naming that record's position in the batch.

decode_batch returns a list: every event of the batch alive at once, which is cheap only while
a batch stays small (read_batches' 32 KiB reads: see tb.pipes.reader.BATCH_READ). For bigger
batches `for event in map(loads, records)` makes each event only when it is needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["DECODER", "decode_batch", "loads"]

Buffer = bytes | bytearray | memoryview

try:
    import orjson
except ImportError:  # the optional extra is not installed
    orjson = None

_json_loads = json.loads


def _loads_json(record: Buffer) -> Any:
    # json.loads takes bytes and bytearray but not a memoryview
    return _json_loads(record if not isinstance(record, memoryview) else bytes(record))


def _batch_json(records: Sequence[Buffer]) -> list:
    try:
        return _json_loads(b"[" + b",".join(records) + b"]")
    except ValueError:
        return _per_record(_loads_json, records)


def _batch_orjson(records: Sequence[Buffer]) -> list:
    try:
        return [orjson.loads(r) for r in records]
    except orjson.JSONDecodeError:
        return _per_record(orjson.loads, records)


def _per_record(load: Callable[[Buffer], Any], records: Sequence[Buffer]) -> list:
    """Decode one by one to name the record that is not JSON (ValueError)."""
    out = []
    for k, record in enumerate(records):
        try:
            out.append(load(record))
        except ValueError as exc:
            head = bytes(record[:60])
            raise ValueError(f"record {k} of the batch is not JSON ({exc}): {head!r}") from None
    if len(out) == len(records):  # every record decodes alone: a joined batch still did not
        raise ValueError("the records of this batch do not join into one JSON array")
    return out


def decoder(name: str) -> tuple[Callable[[Buffer], Any], Callable[[Sequence[Buffer]], list]]:
    """(loads, decode_batch) of one decoder by name, "orjson" or "json" (for comparisons and
    tests); ValueError if it is unknown or not installed."""
    if name == "json":
        return _loads_json, _batch_json
    if name == "orjson":
        if orjson is None:
            raise ValueError("orjson is not installed (pip install 'tb[examples]' or orjson)")
        return orjson.loads, _batch_orjson
    raise ValueError(f"unknown decoder {name!r}: orjson or json")


DECODER = "orjson" if orjson is not None else "json"
loads, decode_batch = decoder(DECODER)
