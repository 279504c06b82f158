"""The stream that carries the partitions, and which partitions a command owns.

A stream holds subjects `PREFIX.0`, `PREFIX.1`, ... (created as `PREFIX.*`, file storage). A
stream that exists already is used as it is if every partition's subject falls under one of its
subjects; otherwise the command stops with one line naming the stream's subjects (nothing is
changed on a stream tb did not create just now).

A partition spec is what a user types: `0-15`, `3,7,9`, `0-3,8`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tb.exitcode import ExitCode
from tb.jetstream import JetStreamError

__all__ = ["StreamSpec", "ensure_stream", "parse_partitions", "subject_matches"]

DUPLICATE_WINDOW = 120.0  # seconds a Nats-Msg-Id is remembered (the server's default)


def parse_partitions(text: str) -> list[int]:
    """`0-15` / `3,7,9` / `0-3,8` -> the sorted partitions; ValueError saying what is wrong."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            first = int(lo)
            last = int(hi) if dash else first
        except ValueError:
            raise ValueError(
                f"not a partition list: {text!r} (e.g. 0-15, 3,7,9 or 0-3,8)"
            ) from None
        if first < 0 or last < first:
            raise ValueError(f"bad partition range {part!r} in {text!r} (e.g. 0-15)")
        if out & set(range(first, last + 1)):
            raise ValueError(f"partition listed twice in {text!r}")
        out.update(range(first, last + 1))
    return sorted(out)


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject `subject` falls under `pattern` (tokens split on '.', '*' one token,
    '>' the rest)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


@dataclass(slots=True)
class StreamSpec:
    """What `tb publish` creates when the stream is missing."""

    name: str
    prefix: str
    replicas: int = 1
    max_age: float = 0.0  # seconds; 0: kept until limits say otherwise


async def ensure_stream(js, spec: StreamSpec, partitions: list[int], *, create: bool) -> bool:
    """Check that stream `spec.name` carries `PREFIX.p` for every partition p; create it when
    missing if `create`. True if it was created. JetStreamError (one line) otherwise."""
    import nats.errors
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import APIError, NotFoundError

    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        info = None
    except nats.errors.TimeoutError:
        raise JetStreamError(
            "the NATS server did not answer a JetStream request: is JetStream enabled "
            "(nats-server -js)?",
            ExitCode.CONNECT,
        ) from None
    except APIError as exc:
        raise JetStreamError(f"stream {spec.name}: {exc.description}", ExitCode.ERROR) from None
    except nats.errors.NoRespondersError:
        raise JetStreamError(
            "JetStream is not enabled on this NATS server (start it with -js)", ExitCode.CONNECT
        ) from None
    if info is None:
        if not create:
            raise JetStreamError(
                f"no stream {spec.name} on this server (tb publish creates it)", ExitCode.USAGE
            )
        config = StreamConfig(
            name=spec.name,
            subjects=[f"{spec.prefix}.*"],
            storage=StorageType.FILE,
            num_replicas=spec.replicas,
            max_age=spec.max_age or None,
            duplicate_window=DUPLICATE_WINDOW,
        )
        try:
            await js.add_stream(config)
        except APIError as exc:
            raise JetStreamError(
                f"cannot create stream {spec.name} (subjects {spec.prefix}.*): {exc.description}",
                ExitCode.USAGE,
            ) from None
        return True
    subjects = info.config.subjects or []
    missing = [
        p for p in partitions if not any(subject_matches(s, f"{spec.prefix}.{p}") for s in subjects)
    ]
    if missing:
        raise JetStreamError(
            f"stream {spec.name} has subjects {', '.join(subjects) or '(none)'}, which do not hold "
            f"{spec.prefix}.{missing[0]}: give the stream's prefix with --subject, or another "
            "--stream",
            ExitCode.USAGE,
        )
    return False
