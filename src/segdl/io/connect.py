"""Opening a TCP connection the way networks need it: every address, happy eyeballs, proxies,
and the destination policy.  Blocking; runs in a worker thread and can be aborted from another.

:meth:`Connector.open` returns a connected socket (blocking mode, no timeout) and, for a plain
``http://`` URL through an HTTP proxy, the proxy the request must name in absolute form:

* **direct**: the name is resolved (``getaddrinfo``), each address is checked against the
  destination policy when there is one, and the allowed addresses are raced as RFC 8305 §5
  says: families interleaved starting with the resolver's first choice (§4), a new attempt
  every :data:`ATTEMPT_DELAY` while earlier ones are still pending, the next one at once when
  one fails; the first to connect wins and the others are closed.  A host whose IPv6 address
  swallows SYNs costs a quarter of a second, not the connect timeout.
* **HTTP proxy, https:// URL**: a ``CONNECT host:port`` tunnel (RFC 9110 §9.3.6), with
  ``Proxy-Authorization: Basic`` from the proxy URL's user and password (RFC 7617).
* **HTTP proxy, http:// URL**: a connection to the proxy; the caller sends the request in
  absolute form (RFC 9112 §3.2.2) with :func:`proxy_headers`.
* **SOCKS5** (RFC 1928, user/password RFC 1929) through ``socksio``'s sans-I/O protocol on our
  own socket: ``socks5://`` sends the address resolved here, ``socks5h://`` the name.

Through a proxy the destination is still checked: its name is resolved here and every address
judged (a name that does not resolve here is refused when internal addresses are; the proxy
might reach anything with it).  With ``socks5://`` the checked address is the one the proxy
connects to; an HTTP or ``socks5h`` proxy resolves the name again itself.

Failures are one line each (:mod:`segdl.errors`), naming a proxy as ``scheme://host:port``
and never with its credentials.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import ipaddress
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import h11
import socksio
from socksio.socks5 import SOCKS5UsernamePasswordReply

from ..core.destinations import AddressClass, DestinationPolicy
from ..core.proxyrules import ProxySettings, ProxyURL
from ..core.useragent import USER_AGENT
from ..errors import (
    DestinationRefused,
    DownloadError,
    NetworkError,
    ProxyAuthError,
    ProxyError,
    Timeout,
)

__all__ = [
    "ATTEMPT_DELAY",
    "AbortSignal",
    "Connector",
    "OpenedSocket",
    "check_destination",
    "interleave_families",
    "proxy_auth_error",
    "proxy_headers",
]

# RFC 8305 §5: "A simple implementation can have a fixed delay for how long to wait before
# starting the next connection attempt [...] recommended value for a default delay is 250 ms."
ATTEMPT_DELAY = 0.25
_HEAD_LIMIT = 64 * 1024

# (family, sockaddr) pairs, as getaddrinfo gives them.
Address = tuple[int, tuple[str, int] | tuple[str, int, int, int]]

#: The resolver; tests replace it to make a name resolve where they need.
getaddrinfo = socket.getaddrinfo


class _Aborted(Exception):
    pass


class AbortSignal:
    """Fails a connect in progress from another thread: wakes the wait for the race and shuts
    down the socket of a proxy handshake.  Once aborted, it stays aborted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._aborted = False
        self._sockets: set[socket.socket] = set()
        self._wake: tuple[socket.socket, socket.socket] | None = None

    @property
    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            if self._wake is not None:
                with contextlib.suppress(OSError):
                    self._wake[1].send(b"\0")

    def _watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self._aborted:
                raise _Aborted
            self._sockets.add(sock)

    def _unwatch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _wakeup_socket(self) -> socket.socket:
        with self._lock:
            if self._aborted:
                raise _Aborted
            if self._wake is None:
                self._wake = socket.socketpair()
                self._wake[0].setblocking(False)
            return self._wake[0]

    def close(self) -> None:
        with self._lock:
            wake, self._wake = self._wake, None
        if wake is not None:
            wake[0].close()
            wake[1].close()


@dataclass(frozen=True, slots=True)
class OpenedSocket:
    sock: socket.socket
    #: Set for a plain http:// request through an HTTP proxy: send the request in absolute
    #: form to this proxy, with :func:`proxy_headers`.
    forward_proxy: ProxyURL | None = None


