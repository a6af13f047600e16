"""uvicorn's httptools protocol with a bound on request headers: 431 past PIXELSERVE_MAX_HEADER_BYTES / _COUNT.

httptools has no header limit of its own (h11 has `h11_max_incomplete_event_size`): it keeps appending to
the URL and to the current header value for as long as the client sends, so one 64 MB header held the
event loop for seconds. Every way of running the service passes this class to uvicorn
(`--http app.http_protocol:HeaderLimitedProtocol`, or `uvicorn.run(http=...)` in `python -m app`).

Two checks, both cheap enough not to show in the benchmark:
- while a message's headers are incomplete, one integer add per `data_received` counts the bytes
  received; past the limit the connection gets a 431 and no more of it is parsed or kept;
- when the headers are complete, their size (URL + fields) and count are measured exactly once, so a
  single read holding a whole oversized header block (localhost: up to 256 KiB) is refused too.
The counter starts again at the end of each message, so keep-alive and pipelined requests are unaffected.
"""

from __future__ import annotations

import asyncio
import json
from functools import cache
from typing import Annotated, Any

import httptools
from pydantic_settings import BaseSettings, SettingsConfigDict
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.core.settings import Settings

# After a 431, read and drop what the client is still sending for a moment before closing: closing a
# socket with unread data makes the kernel send a reset, and the client would lose the 431 (nginx's
# "lingering close"). Bounded in time and bytes; nothing is kept.
LINGER_S = 1.0
LINGER_BYTES = 1024 * 1024


class _HeaderLimits(BaseSettings):
    """The two fields of `Settings`, read on their own: uvicorn, not the app, creates the protocol."""

    model_config = SettingsConfigDict(env_prefix="PIXELSERVE_", extra="ignore", frozen=True)

    max_header_bytes: Annotated[int, Settings.model_fields["max_header_bytes"]]
    max_header_count: Annotated[int, Settings.model_fields["max_header_count"]]


@cache
def header_limits() -> tuple[int, int]:
    limits = _HeaderLimits()
    return limits.max_header_bytes, limits.max_header_count


# What `uvicorn --http` / `uvicorn.run(http=...)` take: a string, so worker processes import it themselves.
UVICORN_HTTP = "app.http_protocol:HeaderLimitedProtocol"


class HeadersTooLarge(Exception):
    """Raised from the parser's on_headers_complete callback; httptools hands it back as the context."""


class HeaderLimitedProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_header_bytes, self.max_header_count = header_limits()
        self._in_headers = True  # between the end of a message (or connection start) and its headers' end
        self._header_bytes = 0
        self._rejected = False
        self._discarded = 0

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            self._discard(len(data))
            return
        if self._in_headers:
            self._header_bytes += len(data)
        # The rest mirrors HttpToolsProtocol.data_received, which would turn our callback's exception into a 400.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadersTooLarge):
                self._reject(str(exc.__context__))
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_headers and self._header_bytes > self.max_header_bytes:
            self._reject(f"request headers larger than {self.max_header_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._in_headers = False
        # Approximately the bytes on the wire: URL, then "name: value\r\n" per field.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            raise HeadersTooLarge(f"request headers larger than {self.max_header_bytes} bytes")
        if len(self.headers) > self.max_header_count:
            raise HeadersTooLarge(f"more than {self.max_header_count} request header fields")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers = True
        self._header_bytes = 0

    def _reject(self, message: str) -> None:
        self._rejected = True
        self.parser = None  # type: ignore[assignment]  # in an error state now; drops what it accumulated
        self.logger.warning("%s: %s", self._peer(), message)
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # Earlier pipelined requests are still being answered: a 431 now would land inside their
            # responses. Let them finish, then close (the client sees the connection end).
            self.cycle.keep_alive = False
            self.flow.resume_reading()  # flow control may have paused it; from now on data is only dropped
            return
        self.transport.write(self._response_431(message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _discard(self, size: int) -> None:
        self._discarded += size
        if self._discarded > LINGER_BYTES:
            self.transport.close()

    def _response_431(self, message: str) -> bytes:
        body = json.dumps({"error": message, "code": "headers_too_large"}).encode()
        head = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
        )
        return b"".join(head) + body

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"
