"""The one exception family of tb.pipes."""

from __future__ import annotations

__all__ = ["PipeError"]


class PipeError(Exception):
    """A pipe, the pipe writer, the worker or the worker-side reader cannot go on.

    The message is one line meant for the user: it names the pipe (by index) or the worker.
    """
