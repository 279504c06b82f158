"""Capture files: the websocket messages of a feed session, in order.

A capture is what `tb record` writes, `tb gen` synthesizes and `tb replay` serves. Two formats:

- binary (written by tb): ``MAGIC`` (``b"TBCAP1\\n"``), then per websocket message
  ``[u32 little-endian length][payload bytes]``. Payloads are kept byte for byte, so a replay
  reproduces the feed's own spacing and key order.
- JSON lines (read only): no magic; each non-empty line is one message payload (a JSON array or
  object). Handy for hand-written fixtures and captures taken by other tools.

A truncated binary capture or an unknown magic raises `CaptureError` naming the offset, never a
short read passed on as data.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO

MAGIC = b"TBCAP1\n"

_LEN = struct.Struct("<I")
_MAX_PAYLOAD = 0xFFFFFFFF


class CaptureError(Exception):
    """A capture file is malformed (bad magic, truncated record, non-JSON line)."""


class CaptureWriter:
    """Write a binary capture: ``MAGIC`` then one ``[u32 len][payload]`` record per message.

    Use as a context manager::

        with CaptureWriter("feed.tbcap") as w:
            w.write(payload)

    ``messages`` counts records written, ``bytes`` counts payload bytes (the file is
    ``len(MAGIC) + 4 * messages + bytes`` long).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.messages = 0
        self.bytes = 0
        self._file: BinaryIO | None = open(self.path, "wb")  # closed by close()
        self._file.write(MAGIC)

    def write(self, payload: bytes | bytearray | memoryview) -> None:
        """Append one message. Raises CaptureError if the payload does not fit a u32 length."""
        if self._file is None:
            raise CaptureError(f"{self.path}: write after close")
        n = len(payload)
        if n > _MAX_PAYLOAD:
            raise CaptureError(f"{self.path}: message of {n} bytes does not fit a u32 length")
        self._file.write(_LEN.pack(n))
        self._file.write(payload)
        self.messages += 1
        self.bytes += n

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_capture(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """Yield each message payload of a capture file, binary or JSON lines.

    Raises CaptureError for an unknown magic, a truncated record, or a JSON-lines line that is
    not a JSON array/object (the check is on the first byte; the line is not decoded).
    OSError (missing file, permissions) passes through unchanged.
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        head = f.read(len(MAGIC))
        if head == MAGIC:
            yield from _read_binary(f, name)
            return
        if head.startswith(b"TBCAP"):
            raise CaptureError(
                f"{name}: unsupported capture version {head!r} (this tb reads {MAGIC!r})"
            )
        first = head.lstrip()[:1]
        if head and first not in (b"", b"[", b"{"):
            raise CaptureError(
                f"{name}: not a capture: no {MAGIC!r} magic and not JSON lines "
                f"(starts with {head!r})"
            )
        f.seek(0)
        yield from _read_json_lines(f, name)


def _read_binary(f: BinaryIO, name: str) -> Iterator[bytes]:
    offset = len(MAGIC)
    index = 0
    read = f.read
    while True:
        header = read(4)
        if not header:
            return
        if len(header) < 4:
            raise CaptureError(
                f"{name}: truncated capture: message {index} at offset {offset} has a "
                f"{len(header)}-byte length header (needs 4)"
            )
        (n,) = _LEN.unpack(header)
        payload = read(n)
        if len(payload) < n:
            raise CaptureError(
                f"{name}: truncated capture: message {index} at offset {offset} needs "
                f"{n} bytes, only {len(payload)} left"
            )
        yield payload
        offset += 4 + n
        index += 1


def _read_json_lines(f: BinaryIO, name: str) -> Iterator[bytes]:
    for lineno, line in enumerate(f, 1):
        payload = line.strip()
        if not payload:
            continue
        if payload[:1] not in (b"[", b"{"):
            raise CaptureError(
                f"{name}:{lineno}: JSON-lines capture: line is not a JSON array or object"
            )
        yield payload


def count_events(payload: bytes | bytearray | memoryview) -> int:
    """Number of top-level event objects in one message (a JSON array, or a lone object).

    Decodes the JSON: meant for tools and tests, not the hot path. Raises ValueError for
    invalid JSON.
    """
    value = json.loads(bytes(payload))
    if isinstance(value, list):
        return sum(1 for v in value if isinstance(v, dict))
    return 1 if isinstance(value, dict) else 0