def interleave_families(addresses: Sequence[Address]) -> list[Address]:
    """RFC 8305 §4: alternate address families, starting with the family of the first address
    (the resolver's RFC 6724 choice); within a family the resolver's order is kept."""
    if not addresses:
        return []
    first_family = addresses[0][0]
    first = [a for a in addresses if a[0] == first_family]
    other = [a for a in addresses if a[0] != first_family]
    result: list[Address] = []
    for index in range(max(len(first), len(other))):
        if index < len(first):
            result.append(first[index])
        if index < len(other):
            result.append(other[index])
    return result


def proxy_headers(proxy: ProxyURL) -> dict[str, str]:
    """The ``Proxy-Authorization`` a request through *proxy* carries (empty without user)."""
    if proxy.username is None:
        return {}
    # RFC 7617 §2: user-id ":" password, UTF-8 (§2.1).
    pair = f"{proxy.username}:{proxy.password or ''}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Connector:
    """How connections are opened: the proxy settings (already merged with the environment)
    and the destination policy (None: every destination allowed)."""

    proxies: ProxySettings = field(default_factory=ProxySettings)
    policy: DestinationPolicy | None = None

    def route(self, scheme: str, host: str) -> ProxyURL | None:
        return self.proxies.proxy_for(scheme, host)

    def open(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        timeout: float,
        signal: AbortSignal | None = None,
        url: str | None = None,
    ) -> OpenedSocket:
        """Connect to ``host:port`` for a *scheme* URL, directly or through its proxy.

        Raises :class:`~segdl.errors.Timeout` after *timeout* seconds in all (resolution,
        connects and proxy handshake), :class:`~segdl.errors.NetworkError` (or
        :class:`~segdl.errors.ProxyError`) when it fails or is aborted, and
        :class:`~segdl.errors.DestinationRefused` when the policy forbids the destination.
        """
        signal = signal or AbortSignal()
        deadline = time.monotonic() + timeout
        proxy = self.route(scheme, host)
        try:
            if proxy is None:
                if self.policy is not None:
                    _refuse_metadata_name(self.policy, host, url)
                addresses = _resolve(host, port, url=url)
                if self.policy is not None:
                    addresses = _allowed(self.policy, host, addresses, url=url)
                try:
                    sock = _race(addresses, deadline, signal)
                except TimeoutError:
                    raise Timeout(f"connect timeout to {_display(host, port)}", url=url) from None
                except OSError as exc:
                    raise NetworkError(
                        f"cannot connect to {_display(host, port)}: {_reason(exc)}", url=url
                    ) from exc
                return OpenedSocket(_finish(sock))
            return self._through(proxy, scheme, host, port, deadline, signal, url)
        except _Aborted:
            raise NetworkError("connection aborted", url=url) from None

    def _through(
        self,
        proxy: ProxyURL,
        scheme: str,
        host: str,
        port: int,
        deadline: float,
        signal: AbortSignal,
        url: str | None,
    ) -> OpenedSocket:
        targets: list[str] = [host]
        if self.policy is not None:
            checked = check_destination(self.policy, host, port, url=url)
            if proxy.scheme == "socks5" and checked:
                targets = checked
        elif proxy.scheme == "socks5" and not _is_ip(host):
            # socks5:// (not socks5h://): the name is resolved here, as curl does.
            targets = [str(sockaddr[0]) for _, sockaddr in _resolve(host, port, url=url)]
        if proxy.scheme == "http" and scheme == "http":
            return OpenedSocket(_finish(_open_proxy(proxy, deadline, signal, url)), proxy)
        last: DownloadError | None = None
        for target in targets:
            sock = _open_proxy(proxy, deadline, signal, url)
            try:
                signal._watch(sock)
                try:
                    if proxy.scheme == "http":
                        _http_connect(sock, proxy, target, port, deadline, url)
                    else:
                        _socks5_connect(sock, proxy, target, port, deadline, url)
                finally:
                    signal._unwatch(sock)
                if signal.aborted:
                    raise _Aborted
                return OpenedSocket(_finish(sock))
            except _SocksUnreachable as exc:
                sock.close()
                last = exc.error  # another address of the name may work
            except BaseException:
                sock.close()
                if signal.aborted:
                    raise _Aborted from None
                raise
        assert last is not None
        raise last


def check_destination(
    policy: DestinationPolicy, host: str, port: int, *, url: str | None = None
) -> list[str]:
    """Check a destination a proxy will connect to; return the allowed addresses found here.

    A name that does not resolve here is allowed only when internal addresses are (then only
    link-local and metadata addresses are refused, and a proxy is not asked for those by a
    name its own network alone knows)."""
    _refuse_metadata_name(policy, host, url)
    try:
        addresses = _resolve(host, port, url=url)
    except DownloadError:
        if policy.allow_internal and not _is_ip(host):
            return []
        raise DestinationRefused(
            f"refused to download from {host}: the name does not resolve here, so where it "
            "leads cannot be checked",
            url=url,
        ) from None
    return [str(sockaddr[0]) for _, sockaddr in _allowed(policy, host, addresses, url=url)]


