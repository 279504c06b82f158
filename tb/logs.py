"""tb's lines on stderr (logs, --stats, the final counters): they never stall or stop the ingest.

Theory of operation. stderr is often a pipe to a log shipper, and shippers get restarted: a
write to a pipe whose reader is gone fails (EPIPE), and a write to a pipe nobody reads blocks
once it is full. Either must cost a log line, never the feed. So every line goes out with one
write that cannot block, on a file description of tb's own where the kernel allows one:

- a pipe or a terminal: /proc/self/fd/2 opened anew gives tb its own open file description of
  the same pipe (or terminal), which can be O_NONBLOCK without touching the worker's stderr
  (the worker inherits fd 2 and shares its description with tb, so fd 2's flags stay as they are);
- a socket (the journal's stream): send with MSG_DONTWAIT;
- a regular file (or anything else): plain writes, which do not wait for a reader.

A line that cannot be written at once, whole, is dropped and counted (`errors`, shown as
log_write_errors on the final line); the first drop is said once to syslog (the journal on a
systemd host), if the host has one. Lines are written by one write call each, so they do not
interleave with the worker's as long as they fit in PIPE_BUF (4096 bytes).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import time

__all__ = [
    "JSONFormatter",
    "LineHandler",
    "StderrSink",
    "setup_logging",
    "sink",
    "write_counters",
    "write_line",
]


class StderrSink:
    """Non-blocking writes of whole lines to stderr; what cannot be written is dropped and counted."""

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd
        self.errors = 0  # lines (or line tails) dropped
        self._own = -1  # tb's own O_NONBLOCK description of a pipe or terminal
        self._sock: socket.socket | None = None
        self._said = False
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return  # no stderr at all: every write counts as dropped
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            try:
                self._own = os.open(
                    f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
                )
            except OSError:
                self._own = -1  # (no /proc, or /dev/null-like devices that refuse: plain writes)
        elif stat.S_ISSOCK(mode):
            try:
                self._sock = socket.socket(fileno=os.dup(fd))
            except OSError:
                self._sock = None

    def write(self, line: str) -> bool:
        """Write `line` plus a newline at once; False (and counted) if it could not go whole."""
        data = (line + "\n").encode("utf-8", "replace")
        try:
            if self._sock is not None:
                n = self._sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            else:
                n = os.write(self._own if self._own >= 0 else self.fd, data)
        except OSError:  # gone, full, a full disk (ENOSPC on a file), anything: the line is lost
            n = -1
        if n == len(data):
            return True
        self.errors += 1
        if not self._said:
            self._said = True
            _say_to_syslog(
                "tb: stderr is not taking log lines (its reader is gone or not reading); "
                "dropping them and counting them as log_write_errors; the ingest goes on"
            )
        return False

    def close(self) -> None:
        if self._own >= 0:
            os.close(self._own)
            self._own = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _say_to_syslog(message: str) -> None:
    if not os.path.exists("/dev/log"):
        return  # no syslog daemon, no journal: nowhere to say it
    try:
        import syslog

        syslog.openlog("tb", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_WARNING, message)
    except (ImportError, OSError):
        pass


_sink: StderrSink | None = None


def sink() -> StderrSink:
    """The process's one stderr sink (made on first use)."""
    global _sink
    if _sink is None:
        _sink = StderrSink()
    return _sink


def write_line(line: str) -> bool:
    """Write one line to stderr without blocking; False if it was dropped (and counted)."""
    return sink().write(line)


class LineHandler(logging.Handler):
    """A logging handler that writes each record as one line through the stderr sink."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a bad format string in a log call: say so rather than lose it
            text = f"{record.name} {record.levelname}: unformattable log message {record.msg!r}"
        try:
            sink().write(text)
        except Exception:  # (logging must never take the ingest down)
            sink().errors += 1


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601 with ms), level, logger, event."""

    def format(self, record: logging.LogRecord) -> str:
        return _json_line(record.created, record.levelname, record.name, record.getMessage())


def _json_line(created: float, level: str, logger: str, event: str, **fields: object) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    obj = {"time": f"{when}.{int(created * 1000) % 1000:03d}Z", "level": level, "logger": logger}
    obj["event"] = event
    obj.update(fields)
    return json.dumps(obj, separators=(",", ":"))


_json = False


def setup_logging(level: int, fmt: str = "text") -> None:
    """tb's logging: one line per record on stderr, through the sink, as text or JSON (nothing
    of tb's goes through sys.stderr's buffer, whose flush at exit fails on a closed pipe and
    turns the exit status into 120)."""
    global _json
    _json = fmt == "json"
    handler = LineHandler()
    if _json:
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s.%(msecs)03d %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S"
            )
        )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def write_counters(kind: str, line: str, logger: str = "tb.run") -> bool:
    """Write a stats line (`kind` "stats") or the final line ("final"): as it is, or with
    --log-format json as {"event": kind, ...its key=value pairs, numbers as numbers}."""
    if not _json:
        return write_line(line)
    from tb.counters import parse_line

    fields: dict[str, object] = {}
    for key, value in parse_line(line).items():
        try:
            fields[key] = int(value)
        except ValueError:
            try:
                fields[key] = float(value.rstrip("%"))
            except ValueError:
                fields[key] = value
    if kind == "stats":
        rate = line.split(" trades/s", 1)[0].rsplit(" ", 1)[-1].replace(",", "")
        fields["trades_per_s"] = int(rate) if rate.isdigit() else rate
    return write_line(_json_line(time.time(), "INFO", logger, kind, **fields))
