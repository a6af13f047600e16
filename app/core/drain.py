"""Graceful drain on SIGTERM, for load balancers and orchestrators.

uvicorn stops accepting connections the moment it gets SIGTERM. Behind a load balancer that is too
early: the balancer still sends requests until it notices. So the first SIGTERM only turns
`/health/ready` to 503 and keeps serving for `PIXELSERVE_DRAIN_S` seconds; then it is handed to
uvicorn, which stops accepting, lets in-flight requests finish (bounded by its graceful-shutdown
timeout) and exits. A second SIGTERM hands over at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

logger = logging.getLogger("pixelserve.drain")


class Drainer:
    def __init__(self, drain_s: float) -> None:
        self.drain_s = drain_s
        self.draining = threading.Event()
        self._previous: Any = None
        self._timer: threading.Timer | None = None

    def install(self) -> None:
        """Wrap the server's SIGTERM handler; a no-op outside the main thread or without a server handler."""
        if self.drain_s <= 0 or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):  # not under a server that handles SIGTERM (tests, REPL)
            return
        self._previous = previous
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def uninstall(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, sig: int, frame: FrameType | None) -> None:
        if self.draining.is_set():
            self._hand_over(sig)
            return
        self.draining.set()
        logger.warning("SIGTERM: not ready, draining for %.1f s before shutting down", self.drain_s)
        self._timer = threading.Timer(self.drain_s, self._hand_over, args=(sig,))
        self._timer.daemon = True
        self._timer.start()

    def _hand_over(self, sig: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._previous is not None:
            self._previous(sig, None)
