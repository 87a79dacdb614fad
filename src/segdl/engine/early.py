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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..core.controlfile import ControlFileError
from ..core.destinations import DestinationPolicy
from ..core.proxyrules import ProxySettings
from ..core.responses import ResponseHead
from ..core.resume import pieces_from_control
from ..core.urls import HttpURL
from ..io import files
from ..io.dataplane import Endpoint, TLSSessions
from ..io.firstrequest import FirstResponse, send_first_request
from ..io.remote import take_userinfo
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
    "first_ranges",
    "opening_ranges",
    "take_head_start",
]


@dataclass(frozen=True, slots=True)
class EarlyKey:
    """What makes two beginnings of a download the same: an early start is taken over only
    by a flow that would have sent exactly its request on exactly such connections."""

    url: str
    headers: frozenset[tuple[str, str]]
    ranges: tuple[tuple[int, int], ...]  # the first request's, then those sent ahead
    ahead: int
    ca_certificate: str | None
    connect_timeout: float
    read_timeout: float
    buffer_size: int
    # Never taken over under other proxy settings or another destination policy.
    proxies: ProxySettings | None
    destinations: DestinationPolicy | None

    @classmethod
    def of(
        cls,
        url: str,
        headers: Mapping[str, str],
        options: Options,
        *,
        ranges: Sequence[tuple[int, int]],
        ahead: int,
    ) -> EarlyKey:
        return cls(
            url=url,
            headers=frozenset(headers.items()),
            ranges=tuple(ranges),
            ahead=ahead,
            ca_certificate=options.ca_certificate,
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            buffer_size=options.buffer_size,
            proxies=options.proxies,
            destinations=options.destinations,
        )


@dataclass(frozen=True, slots=True)
class Speculation:
    """A request a connection opened ahead sent before the file's size was known: bytes
    ``first..last`` (as asked), and the head of its answer, whose body waits in the socket."""

    first: int
    last: int
    head: ResponseHead


class Slot:
    """One connection being made and opened ahead, in a thread of its own; with *ask*, it
    sends that request as soon as it is open (:class:`Speculation`)."""

    def __init__(
        self,
        make: Callable[[], ConnectionLike],
        on_open: Callable[[], None],
        ask: tuple[int, int, Mapping[str, str]] | None = None,
    ) -> None:
        self._make = make
        self._on_open = on_open
        self._lock = threading.Lock()
        self._cancelled = False
        self.ask = ask
        self.conn: ConnectionLike | None = None
        self.opened = False
        self.speculation: Speculation | None = None
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
                if self.ask is not None:
                    first, last, headers = self.ask
                    head = conn.request(headers=headers, first=first, last=last, any_status=True)
                    if head.status == 206:
                        self.speculation = Speculation(first, last, head)
                    else:
                        # Not those bytes (no ranges: the whole file; a redirect; past the
                        # end): closed at once, so the server stops sending it.
                        conn.close()
        except Exception:
            # Left unconnected (or not made): the worker that takes it opens its own, and a
            # failure shows through the engine's retries, like any connection's.
            pass
        finally:
            with self._lock:
                self.ready.set()
                cancelled, made = self._cancelled, self.conn
            if cancelled and made is not None:
                made.close()

    def cancel(self) -> None:
        """Nobody will take it: abort what it is doing, close it (now, or as soon as its
        thread is done)."""
        with self._lock:
            self._cancelled = True
            conn, done = self.conn, self.ready.is_set()
        if conn is not None:
            conn.abort()
            if done:
                conn.close()


