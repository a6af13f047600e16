"""Worker processes each on a listening socket of their own (SO_REUSEPORT), under uvicorn's supervisor.

With uvicorn's one shared listening socket, the worker that wakes first accepts every pending
connection (asyncio accepts up to the backlog per wake-up): a client that opens its connections at
once can land them all on one worker, and the other idles. Measured (`python -m benchmarks.edge
--variants after reuseport --rounds 6 --seconds 4 --concurrency 32`, 2 workers, `mnist`): in 2 of 6
rounds all 32 of wrk's connections went to one worker, at 1,250 and 1,377 req/s against about
2,900 in the others. With a socket per worker the kernel spreads new connections over them by a hash
of their addresses: every round split 51-52 %, median 2,980 req/s against 2,896, p99 18.8 against
22.1 ms. uvicorn's `Multiprocess` still supervises (restarts, signals, health checks); it asks for
`sockets` whenever it starts a worker, and gets a fresh listener each time.
"""

from __future__ import annotations

import logging
import socket

from uvicorn import Config
from uvicorn.supervisors import Multiprocess

logger = logging.getLogger("uvicorn.error")


def can_spread() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def listener(host: str, port: int) -> socket.socket:
    """A listening socket in the port's SO_REUSEPORT group (uvicorn calls listen() on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class SpreadWorkers(Multiprocess):
    """uvicorn's supervisor, each worker started on a listener of its own."""

    def __init__(self, config: Config, host: str, port: int) -> None:
        self._address = (host, port)
        super().__init__(config, sockets=[])

    @property
    def sockets(self) -> list[socket.socket]:
        # Read by Multiprocess each time it starts a worker (at start-up and on a restart). The parent's
        # reference goes with the worker's Process object, so a dead worker's listener closes with it.
        return [listener(*self._address)]

    @sockets.setter
    def sockets(self, _: list[socket.socket]) -> None:
        pass

    def run(self) -> None:
        logger.info(
            "Uvicorn running on http://%s:%d, %d workers on SO_REUSEPORT listeners", *self._address, self.processes_num
        )
        super().run()
