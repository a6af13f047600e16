"""Smoke test through the load balancer ($LB_URL): a real image must come back with the right label.

Standard library only: it runs on the host, in the network namespace of the compose check.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import urllib.request
import zlib


def png(pixels: list[list[int]]) -> bytes:
    """A minimal 8-bit grayscale PNG."""
    height, width = len(pixels), len(pixels[0])
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def digit_one(size: int = 56) -> list[list[int]]:
    """A thick vertical stroke on white paper: a handwritten 1."""
    return [[0 if size * 0.45 <= x <= size * 0.55 and size * 0.15 <= y <= size * 0.85 else 255
             for x in range(size)] for y in range(size)]  # fmt: skip


def main() -> int:
    url = os.environ["LB_URL"].rstrip("/") + "/predict/mnist"
    request = urllib.request.Request(url, data=png(digit_one()), headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    print(f"POST {url} -> label {body['label']} ({body['confidence']:.3f}), version {body['version']}")
    return 0 if body["label"] == "1" else 1


if __name__ == "__main__":
    sys.exit(main())
