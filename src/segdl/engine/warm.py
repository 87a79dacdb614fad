"""A download begun before its target is opened: the first response, and connections opened
ahead, for the native engine to adopt.

Today's order — probe, open the target, then connect — pays a connection and a round trip
for the probe and another handshake for every data connection before the file's bytes move.
Here, from the start:

* the first data connection sends the download's first request, which is also its probe
  (:mod:`segdl.io.firstrequest`): its head gives the size, the validators and the name, and
  its body waits in the socket until the engine writes it;
* the other connections open (TCP and TLS) in parallel, so they ask for their ranges the
  moment the size is known.  They share a TLS session cache with the first one: connections
  opened later (after a steal, a lost race, a server's close) resume the session.

A busy answer (429, 5xx) to the first request is retried as the probe's is; the
connections opened ahead follow the first request to the host it ends on (a redirect to
another origin re-opens them there).
"""

from __future__ import annotations

import itertools
import random
import ssl
import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import TypeVar

import trio

from ..core.urls import HttpURL
from ..errors import HTTPStatusError
from ..io.dataplane import Endpoint, TLSSessions
from ..io.firstrequest import FirstResponse, send_first_request
from ..io.remote import same_origin
from ..io.tls import client_context
from .connections import ConnectionFactory, ConnectionLike
from .options import Options

__all__ = ["Preconnects", "WarmStart", "start_warm"]

T = TypeVar("T")


class _Slot:
    """One connection being opened ahead, in a thread of its own."""

    def __init__(self, conn: ConnectionLike) -> None:
        self.conn = conn
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            self.conn.connect()
        except Exception:
            # Left unconnected: its first request connects again and reports the error
            # through the engine's retries, like any connection's.
            pass
        finally:
            self.ready.set()


class Preconnects:
    """Connections to one endpoint, opened (TCP, TLS) before anyone knows what they fetch."""

    def __init__(
        self,
        endpoint: Endpoint,
        count: int,
        options: Options,
        *,
        connect: ConnectionFactory,
        ssl_context: ssl.SSLContext | None,
        sessions: TLSSessions | None,
    ) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._slots = [
            _Slot(connect(endpoint, options, ssl_context, sessions)) for _ in range(count)
        ]
        self._closed = False
        for slot in self._slots:
            threading.Thread(target=slot.run, name="segdl-preconnect", daemon=True).start()

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)

    async def take(self) -> ConnectionLike | None:
        """One of the connections, once its handshake is over (None: none left)."""
        with self._lock:
            if self._closed or not self._slots:
                return None
            slot = self._slots.pop(0)
        try:
            await trio.to_thread.run_sync(slot.ready.wait, abandon_on_cancel=True)
        except BaseException:
            slot.conn.abort()
            slot.conn.close()
            raise
        return slot.conn

    def close(self) -> None:
        """Abort and close the connections nobody took (a connect in progress fails)."""
        with self._lock:
            self._closed = True
            slots, self._slots = self._slots, []
        for slot in slots:
            slot.conn.abort()
            if slot.ready.is_set():
                slot.conn.close()
            # Otherwise its thread sees the abort when the connect returns, and closes it.


class WarmStart:
    """What :func:`start_warm` began: the probe, the first response's unread body, and the
    connections opened ahead.  The engine takes them; :meth:`close` closes what is left."""

    def __init__(
        self,
        first: FirstResponse,
        conn: ConnectionLike,
        preconnects: Preconnects | None,
        sessions: TLSSessions | None,
    ) -> None:
        self.probe = first.probe
        self._first: FirstResponse | None = first
        self._first_conn: ConnectionLike | None = conn
        self.preconnects = preconnects
        self.sessions = sessions  # the TLS sessions of the probe's host

    def take_first(self) -> tuple[FirstResponse, ConnectionLike] | None:
        """The first response and its connection (once; None after)."""
        first, conn = self._first, self._first_conn
        self._first = self._first_conn = None
        if first is None or conn is None:
            return None
        return first, conn

    async def take_connection(self) -> ConnectionLike | None:
        if self.preconnects is None:
            return None
        return await self.preconnects.take()

    def close(self) -> None:
        taken = self.take_first()
        if taken is not None:
            taken[1].close()
        if self.preconnects is not None:
            self.preconnects.close()


async def start_warm(
    url: HttpURL,
    headers: Mapping[str, str],
    options: Options,
    *,
    connect: ConnectionFactory,
    first: int,
    last: int,
    ahead: int,
) -> WarmStart:
    """Send a download's first request (bytes ``first..last`` of *url*) while *ahead* more
    connections open to its host.

    Raises:
        DownloadError: as the probe raises it (a busy answer is retried first).
        NotForTheDataPlane: a URL the data plane cannot send (probe it with httpx).
    """
    sessions: dict[tuple[str, str, int], TLSSessions] = {}

    def tls_for(endpoint: Endpoint) -> tuple[ssl.SSLContext | None, TLSSessions | None]:
        if endpoint.scheme != "https":
            return None, None
        key = (endpoint.scheme, endpoint.host, endpoint.port)
        return client_context(options.ca_certificate), sessions.setdefault(key, TLSSessions())

    def open_ahead(endpoint: Endpoint) -> Preconnects | None:
        if ahead <= 0:
            return None
        context, cache = tls_for(endpoint)
        return Preconnects(
            endpoint, ahead, options, connect=connect, ssl_context=context, sessions=cache
        )

    def open_connection(endpoint: Endpoint) -> ConnectionLike:
        context, cache = tls_for(endpoint)
        return connect(endpoint, options, context, cache)

    preconnects = open_ahead(Endpoint.from_url(url))
    policy = options.retry
    try:
        for attempt in itertools.count(1):
            hops: list[ConnectionLike] = []
            ask = partial(
                send_first_request,
                url,
                headers,
                first=first,
                last=last,
                open_connection=open_connection,
                on_hop=hops.append,
            )
            try:
                response, conn = await _abortable(ask, hops)
                break
            except HTTPStatusError as exc:
                # Busy or failing for a moment (429, 5xx): wait as the data connections do.
                busy = exc.status >= 500 or exc.status == 429
                if not busy or attempt >= policy.max_tries:
                    raise
                await trio.sleep(
                    policy.delay(attempt, retry_after=exc.retry_after, rand=random.random())
                )
        final = Endpoint.from_url(response.probe.url)
        if preconnects is not None and not same_origin(preconnects.endpoint.url, final.url):
            # Redirected to another host: the connections opened ahead are of no use.
            preconnects.close()
            preconnects = open_ahead(final)
    except BaseException:
        if preconnects is not None:
            preconnects.close()
        raise
    return WarmStart(response, conn, preconnects, tls_for(final)[1])


async def _abortable(fn: Callable[[], T], conns: list[ConnectionLike]) -> T:
    """Run a blocking call in a thread; cancellation aborts the connections in *conns*."""
    done = False
    result: list[T] = []
    error: list[BaseException] = []

    async def abort_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            if not done:
                for conn in list(conns):
                    conn.abort()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(abort_when_cancelled)
        try:
            result.append(await trio.to_thread.run_sync(fn))
        except Exception as exc:  # carried out of the nursery by hand: no exception group
            error.append(exc)
        finally:
            done = True
            nursery.cancel_scope.cancel()
    if error:
        raise error[0]
    return result[0]
