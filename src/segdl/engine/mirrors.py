"""The URLs one file is fetched from: spreading connections, and dropping a bad mirror.

aria2 spreads ``-s`` connections over a file's URIs, at most ``-x`` to each server.  A mirror
that fails for good, or is far slower per connection than the best one for two windows in a
row, is dropped: its connections are aborted and their ranges go back to the piece map for the
others to take.  The primary (the first URL) is dropped only for failures that are not the
file itself changing, and never when it is the last one left.
"""

from __future__ import annotations

import random
import ssl
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ..core.responses import Expected
from ..errors import (
    AuthError,
    DownloadError,
    HTTPStatusError,
    LinkExpired,
    NetworkError,
    RemoteChanged,
)
from ..io.dataplane import Endpoint, TLSSessions
from ..io.remote import ProbeResult
from ..io.tls import client_context
from .options import Options

__all__ = ["Abortable", "Mirror", "MirrorSet"]

# A site's signed link is asked for again this many times in a row before giving up, with a
# backoff between tries; and renewed at most this many times without a byte arriving between
# (a link refused right after renewal is a real refusal, not an expiry).
RENEW_TRIES = 3
RENEW_BACKOFF = 1.0
MAX_RENEWALS_WITHOUT_PROGRESS = 2
# A mirror slower per connection than the best one by this factor over a window is dropped.
SLOW_MIRROR_FACTOR = 8
SLOW_MIRROR_WINDOW = 5.0


class Abortable(Protocol):
    def abort(self) -> None: ...


@dataclass(eq=False)
class Mirror:
    """One URL of the file: its probe, its connections, and whether it was dropped."""

    probe: ProbeResult
    endpoint: Endpoint
    ssl_context: ssl.SSLContext | None
    primary: bool
    sessions: TLSSessions | None = None  # the TLS sessions its connections share
    dropped: DownloadError | None = None
    received: int = 0  # bytes fetched from it (under the ledger's lock)
    workers: int = 0  # workers currently using it
    connections: set[Abortable] = field(default_factory=set)
    window_bytes: int = 0  # `received` when the slow-mirror window began
    speed: float = 0.0  # bytes per second per busy connection, last window it had one
    slow_windows: int = 0  # consecutive windows it was too slow
    generation: int = 0  # how many times its link was renewed
    renewals_without_progress: int = 0

    @classmethod
    def create(
        cls,
        probe: ProbeResult,
        options: Options,
        *,
        primary: bool,
        sessions: TLSSessions | None = None,
    ) -> Mirror:
        endpoint = Endpoint.from_url(probe.url)
        https = endpoint.scheme == "https"
        context = client_context(options.ca_certificate) if https else None
        if https and sessions is None:
            sessions = TLSSessions()
        return cls(probe, endpoint, context, primary, sessions if https else None)

    def count(self, nbytes: int) -> None:
        """Bytes fetched from this mirror (called under the ledger's lock)."""
        self.received += nbytes
        if nbytes:
            self.renewals_without_progress = 0

    def renewed(self, probe: ProbeResult, options: Options) -> None:
        """Fetch from *probe*'s URL from now on (a fresh link of the same file)."""
        fresh = Mirror.create(probe, options, primary=self.primary)
        same_server = (fresh.endpoint.host, fresh.endpoint.port) == (
            self.endpoint.host,
            self.endpoint.port,
        )
        if not same_server:
            self.sessions = fresh.sessions  # TLS sessions resume on their own server only
        self.probe, self.endpoint, self.ssl_context = fresh.probe, fresh.endpoint, fresh.ssl_context
        self.generation += 1
        self.renewals_without_progress += 1

    @property
    def expected(self) -> Expected:
        """What each response from this mirror must match."""
        probe = self.probe
        return Expected(
            url=probe.url,
            host=self.endpoint.host_header,
            size=probe.size,
            etag=probe.etag,
            last_modified=probe.last_modified,
        )