def _refuse_metadata_name(policy: DestinationPolicy, host: str, url: str | None) -> None:
    # Before any lookup: outside its cloud such a name may not resolve at all.
    if policy.refuses_name(host):
        raise DestinationRefused(policy.explain(host, host, AddressClass.METADATA), url=url)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _resolve(host: str, port: int, *, url: str | None) -> list[Address]:
    try:
        infos = getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NetworkError(f"cannot resolve {host}: {exc.strerror or exc}", url=url) from exc
    except (UnicodeError, ValueError) as exc:
        raise NetworkError(f"cannot resolve {host}: invalid name", url=url) from exc
    found: list[Address] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address: Address = (family, sockaddr)  # type: ignore[assignment]
            if address not in found:
                found.append(address)
    if not found:
        raise NetworkError(f"cannot resolve {host}: no IPv4 or IPv6 address", url=url)
    return found


def _allowed(
    policy: DestinationPolicy, host: str, addresses: list[Address], *, url: str | None
) -> list[Address]:
    """The addresses the policy allows; refused when there is none."""
    allowed: list[Address] = []
    first_refusal: tuple[str, AddressClass] | None = None
    for address in addresses:
        ip = str(address[1][0])
        kind = policy.refusal(ip)
        if kind is None:
            allowed.append(address)
        elif first_refusal is None:
            first_refusal = (ip, kind)
    if not allowed:
        assert first_refusal is not None
        raise DestinationRefused(policy.explain(host, *first_refusal), url=url)
    return allowed


def _race(addresses: Sequence[Address], deadline: float, signal: AbortSignal) -> socket.socket:
    """Connect to the first of *addresses* that answers (RFC 8305 §5); OSError if none does,
    TimeoutError at the deadline, _Aborted when the signal fires."""
    queue = interleave_families(addresses)
    pending: dict[socket.socket, Address] = {}
    errors: list[OSError] = []
    selector = selectors.DefaultSelector()
    winner: socket.socket | None = None
    try:
        wake = signal._wakeup_socket()
        selector.register(wake, selectors.EVENT_READ)
        next_start = time.monotonic()
        while True:
            if signal.aborted:
                raise _Aborted
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError
            if queue and (not pending or now >= next_start):
                family, sockaddr = queue.pop(0)
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.setblocking(False)
                    code = sock.connect_ex(sockaddr)
                except OSError as exc:
                    sock.close()
                    errors.append(exc)
                    continue
                if code == 0:
                    winner = sock
                    return sock
                if code in (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN):
                    pending[sock] = (family, sockaddr)
                    selector.register(sock, selectors.EVENT_WRITE)
                    next_start = now + ATTEMPT_DELAY
                else:
                    sock.close()
                    errors.append(OSError(code, os.strerror(code)))
                continue
            if not pending:
                # Every address failed: the first error is the most telling (the preferred
                # family's, usually "connection refused").
                raise errors[0]
            wait = deadline - now
            if queue:
                wait = min(wait, next_start - now)
            for key, _events in selector.select(max(0.0, wait)):
                sock = key.fileobj  # type: ignore[assignment]
                if sock is wake:
                    continue
                selector.unregister(sock)
                del pending[sock]
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code == 0:
                    winner = sock
                    return sock
                sock.close()
                errors.append(OSError(code, os.strerror(code)))
                next_start = time.monotonic()  # a failure starts the next attempt at once
    finally:
        for sock in pending:
            if sock is not winner:
                sock.close()
        selector.close()
        signal.close()


def _finish(sock: socket.socket) -> socket.socket:
    """Back to blocking mode without a timeout: the caller sets the timeouts it needs."""
    sock.settimeout(None)
    return sock


def _open_proxy(
    proxy: ProxyURL, deadline: float, signal: AbortSignal, url: str | None
) -> socket.socket:
    """Connect to the proxy itself (every address, raced; the policy never applies to it:
    the operator chose it)."""
    try:
        addresses = _resolve(proxy.host, proxy.port, url=url)
    except NetworkError as exc:
        raise ProxyError(f"cannot resolve proxy {proxy.display}: {exc}", url=url) from exc
    try:
        return _race(addresses, deadline, signal)
    except TimeoutError:
        raise ProxyError(f"connect timeout to proxy {proxy.display}", url=url) from None
    except OSError as exc:
        raise ProxyError(
            f"cannot connect to proxy {proxy.display}: {_reason(exc)}", url=url
        ) from exc


