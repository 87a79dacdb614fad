"""The control plane's HTTP client: the probe's and the site APIs' requests on httpx, with the
same proxies, happy eyeballs and destination policy as the data connections.

:func:`open_control_client` builds the ``httpx.AsyncClient``.  Its transport routes each
request by the proxy rules (:mod:`segdl.core.proxyrules`) to a pool of connections, and every
connection is opened by the data plane's :class:`~segdl.io.connect.Connector` (in a worker
thread, aborted when trio cancels) through an httpcore network backend:

* direct, a ``CONNECT`` tunnel or SOCKS5: the connector resolves, checks the policy, races the
  addresses and sets up the tunnel; httpcore then speaks HTTP (and TLS) on that socket as on
  any other;
* a plain ``http://`` URL through an HTTP proxy: httpcore's own forwarding (absolute-form
  requests with ``Proxy-Authorization``); its connection to the proxy is the connector's, and
  the destination is checked before the request is sent.

A redirect the probe or a resolver follows is a new request through the same transport, so
every hop is routed and checked.  Connector failures arrive as segdl's own errors
(:class:`~segdl.errors.ProxyError`, :class:`~segdl.errors.DestinationRefused`…); httpcore's
exceptions become httpx's, which :func:`segdl.io.probe.httpx_errors` translates.
"""

from __future__ import annotations

import math
import select
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import httpcore
import httpx
import trio

from ..core.destinations import DestinationPolicy
from ..core.proxyrules import ProxySettings, ProxyURL
from ..core.useragent import USER_AGENT
from ..errors import DestinationRefused, DownloadError, NetworkError, ProxyError, Timeout
from .connect import AbortSignal, Connector, OpenedSocket, check_destination, proxy_auth_error
from .connect import proxy_headers as proxy_header_map
from .tls import client_context

__all__ = ["RoutingTransport", "open_control_client"]

DEFAULT_CONNECT_TIMEOUT = 30.0


def open_control_client(
    *,
    proxies: ProxySettings,
    destinations: DestinationPolicy | None = None,
    ca_certificate: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = 60.0,
) -> httpx.AsyncClient:
    """The control plane's client (use it as ``async with``).

    *proxies* are the merged settings (``Options.proxies``), *destinations* the policy
    (``Options.destinations``; None allows every destination).  TLS trusts the system store,
    ``SSL_CERT_FILE`` and *ca_certificate*; every request says ``User-Agent: segdl/…``.
    The environment is not read here (``trust_env=False``): *proxies* already holds it.
    """
    transport = RoutingTransport(
        Connector(proxies=proxies, policy=destinations),
        ssl_context=client_context(ca_certificate),
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
    )


_Pool = httpcore.AsyncConnectionPool  # AsyncHTTPProxy is one too


class RoutingTransport(httpx.AsyncBaseTransport):
    """An httpx transport that picks, per request, a direct, tunnelled or forwarding pool."""

    def __init__(self, connector: Connector, *, ssl_context: ssl.SSLContext) -> None:
        self._connector = connector
        self._ssl_context = ssl_context
        self._pools: dict[tuple[str, ProxyURL | None], _Pool] = {}

    def _pool(self, scheme: str, proxy: ProxyURL | None) -> tuple[_Pool, bool]:
        forward = proxy is not None and proxy.scheme == "http" and scheme == "http"
        key = (scheme, proxy)
        pool = self._pools.get(key)
        if pool is None:
            if forward:
                assert proxy is not None
                pool = httpcore.AsyncHTTPProxy(
                    proxy_url=proxy.display,
                    proxy_headers=list(proxy_header_map(proxy).items()),
                    ssl_context=self._ssl_context,
                    # To the proxy itself: direct, no policy (the operator chose it).
                    network_backend=ConnectorBackend(Connector(), "http"),
                )
            else:
                pool = httpcore.AsyncConnectionPool(
                    ssl_context=self._ssl_context,
                    network_backend=ConnectorBackend(self._connector, scheme),
                )
            self._pools[key] = pool
        return pool, forward

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        host = url.host
        proxy = self._connector.route(scheme, host)
        pool, forward = self._pool(scheme, proxy)
        policy = self._connector.policy
        if forward and policy is not None:
            port = url.port or (443 if scheme == "https" else 80)
            await trio.to_thread.run_sync(
                partial(check_destination, policy, host, port, url=str(url)),
                abandon_on_cancel=True,
            )
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_exceptions(request):
            response = await pool.handle_async_request(core_request)
        if forward and response.status == 407:
            await response.aclose()
            assert proxy is not None
            raise proxy_auth_error(proxy, str(url))
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any, request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_exceptions(self._request):
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            with _httpx_exceptions(self._request):
                await self._stream.aclose()


