"""A threaded HTTP/1.1 origin server that serves in-memory files and misbehaves on demand.

It exists so that segdl's client can be tested against byte ranges it did not compute itself:
the range arithmetic below is written from RFC 9110 §14 directly and shares no code with the
client (parfive's fake server shared its client's inclusive/exclusive bug, so neither caught
it). For the same reason this module imports nothing from segdl and parses HTTP itself
(RFC 9112) rather than using h11.

Usage::

    with RangeServer() as server:
        server.add("/model.bin", Resource(body))
        server.inject(Fault.drop_after(1000, ranged_only=True))
        ... download server.url("/model.bin") ...
        assert [r.status for r in server.requests] == [...]

A scripted schedule hands faults to the requests a predicate picks, in order; a fault may
also rewrite the file (``Fault.replace``) or send the client round a redirect loop::

    schedule = FaultSchedule(
        [Fault.status(503), Fault.replace(Resource(new_body, etag='"v2"'))],
        applies_to=lambda info: info.range not in (None, "bytes=0-0"),
    )
    server.on_request(schedule)

Design notes:

* One thread accepts; one thread serves each connection (persistent connections, pipelined
  requests are answered in order). ``stop()`` wakes every blocked thread by shutting its
  socket down, joins every thread and closes every socket, so tests running with
  ``filterwarnings = error`` see no ``ResourceWarning``.
* A request's :class:`RequestRecord` is published in :attr:`RangeServer.requests` before the
  last piece of its response is written, so a client that has read a whole response can
  assert on the record without waiting. :meth:`RangeServer.wait_for_requests` covers the rest
  (e.g. a client that gave up mid-body).
* Errors in the server itself (or in an ``on_request`` hook) never escape a thread; they are
  collected in :attr:`RangeServer.errors`, which a test fixture should check is empty.
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import re
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Final, Literal

__all__ = [
    "CloseConnection",
    "Delay",
    "DropAfter",
    "Fault",
    "FaultSchedule",
    "IgnoreRange",
    "LongBody",
    "RangeServer",
    "ReplaceResource",
    "RequestInfo",
    "RequestRecord",
    "Resource",
    "ServerStatistics",
    "ShortBody",
    "StallAfter",
    "StatusFault",
    "WrongContentRange",
]

_MAX_HEAD: Final = 64 * 1024
_SEND_STEP: Final = 1024 * 1024
_GARBAGE: Final = b"<GARBAGE>"
_SERVER_NAME: Final = "segdl-rangeserver"
_LINGER_SECONDS: Final = 1.0


# --------------------------------------------------------------------------------------------
# What is served


@dataclass
class Resource:
    """An in-memory file and how the server presents it.

    ``headers`` are sent last and replace any header of the same name the server would have
    sent (compared case-insensitively); they never change the message framing, so e.g. a wrong
    ``Content-Length`` here makes a lying server.
    """

    body: bytes
    #: Strong ETag sent on every response about this resource (RFC 9110 §8.8.3).
    etag: str | None = '"v1"'
    last_modified: str | None = "Wed, 21 Oct 2026 07:28:00 GMT"
    #: False: the server knows nothing of ranges — Range is ignored, every GET is a full 200
    #: and no ``Accept-Ranges`` is sent.
    accept_ranges: bool = True
    #: False: no Content-Length; the body ends when the server closes the connection, or with
    #: the last chunk when ``chunked`` is set.
    send_length: bool = True
    #: True: ``Transfer-Encoding: chunked`` (implies no Content-Length). HTTP/1.0 requests get
    #: a close-delimited body instead, as RFC 9112 §6.1 requires.
    chunked: bool = False
    content_disposition: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Redirect:
    location: str
    status: int


@dataclass(frozen=True)
class RequestInfo:
    """A request as an ``on_request`` hook sees it, before anything is answered."""

    method: str
    #: The request target as sent, query included.
    path: str
    #: Field names lower-cased; repeated fields joined with ", " (RFC 9110 §5.3).
    headers: dict[str, str] = field(hash=False)
    #: The Range field value, or None.
    range: str | None
    connection_id: int
    #: 0-based position among every request this server has received.
    index: int


@dataclass(frozen=True)
class RequestRecord:
    """What the server received and what it answered."""

    method: str
    path: str
    headers: dict[str, str] = field(hash=False)
    range: str | None
    status: int
    #: Payload bytes written (chunk framing excluded; ``LongBody`` garbage included).
    body_bytes: int
    #: Same number for every request served on one (keep-alive) connection.
    connection_id: int
    fault: Fault | None = None
    #: The client's address (the peer of the TCP connection): a proxy's, when one was used.
    peer: str = ""


# --------------------------------------------------------------------------------------------
# Faults


def _target_path(target: str) -> str:
    """The path of a request target, without query (absolute-form is reduced too)."""
    if target.startswith(("http://", "https://")):
        _scheme, _sep, rest = target.partition("://")
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    return target.partition("?")[0]


@dataclass(frozen=True, kw_only=True)
class Fault:
    """Misbehaviour for one response. Build them with the static constructors below.

    Filters: ``path`` (matches the request target with or without its query), ``ranged_only``
    (only requests that carry a Range field) and ``method``. ``method=None`` means GET for
    faults about the body and any method for the others (a HEAD probe should not consume a
    fault meant for a body).
    """

    path: str | None = None
    ranged_only: bool = False
    method: str | None = None

    _about_body: ClassVar[bool] = True

    def matches(self, info: RequestInfo) -> bool:
        if self.path is not None and self.path not in (info.path, _target_path(info.path)):
            return False
        if self.ranged_only and info.range is None:
            return False
        method = self.method if self.method is not None else ("GET" if self._about_body else None)
        return method is None or method.upper() == info.method

    @staticmethod
    def status(
        code: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        path: str | None = None,
        ranged_only: bool = False,
        method: str | None = None,
    ) -> StatusFault:
        """Answer ``code`` with exactly these headers (plus framing) and body, e.g.
        ``Fault.status(503, headers={"Retry-After": "2"})``."""
        return StatusFault(
            code=code,
            headers=tuple((headers or {}).items()),
            body=body,
            path=path,
            ranged_only=ranged_only,
            method=method,
        )

    @staticmethod
    def drop_after(
        n_bytes: int,
        *,
        reset: bool = False,
        path: str | None = None,
        ranged_only: bool = False,
        method: str | None = None,
    ) -> DropAfter:
        """Send the normal head and ``n_bytes`` of the body, then close the connection
        (FIN; RST if ``reset``)."""
        return DropAfter(
            n_bytes=n_bytes, reset=reset, path=path, ranged_only=ranged_only, method=method
        )

    @staticmethod
    def stall_after(
        n_bytes: int,
        seconds: float,
        *,
        close: bool = False,
        path: str | None = None,
        ranged_only: bool = False,
        method: str | None = None,
    ) -> StallAfter:
        """Send the head and ``n_bytes`` of the body, sleep ``seconds``, then send the rest
        (or close the connection if ``close``)."""
        return StallAfter(
            n_bytes=n_bytes,
            seconds=seconds,
            close=close,
            path=path,
            ranged_only=ranged_only,
            method=method,
        )

    @staticmethod
    def ignore_range(
        *, path: str | None = None, ranged_only: bool = True, method: str | None = None
    ) -> IgnoreRange:
        """Answer 200 with the whole body although a range was asked."""
        return IgnoreRange(path=path, ranged_only=ranged_only, method=method)

    @staticmethod
    def wrong_content_range(
        shift: int, *, path: str | None = None, ranged_only: bool = True, method: str | None = None
    ) -> WrongContentRange:
        """Answer a 206 for the asked range moved by ``shift`` bytes (clamped to the file).

        The body is the bytes the Content-Range claims: a self-consistent answer to a question
        that was not asked, as a confused cache would give. Only a client that checks the
        Content-Range against its request notices. Without a 206 to distort, no effect.
        """
        return WrongContentRange(shift=shift, path=path, ranged_only=ranged_only, method=method)

    @staticmethod
    def short_body(
        n_missing: int,
        *,
        path: str | None = None,
        ranged_only: bool = False,
        method: str | None = None,
    ) -> ShortBody:
        """Announce the right length, send all but the last ``n_missing`` bytes, close."""
        return ShortBody(n_missing=n_missing, path=path, ranged_only=ranged_only, method=method)

    @staticmethod
    def long_body(
        n_extra: int,
        *,
        path: str | None = None,
        ranged_only: bool = False,
        method: str | None = None,
    ) -> LongBody:
        """Send the whole body as announced, then ``n_extra`` garbage bytes, then close."""
        return LongBody(n_extra=n_extra, path=path, ranged_only=ranged_only, method=method)

    @staticmethod
    def delay(
        seconds: float,
        *,
        path: str | None = None,
        ranged_only: bool = False,
        method: str | None = None,
    ) -> Delay:
        """Wait ``seconds`` before sending anything (a slow time to first byte)."""
        return Delay(seconds=seconds, path=path, ranged_only=ranged_only, method=method)

    @staticmethod
    def close_connection(
        *, path: str | None = None, ranged_only: bool = False, method: str | None = None
    ) -> CloseConnection:
        """Answer normally, then close the connection without announcing it (the race of a
        keep-alive timeout that every pooled client meets)."""
        return CloseConnection(path=path, ranged_only=ranged_only, method=method)

    @staticmethod
    def redirect(
        location: str,
        *,
        status: int = 302,
        path: str | None = None,
        ranged_only: bool = False,
        method: str | None = None,
    ) -> StatusFault:
        """Answer with a redirect to ``location`` (e.g. the request's own URL: a loop, as a
        storage host whose signed URL expired sends the client back where it came from)."""
        return Fault.status(
            status,
            headers={"Location": location},
            path=path,
            ranged_only=ranged_only,
            method=method,
        )

    @staticmethod
    def replace(
        resource: Resource,
        *,
        path: str | None = None,
        ranged_only: bool = False,
        method: str | None = None,
    ) -> ReplaceResource:
        """Replace the requested file with ``resource`` (new content, new validators) just
        before this request is answered: this response and every later one serve the new
        version, as an origin whose file is rewritten in the middle of a download."""
        return ReplaceResource(resource=resource, path=path, ranged_only=ranged_only, method=method)


@dataclass(frozen=True, kw_only=True)
class StatusFault(Fault):
    _about_body: ClassVar[bool] = False
    code: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, kw_only=True)
class DropAfter(Fault):
    n_bytes: int
    reset: bool = False


@dataclass(frozen=True, kw_only=True)
class StallAfter(Fault):
    n_bytes: int
    seconds: float
    close: bool = False


@dataclass(frozen=True, kw_only=True)
class IgnoreRange(Fault):
    pass


@dataclass(frozen=True, kw_only=True)
class WrongContentRange(Fault):
    shift: int


@dataclass(frozen=True, kw_only=True)
class ShortBody(Fault):
    n_missing: int


@dataclass(frozen=True, kw_only=True)
class LongBody(Fault):
    n_extra: int


@dataclass(frozen=True, kw_only=True)
class Delay(Fault):
    _about_body: ClassVar[bool] = False
    seconds: float


@dataclass(frozen=True, kw_only=True)
class CloseConnection(Fault):
    _about_body: ClassVar[bool] = False


@dataclass(frozen=True, kw_only=True)
class ReplaceResource(Fault):
    _about_body: ClassVar[bool] = False
    resource: Resource = field(hash=False)


Hook = Callable[[RequestInfo], Fault | None]


class FaultSchedule:
    """A scripted misbehaviour: ``faults`` handed out in order, one to each request that
    ``applies_to`` accepts (by default every request), then nothing.  Install it with
    ``server.on_request(schedule)``; thread-safe.

    ``applied`` lists ``(request index, fault)`` for each fault handed out, so a test can
    count what was really injected (a download may finish before the schedule is used up).
    """

    def __init__(
        self,
        faults: Iterable[Fault],
        *,
        applies_to: Callable[[RequestInfo], bool] | None = None,
    ) -> None:
        self._queue = list(faults)
        self._applies_to = applies_to
        self._lock = threading.Lock()
        self.applied: list[tuple[int, Fault]] = []

    def __call__(self, info: RequestInfo) -> Fault | None:
        if self._applies_to is not None and not self._applies_to(info):
            return None
        with self._lock:
            if not self._queue:
                return None
            fault = self._queue.pop(0)
            self.applied.append((info.index, fault))
            return fault

    @property
    def remaining(self) -> tuple[Fault, ...]:
        with self._lock:
            return tuple(self._queue)


@dataclass(frozen=True)
class ServerStatistics:
    """A snapshot of what a :class:`RangeServer` has done so far."""

    #: Requests received.
    requests: int
    #: Payload bytes written to clients, over every request (``RequestRecord.body_bytes``).
    body_bytes: int
    #: Requests that were answered with a fault.
    faults: int


# --------------------------------------------------------------------------------------------
# RFC 9110 ranges, written independently of the client

# RFC 9110 §14.1.1: int-range = first-pos "-" [ last-pos ]; suffix-range = "-" suffix-length.
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")

_Unsatisfiable = Literal["unsatisfiable"]


def _select_range(value: str, size: int) -> tuple[int, int] | _Unsatisfiable | None:
    """Decide a Range field value against a representation of ``size`` bytes.

    Returns the inclusive ``(first, last)`` to send as 206, ``"unsatisfiable"`` for 416, or
    None to ignore the field and send the whole representation (200).
    """
    unit, sep, range_set = value.partition("=")
    # §14.2: a range unit the server does not understand is ignored. Units are
    # case-insensitive (§14.1).
    if not sep or unit.strip().lower() != "bytes":
        return None
    # §5.6.1: empty list elements are allowed and do not count.
    specs = [spec.strip() for spec in range_set.split(",") if spec.strip()]
    if not specs:
        return None
    parsed: list[tuple[str, str]] = []
    for spec in specs:
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return None
        first, last = match.groups()
        if not first and not last:
            return None
        # §14.1.1: an int-range whose last-pos is below its first-pos is invalid; a server
        # may ignore an invalid Range (§14.2), which is what we do.
        if first and last and int(last) < int(first):
            return None
        parsed.append((first, last))
    # Several ranges: §14.2 lets a server ignore Range and answer 200 with everything, which
    # is always correct and keeps multipart/byteranges out of this fake.
    if len(parsed) > 1:
        return None
    first, last = parsed[0]
    if not first:
        suffix = int(last)
        # §14.1.3: a suffix-range is satisfiable iff its length is non-zero …
        if suffix == 0:
            return "unsatisfiable"
        # … but a zero-length representation has no byte to name in a Content-Range, so send
        # the (empty) whole with 200, as §14.2 allows.
        if size == 0:
            return None
        return (max(0, size - suffix), size - 1)
    start = int(first)
    # §14.1.3: an int-range is satisfiable iff first-pos < length; last-pos beyond the end
    # is replaced by length - 1.
    if start >= size:
        return "unsatisfiable"
    end = size - 1 if not last else min(int(last), size - 1)
    return (start, end)


def _entity_tag_is_weak(tag: str) -> bool:
    return tag.startswith("W/")


def _if_range_holds(value: str, resource: Resource) -> bool:
    """RFC 9110 §13.1.5: does If-Range allow the Range to be honoured?"""
    value = value.strip()
    if value.startswith(('"', "W/")):
        # Strong comparison (§8.8.3.2): neither tag weak, opaque-tags identical.
        etag = resource.etag
        return (
            etag is not None
            and not _entity_tag_is_weak(value)
            and not _entity_tag_is_weak(etag)
            and value == etag
        )
    # An HTTP-date: true only if it exactly matches Last-Modified. This fake treats its
    # Last-Modified as a strong validator (it is set once, far from the Date).
    return resource.last_modified is not None and value == resource.last_modified


# --------------------------------------------------------------------------------------------
# Parsing requests (RFC 9112)


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for t in self.headers.get(name, "").split(",") if t.strip()}


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _parse_head(head: bytes) -> _Request:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if not re.fullmatch(r"HTTP/[0-9]\.[0-9]", version):
        raise _BadRequest(400, "malformed HTTP version")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest(505, "HTTP version not supported")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            # RFC 9112 §5.2: obs-fold may be rejected with 400.
            raise _BadRequest(400, "obsolete line folding")
        name, sep, value = line.partition(":")
        # RFC 9112 §5.1: no whitespace between field name and colon.
        if not sep or not _TOKEN.fullmatch(name):
            raise _BadRequest(400, "malformed header field")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return _Request(method, target, version, headers)


# --------------------------------------------------------------------------------------------
# Responses


Framing = Literal["length", "chunked", "close"]


@dataclass
class _Plan:
    """A response before it is written: status, header fields and the promised payload."""

    status: int
    headers: list[tuple[str, str]]
    payload: memoryview
    framing: Framing = "length"
    #: The whole payload is promised even if the method is HEAD; this says whether to send it.
    send_payload: bool = True


@dataclass(frozen=True)
class _Piece:
    """One write (``data``, of which ``payload`` bytes are body) or one pause."""

    data: bytes | memoryview = b""
    payload: int = 0
    pause: float = 0.0
    #: Frame ``data`` as one chunk when it is written (lazily: a copy is made per chunk).
    chunk: bool = False


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _set_header(headers: list[tuple[str, str]], name: str, value: str) -> None:
    lowered = name.lower()
    headers[:] = [(n, v) for n, v in headers if n.lower() != lowered]
    headers.append((name, value))


def _serialize_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _encode_chunk(data: bytes | memoryview) -> bytes:
    # RFC 9112 §7.1: chunk = chunk-size CRLF chunk-data CRLF.
    return b"%X\r\n" % len(data) + bytes(data) + b"\r\n"


class _Closed(Exception):
    """The connection is over: the peer left, a fault closed it, or the server stops."""


class _Connection:
    def __init__(self, server: RangeServer, sock: socket.socket, connection_id: int) -> None:
        self.server = server
        self.sock = sock
        self.id = connection_id
        self.buffer = bytearray()
        self._pace_start = 0.0
        self._pace_sent = 0
        #: Bytes written to the socket, framing included, over the connection's life.
        self.sent = 0

    def read_head(self) -> bytes | None:
        while True:
            # RFC 9112 §2.2: ignore empty lines received before a request-line.
            while self.buffer[:2] == b"\r\n":
                del self.buffer[:2]
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buffer[:end])
                del self.buffer[: end + 4]
                return head
            if len(self.buffer) > _MAX_HEAD:
                raise _BadRequest(431, "request header fields too large")
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data

    def discard_body(self, length: int) -> None:
        while length > 0:
            if not self.buffer:
                data = self.sock.recv(min(length, 65536))
                if not data:
                    raise _Closed
                self.buffer += data
            taken = min(length, len(self.buffer))
            del self.buffer[:taken]
            length -= taken

    def begin_response(self) -> None:
        self._pace_start = time.monotonic()
        self._pace_sent = 0

    def send(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self.server._stopping.is_set():
                raise _Closed
            rate = self.server.rate_limit
            step = _SEND_STEP if rate is None else max(1, min(64 * 1024, rate // 50))
            piece = view[:step]
            self.sock.sendall(piece)
            self.server._count_sent(len(piece))
            self.sent += len(piece)
            view = view[len(piece) :]
            if rate is not None:
                # Sleep-based pacing: never ahead of rate bytes/s since the response began.
                self._pace_sent += len(piece)
                due = self._pace_start + self._pace_sent / rate
                delay = due - time.monotonic()
                if delay > 0:
                    self.server._sleep(delay)


class RangeServer:
    """HTTP/1.1 server for tests: in-memory files, RFC 9110 ranges, faults on demand.

    ``rate_limit`` (bytes/s per connection, may be changed while running) paces every
    response by sleeping. ``tls`` (a server-side :class:`ssl.SSLContext`) makes it HTTPS.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit: int | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive")
        self.host = host
        self.rate_limit = rate_limit
        self.tls = tls
        #: Every request received, in order of arrival (see :class:`RequestRecord`).
        self.requests: list[RequestRecord] = []
        #: Unexpected exceptions raised inside the server or an ``on_request`` hook.
        self.errors: list[BaseException] = []
        self._port = port
        self._bound_port: int | None = None
        self._resources: dict[str, Resource | _Redirect] = {}
        self._faults: list[Fault] = []
        self._hook: Hook | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._live: dict[int, socket.socket] = {}
        self._peers: dict[int, str] = {}
        self._next_connection_id = 1
        self._bytes_sent = 0
        self._next_index = 0
        self._started = False

    # ---- configuration (thread-safe, allowed while running)

    @property
    def bytes_sent(self) -> int:
        """Payload bytes handed to the kernel so far, over all connections (a rate meter)."""
        with self._lock:
            return self._bytes_sent

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        with self._lock:
            return len(self._live)

    def _count_sent(self, nbytes: int) -> None:
        with self._lock:
            self._bytes_sent += nbytes

    def add(self, path: str, resource: Resource) -> None:
        """Serve ``resource`` at ``path``; replaces what was there (a changed file).

        A path without query also answers requests for it with any query string.
        """
        with self._lock:
            self._resources[_check_path(path)] = resource

    def add_redirect(self, path: str, location: str, *, status: int = 302) -> None:
        with self._lock:
            self._resources[_check_path(path)] = _Redirect(location, status)

    def remove(self, path: str) -> None:
        """Stop serving ``path`` (later requests get 404)."""
        with self._lock:
            self._resources.pop(path, None)

    def inject(self, *faults: Fault) -> None:
        """Queue faults. Each request consumes the first queued fault that matches it."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> tuple[Fault, ...]:
        with self._lock:
            return tuple(self._faults)

    def on_request(self, hook: Hook | None) -> None:
        """Decide per request: ``hook(info)`` returns a fault or None. Consulted when no
        injected fault matches; the fault it returns applies whatever its filters say."""
        with self._lock:
            self._hook = hook

    # ---- addresses

    @property
    def port(self) -> int:
        """The bound port (still known after ``stop()``)."""
        if self._bound_port is None:
            raise RuntimeError("the server is not started")
        return self._bound_port

    @property
    def base_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + _check_path(path)

    # ---- observation

    def wait_for_requests(self, count: int, *, timeout: float = 5.0) -> list[RequestRecord]:
        """Block until at least ``count`` requests are recorded; return a snapshot."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise TimeoutError(f"{len(self.requests)} requests recorded, wanted {count}")
            return list(self.requests)

    def statistics(self) -> ServerStatistics:
        """Requests, payload bytes sent and faults applied so far."""
        with self._lock:
            records = list(self.requests)
        return ServerStatistics(
            requests=len(records),
            body_bytes=sum(r.body_bytes for r in records),
            faults=sum(1 for r in records if r.fault is not None),
        )

    def _sleep(self, seconds: float) -> None:
        """Sleep server-side, cut short by ``stop()``."""
        self._stopping.wait(seconds)

    # ---- lifecycle

    def start(self) -> None:
        if self._started:
            raise RuntimeError("a RangeServer can be started once")
        self._started = True
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.create_server((self.host, self._port), family=family, backlog=128)
        listener.setblocking(False)
        self._listener = listener
        self._bound_port = listener.getsockname()[1]
        self._wakeup = socket.socketpair()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"{_SERVER_NAME}-accept", daemon=True
        )
        self._accept_thread.start()

    def stop(self) -> None:
        """Stop accepting, wake and join every thread, close every socket. Idempotent."""
        if self._listener is None or self._wakeup is None or self._accept_thread is None:
            return
        self._stopping.set()
        self._wakeup[1].send(b"\0")
        self._accept_thread.join()
        self._listener.close()
        for end in self._wakeup:
            end.close()
        self._listener = None
        self._wakeup = None
        self._accept_thread = None
        with self._lock:
            for sock in self._live.values():
                # The base-class shutdown: SSLSocket.shutdown would also drop its TLS state
                # under the feet of the thread still using it.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10.0)
            if thread.is_alive():
                self.errors.append(RuntimeError(f"{thread.name} did not stop"))

    def __enter__(self) -> RangeServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- threads

    def _accept_loop(self) -> None:
        assert self._listener is not None
        assert self._wakeup is not None
        listener, wake = self._listener, self._wakeup[0]
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(listener, selectors.EVENT_READ)
                selector.register(wake, selectors.EVENT_READ)
                while not self._stopping.is_set():
                    for key, _events in selector.select():
                        if key.fileobj is wake:
                            return
                        try:
                            sock, _address = listener.accept()
                        except (BlockingIOError, ConnectionAbortedError):
                            continue
                        self._spawn(sock)
        except Exception as exc:
            self.errors.append(exc)

    def _spawn(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._stopping.is_set():
                sock.close()
                return
            connection_id = self._next_connection_id
            self._next_connection_id += 1
            self._live[connection_id] = sock
            try:
                self._peers[connection_id] = str(sock.getpeername()[0])
            except OSError:
                self._peers[connection_id] = ""
            self._threads = [t for t in self._threads if t.is_alive()]
            thread = threading.Thread(
                target=self._serve_connection,
                args=(sock, connection_id),
                name=f"{_SERVER_NAME}-conn-{connection_id}",
                daemon=True,
            )
            self._threads.append(thread)
            # Started under the lock so that stop() never sees an unstarted thread.
            thread.start()

    def _serve_connection(self, sock: socket.socket, connection_id: int) -> None:
        graceful = False
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                with self._lock:
                    # wrap_socket detached the old object: stop() must shut down the new one.
                    self._live[connection_id] = sock
                    if self._stopping.is_set():
                        return
                sock.do_handshake()
            connection = _Connection(self, sock, connection_id)
            graceful = self._serve_requests(connection)
        except (_Closed, OSError):
            # The peer went away, a fault closed the connection, or stop() shut it down.
            graceful = False
        except Exception as exc:
            self.errors.append(exc)
        finally:
            if graceful and not self._stopping.is_set():
                self._close_gracefully(sock)
            with self._lock:
                # Under the lock: stop() must not shut down a reused file descriptor.
                self._live.pop(connection_id, None)
                sock.close()

    def _serve_requests(self, connection: _Connection) -> bool:
        """Answer requests until the connection should end; True to close it gracefully."""
        while not self._stopping.is_set():
            try:
                head = connection.read_head()
            except _BadRequest as exc:
                self._send_error(connection, exc)
                return True
            if head is None:
                return False
            try:
                request = _parse_head(head)
            except _BadRequest as exc:
                self._send_error(connection, exc)
                return True
            if "transfer-encoding" in request.headers:
                self._send_error(connection, _BadRequest(501, "request bodies are not supported"))
                return True
            length = request.headers.get("content-length", "0")
            if not re.fullmatch(r"[0-9]+", length):
                self._send_error(connection, _BadRequest(400, "bad Content-Length"))
                return True
            connection.discard_body(int(length))
            if not self._answer(connection, request):
                return True
        return False

    def _send_error(self, connection: _Connection, error: _BadRequest) -> None:
        body = f"{error}\n".encode()
        headers = [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Server", _SERVER_NAME),
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        connection.begin_response()
        connection.send(_serialize_head(error.status, headers) + body)

    def _close_gracefully(self, sock: socket.socket) -> None:
        """RFC 9112 §9.6: close our side, then read until the client closes, so that a
        request it already sent cannot turn our close into a reset that destroys the response
        it has not read yet."""
        try:
            if isinstance(sock, ssl.SSLSocket):
                # Send close_notify without waiting for the peer's (non-blocking unwrap).
                sock.setblocking(False)
                with contextlib.suppress(OSError, ValueError):
                    sock.unwrap()
            socket.socket.shutdown(sock, socket.SHUT_WR)
            sock.settimeout(0.1)
            deadline = time.monotonic() + _LINGER_SECONDS
            while time.monotonic() < deadline and not self._stopping.is_set():
                try:
                    if not socket.socket.recv(sock, 65536):
                        break
                except TimeoutError:
                    continue
        except OSError:
            pass

    # ---- one exchange

    def _choose_fault(self, info: RequestInfo) -> Fault | None:
        with self._lock:
            for position, fault in enumerate(self._faults):
                if fault.matches(info):
                    del self._faults[position]
                    return fault
            hook = self._hook
        if hook is None:
            return None
        return hook(info)

    def _answer(self, connection: _Connection, request: _Request) -> bool:
        """Answer one request; False when the connection must then be closed."""
        with self._lock:
            index = self._next_index
            self._next_index += 1
        range_value = request.headers.get("range")
        info = RequestInfo(
            method=request.method,
            path=request.target,
            headers=dict(request.headers),
            range=range_value,
            connection_id=connection.id,
            index=index,
        )
        fault: Fault | None
        try:
            fault = self._choose_fault(info)
        except Exception as exc:
            self.errors.append(exc)
            fault = Fault.status(500, body=b"on_request hook failed\n", method=request.method)

        if isinstance(fault, ReplaceResource):
            replaced = fault.path if fault.path is not None else _target_path(request.target)
            with self._lock:
                self._resources[replaced] = fault.resource

        if isinstance(fault, Delay):
            self._sleep(fault.seconds)
            if self._stopping.is_set():
                raise _Closed

        plan = self._plan(request, fault)
        keep_alive = (
            request.version == "HTTP/1.1"
            and "close" not in request.tokens("connection")
            and plan.framing != "close"
        )
        if not keep_alive:
            _set_header(plan.headers, "Connection", "close")

        pieces, ending = self._pieces(plan, fault)
        record = self._publish(None, info, plan.status, 0, fault)
        connection.begin_response()
        sent = 0
        piece = _Piece()
        started = connection.sent
        try:
            for piece, is_last in _with_last(pieces):
                started = connection.sent
                if is_last:
                    # Publish the final record before the client can have read everything.
                    record = self._publish(record, info, plan.status, sent + piece.payload, fault)
                if piece.pause:
                    self._sleep(piece.pause)
                    if self._stopping.is_set():
                        raise _Closed
                if piece.data:
                    connection.send(_encode_chunk(piece.data) if piece.chunk else piece.data)
                sent += piece.payload
                if piece.payload and not is_last:
                    # Progress, so that a client that gives up mid-body sees a true count.
                    record = self._publish(record, info, plan.status, sent, fault)
        except BaseException:
            if not piece.chunk:
                # The part of this piece that reached the socket before the client left (a
                # client killed mid-piece was sent those bytes: they count).
                sent += min(piece.payload, connection.sent - started)
            self._publish(record, info, plan.status, sent, fault)
            raise
        if ending == "keep":
            return keep_alive
        if ending == "close":
            return False
        # An abrupt end: no lingering, FIN (or RST) right after the last byte.
        if ending == "reset":
            # SO_LINGER on, timeout 0: close() discards unsent data and sends RST.
            connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raise _Closed

    def _publish(
        self,
        previous: RequestRecord | None,
        info: RequestInfo,
        status: int,
        body_bytes: int,
        fault: Fault | None,
    ) -> RequestRecord:
        """Append a record, or replace ``previous`` (found by identity: a test may have
        cleared or sliced the list meanwhile, and then the update is dropped)."""
        record = RequestRecord(
            method=info.method,
            path=info.path,
            headers=info.headers,
            range=info.range,
            status=status,
            body_bytes=body_bytes,
            connection_id=info.connection_id,
            fault=fault,
            peer=self._peers.get(info.connection_id, ""),
        )
        with self._changed:
            if previous is None:
                self.requests.append(record)
            else:
                for position in range(len(self.requests) - 1, -1, -1):
                    if self.requests[position] is previous:
                        self.requests[position] = record
                        break
            self._changed.notify_all()
        return record

    def _lookup(self, target: str) -> Resource | _Redirect | None:
        with self._lock:
            found = self._resources.get(target)
            if found is None:
                found = self._resources.get(_target_path(target))
            return found

    def _plan(self, request: _Request, fault: Fault | None) -> _Plan:
        common = [("Date", email.utils.formatdate(usegmt=True)), ("Server", _SERVER_NAME)]
        head_only = request.method == "HEAD"
        if isinstance(fault, StatusFault):
            headers = [*common, ("Content-Length", str(len(fault.body)))]
            for name, value in fault.headers:
                _set_header(headers, name, value)
            return _Plan(fault.code, headers, memoryview(fault.body), send_payload=not head_only)

        found = self._lookup(request.target)
        if found is None:
            body = b"not found\n"
            headers = [
                *common,
                ("Content-Type", "text/plain"),
                ("Content-Length", str(len(body))),
            ]
            return _Plan(404, headers, memoryview(body), send_payload=not head_only)
        if isinstance(found, _Redirect):
            headers = [*common, ("Location", found.location), ("Content-Length", "0")]
            return _Plan(found.status, headers, memoryview(b""))
        if request.method not in ("GET", "HEAD"):
            headers = [*common, ("Allow", "GET, HEAD"), ("Content-Length", "0")]
            return _Plan(405, headers, memoryview(b""))
        return self._plan_resource(found, request, fault, common)

    def _plan_resource(
        self,
        resource: Resource,
        request: _Request,
        fault: Fault | None,
        common: list[tuple[str, str]],
    ) -> _Plan:
        body = memoryview(resource.body)
        size = len(body)
        selected: tuple[int, int] | _Unsatisfiable | None = None
        range_value = request.headers.get("range")
        if_range = request.headers.get("if-range")
        # RFC 9110 §14.2: range handling is defined for GET only; If-Range (§13.1.5) turns a
        # Range about another version of the file into a plain 200.
        if (
            range_value is not None
            and request.method == "GET"
            and resource.accept_ranges
            and not isinstance(fault, IgnoreRange)
            and (if_range is None or _if_range_holds(if_range, resource))
        ):
            selected = _select_range(range_value, size)

        headers = list(common)
        if resource.etag is not None:
            headers.append(("ETag", resource.etag))
        if resource.last_modified is not None:
            headers.append(("Last-Modified", resource.last_modified))
        if resource.accept_ranges:
            headers.append(("Accept-Ranges", "bytes"))
        headers.append(("Content-Type", "application/octet-stream"))
        if resource.content_disposition is not None:
            headers.append(("Content-Disposition", resource.content_disposition))

        if selected == "unsatisfiable":
            # §15.5.17: 416 carries Content-Range with the current length.
            headers += [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")]
            plan = _Plan(416, headers, memoryview(b""))
        else:
            if selected is None:
                status, payload = 200, body
            else:
                first, last = selected
                if isinstance(fault, WrongContentRange) and size > 0:
                    first = max(0, min(first + fault.shift, size - 1))
                    last = max(first, min(last + fault.shift, size - 1))
                status, payload = 206, body[first : last + 1]
                headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
            framing: Framing = "length"
            if resource.chunked:
                framing = "chunked" if request.version == "HTTP/1.1" else "close"
            elif not resource.send_length:
                framing = "close"
            if framing == "length":
                headers.append(("Content-Length", str(len(payload))))
            elif framing == "chunked":
                headers.append(("Transfer-Encoding", "chunked"))
            plan = _Plan(
                status, headers, payload, framing=framing, send_payload=request.method != "HEAD"
            )
        for name, value in resource.headers.items():
            _set_header(plan.headers, name, value)
        return plan

    def _pieces(
        self, plan: _Plan, fault: Fault | None
    ) -> tuple[list[_Piece], Literal["keep", "close", "fin", "reset"]]:
        """The response as a list of writes and pauses, and how the connection ends."""
        pieces = [_Piece(_serialize_head(plan.status, plan.headers))]
        payload = plan.payload if plan.send_payload else memoryview(b"")
        chunked = plan.framing == "chunked" and plan.send_payload

        def body(view: memoryview) -> Iterator[_Piece]:
            for offset in range(0, len(view), _SEND_STEP):
                part = view[offset : offset + _SEND_STEP]
                yield _Piece(part, len(part), chunk=chunked)

        ending: Literal["keep", "close", "fin", "reset"] = (
            "close" if plan.framing == "close" else "keep"
        )
        cut = len(payload)
        stall: StallAfter | None = None
        if isinstance(fault, DropAfter):
            cut = min(fault.n_bytes, cut)
            ending = "reset" if fault.reset else "fin"
        elif isinstance(fault, ShortBody):
            cut = max(0, cut - fault.n_missing)
            ending = "fin"
        elif isinstance(fault, StallAfter):
            stall = fault
            if fault.close:
                cut = min(fault.n_bytes, cut)
                ending = "fin"
        elif isinstance(fault, (LongBody, CloseConnection)):
            ending = "close"

        if stall is not None:
            at = min(stall.n_bytes, cut)
            pieces += body(payload[:at])
            pieces.append(_Piece(pause=stall.seconds))
            pieces += body(payload[at:cut])
        else:
            pieces += body(payload[:cut])
        if ending in ("fin", "reset"):
            return pieces, ending
        if chunked:
            pieces.append(_Piece(b"0\r\n\r\n"))
        if isinstance(fault, LongBody) and fault.n_extra > 0:
            garbage = (_GARBAGE * (fault.n_extra // len(_GARBAGE) + 1))[: fault.n_extra]
            pieces.append(_Piece(garbage, fault.n_extra))
        return pieces, ending


def _with_last(pieces: list[_Piece]) -> Iterator[tuple[_Piece, bool]]:
    for position, piece in enumerate(pieces):
        yield piece, position == len(pieces) - 1


def _check_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/': {path!r}")
    return path