def _remaining(sock: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)


def _http_connect(
    sock: socket.socket, proxy: ProxyURL, host: str, port: int, deadline: float, url: str | None
) -> None:
    """``CONNECT host:port`` through an HTTP proxy; returns once the tunnel is open."""
    authority = _display(host, port)
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_LIMIT)
    headers = [("Host", authority), ("User-Agent", USER_AGENT), *proxy_headers(proxy).items()]
    with _speaking_to(
        proxy,
        url,
        malformed=h11.ProtocolError,
        what="a malformed answer to CONNECT (is it an HTTP proxy?)",
        awaited="CONNECT ",
    ):
        _remaining(sock, deadline)
        data = conn.send(h11.Request(method="CONNECT", target=authority, headers=headers))
        sock.sendall((data or b"") + (conn.send(h11.EndOfMessage()) or b""))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                _remaining(sock, deadline)
                chunk = sock.recv(65536)
                if not chunk:
                    raise ProxyError(
                        f"proxy {proxy.display} closed the connection instead of answering "
                        f"CONNECT {authority}",
                        url=url,
                    )
                conn.receive_data(chunk)
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                break
            else:
                raise ProxyError(f"unexpected answer from proxy {proxy.display}", url=url)
    status = event.status_code
    if status == 407:
        raise proxy_auth_error(proxy, url)
    if not 200 <= status < 300:
        reason = event.reason.decode("latin-1", "replace")
        raise ProxyError(
            f"proxy {proxy.display} refused the tunnel to {authority}: "
            f"HTTP {status} {reason}".rstrip(),
            url=url,
        )
    if conn.trailing_data[0]:
        # The origin speaks after us (TLS ClientHello first): bytes now are not from it.
        raise ProxyError(f"proxy {proxy.display} sent data into a new tunnel", url=url)


def proxy_auth_error(proxy: ProxyURL, url: str | None) -> ProxyAuthError:
    """A 407 from *proxy*, in words: what is missing or wrong."""
    if proxy.has_credentials:
        text = f"proxy {proxy.display} rejected the user name and password of its URL"
    else:
        text = (
            f"proxy {proxy.display} requires authentication: give it as "
            f"{proxy.scheme}://USER:PASSWORD@{proxy.display.split('://', 1)[1]}"
        )
    return ProxyAuthError(f"{text} (HTTP 407)", url=url, status=407)


_SOCKS_REPLIES = {
    socksio.SOCKS5ReplyCode.GENERAL_SERVER_FAILURE: "general SOCKS server failure",
    socksio.SOCKS5ReplyCode.CONNECTION_NOT_ALLOWED_BY_RULESET: "connection not allowed by ruleset",
    socksio.SOCKS5ReplyCode.NETWORK_UNREACHABLE: "network unreachable",
    socksio.SOCKS5ReplyCode.HOST_UNREACHABLE: "host unreachable",
    socksio.SOCKS5ReplyCode.CONNECTION_REFUSED: "connection refused",
    socksio.SOCKS5ReplyCode.TTL_EXPIRED: "TTL expired",
    socksio.SOCKS5ReplyCode.COMMAND_NOT_SUPPORTED: "command not supported",
    socksio.SOCKS5ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
}
# Failures after which another address of the same name may still work.
_SOCKS_RETRY_ANOTHER = frozenset(
    {
        socksio.SOCKS5ReplyCode.NETWORK_UNREACHABLE,
        socksio.SOCKS5ReplyCode.HOST_UNREACHABLE,
        socksio.SOCKS5ReplyCode.CONNECTION_REFUSED,
        socksio.SOCKS5ReplyCode.TTL_EXPIRED,
    }
)


class _SocksUnreachable(Exception):
    def __init__(self, error: ProxyError) -> None:
        super().__init__(str(error))
        self.error = error


def _recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        _remaining(sock, deadline)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "closed by the proxy")
        data += chunk
    return data


