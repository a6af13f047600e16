"""Waiting for the batcher's answer, bounded: by the request's deadline and by its client staying.

A request that waited past its deadline is answered 504 at its deadline (its queued work is
dropped unrun); one whose client disconnected has its work dropped before it is decoded or run.
Disconnects are seen through the ASGI receive channel: once the body is read, `receive()` returns
only `http.disconnect` (uvicorn wakes it when the connection is lost), so one waiting task per
queued request watches, without polling.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from app.core.batch_work import Probabilities
from app.core.batching import Batcher
from app.core.errors import DeadlineExceeded
from app.core.settings import Settings

CLIENT_GONE = 499  # nginx's "client closed request": only the access log ever sees it


def deadline_of(settings: Settings, started: float, client_timeout_s: float | None = None) -> float:
    """time.monotonic() by which the request must have been run: the server's timeout, or the client's if sooner."""
    timeout = (
        settings.request_timeout_s if client_timeout_s is None else min(client_timeout_s, settings.request_timeout_s)
    )
    return started + timeout


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass  # the body was read already: nothing else is expected, but never mistake it for a disconnect


async def answer_or_gone(
    request: Request, batcher: Batcher, answer: asyncio.Future[Probabilities], deadline: float
) -> Probabilities | None:
    """The answer; None when the client went away first. Past `deadline`, DeadlineExceeded (504).

    Either way the future is cancelled, which the batcher reads as "drop this request unrun"."""
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait(
            (answer, watch), timeout=max(deadline - time.monotonic(), 0.0), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        watch.cancel()
        batcher.finished(answer)
    if answer in done:
        return answer.result()
    answer.cancel()
    if watch in done:
        return None
    raise DeadlineExceeded("the request was not answered before its deadline; it is dropped unrun if still queued")
