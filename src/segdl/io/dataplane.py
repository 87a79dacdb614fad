"""The data plane: one HTTP/1.1 connection fetching byte ranges straight into a file.

Why blocking sockets in worker threads, not trio streams or httpx: measured on the target
machine (DESIGN.md "The data plane must be fast"), httpx streaming on trio runs at a quarter of
the wire speed and trio's SSLStream at a third; the cost is Python work per chunk.  Here the
response head is parsed by h11, and the body goes socket → one reused buffer → ``os.pwrite``
with no Python object per chunk but the loop counter: ``recv_into`` a memoryview slice (with
``MSG_WAITALL`` on plain sockets, so one syscall fills the whole buffer) and one large
positional write per buffer.

Before a chunk is written, ``admit`` (when given) says how much of it may be: in the
endgame two connections may fetch the same bytes, and only the first to deliver writes them
(:mod:`segdl.core.pieces`).  So a chunk is received whole first — into the buffer, or into a
pipe on the splice path — and only then written.

Connections to one host share their TLS session (:class:`TLSSessions`): a connection opened
later resumes it, which spares the certificate verification (and, with TLS 1.2, a round trip).

Everything here runs in a worker thread and blocks.  :meth:`Connection.abort` may be called
from any thread: it shuts the socket down, which wakes a blocked ``recv``; that is how trio
cancellation reaches a connection.

Idle timeouts on plain sockets use ``SO_RCVTIMEO`` rather than Python's socket timeout,
because a Python timeout puts the socket in non-blocking mode, which defeats
``MSG_WAITALL``.  TLS sockets use Python's timeout (see :meth:`Connection._connect`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import h11

from ..core.headers import (
    HeaderError,
    format_range,
    parse_content_range,
    parse_retry_after,
)
from ..core.proxyrules import ProxyURL
from ..core.responses import ResponseHead
from ..core.urls import HttpURL
from ..core.useragent import USER_AGENT
from ..errors import (
    BadResponse,
    DiskError,
    DiskFull,
    DownloadError,
    NetworkError,
    Timeout,
    status_error,
)
from .connect import AbortSignal, Connector, proxy_auth_error, proxy_headers

__all__ = ["USER_AGENT", "Connection", "Endpoint", "TLSSessions"]

# One splice moves at most a pipe's capacity; 1 MiB is Linux's default pipe-max-size.
PIPE_SIZE = 1024 * 1024
# A chunk slower than this halves the next one, down to MIN_CHUNK.
SLOW_CHUNK_SECONDS = 0.25
MIN_CHUNK = 64 * 1024
_HEAD_LIMIT = 64 * 1024
# An error body is read when it is at most this long (to tell an expired link from a refusal).
ERROR_BODY_LIMIT = 4096


# Rewrites a chunk in place before it is written; told the chunk's offset in the file.
Transform = Callable[[memoryview, int], None]


class TLSSessions:
    """The latest resumable TLS session of one host, shared by a download's connections."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: ssl.SSLSession | None = None

    def get(self) -> ssl.SSLSession | None:
        with self._lock:
            return self._session

    def keep(self, sock: ssl.SSLSocket) -> None:
        # TLS 1.3 tickets arrive after the handshake: a session is worth keeping once it
        # has one (it is read with the first response).
        session = sock.session
        if session is not None and session.has_ticket:
            with self._lock:
                self._session = session


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a URL's bytes come from: scheme, host, port and request target."""

    url: HttpURL
    scheme: str
    host: str
    port: int
    target: str

    @classmethod
    def from_url(cls, url: HttpURL) -> Endpoint:
        return cls(url, url.scheme, url.host, url.port, url.target)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class Connection:
    """One keep-alive HTTP/1.1 connection to an endpoint; not shared between threads,
    except for :meth:`abort`."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        read_timeout: float,
        buffer_size: int = 1024 * 1024,
        connector: Connector | None = None,
        tls_sessions: TLSSessions | None = None,
    ) -> None:
        self.endpoint = endpoint
        # Proxies and the destination policy (io/connect.py); by default a direct connection.
        self._connector = connector or Connector()
        self._connecting = AbortSignal()
        # Set when plain HTTP goes through an HTTP proxy: requests in absolute form to it.
        self._forward_proxy: ProxyURL | None = None
        self._tls_sessions = tls_sessions
        self._ssl_context = ssl_context
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._sock: socket.socket | None = None
        self._aborted = threading.Event()
        self._lock = threading.Lock()
        # Allocated with the first body: connections opened ahead may never carry one.
        self._buffer_size = buffer_size
        self._buffer: memoryview | None = None
        # The chunk size in use: starts small and doubles while chunks come quickly, so a
        # slow link reports its first bytes (progress, mirror speed) within a fraction of a
        # second; kept across the requests of a keep-alive connection.
        self._chunk = min(MIN_CHUNK, buffer_size)
        # Body bytes that arrived with the response head, not yet consumed.
        self._pending = b""
        self._body_left: int | None = None
        self.reusable = False
        self.requests = 0
        self._head: ResponseHead | None = None
        self._pipe: tuple[int, int] | None = None
        self._pipe_capacity = 0
        self._can_splice = hasattr(os, "splice")
        self._h11: h11.Connection | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        ep = self.endpoint
        opened = self._connector.open(
            ep.scheme,
            ep.host,
            ep.port,
            timeout=self._connect_timeout,
            signal=self._connecting,
            url=ep.url,
        )
        raw = opened.sock
        self._forward_proxy = opened.forward_proxy
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Large receive buffers let the kernel keep the window open while Python writes.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock: socket.socket = raw
            if ep.scheme == "https":
                assert self._ssl_context is not None
                raw.settimeout(self._connect_timeout)
                session = self._tls_sessions.get() if self._tls_sessions is not None else None
                sock = self._ssl_context.wrap_socket(raw, server_hostname=ep.host, session=session)
            if isinstance(sock, ssl.SSLSocket):
                # The ssl module retries SSL_read by itself on a blocking socket, which
                # swallows SO_RCVTIMEO: TLS needs Python's own timeout (poll before read).
                sock.settimeout(self._read_timeout)
            else:
                sock.settimeout(None)
                _set_recv_timeout(sock, self._read_timeout)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise NetworkError(
                f"cannot reach {ep.host_header}: TLS certificate not trusted "
                f"({exc.verify_message}); use --ca-certificate or SSL_CERT_FILE",
                url=ep.url,
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise NetworkError(
                f"TLS handshake with {ep.host_header} failed: {_os_reason(exc)}", url=ep.url
            ) from exc
        with self._lock:
            if self._aborted.is_set():
                sock.close()
                raise NetworkError("connection aborted", url=ep.url)
            self._sock = sock
        return sock

    def connect(self) -> None:
        """Open the connection now (TCP, and TLS), before its first request is known."""
        if self._sock is None:
            self._connect()
            # A connection opened ahead is kept like one kept alive: if the server closed it
            # in the meantime, the request is retried once on a fresh one.
            self.reusable = True

    def abort(self) -> None:
        """Wake and fail whatever the owning thread is blocked on.  Thread-safe."""
        # A connect in progress (happy eyeballs, a proxy handshake) fails at once too.
        self._connecting.abort()
        with self._lock:
            self._aborted.set()
            sock = self._sock
            if sock is not None:
                # Plain socket shutdown, bypassing the TLS layer, which is not
                # thread-safe; the owner's blocked recv returns at once.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    @property
    def session_reused(self) -> bool:
        """Whether this connection's TLS handshake resumed an earlier session."""
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and bool(sock.session_reused)

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        self.reusable = False
        self._close_pipe()
        if sock is not None:
            sock.close()

    # -- requests ----------------------------------------------------------------------

    def request(
        self,
        *,
        headers: Mapping[str, str],
        first: int | None = None,
        last: int | None = None,
        method: str = "GET",
        any_status: bool = False,
    ) -> ResponseHead:
        """Send a request (with ``Range`` when *first* is given) and read the response head.

        An error status raises the matching :class:`HTTPStatusError`, a redirect
        :class:`BadResponse`, unless *any_status* (a first request, which learns what the URL
        is from its answer: the caller checks the status).  A connection kept from an earlier
        request that turns out to be closed by the server is reopened once.
        """
        if first is not None:
            rng = format_range(first, last) if last is not None else f"bytes={first}-"
        else:
            rng = None
        for attempt in (0, 1):
            if self._aborted.is_set():
                # Aborted (cancelled, or its range went to another connection): what looked
                # like a server's close is ours; never reconnect.
                raise NetworkError("connection aborted", url=self.endpoint.url)
            reused = self._sock is not None and self.reusable
            if not reused:
                self.close()
                self._connect()
            try:
                return self._exchange(headers, rng, method, reused=reused, any_status=any_status)
            except _StaleConnection:
                self.close()
                if attempt or not reused:
                    raise NetworkError(
                        f"{self.endpoint.host_header} closed the connection", url=self.endpoint.url
                    ) from None
        raise AssertionError("unreachable")

    def _exchange(
        self,
        headers: Mapping[str, str],
        rng: str | None,
        method: str,
        *,
        reused: bool,
        any_status: bool = False,
    ) -> ResponseHead:
        sock = self._sock
        assert sock is not None
        ep = self.endpoint
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_LIMIT)
        fields = [
            ("Host", ep.host_header),
            ("User-Agent", USER_AGENT),
            ("Accept-Encoding", "identity"),
        ]
        if rng is not None:
            fields.append(("Range", rng))
        fields.extend((k, v) for k, v in headers.items() if k.lower() not in ("host", "range"))
        target = ep.target
        if self._forward_proxy is not None:
            # RFC 9112 §3.2.2: a request to a proxy names the whole URL (without userinfo).
            target = f"{ep.scheme}://{ep.host_header}{ep.target}"
            fields.extend(proxy_headers(self._forward_proxy).items())
        data = conn.send(h11.Request(method=method, target=target, headers=fields))
        assert data is not None
        self.reusable = False
        self._pending = b""
        self._body_left = None
        self.requests += 1
        received = False
        try:
            sock.sendall(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = sock.recv(65536)
                    if not chunk and not received and reused:
                        # The server closed this kept-alive connection between requests.
                        raise _StaleConnection
                    received = received or bool(chunk)
                    conn.receive_data(chunk)
                    continue
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    break
                raise BadResponse(f"unexpected HTTP event from {ep.host_header}", url=ep.url)
        except h11.RemoteProtocolError as exc:
            raise BadResponse(
                f"malformed HTTP response from {ep.host_header}: {_brief(exc)}", url=ep.url
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            if reused and not received and isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                raise _StaleConnection from exc
            raise self._network_error(exc) from exc

        head = self._parse_head(event)
        self._pending = conn.trailing_data[0]
        if head.status == 407 and self._forward_proxy is not None:
            raise proxy_auth_error(self._forward_proxy, ep.url)
        if self._tls_sessions is not None and isinstance(sock, ssl.SSLSocket):
            self._tls_sessions.keep(sock)
        if any_status and head.status >= 300:
            return head  # its body is never read: the connection is not reused
        if head.status >= 400:
            raise status_error(
                head.status,
                head.reason,
                url=ep.url,
                retry_after=_retry_after(head.headers.get("retry-after")),
                body=self._error_body(head) if head.status in (400, 401, 403) else "",
            )
        if head.status >= 300:
            raise BadResponse(
                f"unexpected redirect ({head.status}) from {ep.host_header} on a data connection",
                url=ep.url,
            )
        self._body_left = head.content_length
        self._head = head
        self._h11 = conn
        return head

    def _error_body(self, head: ResponseHead) -> str:
        """The start of a short error body (an expired signature says so only there, e.g.
        S3's ``<Message>Request has expired</Message>``); "" when there is none to read."""
        length = head.content_length
        if length is None or length > ERROR_BODY_LIMIT or head.chunked:
            return ""
        data = bytearray(self._pending[:length])
        sock = self._sock
        try:
            while sock is not None and len(data) < length:
                chunk = sock.recv(length - len(data))
                if not chunk:
                    break
                data += chunk
        except (OSError, ssl.SSLError):
            pass  # the status says enough; the body was only a hint
        self.reusable = False
        return data.decode("utf-8", "replace")

    def _parse_head(self, event: h11.Response) -> ResponseHead:
        headers: dict[str, str] = {}
        lengths: list[str] = []
        for name, value in event.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            if key == "content-length":
                lengths.append(text)
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        content_range = None
        if "content-range" in headers and event.status_code == 206:
            try:
                content_range = parse_content_range(headers["content-range"])
            except HeaderError as exc:
                raise BadResponse(
                    f"invalid Content-Range from {self.endpoint.host_header}: {exc}",
                    url=self.endpoint.url,
                ) from exc
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = None if chunked or not lengths else int(lengths[0])
        keep_alive = (
            "close" not in headers.get("connection", "").lower() and event.http_version == b"1.1"
        )
        return ResponseHead(
            status=event.status_code,
            reason=event.reason.decode("latin-1", "replace"),
            headers=headers,
            content_length=length,
            content_range=content_range,
            chunked=chunked,
            keep_alive=keep_alive,
        )

    # -- bodies ------------------------------------------------------------------------

    def stream_into_file(
        self,
        fd: int,
        offset: int,
        commit: Callable[[int], int],
        *,
        admit: Callable[[int], int] | None = None,
        until_eof: bool = False,
        transform: Transform | None = None,
    ) -> int:
        """Copy the body into *fd* at *offset*, chunk by chunk, as *commit* allows.

        ``commit(n)`` is told each chunk's size once the chunk is written and returns how many
        bytes to read next (``commit(0)`` is called first); 0 means stop.  ``admit(n)``, if
        given, is asked before a received chunk is written and says how many of its bytes may
        be (fewer: the rest is dropped and the body abandoned).  When the range *commit*
        allows ends before the body does, the connection is not reusable.  With *until_eof*
        (a response without length) the body ends when the server closes.
        *transform*, if given, rewrites each chunk in place before it is written, told the
        chunk's file offset (MEGA's AES-CTR decryption works at any offset).
        Returns the number of bytes written.
        """
        sock = self._sock
        assert sock is not None
        assert self._head is not None
        head = self._head
        ep = self.endpoint
        if head.chunked:
            return self._stream_chunked(fd, offset, commit, transform)
        plain = not isinstance(sock, ssl.SSLSocket)
        view = self._view
        written = 0
        # Chunk size adapts to the connection's speed: a whole buffer per syscall when fast,
        # small chunks when slow so progress and the resume state still move a few times a
        # second (a chunk is reported only once it is written).
        limit = self._chunk
        want = commit(0)
        while want > 0:
            if self._body_left is not None:
                if self._body_left == 0:
                    break
                want = min(want, self._body_left)
            want = min(want, limit)
            started = time.monotonic()
            filled = 0
            # Plain bodies go socket → pipe → file inside the kernel (no copy through
            # Python): fewer copies, less system time.  The chunk waits in the pipe until it
            # is admitted, so the pipe's capacity bounds it.
            spliced = plain and transform is None and not self._pending and self._can_splice
            if spliced:
                self._open_pipe()
                want = min(want, self._pipe_capacity)
            if self._pending:
                take = min(want, len(self._pending))
                view[:take] = self._pending[:take]
                self._pending = self._pending[take:]
                filled = take
            try:
                while filled < want:
                    if spliced:
                        n = self._splice_in(sock, want - filled)
                    elif plain:
                        n = sock.recv_into(view[filled:want], want - filled, socket.MSG_WAITALL)
                    else:
                        n = sock.recv_into(view[filled:want], want - filled)
                    if n == 0:
                        break
                    filled += n
            except (OSError, ssl.SSLError) as exc:
                # Keep what arrived before the failure: it is valid data of the range.
                if filled:
                    kept = self._deliver(fd, offset, filled, admit, spliced, transform)
                    commit(kept)
                    written += kept
                self.reusable = False
                raise self._network_error(exc) from exc
            kept = self._deliver(fd, offset, filled, admit, spliced, transform) if filled else 0
            offset += kept
            written += kept
            if self._body_left is not None:
                self._body_left -= filled
            if kept < filled:
                # Not admitted: another connection delivered these bytes first.
                self.reusable = False
                commit(kept)
                return written
            if filled < want:
                # The server closed the connection.
                self.reusable = False
                if until_eof and self._body_left is None:
                    commit(filled)
                    return written
                commit(filled)
                raise NetworkError(
                    f"connection closed by {ep.host_header} before the body was complete",
                    url=ep.url,
                )
            took = time.monotonic() - started
            if took > SLOW_CHUNK_SECONDS and limit > MIN_CHUNK:
                limit //= 2
            elif took < SLOW_CHUNK_SECONDS / 4 and limit < len(view):
                limit = min(len(view), limit * 2)
            self._chunk = limit
            want = commit(filled)
        self.reusable = head.keep_alive and self._body_left == 0 and not self._pending
        if self._body_left:
            # Stopped early (range stolen or cancelled): the rest of the body is unread.
            self.reusable = False
        return written

    def _deliver(
        self,
        fd: int,
        offset: int,
        filled: int,
        admit: Callable[[int], int] | None,
        spliced: bool,
        transform: Transform | None,
    ) -> int:
        """Write what may be written of a received chunk; returns how much was."""
        kept = filled if admit is None else admit(filled)
        if spliced:
            if kept:
                self._splice_out(fd, offset, kept)
            if kept < filled:
                self._close_pipe()  # the rest stays in the pipe: drop it with the pipe
        elif kept:
            self._write(fd, self._view[:kept], offset, transform)
        return kept

    @property
    def _view(self) -> memoryview:
        if self._buffer is None:
            self._buffer = memoryview(bytearray(self._buffer_size))
        return self._buffer

    def _open_pipe(self) -> None:
        if self._pipe is not None:
            return
        self._pipe = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._pipe[1], fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._pipe_capacity = fcntl.fcntl(self._pipe[1], fcntl.F_GETPIPE_SZ)

    def _splice_in(self, sock: socket.socket, count: int) -> int:
        """Move up to *count* body bytes from the socket into the pipe; 0 at EOF."""
        assert self._pipe is not None
        return os.splice(
            sock.fileno(), self._pipe[1], count, flags=os.SPLICE_F_MOVE | os.SPLICE_F_MORE
        )

    def _splice_out(self, fd: int, offset: int, count: int) -> None:
        """Move *count* bytes from the pipe into *fd* at *offset*."""
        assert self._pipe is not None
        done = 0
        try:
            while done < count:
                done += os.splice(
                    self._pipe[0],
                    fd,
                    count - done,
                    offset_dst=offset + done,
                    flags=os.SPLICE_F_MOVE,
                )
        except OSError as exc:
            # Bytes left in the pipe belong to no file position any more: drop the pipe.
            self._close_pipe()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"disk full while writing: {exc.strerror}") from exc
            raise DiskError(f"cannot write to the file: {exc.strerror}") from exc

    def _close_pipe(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            os.close(pipe[0])
            os.close(pipe[1])

    def _stream_chunked(
        self, fd: int, offset: int, commit: Callable[[int], int], transform: Transform | None
    ) -> int:
        """Slow path through h11 for chunked bodies (no length: only single streams)."""
        sock = self._sock
        assert sock is not None
        assert self._h11 is not None
        assert self._head is not None
        conn = self._h11
        # The bytes that came with the head are still in h11's buffer (trailing_data is a copy).
        self._pending = b""
        written = 0
        commit(0)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = sock.recv(1024 * 1024)
                    if not data:
                        raise NetworkError(
                            f"connection closed by {self.endpoint.host_header} mid-body",
                            url=self.endpoint.url,
                        )
                    conn.receive_data(data)
                elif isinstance(event, h11.Data):
                    self._write(fd, memoryview(bytearray(event.data)), offset, transform)
                    offset += len(event.data)
                    written += len(event.data)
                    commit(len(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    self.reusable = self._head.keep_alive
                    return written
                else:
                    raise BadResponse("unexpected HTTP event in body", url=self.endpoint.url)
        except h11.RemoteProtocolError as exc:
            raise BadResponse(
                f"malformed chunked body: {_brief(exc)}", url=self.endpoint.url
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            if isinstance(exc, DownloadError):
                raise
            raise self._network_error(exc) from exc

    def _write(
        self, fd: int, data: memoryview, offset: int, transform: Transform | None = None
    ) -> None:
        if transform is not None:
            transform(data, offset)
        try:
            done = os.pwrite(fd, data, offset)
            while done < len(data):
                done += os.pwrite(fd, data[done:], offset + done)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"disk full while writing: {exc.strerror}") from exc
            raise DiskError(f"cannot write to the file: {exc.strerror}") from exc

    def _network_error(self, exc: BaseException) -> NetworkError:
        ep = self.endpoint
        if self._aborted.is_set():
            return NetworkError("connection aborted", url=ep.url)
        if isinstance(exc, (BlockingIOError, TimeoutError, ssl.SSLWantReadError)) or (
            isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.ETIMEDOUT)
        ):
            return Timeout(
                f"no data from {ep.host_header} for {self._read_timeout:g} s", url=ep.url
            )
        return NetworkError(f"connection to {ep.host_header} failed: {_os_reason(exc)}", url=ep.url)


class _StaleConnection(Exception):
    """A kept-alive connection the server had already closed: retry on a fresh one."""


def _brief(exc: BaseException, limit: int = 120) -> str:
    """h11's messages quote the bytes it could not parse: one short printable line."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(exc)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _set_recv_timeout(sock: socket.socket, seconds: float) -> None:
    whole = int(seconds)
    micro = int((seconds - whole) * 1_000_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, micro))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", whole, micro))


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    return parse_retry_after(value, now=time.time())
