"""`tb replay`: a websocket server that speaks the feed's handshake and serves a capture.

Theory of operation: the replay server is the feed seen from the other side, in five layers,
each importing only those listed before it:

    stream.py     FrameStream: the capture's messages, encoded once as server frames in one
                  buffer shared by every connection; count_trades
    protocol.py   ServerSession: the feed protocol's server side, sans I/O (greeting, auth,
                  subscribe statuses, when to stream and when to close; phases in a table)
    txstamps.py   TxStamps: the kernel's transmit timestamps of a socket's sends (send log)
    server.py     ReplayServer: the listener, one thread per client, each client's socket loop
                  (websocket upgrade, pacing, streaming at frame boundaries)
    cli.py        `tb replay`'s flags, its TLS context (tb.certs) and its output lines

Every name other modules use is importable from tb.replay.
"""

from __future__ import annotations

from tb.replay.cli import LISTENING, STREAMING_TO, add_parser, main
from tb.replay.protocol import IllegalTransition, Phase, ServerSession
from tb.replay.server import ReplayServer
from tb.replay.stream import FrameStream, count_trades

__all__ = [
    "LISTENING",
    "STREAMING_TO",
    "add_parser",
    "main",
    "ReplayServer",
    "FrameStream",
    "count_trades",
    "ServerSession",
    "Phase",
    "IllegalTransition",
]