def _socks5_connect(
    sock: socket.socket, proxy: ProxyURL, host: str, port: int, deadline: float, url: str | None
) -> None:
    """RFC 1928 CONNECT (and RFC 1929 user/password) on *sock*, already connected to *proxy*."""
    authority = _display(host, port)
    user = (proxy.username or "").encode()
    password = (proxy.password or "").encode()
    if len(user) > 255 or len(password) > 255 or len(host.encode("idna")) > 255:
        raise ProxyError(f"proxy {proxy.display}: name or credentials too long for SOCKS5")
    conn = socksio.SOCKS5Connection()
    methods = [socksio.SOCKS5AuthMethod.NO_AUTH_REQUIRED]
    if proxy.has_credentials:
        methods.append(socksio.SOCKS5AuthMethod.USERNAME_PASSWORD)
    with _speaking_to(
        proxy,
        url,
        malformed=socksio.ProtocolError,
        what="an invalid SOCKS5 answer (is it a SOCKS5 proxy?)",
    ):
        conn.send(socksio.SOCKS5AuthMethodsRequest(methods))
        _remaining(sock, deadline)
        sock.sendall(conn.data_to_send())
        chosen = conn.receive_data(_recv_exactly(sock, 2, deadline))
        assert isinstance(chosen, socksio.SOCKS5AuthReply)
        if chosen.method == socksio.SOCKS5AuthMethod.NO_ACCEPTABLE_METHODS:
            text = (
                "accepted none of the authentication methods offered"
                if proxy.has_credentials
                else "requires a user name and password (give them in the proxy URL)"
            )
            raise ProxyAuthError(f"proxy {proxy.display} {text}", url=url, status=407)
        if chosen.method == socksio.SOCKS5AuthMethod.USERNAME_PASSWORD:
            if not proxy.has_credentials:
                raise ProxyAuthError(
                    f"proxy {proxy.display} asked for a password it was not offered", url=url
                )
            conn.send(socksio.SOCKS5UsernamePasswordRequest(user, password))
            _remaining(sock, deadline)
            sock.sendall(conn.data_to_send())
            verdict = conn.receive_data(_recv_exactly(sock, 2, deadline))
            assert isinstance(verdict, SOCKS5UsernamePasswordReply)
            if not verdict.success:
                raise ProxyAuthError(
                    f"proxy {proxy.display} rejected the user name and password of its URL",
                    url=url,
                    status=407,
                )
        elif chosen.method != socksio.SOCKS5AuthMethod.NO_AUTH_REQUIRED:
            raise ProxyError(f"proxy {proxy.display} chose an unsupported SOCKS method", url=url)
        conn.send(
            socksio.SOCKS5CommandRequest.from_address(socksio.SOCKS5Command.CONNECT, (host, port))
        )
        _remaining(sock, deadline)
        sock.sendall(conn.data_to_send())
        head = _recv_exactly(sock, 4, deadline)
        if head[0] != 5:
            raise socksio.ProtocolError("not a SOCKS5 reply")
        atype = head[3]
        if atype == 1:
            rest = _recv_exactly(sock, 4 + 2, deadline)
        elif atype == 4:
            rest = _recv_exactly(sock, 16 + 2, deadline)
        elif atype == 3:
            length = _recv_exactly(sock, 1, deadline)
            rest = length + _recv_exactly(sock, length[0] + 2, deadline)
        elif head[1] != 0:
            rest = b""  # a failure reply some servers cut short
        else:
            raise socksio.ProtocolError("unknown address type")
        reply = conn.receive_data(head + rest) if rest else None
    code = reply.reply_code if isinstance(reply, socksio.SOCKS5Reply) else None
    if code == socksio.SOCKS5ReplyCode.SUCCEEDED:
        return
    text = _SOCKS_REPLIES.get(code, "failure") if code is not None else f"failure {head[1]}"
    error = ProxyError(f"proxy {proxy.display} could not connect to {authority}: {text}", url=url)
    if code in _SOCKS_RETRY_ANOTHER:
        raise _SocksUnreachable(error)
    raise error


@contextlib.contextmanager
def _speaking_to(
    proxy: ProxyURL,
    url: str | None,
    *,
    malformed: type[Exception],
    what: str,
    awaited: str = "",
) -> Iterator[None]:
    """One ProxyError line for whatever goes wrong in a handshake with *proxy*: an answer
    its protocol library cannot read (*malformed*, described as *what*), silence past the
    deadline, or the socket failing.  Our own ProxyErrors pass through."""
    try:
        yield
    except malformed as exc:
        raise ProxyError(f"proxy {proxy.display} sent {what}", url=url) from exc
    except TimeoutError:
        raise ProxyError(
            f"proxy {proxy.display} did not answer {awaited}in time", url=url
        ) from None
    except OSError as exc:
        raise ProxyError(
            f"connection to proxy {proxy.display} failed: {_reason(exc)}", url=url
        ) from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
