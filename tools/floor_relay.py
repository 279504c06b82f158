"""The least a Python balancer can do per receive: a floor for `tb profile --balancer`.

    tb profile --workload trickle --balancer 'python3 tools/floor_relay.py'

epoll, recv_into one buffer, read each frame's header, one regular-expression pass over its
payload for compact `{"ev":"T","sym":"..."...}` objects, crc32 of the symbol, one os.write per
trade -- and nothing else: no UTF-8 or JSON checks, no other key orders, no statuses, no pongs,
no reconnects, blocking writes. Not a balancer (it drops anything else); what it measures is
what CPython itself costs per wake-up, which bounds tb's latency on a trickle. Same positional
CLI and worker contract as the C original (KEY URL NPIPES WORKDIR WORKER [ARGS...]).
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import socket
import sys
import zlib
from urllib.parse import urlsplit

from lb_cli import run, start

TRADE = re.compile(rb'(\{"ev":"T","sym":"([^"]*)"[^}]*\})')


def handshake(sock: socket.socket, host: str, port: int, path: str, buf: bytearray) -> int:
    """Upgrade to a websocket; returns how many bytes after the response are already in buf."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    view, end = memoryview(buf), 0
    while b"\r\n\r\n" not in buf[:end]:
        got = sock.recv_into(view[end:])
        if not got:
            raise SystemExit("floor_relay: the server closed the connection during the handshake")
        end += got
    head = buf.index(b"\r\n\r\n") + 4
    if not buf.startswith(b"HTTP/1.1 101"):
        status = bytes(buf[: buf.index(b"\r\n")]).decode(errors="replace")
        raise SystemExit(f"floor_relay: the server did not upgrade: {status}")
    buf[: end - head] = buf[head:end]
    return end - head


def send_text(sock: socket.socket, text: str) -> None:
    payload, mask = text.encode(), os.urandom(4)
    assert len(payload) < 126
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)


def main() -> int:
    key, url, fds, proc = start(sys.argv[1:])
    n = len(fds)
    u = urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port or 80))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    end = handshake(sock, u.hostname, u.port or 80, u.path or "/", buf)
    send_text(sock, json.dumps({"action": "auth", "params": key}))
    send_text(sock, '{"action":"subscribe","params":"T.*"}')
    pipe_of: dict[bytes, int] = {}
    len4 = [k.to_bytes(4, "little") for k in range(4096)]
    ep = select.epoll()
    ep.register(sock.fileno(), select.EPOLLIN)
    recv_into, write, findall = sock.recv_into, os.write, TRADE.findall
    closed = False
    while not closed:
        pos = 0
        while end - pos >= 2:
            op, b1 = buf[pos] & 0x0F, buf[pos + 1]
            if b1 < 126:
                hl, ln = 2, b1
            elif b1 == 126:
                hl, ln = 4, (buf[pos + 2] << 8) | buf[pos + 3]
            else:
                hl, ln = 10, int.from_bytes(buf[pos + 2 : pos + 10], "big")
            if end - pos < hl + ln:
                break
            if op == 8:  # the server's close
                closed = True
                break
            if op == 1:
                for obj, sym in findall(buf, pos + hl, pos + hl + ln):
                    p = pipe_of.get(sym)
                    if p is None:
                        p = pipe_of[sym] = zlib.crc32(sym) % n
                    write(fds[p], len4[len(obj)] + obj)
            pos += hl + ln
        if pos:
            buf[: end - pos] = buf[pos:end]
            end -= pos
        if closed:
            break
        ep.poll()
        got = recv_into(view[end:])
        if not got:
            break
        end += got
    for w in fds:
        os.close(w)
    return proc.wait()


if __name__ == "__main__":
    raise SystemExit(run(main))
