"""A replica's RSS inside its container, before and after --requests POSTs (half mnist, half fashion).

Standard library only: it runs in the image itself (the slim one has no pip to add anything), e.g.

    podman run -d --rm --name slim-mem --network none \\
        -v "$PWD/benchmarks/container_memory.py:/tmp/m.py:ro" localhost/pixelserve:slim
    podman exec slim-mem python /tmp/m.py --requests 1000; podman stop slim-mem

It waits for /health/ready on 127.0.0.1:8000, then prints VmRSS of every `python -m app` process
(the server is PID 1: one process unless PIXELSERVE_WORKERS says otherwise).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

URL = "http://127.0.0.1:8000"


def png(column: int) -> bytes:
    """A 28x28 grayscale PNG: a bright bar on black."""
    rows = [[255 if column <= x < column + 4 and 4 <= y < 24 else 0 for x in range(28)] for y in range(28)]
    raw = b"".join(b"\x00" + bytes(row) for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def post(i: int) -> int:
    model = ("mnist", "fashion")[i % 2]
    request = urllib.request.Request(
        f"{URL}/predict/{model}", data=png(12 + i % 3), headers={"Content-Type": "image/png"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def rss_mib() -> dict[int, int]:
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if "-m app" in command:
            found[int(pid)] = (
                next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) // 1024
            )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{URL}/health/ready", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    print(f"ready: RSS MiB by pid {rss_mib()}")
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(post, range(args.requests)))
    print(f"after {statuses.count(200)}/{args.requests} answered 200: RSS MiB by pid {rss_mib()}")
    return 0 if statuses.count(200) == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