# httpcore's exceptions to httpx's, most specific first (httpx's own transport does the same).
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _httpx_exceptions(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except DownloadError:
        raise
    except Exception as exc:
        for core_type, httpx_type in _EXCEPTIONS:
            if isinstance(exc, core_type):
                raise httpx_type(str(exc) or type(exc).__name__, request=request) from exc
        raise


class ConnectorBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend whose connections the :class:`Connector` opens (for URLs
    of *scheme*: it decides the proxy), in a worker thread that trio's cancellation aborts."""

    def __init__(self, connector: Connector, scheme: str) -> None:
        self._connector = connector
        self._scheme = scheme

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        signal = AbortSignal()
        fn = partial(
            self._connector.open,
            self._scheme,
            host,
            port,
            timeout=timeout or DEFAULT_CONNECT_TIMEOUT,
            signal=signal,
        )
        try:
            opened = await _open_in_thread(fn, signal)
        except (ProxyError, DestinationRefused):
            raise  # already one line naming the proxy or the refused destination
        except Timeout as exc:
            # Plain connect failures take httpx's path: httpx_errors words them for the
            # control plane ("cannot reach HOST: …", "timed out talking to HOST").
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except NetworkError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock = trio.socket.from_stdlib_socket(opened.sock)
        return TrioSocketStream(trio.SocketStream(sock), sock)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("unix sockets are not used by segdl")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


async def _open_in_thread(fn: partial[OpenedSocket], signal: AbortSignal) -> OpenedSocket:
    """Run the blocking connect in a thread; cancellation aborts it (the thread returns at once)
    and a socket that arrives anyway is closed."""
    finished = False
    opened: OpenedSocket | None = None
    error: DownloadError | None = None

    async def abort_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            if not finished:
                signal.abort()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(abort_when_cancelled)
            try:
                opened = await trio.to_thread.run_sync(fn)
            except DownloadError as exc:
                # Carried out by hand so it is not wrapped in an exception group.
                error = exc
            finally:
                finished = True
                nursery.cancel_scope.cancel()
    except BaseException:
        if opened is not None:
            opened.sock.close()
        raise
    if error is not None:
        raise error
    assert opened is not None
    return opened


class TrioSocketStream(httpcore.AsyncNetworkStream):
    """httpcore's view of a trio stream over a socket the connector opened."""

    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType) -> None:
        self._stream = stream
        self._sock = sock

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        with _stream_errors(httpcore.ReadTimeout, httpcore.ReadError):
            with trio.fail_after(_seconds(timeout)):
                return bytes(await self._stream.receive_some(max_bytes))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        with _stream_errors(httpcore.WriteTimeout, httpcore.WriteError):
            with trio.fail_after(_seconds(timeout)):
                await self._stream.send_all(buffer)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        tls = trio.SSLStream(
            self._stream,
            ssl_context,
            server_hostname=server_hostname,
            https_compatible=True,
        )
        try:
            with _stream_errors(httpcore.ConnectTimeout, httpcore.ConnectError):
                with trio.fail_after(_seconds(timeout)):
                    await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(self._stream)
            raise
        return TrioSocketStream(tls, self._sock)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            # httpcore asks it for the ALPN protocol; trio.SSLStream forwards that call.
            return self._stream if isinstance(self._stream, trio.SSLStream) else None
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":
            # An idle pooled connection that is readable was closed (or spoken to) by the
            # server: httpcore then opens a new one.
            readable, _, _ = select.select([self._sock.fileno()], [], [], 0)
            return bool(readable)
        return None


def _seconds(timeout: float | None) -> float:
    return math.inf if timeout is None else timeout


@contextmanager
def _stream_errors(
    timeout_error: type[httpcore.TimeoutException], other_error: type[httpcore.NetworkError]
) -> Iterator[None]:
    try:
        yield
    except trio.TooSlowError as exc:
        raise timeout_error(str(exc) or "timed out") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise other_error(str(exc.__cause__ or exc) or type(exc).__name__) from exc