class Preconnects:
    """Connections to one endpoint, opened (TCP, TLS) before anyone knows what they fetch.

    Each is made and opened in a thread of its own: the caller does not wait for any.  The
    first ``len(asks)`` send a request at once (*asks*: the byte ranges, and the headers):
    their answers come while the size is still unknown, and are adopted when it is.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        count: int,
        make: Callable[[], ConnectionLike],
        asks: Sequence[tuple[int, int, Mapping[str, str]]] = (),
    ) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        plan: list[tuple[int, int, Mapping[str, str]] | None] = list(asks[:count])
        plan += [None] * (count - len(plan))
        self._slots = [Slot(make, self._opened, ask) for ask in plan]
        self._closed = False
        self.first_ready_at: float | None = None  # when the first one was open
        for slot in self._slots:
            threading.Thread(target=slot.run, name="segdl-preconnect", daemon=True).start()

    def _opened(self) -> None:
        with self._lock:
            if self.first_ready_at is None:
                self.first_ready_at = time.monotonic()

    def pop_ready(self) -> Slot | None:
        """One of the connections that is open already and asked nothing yet, if any."""
        with self._lock:
            for index, slot in enumerate(self._slots):
                if slot.ready.is_set() and slot.opened and slot.ask is None:
                    return self._slots.pop(index)
        return None

    def pop(self) -> Slot | None:
        """One of the connections that asked nothing (None: none left): wait for its
        ``ready``, then take its ``conn`` (None if it could not be made)."""
        with self._lock:
            if self._closed:
                return None
            for index, slot in enumerate(self._slots):
                if slot.ask is None:
                    return self._slots.pop(index)
            return None

    def pop_asking(self) -> list[Slot]:
        """The connections that sent a request of their own, in the order of their ranges."""
        with self._lock:
            if self._closed:
                return []
            asking = [slot for slot in self._slots if slot.ask is not None]
            self._slots = [slot for slot in self._slots if slot.ask is None]
            return asking

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
        first, last = key.ranges[0]
        ready = [conn] if conn is not None else []

        def open_connection(endpoint: Endpoint) -> ConnectionLike:
            return ready.pop() if ready else early.open_connection(endpoint)

        self._ask = partial(
            send_first_request,
            early.url,
            dict(key.headers),
            first=first,
            last=last,
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

    *ranges*: what the first request asks for, then what connections opened ahead ask for
    at once, before the size is known (all but one of them: a spare stays for a hedge);
    the answers to those are adopted when the size is known, or dropped.

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
        ranges: Sequence[tuple[int, int]],
        ahead: int,
    ) -> None:
        self.url = url
        self.key = EarlyKey.of(url, headers, options, ranges=ranges, ahead=ahead)
        # Sent by the connections opened ahead: the URL's own headers (its userinfo as Basic
        # auth), to the URL's own host.
        self._own_headers = dict(headers)
        take_userinfo(url, self._own_headers)
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
        """Connections opened ahead to *endpoint*; those to the URL's own endpoint send the
        requests of ``key.ranges`` at once."""
        if self.key.ahead <= 0:
            return None
        asks: list[tuple[int, int, Mapping[str, str]]] = []
        if endpoint == Endpoint.from_url(self.url):
            asks = [(first, last, self._own_headers) for first, last in self.key.ranges[1:]]
        return Preconnects(
            endpoint,
            self.key.ahead,
            partial(self.open_connection, endpoint),
            asks[: self.key.ahead - 1],
        )

    def close(self) -> None:
        """Stop the first request if it is still on its way, close what nobody took."""
        for attempt in self.attempts:
            attempt.abort()
        if self.preconnects is not None:
            self.preconnects.close()


def first_ranges(guess: Path, piece_length: int, count: int) -> list[tuple[int, int]]:
    """What a download's first requests ask for (``(first, last)``, inclusive): the first
    *count* pieces the partial at *guess* lacks (of a new file: its first pieces, whatever
    its size turns out to be), each from the end of its written prefix; a single byte, and
    nothing more, when something is there without resume state."""
    part = files.partial_path(guess)
    control = None
    for data in (part, guess):  # segdl's partial, then aria2c's in-place one
        try:
            control = files.read_control(data)
        except (ControlFileError, OSError):
            control = None
        if control is not None:
            break
    if control is None:
        if guess.exists() or part.exists():
            # Something is there already (a finished file, a partial without state, a
            # directory): its bytes are probably not wanted.
            return [(0, 0)]
        return [(i * piece_length, (i + 1) * piece_length - 1) for i in range(count)]
    pieces = pieces_from_control(control)
    piece = control.piece_length
    partial = pieces.partial_pieces()
    ranges = []
    for index in range(pieces.num_pieces):
        if not pieces.is_done(index):
            start = index * piece + partial.get(index, 0)
            ranges.append((start, start - start % piece + pieces.piece_size(index) - 1))
            if len(ranges) == count:
                break
    return ranges or [(0, piece - 1)]


def opening_ranges(guess: Path, piece_length: int, ahead: int) -> list[tuple[int, int]]:
    """The ranges a download opens with: its first request's, then one for each connection
    opened ahead but one (:func:`first_ranges`) — for a new file only.  A resumed one asks
    for its first missing piece alone: the pieces asked ahead arrive in a burst before
    anything can be saved, and a run killed at its start (killed, resumed, killed…) would
    fetch them again each time."""
    ranges = first_ranges(guess, piece_length, 1 + max(0, ahead - 1))
    resumed = ranges[0][0] > 0 or any(
        files.control_path(data).exists() for data in (files.partial_path(guess), guess)
    )
    return ranges[:1] if resumed else ranges


# -- the head start of `segdl get URL` --------------------------------------------------------

_head_start: EarlyStart | None = None
_head_start_lock = threading.Lock()


def begin_head_start(
    url: HttpURL,
    headers: Mapping[str, str],
    options: Options,
    *,
    connect: ConnectionFactory,
    ranges: Sequence[tuple[int, int]],
    ahead: int,
) -> EarlyStart:
    """Begin a download's first requests now, for its flow to take over later."""
    global _head_start
    started = EarlyStart(url, headers, options, connect=connect, ranges=ranges, ahead=ahead)
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
