"""A download's first request and its connections opened ahead, running in threads.

The first request of a download is its probe, sent on a data connection
(:mod:`segdl.io.firstrequest`); meanwhile the other data connections open (TCP and TLS) to
the same host.  Both run in plain threads, so they can begin before trio is even imported:
``segdl get URL`` begins them right after reading its command line
(:func:`begin_head_start`), while the rest of segdl loads, and the download's flow takes
them over (:func:`take_head_start`) when they are what it would have begun itself — the
same URL, headers, range and connection options — or closes them.  The flow's own warm
start (:mod:`.warm`) drives the same :class:`EarlyStart`.

No trio here, and only light imports: this module is loaded before them.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..core.controlfile import ControlFileError
from ..core.resume import pieces_from_control
from ..core.urls import HttpURL
from ..io import files
from ..io.dataplane import Endpoint, TLSSessions
from ..io.firstrequest import FirstResponse, send_first_request
from ..io.tls import client_context
from .connections import ConnectionFactory, ConnectionLike
from .options import Options

# A first request is sent again on a connection opened ahead once it has waited this long,
# and HEDGE_FACTOR times as long as such a connection took to open (TCP and TLS: two round
# trips; its answer needs one).
HEDGE_AFTER = 0.3
HEDGE_FACTOR = 3.0

__all__ = [
    "EarlyKey",
    "EarlyStart",
    "Preconnects",
    "begin_head_start",
    "first_range",
    "take_head_start",
]


@dataclass(frozen=True, slots=True)
class EarlyKey:
    """What makes two beginnings of a download the same: an early start is taken over only
    by a flow that would have sent exactly its request on exactly such connections."""

    url: str
    headers: frozenset[tuple[str, str]]
    first: int
    last: int
    ahead: int
    ca_certificate: str | None
    connect_timeout: float
    read_timeout: float
    buffer_size: int

    @classmethod
    def of(
        cls,
        url: str,
        headers: Mapping[str, str],
        options: Options,
        *,
        first: int,
        last: int,
        ahead: int,
    ) -> EarlyKey:
        return cls(
            url=url,
            headers=frozenset(headers.items()),
            first=first,
            last=last,
            ahead=ahead,
            ca_certificate=options.ca_certificate,
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            buffer_size=options.buffer_size,
        )


class _Slot:
    """One connection being made and opened ahead, in a thread of its own."""

    def __init__(self, make: Callable[[], ConnectionLike], on_open: Callable[[], None]) -> None:
        self._make = make
        self._on_open = on_open
        self._lock = threading.Lock()
        self._cancelled = False
        self.conn: ConnectionLike | None = None
        self.opened = False
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            conn = self._make()
            with self._lock:
                self.conn = conn
                cancelled = self._cancelled
            if not cancelled:
                conn.connect()
                self.opened = True
                self._on_open()
        except Exception:
            # Left unconnected (or not made): the worker that takes it opens its own, and a
            # failure shows through the engine's retries, like any connection's.
            pass
        finally:
            self.ready.set()

    def cancel(self) -> None:
        """Nobody will take it: abort its connect, close it (now, or when its thread sees)."""
        with self._lock:
            self._cancelled = True
            conn = self.conn
        if conn is not None:
            conn.abort()
            if self.ready.is_set():
                conn.close()
            # Otherwise its thread sees the abort when the connect returns, and closes it.


class Preconnects:
    """Connections to one endpoint, opened (TCP, TLS) before anyone knows what they fetch.

    Each is made and opened in a thread of its own: the caller does not wait for any.
    """

    def __init__(self, endpoint: Endpoint, count: int, make: Callable[[], ConnectionLike]) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._slots = [_Slot(make, self._opened) for _ in range(count)]
        self._closed = False
        self.first_ready_at: float | None = None  # when the first one was open
        for slot in self._slots:
            threading.Thread(target=slot.run, name="segdl-preconnect", daemon=True).start()

    def _opened(self) -> None:
        with self._lock:
            if self.first_ready_at is None:
                self.first_ready_at = time.monotonic()

    def pop_ready(self) -> _Slot | None:
        """One of the connections that is open already, if any."""
        with self._lock:
            for index, slot in enumerate(self._slots):
                if slot.ready.is_set() and slot.opened:
                    return self._slots.pop(index)
        return None

    def pop(self) -> _Slot | None:
        """One of the connections (None: none left): wait for its ``ready``, then take its
        ``conn`` (None if it could not be made)."""
        with self._lock:
            if self._closed or not self._slots:
                return None
            return self._slots.pop(0)

    def close(self) -> None:
        """Abort and close the connections nobody took (a connect in progress fails)."""
        with self._lock:
            self._closed = True
            slots, self._slots = self._slots, []
        for slot in slots:
            slot.cancel()


class Attempt:
    """One first request, in its thread: ``done`` is set once ``result`` or ``error`` is (and
    the early start's ``answered``).  *conn*: a connection already open to the URL's host,
    for its first hop."""

    def __init__(self, early: EarlyStart, conn: ConnectionLike | None = None) -> None:
        self.done = threading.Event()
        self._answered = early.answered
        self.hops: list[ConnectionLike] = []
        self.result: tuple[FirstResponse, ConnectionLike] | None = None
        self.error: BaseException | None = None
        key = early.key
        ready = [conn] if conn is not None else []

        def open_connection(endpoint: Endpoint) -> ConnectionLike:
            return ready.pop() if ready else early.open_connection(endpoint)

        self._ask = partial(
            send_first_request,
            early.url,
            dict(key.headers),
            first=key.first,
            last=key.last,
            open_connection=open_connection,
            on_hop=self.hops.append,
        )
        threading.Thread(target=self._run, name="segdl-first-request", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._ask()
        except BaseException as exc:  # carried to whoever waits for it
            self.error = exc
        finally:
            self.done.set()
            self._answered.set()

    def take(self) -> tuple[FirstResponse, ConnectionLike]:
        """The answer and its connection, now the caller's; or the error, raised."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        result, self.result = self.result, None
        return result

    def abort(self) -> None:
        """Stop the request if it is on its way; close its answer if nobody took it."""
        for conn in list(self.hops):
            conn.abort()
        if self.result is not None:
            self.result[1].close()


class EarlyStart:
    """A download's first request (:attr:`attempts`; :meth:`ask` sends it again) and the
    connections opened ahead to its host (:attr:`preconnects`).

    A first request that goes unanswered far longer than the connections opened ahead took
    to open (its connection crawls) is *hedged*: sent again on one of them
    (:meth:`hedge`); the first answer wins, the other is aborted.
    """

    def __init__(
        self,
        url: HttpURL,
        headers: Mapping[str, str],
        options: Options,
        *,
        connect: ConnectionFactory,
        first: int,
        last: int,
        ahead: int,
    ) -> None:
        self.url = url
        self.key = EarlyKey.of(url, headers, options, first=first, last=last, ahead=ahead)
        self._options = options
        self._connect = connect
        self._tls_lock = threading.Lock()
        self._sessions: dict[tuple[str, str, int], TLSSessions] = {}
        self.answered = threading.Event()
        self.asked_at = time.monotonic()
        # The first request first: everything else waits behind it for the TLS context.
        self.attempts = [Attempt(self)]
        self.preconnects = self.open_ahead(Endpoint.from_url(url))

    def ask(self) -> None:
        """Send the first request again (a busy server's answer is retried)."""
        for attempt in self.attempts:
            attempt.abort()
        self.answered.clear()
        self.asked_at = time.monotonic()
        self.attempts = [Attempt(self)]

    def hedge(self, now: float) -> bool:
        """Send the first request again on a connection opened ahead, when it has waited far
        longer than such a connection took to open; True if it was sent."""
        preconnects = self.preconnects
        if len(self.attempts) > 1 or preconnects is None:
            return False
        opened = preconnects.first_ready_at
        if opened is None:
            return False
        if now - self.asked_at < max(HEDGE_AFTER, HEDGE_FACTOR * (opened - self.asked_at)):
            return False
        slot = preconnects.pop_ready()
        if slot is None or slot.conn is None:
            return False
        self.attempts.append(Attempt(self, slot.conn))
        return True

    def answer(self) -> tuple[FirstResponse, ConnectionLike]:
        """The first attempt's answer to arrive (once ``answered`` is set); the others are
        stopped.  Raises its error."""
        winner = next(a for a in self.attempts if a.done.is_set())
        for attempt in self.attempts:
            if attempt is not winner:
                attempt.abort()
        self.attempts = [winner]
        return winner.take()

    def tls_for(self, endpoint: Endpoint) -> tuple[ssl.SSLContext | None, TLSSessions | None]:
        """The TLS context and the session cache the connections to *endpoint* share."""
        if endpoint.scheme != "https":
            return None, None
        key = (endpoint.scheme, endpoint.host, endpoint.port)
        # One thread loads the trust store (tens of ms); the others wait for it, not redo it.
        with self._tls_lock:
            context = client_context(self._options.ca_certificate)
            return context, self._sessions.setdefault(key, TLSSessions())

    def open_connection(self, endpoint: Endpoint) -> ConnectionLike:
        context, sessions = self.tls_for(endpoint)
        return self._connect(endpoint, self._options, context, sessions)

    def open_ahead(self, endpoint: Endpoint) -> Preconnects | None:
        if self.key.ahead <= 0:
            return None
        return Preconnects(endpoint, self.key.ahead, partial(self.open_connection, endpoint))

    def close(self) -> None:
        """Stop the first request if it is still on its way, close what nobody took."""
        for attempt in self.attempts:
            attempt.abort()
        if self.preconnects is not None:
            self.preconnects.close()


def first_range(guess: Path, piece_length: int) -> tuple[int, int]:
    """What a download's first request asks for: the first piece the partial at *guess*
    lacks (the whole first piece of a new file); a single byte when something is there
    without resume state."""
    try:
        control = files.read_control(guess)
    except (ControlFileError, OSError):
        control = None
    if control is None:
        # Something is there already (a finished file, a directory): its bytes are probably
        # not wanted.
        return (0, 0) if guess.exists() else (0, piece_length - 1)
    first = pieces_from_control(control).first_missing() or 0
    piece = control.piece_length
    return first, (first // piece + 1) * piece - 1


# -- the head start of `segdl get URL` --------------------------------------------------------

_head_start: EarlyStart | None = None
_head_start_lock = threading.Lock()


def begin_head_start(
    url: HttpURL,
    headers: Mapping[str, str],
    options: Options,
    *,
    connect: ConnectionFactory,
    first: int,
    last: int,
    ahead: int,
) -> EarlyStart:
    """Begin a download's first request now, for its flow to take over later."""
    global _head_start
    started = EarlyStart(
        url, headers, options, connect=connect, first=first, last=last, ahead=ahead
    )
    with _head_start_lock:
        previous, _head_start = _head_start, started
    if previous is not None:
        previous.close()
    return started


def take_head_start(key: EarlyKey) -> EarlyStart | None:
    """The head start begun for *key*, if any (once); a head start begun for anything else
    is closed: it was not what the download needed."""
    global _head_start
    with _head_start_lock:
        started, _head_start = _head_start, None
    if started is None:
        return None
    if started.key == key:
        return started
    started.close()
    return None
