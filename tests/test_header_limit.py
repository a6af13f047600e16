"""Request-header limits of a real uvicorn process (app.http_protocol): 431 past the limit, nothing buffered.

Raw sockets, because the point is what the server does with bytes no HTTP client library would send.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.processes import free_port, start_replica, stop, wait_ready

DEFAULT_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


@contextmanager
def _server(tiny_repository: Path, log: Path, **settings: str) -> Iterator[Server]:
    """One uvicorn process started the way every test starts one (tests.processes.start_replica)."""
    port = free_port()
    process = start_replica({"PIXELSERVE_MODEL_REPOSITORY": str(tiny_repository), **settings}, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield Server(url, process.pid)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with _server(tiny_repository, tmp_path_factory.mktemp("header-limit") / "server.log") as started:
        yield started


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _request(path: str = "/health/live", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", *(f"{name}: {value}" for name, value in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response off `sock` (what follows it stays in `buffer`); it must carry a content-length."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response; got {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (field.split(":", 1) for field in fields)}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        rest += chunk
    buffer[:] = rest[length:]
    return int(status_line.split()[1]), headers, rest[:length]


def _closed(sock: socket.socket) -> bool:
    """True when the server has ended the connection (EOF or reset) with nothing more to read."""
    try:
        return sock.recv(65536) == b""
    except ConnectionError:
        return True


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_100_kb_header_gets_431_and_the_server_keeps_serving(server: Server) -> None:
    with socket.create_connection(_address(server.url), timeout=10) as sock:
        sock.sendall(_request(headers={"X-Big": "a" * 100_000}))
        status, headers, body = _read_response(sock, bytearray())
        assert status == 431
        assert headers["connection"] == "close" and headers["content-type"] == "application/json"
        error = json.loads(body)
        assert error["code"] == "headers_too_large" and str(DEFAULT_LIMIT) in error["error"]
        assert _closed(sock)
    assert httpx.get(f"{server.url}/health/live", timeout=10).status_code == 200


def test_many_small_headers_over_the_byte_limit_get_431(server: Server) -> None:
    # No single header is big; together they are 2 x the limit.
    fields = {f"X-Field-{i}": "v" * 60 for i in range(90)}
    fields |= {f"X-Other-{i}": "w" * 1400 for i in range(90)}
    with socket.create_connection(_address(server.url), timeout=10) as sock:
        sock.sendall(_request(headers=fields))
        assert _read_response(sock, bytearray())[0] == 431


def test_huge_header_is_cut_off_without_being_buffered(server: Server) -> None:
    total = 64 * 1024 * 1024
    before = _rss_kib(server.pid)
    sent = 0
    with socket.create_connection(_address(server.url), timeout=10) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: test\r\nX-Huge: ")
        piece = b"a" * (1024 * 1024)
        try:
            while sent < total:
                sent += sock.send(piece)
        except ConnectionError:
            pass  # the server closed the connection (a reset, since it did not read the rest)
        except TimeoutError:
            pytest.fail(f"server stopped reading but kept the connection open after {sent} bytes")
    # The server stopped reading: most of it never left this side (loopback buffers hold a few MB).
    assert sent < total // 2, f"the server took {sent} bytes of one header"
    grown_mib = (_rss_kib(server.pid) - before) / 1024
    assert grown_mib < 16, f"server memory grew by {grown_mib:.0f} MiB for a header it refused"
    assert httpx.get(f"{server.url}/health/live", timeout=10).status_code == 200


def test_a_few_kb_of_headers_are_fine(server: Server) -> None:
    headers = {"Cookie": "session=" + "c" * 4000, "Authorization": "Bearer " + "t" * 1000}
    headers |= {f"X-Trace-{i}": "x" * 40 for i in range(30)}
    response = httpx.get(f"{server.url}/health/live", headers=headers, timeout=10)
    assert response.status_code == 200


def test_keep_alive_and_pipelined_requests_on_one_connection(server: Server) -> None:
    # Each request has 40 KB of headers: fine alone, over the limit if the count did not start again.
    request = _request(headers={"X-Pad": "p" * 40_000})
    with socket.create_connection(_address(server.url), timeout=10) as sock:
        buffer = bytearray()
        for _ in range(2):  # keep-alive: one after the other
            sock.sendall(request)
            assert _read_response(sock, buffer)[0] == 200
        sock.sendall(request * 3)  # pipelined: three in one write
        assert [_read_response(sock, buffer)[0] for _ in range(3)] == [200, 200, 200]


def test_the_limits_are_settings(tiny_repository: Path, tmp_path: Path) -> None:
    settings = {"PIXELSERVE_MAX_HEADER_BYTES": "2048", "PIXELSERVE_MAX_HEADER_COUNT": "10"}
    with _server(tiny_repository, tmp_path / "server.log", **settings) as started:
        url = started.url
        with socket.create_connection(_address(url), timeout=10) as sock:
            sock.sendall(_request(headers={"X-Big": "b" * 3000}))
            status, _, body = _read_response(sock, bytearray())
            assert status == 431 and "2048 bytes" in json.loads(body)["error"]
        with socket.create_connection(_address(url), timeout=10) as sock:
            sock.sendall(_request(headers={f"X-{i}": "1" for i in range(12)}))
            status, _, body = _read_response(sock, bytearray())
            assert status == 431 and "more than 10" in json.loads(body)["error"]
        assert httpx.get(f"{url}/health/live", headers={"X-Small": "1"}, timeout=10).status_code == 200
