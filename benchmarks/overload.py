"""Open-loop overload: at twice the saturation rate, does one process keep goodput and a bounded p99?

One server process (shipped `mnist`, 1 torch thread) pinned to core 0, the load generator to core 1,
so they do not take each other's CPU. First the saturation point: `wrk` closed-loop at concurrency
32 (throughput and p99). Then an open-loop run: requests are due at a fixed arrival rate (2x that
throughput by default) whatever the answers, and leave on a fixed pool of keep-alive connections
(as wrk2 does, and as a load balancer's upstream pool does): a request due while every connection
is busy waits in the client, and its latency is measured from its *scheduled* time, so that wait
counts (no coordinated omission). The first seconds are left out. A closed-loop generator cannot
overload a server: it slows down with it.

Aims: goodput (200s/s) >= 80 % of saturation, answers (200 + 503)/s >= 90 % of the offered rate,
p99 of the 200s <= 5x the p99 at saturation, server memory bounded.

    taskset -c 1 python -m benchmarks.overload   # (it pins the server to core 0 itself)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.loadgen import content_type, mnist_test_pngs, multipart_body, run_wrk, write_lua_script
from benchmarks.output import write_results
from benchmarks.servers import ROOT, free_port, rss_bytes, wait_ready

DATASETS_ROOT = ROOT.parent / "shared" / "datasets"


@dataclass
class Outcomes:
    statuses: Counter[int] = field(default_factory=Counter)
    ok_ms: list[float] = field(default_factory=list)  # 200s: scheduled send -> last byte
    shed_ms: list[float] = field(default_factory=list)  # 503s
    errors: int = 0  # connection failures
    connections: int = 0


class _Pool:
    """Idle connections, and requests due while none was idle (scheduled time, bytes)."""

    def __init__(self) -> None:
        self.idle: list[_Connection] = []
        self.backlog: deque[tuple[float, bytes]] = deque()
        self.reopen = 0

    def send(self, scheduled: float, request: bytes) -> None:
        if self.idle:
            self.idle.pop().send(request, scheduled)
        else:
            self.backlog.append((scheduled, request))

    def freed(self, connection: _Connection) -> None:
        if self.backlog:
            scheduled, request = self.backlog.popleft()
            connection.send(request, scheduled)
        else:
            self.idle.append(connection)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: _Pool, outcomes: Outcomes, counted_after: float) -> None:
        self.pool, self.outcomes, self.counted_after = pool, outcomes, counted_after
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.scheduled = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes, scheduled: float) -> None:
        assert self.transport is not None
        self.scheduled, self.buffer = scheduled, b""
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].decode("latin-1").lower()
        length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0]) if "content-length:" in head else 0
        if len(self.buffer) < head_end + 4 + length:
            return
        if self.scheduled >= self.counted_after:
            status = int(head.split(" ", 2)[1])
            elapsed_ms = (time.perf_counter() - self.scheduled) * 1000
            self.outcomes.statuses[status] += 1
            (self.outcomes.ok_ms if status == 200 else self.outcomes.shed_ms if status == 503 else []).append(
                elapsed_ms
            )
        if "connection: close" in head:
            self.transport.close()  # type: ignore[union-attr]
            self.pool.reopen += 1  # not reopened: a server that closes connections under load loses capacity
        else:
            self.pool.freed(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)


async def open_loop(
    host: str, port: int, requests: list[bytes], rate: float, seconds: float, warmup: float, connections: int
) -> tuple[Outcomes, int]:
    """Requests due at `rate` per second for `seconds`, whatever the answers; those due after `warmup` count.

    Returns the outcomes and how many requests were still waiting for a connection at the end."""
    loop = asyncio.get_running_loop()
    outcomes, pool = Outcomes(), _Pool()
    opened = [
        (await loop.create_connection(lambda: _Connection(pool, outcomes, 0.0), host, port))[1]
        for _ in range(connections)
    ]
    outcomes.connections = connections
    start = time.perf_counter()
    for connection in opened:
        connection.counted_after = start + warmup
        pool.idle.append(connection)
    sent = 0
    while (now := time.perf_counter()) < start + seconds:
        due = int((now - start) * rate) + 1
        while sent < due:  # catch up: the schedule, not the answers, decides when requests are due
            pool.send(start + sent / rate, requests[sent % len(requests)])
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    left = len(pool.backlog)
    await asyncio.sleep(3)  # answers still on their way (a bounded queue answers within its target)
    outcomes.errors = pool.reopen
    return outcomes, left


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor", type=float, default=2.0, help="offered rate / saturation throughput")
    parser.add_argument("--seconds", type=float, default=17.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=256, help="the open-loop client's keep-alive pool")
    parser.add_argument("--saturation-seconds", type=float, default=8.0)
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--client-core", default="1")
    parser.add_argument("--env", action="append", default=[], help="extra server setting NAME=VALUE")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(args.client_core)})  # this process and wrk: the client core
    samples = mnist_test_pngs(DATASETS_ROOT / "mnist", 64)
    port = free_port()
    env = {**os.environ, "PIXELSERVE_MODEL_REPOSITORY": str(ROOT / "models"), "PIXELSERVE_MODELS": "mnist"}
    env |= {"PIXELSERVE_ACCESS_LOG": "false", "PIXELSERVE_RELOAD_INTERVAL_S": "0"}
    env |= dict(item.split("=", 1) for item in args.env)
    argv = ["taskset", "-c", args.server_core, sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app"]
    argv += ["--http", "app.http_protocol:HeaderLimitedProtocol", "--no-access-log", "--port", str(port)]
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "server.log"
        server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(f"{url}/health/ready", server, 120, log)
            script = write_lua_script(Path(scratch), samples, "/predict/mnist")
            run_wrk(url, script, 32, 3)  # warm-up
            saturation = run_wrk(url, script, 32, args.saturation_seconds)
            rss_before = rss_bytes(server.pid)
            rate = saturation.requests_per_s * args.factor
            head = f"POST /predict/mnist HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type()}\r\n"
            requests = [
                f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
                for body in (multipart_body(sample.png) for sample in samples)
            ]
            outcomes, left = asyncio.run(
                open_loop("127.0.0.1", port, requests, rate, args.seconds, args.warmup, args.connections)
            )
            rss_after = rss_bytes(server.pid)
        finally:
            server.terminate()
            server.wait(30)
    counted_s = args.seconds - args.warmup
    goodput = outcomes.statuses[200] / counted_s
    answers = (outcomes.statuses[200] + outcomes.statuses[503]) / counted_s
    ok_p50, ok_p99 = percentile(outcomes.ok_ms, 50), percentile(outcomes.ok_ms, 99)
    rows = [
        ("saturation throughput (wrk, c=32, closed loop)", f"{saturation.requests_per_s:,.0f} req/s"),
        ("p50 / p99 at saturation", f"{saturation.p50_ms:.1f} / {saturation.p99_ms:.1f} ms"),
        (f"offered (open loop, {args.factor:g}x, {counted_s:g} s counted)", f"{rate:,.0f} req/s"),
        ("goodput (200s)", f"{goodput:,.0f} /s = {goodput / saturation.requests_per_s:.2f}x saturation (aim >= 0.80)"),
        ("answers (200 + 503)", f"{answers:,.0f} /s = {answers / rate:.2f}x offered (aim >= 0.90)"),
        ("statuses", ", ".join(f"{s}: {n}" for s, n in sorted(outcomes.statuses.items())) or "none"),
        ("p50 / p99 of the 200s", f"{ok_p50:.1f} / {ok_p99:.1f} ms = {ok_p99 / saturation.p99_ms:.1f}x (aim <= 5)"),
        ("p99 of the 503s", f"{percentile(outcomes.shed_ms, 99):.1f} ms"),
        ("connections / closed by the server", f"{outcomes.connections} / {outcomes.errors}"),
        ("requests still waiting for a connection at the end", f"{left:,}"),
        ("server RSS before / after", f"{rss_before / 2**20:,.0f} / {rss_after / 2**20:,.0f} MB"),
    ]
    settings = " ".join(args.env) or "defaults"
    table = "\n".join(
        [f"# Overload, one process on core {args.server_core} ({settings})", "", "| measure | value |", "|---|---|"]
        + [f"| {name} | {value} |" for name, value in rows]
    )
    print(table)
    raw = {
        "saturation": saturation.__dict__,
        "offered_per_s": rate,
        "goodput_per_s": goodput,
        "answers_per_s": answers,
        "statuses": dict(outcomes.statuses),
        "ok_p50_ms": ok_p50,
        "ok_p99_ms": ok_p99,
        "shed_p99_ms": percentile(outcomes.shed_ms, 99),
        "connections": outcomes.connections,
        "closed_by_server": outcomes.errors,
        "backlog_left": left,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "settings": args.env,
    }
    write_results(ROOT / "benchmarks" / "results", "overload", table + "\n", raw)


if __name__ == "__main__":
    main()
