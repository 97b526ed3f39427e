"""Ports for servers the tests start but do not own (redis-server, mlflow server): those cannot
be handed a bound socket, so a free port is named first and the server binds it a moment later.
Another process may take it in between; the callers retry with a new port when the server says
the address is in use. Our own servers bind port 0 themselves (`spartan serve --port-file`)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

BIND_RETRIES = 3


def unused_port() -> int:
    """A loopback port nothing listens on now (see above for the race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def address_in_use(log: str) -> bool:
    return "address already in use" in log.lower()


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port held bound but not listening: connections to it are refused for as long as the
    block runs, and nothing else can start listening there meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])
