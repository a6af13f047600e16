"""The request body size limit, as two checks the edge layer (app/edge.py) runs.

A declared Content-Length over the limit is refused before a byte is read; a body without one (chunked)
is counted as it streams and refused the moment it passes the limit, so no upload can fill memory.
A body with a valid Content-Length and no Transfer-Encoding is not counted: the server frames it by that
length (no more bytes reach the app), and a wrapper per receive would be per-request work for nothing.
"""

from __future__ import annotations

from starlette.types import Message, Receive

from app.core.errors import BodyTooLarge


def too_large_message(max_bytes: int) -> str:
    return f"request body is larger than the limit of {max_bytes} bytes"


def declared_over(declared: bytes | None, max_bytes: int) -> bool:
    """A Content-Length over the limit (more than 18 digits is over any: int() of 4,300+ digits would raise)."""
    return declared is not None and declared.isdigit() and (len(declared) > 18 or int(declared) > max_bytes)


def needs_counting(declared: bytes | None, chunked: bool) -> bool:
    """Whether the server could hand the app more body than the headers declare."""
    return chunked or declared is None or not declared.isdigit()


def counting(receive: Receive, max_bytes: int) -> Receive:
    """`receive`, raising BodyTooLarge (a 413) once the body read so far passes `max_bytes`."""
    received = 0

    async def counting_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise BodyTooLarge(too_large_message(max_bytes))
        return message

    return counting_receive
