"""What the engines need of a data connection, and how one is opened.

A module of its own, without trio, so that a download's first request can be sent while the
rest of segdl is still loading (:mod:`segdl.engine.headstart`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import Protocol

from ..core.proxyrules import ProxySettings
from ..core.responses import ResponseHead
from ..io.connect import Connector
from ..io.dataplane import Connection, Endpoint, TLSSessions, Transform
from .options import Options

__all__ = ["ConnectionFactory", "ConnectionLike", "open_connection"]


class ConnectionLike(Protocol):
    """What the engine needs of a data connection (:class:`Connection`, or a test fake)."""

    @property
    def aborted(self) -> bool: ...

    def connect(self) -> None: ...

    def request(
        self,
        *,
        headers: Mapping[str, str],
        first: int | None = None,
        last: int | None = None,
        method: str = "GET",
        any_status: bool = False,
    ) -> ResponseHead: ...

    def stream_into_file(
        self,
        fd: int,
        offset: int,
        commit: Callable[[int], int],
        *,
        admit: Callable[[int], int] | None = None,
        until_eof: bool = False,
        transform: Transform | None = None,
    ) -> int: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


class ConnectionFactory(Protocol):
    """Opens (lazily) a data connection to *endpoint*; *sessions* are the TLS sessions its
    host's connections share."""

    def __call__(
        self,
        endpoint: Endpoint,
        options: Options,
        ssl_context: ssl.SSLContext | None,
        sessions: TLSSessions | None = None,
    ) -> ConnectionLike: ...


def open_connection(
    endpoint: Endpoint,
    options: Options,
    ssl_context: ssl.SSLContext | None,
    sessions: TLSSessions | None = None,
) -> ConnectionLike:
    return Connection(
        endpoint,
        ssl_context=ssl_context,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        buffer_size=options.buffer_size,
        tls_sessions=sessions,
        # Proxies and the destination policy: every data connection, the first included.
        connector=Connector(
            proxies=options.proxies or ProxySettings(), policy=options.destinations
        ),
    )
