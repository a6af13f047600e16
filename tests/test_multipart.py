"""The multipart reader against bodies made by a real encoder (httpx) and broken ones."""

from __future__ import annotations

import os

import httpx
import pytest

from app.core.errors import MalformedUpload
from app.multipart import boundary_of, iter_parts


def encoded(files: list[tuple[str, tuple[str, bytes, str]]], data: dict[str, str] | None = None) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"]


def test_reads_what_httpx_sends_byte_for_byte() -> None:
    blobs = [os.urandom(n) for n in (0, 1, 300, 70_000)] + [b"\r\n--not the boundary\r\n", b"--"]
    body, content_type = encoded(
        [("file", (f"{i};name=x.png", blob, "image/png")) for i, blob in enumerate(blobs)], {"note": "hello"}
    )
    parts = list(iter_parts(body, boundary_of(content_type)))
    assert [p.name for p in parts] == ["note"] + ["file"] * len(blobs)
    assert [p.data for p in parts[1:]] == blobs
    assert parts[1].filename == "0;name=x.png" and parts[1].content_type == "image/png"


def test_preamble_and_epilogue_are_ignored() -> None:
    body, content_type = encoded([("file", ("a.png", b"\x89PNG data", "image/png"))])
    parts = list(iter_parts(b"a preamble\r\n" + body + b"an epilogue\r\n", boundary_of(content_type)))
    assert [(p.name, p.data) for p in parts] == [("file", b"\x89PNG data")]


def test_quoted_boundary_and_headerless_part() -> None:
    body = b'--a b:c\r\n\r\nraw\r\n--a b:c\r\nContent-Disposition: form-data; name="file"\r\n\r\nx\r\n--a b:c--\r\n'
    parts = list(iter_parts(body, boundary_of('multipart/form-data; boundary="a b:c"')))
    assert [(p.name, p.data) for p in parts] == [(None, b"raw"), ("file", b"x")]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no boundary anywhere",
        b'--B\r\nContent-Disposition: form-data; name="file"\r\n\r\nunterminated',
        b'--B\r\nContent-Disposition: form-data; name="file"',
        b"--Bgarbage\r\n\r\nx\r\n--B--",
        b"--B\r\nno colon here\r\n\r\nx\r\n--B--",
        b'--B\r\nContent-Disposition: attachment; name="file"\r\n\r\nx\r\n--B--',
    ],
)
def test_broken_bodies_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedUpload):
        list(iter_parts(body, b"B"))


@pytest.mark.parametrize(
    "header", ["multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; b=x"]
)
def test_missing_boundary_is_malformed(header: str) -> None:
    with pytest.raises(MalformedUpload):
        boundary_of(header)
