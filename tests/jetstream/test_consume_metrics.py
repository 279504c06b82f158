"""`tb consume --metrics`: real HTTP scrapes of a running tb consume reading a real nats-server,
parsed with prometheus_client's own parser; /healthz through a server's death and return."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import struct
import subprocess
import sys

import pytest
from harness import http_get as get
from harness import run_tb
from harness import scrape_metrics as scrape
from nats_harness import Proc, count_lines, free_port, log_worker, wait_until

pytest.importorskip("prometheus_client", reason="prometheus-client is in the test extra")

PARTITIONS = 4


def healthz(port: int) -> tuple[int, str]:
    return get(f"http://127.0.0.1:{port}/healthz")


def publish(url: str, messages: int, *, first: int = 0, per_message: int = 50) -> int:
    """`messages` messages of `per_message` records each, round robin over the partitions, in
    tb publish's format (the stream made if missing); returns the records published."""
    import nats
    from nats.js.errors import NotFoundError

    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        try:
            await js.stream_info("TRADES")
        except NotFoundError:
            await js.add_stream(name="TRADES", subjects=["TRADES.*"])
        for m in range(first, first + messages):
            p = m % PARTITIONS
            body = bytearray()
            for r in range(per_message):
                raw = json.dumps({"ev": "T", "sym": f"S{p}", "i": f"{m}.{r}", "p": 1.5, "s": 1})
                body += struct.pack("<I", len(raw)) + raw.encode()
            await js.publish(f"TRADES.{p}", bytes(body))
        await nc.close()

    asyncio.run(go())
    return messages * per_message


def start_consume(url: str, tmp_path, port: int, *extra: str, worker=None) -> Proc:
    worker = worker or log_worker(tmp_path / "worker.jsonl")
    return Proc(["consume", url, "--partitions", f"0-{PARTITIONS - 1}", "--workdir",
                 str(tmp_path), "--metrics", f"127.0.0.1:{port}", *extra, "--", *worker])  # fmt: skip


def final_line(proc: Proc) -> dict[str, str]:
    return proc.final("tb consume: final")


def test_counters_rise_and_end_equal_to_the_final_line(tmp_path, nats_server):
    first = publish(nats_server.url, 40)
    port = free_port()
    consume = start_consume(nats_server.url, tmp_path, port)
    try:
        wait_until(lambda: scrape(port).get("tb_consume_records_consumed_total") == first, 30,
                   "the first records consumed")  # fmt: skip
        before = scrape(port)
        total = first + publish(nats_server.url, 60, first=40)
        wait_until(
            lambda: (
                (m := scrape(port))["tb_consume_records_written_total"] == total
                and m["tb_consume_messages_acked_total"] == 100
            ),
            30,
            "every record written and every message acknowledged",
        )
        last = scrape(port)
        assert healthz(port) == (200, f"ok: connected to NATS, {PARTITIONS} consumers bound, "
                                 "worker alive\n")  # fmt: skip
    finally:
        consume.signal(15)
        assert consume.wait(30) == 0, consume.text[-2000:]
    for name, value in before.items():
        if name.endswith("_total") and name.startswith("tb_consume_"):
            assert last[name] >= value, name
    assert last["tb_consume_records_consumed_total"] > before["tb_consume_records_consumed_total"]
    assert last["tb_consume_nats_connected"] == 1 and last["tb_consume_worker_up"] == 1
    for p in range(PARTITIONS):
        assert last[f"tb_consume_consumer_bound{{partition={p}}}"] == 1
        assert last[f"tb_consume_queued_bytes{{partition={p}}}"] == 0
    assert "process_cpu_seconds_total" in last and "process_open_fds" in last
    final = final_line(consume)
    for metric, key in [
        ("records_consumed", "consumed"),
        ("messages_consumed", "messages"),
        ("records_written", "written"),
        ("messages_acked", "acked"),
        ("messages_redelivered", "redelivered"),
        ("messages_skipped", "skipped"),
        ("messages_malformed", "malformed"),
        ("consumer_resets", "resets"),
        ("lost_in_worker", "lost_in_worker"),
        ("worker_restarts", "worker_restarts"),
    ]:
        assert last[f"tb_consume_{metric}_total"] == int(final[key]), metric
    assert int(final["consumed"]) == total and final["undelivered_at_exit"] == "0"
    assert count_lines(tmp_path / "worker.jsonl") == total


def test_healthz_follows_nats_server_killed_and_restarted(tmp_path, nats_server):
    sent = publish(nats_server.url, 8)
    port = free_port()
    consume = start_consume(nats_server.url, tmp_path, port)
    try:
        wait_until(lambda: healthz(port)[0] == 200, 30, "healthy")
        nats_server.kill()
        wait_until(lambda: (r := healthz(port))[0] == 503 and "NATS" in r[1], 20, "a 503")
        status, body = healthz(port)
        assert status == 503 and body.startswith("NATS unreachable since "), body
        assert body.endswith(" s)\n"), body
        m = scrape(port)
        assert m["tb_consume_nats_connected"] == 0 and m["tb_consume_nats_disconnects_total"] == 1
        nats_server.start()  # the same port and store
        wait_until(lambda: healthz(port)[0] == 200, 30, "healthy again")
        m = scrape(port)
        assert m["tb_consume_nats_connected"] == 1
        assert all(m[f"tb_consume_consumer_bound{{partition={p}}}"] == 1 for p in range(4))
        # and it consumes again
        sent += publish(nats_server.url, 8, first=8)
        wait_until(lambda: scrape(port)["tb_consume_records_written_total"] == sent, 30,
                   "the records published after the restart")  # fmt: skip
    finally:
        consume.signal(15)
        assert consume.wait(30) == 0, consume.text[-2000:]
    assert final_line(consume)["consumed"] == str(sent)


def test_a_dead_worker_is_unhealthy_while_it_restarts(tmp_path, nats_server):
    publish(nats_server.url, 4)
    port = free_port()
    dies = [sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(3)"]
    consume = start_consume(nats_server.url, tmp_path, port, "--max-restarts", "100",
                            "--shutdown-timeout", "1", worker=dies)  # fmt: skip
    try:
        wait_until(lambda: healthz(port) == (503, "worker restarting\n"), 30, "worker restarting")
        wait_until(lambda: scrape(port).get("tb_consume_worker_restarts_total", 0) >= 1, 30,
                   "a restart counted")  # fmt: skip
    finally:
        consume.signal(15)
        consume.wait(30)


def test_promtool_accepts_the_exposition(tmp_path, nats_server):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed here (.ci/run installs Debian's prometheus)")
    sent = publish(nats_server.url, 4)
    port = free_port()
    consume = start_consume(nats_server.url, tmp_path, port)
    try:
        wait_until(lambda: scrape(port).get("tb_consume_records_written_total") == sent, 30,
                   "records written")  # fmt: skip
        _, text = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        consume.signal(15)
        consume.wait(30)
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_port_in_use_or_a_bad_address_is_a_usage_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for value, says in [
            (f"127.0.0.1:{port}", f"cannot serve metrics on 127.0.0.1:{port}"),
            ("nonsense", "not HOST:PORT"),
        ]:
            proc = run_tb(["consume", "nats://127.0.0.1:1", "--partitions", "0",
                           "--workdir", str(tmp_path), "--metrics", value, "--", "true"])  # fmt: skip
            assert proc.returncode == 2, proc.stderr
            assert says in proc.stderr and "Traceback" not in proc.stderr