class MirrorSet:
    """The mirrors of one download.  *lock* guards ``received`` (the ledger's lock);
    *on_change* wakes idle workers when a mirror is dropped; *primary_sessions*: the TLS
    sessions the primary's first connections (a warm start's) already hold."""

    def __init__(
        self,
        primary: ProbeResult,
        others: Sequence[ProbeResult],
        options: Options,
        *,
        lock: threading.Lock,
        on_change: Callable[[], None],
        renew: Callable[[], Awaitable[ProbeResult]] | None = None,
        primary_sessions: TLSSessions | None = None,
    ) -> None:
        self.mirrors = [Mirror.create(primary, options, primary=True, sessions=primary_sessions)]
        self.mirrors += [Mirror.create(m, options, primary=False) for m in others]
        self._lock = lock
        self._on_change = on_change
        self._window_start = 0.0
        self._options = options
        self._renew = renew
        self._renew_lock = trio.Lock()
        self.renewals = 0  # links renewed during this download

    def __len__(self) -> int:
        return len(self.mirrors)

    @property
    def primary(self) -> Mirror:
        return self.mirrors[0]

    def pick(self, index: int) -> Mirror:
        """Spread workers over the mirrors still in use (worker *index* → one of them)."""
        live = [m for m in self.mirrors if m.dropped is None]
        assert live, "a worker runs only while a mirror is left"
        mirror = live[index % len(live)]
        mirror.workers += 1
        return mirror

    def drop(self, mirror: Mirror, exc: DownloadError) -> bool:
        """Stop using *mirror* after *exc*; False when the download cannot go on without it."""
        if mirror.primary and isinstance(exc, RemoteChanged):
            return False  # the file itself changed: the caller restarts from a new probe
        if not any(m.dropped is None for m in self.mirrors if m is not mirror):
            return False
        mirror.dropped = exc
        for conn in list(mirror.connections):
            conn.abort()  # their ranges are released and claimed by the others
        self._on_change()
        return True

    def is_expiry(self, mirror: Mirror, exc: DownloadError) -> bool:
        """Is *exc* the primary's signed link expiring?  Only a link a site gave us is
        renewed: 401/403, or 400 whose body says it expired (a URL the user typed, or a
        mirror, that answers 403 stays an authentication error)."""
        if self._renew is None or not mirror.primary or not isinstance(exc, HTTPStatusError):
            return False
        return exc.status in (401, 403) or (exc.status == 400 and "expired" in exc.body.lower())

    async def renew(self, mirror: Mirror, generation: int, refused: DownloadError) -> None:
        """Give *mirror* a fresh link, unless one newer than *generation* (the link the
        refused request used) came meanwhile.  One renewal at a time; the other connections
        go on fetching.

        Raises:
            LinkExpired: the site could not give a fresh link (the partial is kept).
            RemoteChanged: the fresh link names another version of the file.
            AuthError: the fresh links are refused as well (a real refusal).
        """
        assert self._renew is not None
        async with self._renew_lock:
            if mirror.generation != generation:
                return  # another connection renewed it while this one was refused
            if mirror.renewals_without_progress >= MAX_RENEWALS_WITHOUT_PROGRESS:
                raise AuthError(
                    f"{refused} even with a fresh link from the site",
                    url=mirror.probe.url,
                    status=getattr(refused, "status", 0),
                )
            last: DownloadError = refused
            for attempt in range(RENEW_TRIES):
                if attempt:
                    await trio.sleep(RENEW_BACKOFF * 2 ** (attempt - 1) * (0.5 + random.random()))
                try:
                    probe = await self._renew()
                except RemoteChanged:
                    raise
                except DownloadError as exc:
                    last = exc
                    continue
                mirror.renewed(probe, self._options)
                self.renewals += 1
                return
            raise LinkExpired(
                f"the download link expired and could not be renewed ({last})",
                url=mirror.probe.url,
                status=getattr(last, "status", 0),
            )

    def start_window(self, now: float) -> None:
        self._window_start = now
        for m in self.mirrors:
            m.window_bytes = m.received

    def check_slow(self, now: float) -> None:
        """Drop a mirror much slower per connection than the best one (checked per window).

        Speeds count connections that are fetching: at the tail, idle workers say nothing
        about a mirror, and a mirror with none busy keeps the speed it last showed.
        """
        elapsed = now - self._window_start
        if elapsed < SLOW_MIRROR_WINDOW:
            return
        live = [m for m in self.mirrors if m.dropped is None]
        with self._lock:
            for m in live:
                if m.connections:
                    m.speed = (m.received - m.window_bytes) / len(m.connections) / elapsed
        self.start_window(now)
        if len(live) < 2:
            return
        best = max(m.speed for m in live)
        for m in live:
            slow = bool(m.connections) and m.speed * SLOW_MIRROR_FACTOR < best
            m.slow_windows = m.slow_windows + 1 if slow else 0
            # Two windows in a row: one slow start (a far server's first bytes) is forgiven.
            if m.slow_windows >= 2:
                self.drop(
                    m,
                    NetworkError(
                        f"{m.endpoint.host_header} was more than {SLOW_MIRROR_FACTOR}× slower "
                        "than another mirror",
                        url=m.probe.url,
                    ),
                )
