"""Bandwidth limits: :class:`RateLimit`, shared by connections, changeable while they run.

Connections read in worker threads, so the limit is thread-safe and the waiting happens in
those threads (:func:`wait_for_limits`), in short slices: a changed rate, or an aborted
connection, takes effect within :data:`WAIT_SLICE` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from ..core.ratelimit import TokenBucket, check_rate

__all__ = ["RateLimit", "chunk_for_limits", "wait_for_limits"]

WAIT_SLICE = 0.05
# A limited connection reads this fraction of a second of the whole limit per chunk: small
# enough that 16 connections interleave smoothly, large enough to keep syscalls few.
CHUNK_SECONDS = 1 / 64
MIN_LIMITED_CHUNK = 16 * 1024


class RateLimit:
    """At most ``bytes_per_second`` through every connection that uses this limit.

    One instance may be given to many downloads (an overall limit) or to one (a per-download
    limit); a connection passes through every limit it was given.  ``None`` means unlimited.
    """

    def __init__(self, bytes_per_second: float | None = None) -> None:
        self._lock = threading.Lock()
        self._bucket = TokenBucket.create(bytes_per_second, now=time.monotonic())

    @property
    def rate(self) -> float | None:
        """The limit in bytes per second, or ``None``."""
        return self._bucket.rate

    def set(self, bytes_per_second: float | None) -> None:
        """Change the limit; running connections follow within a fraction of a second."""
        check_rate(bytes_per_second)
        with self._lock:
            self._bucket.set_rate(bytes_per_second, time.monotonic())

    def _charge(self, nbytes: int) -> int:
        with self._lock:
            return self._bucket.charge(nbytes, time.monotonic())

    def _delay(self, ticket: int) -> float:
        with self._lock:
            return self._bucket.delay(ticket, time.monotonic())

    def __repr__(self) -> str:
        return f"RateLimit({self.rate!r})"


def wait_for_limits(limits: Sequence[RateLimit], nbytes: int, aborted: Callable[[], bool]) -> None:
    """Charge *nbytes* to every limit, then block until all of them allow going on.

    Returns early when *aborted()* becomes true (the connection is being torn down).
    """
    if not limits or nbytes <= 0:
        return
    tickets = [(limit, limit._charge(nbytes)) for limit in limits]
    while not aborted():
        delay = max(limit._delay(ticket) for limit, ticket in tickets)
        if delay <= 0:
            return
        time.sleep(min(delay, WAIT_SLICE))


def chunk_for_limits(limits: Sequence[RateLimit], default: int) -> int:
    """How much a connection should read at once under *limits* (*default* when unlimited)."""
    chunk = default
    for limit in limits:
        rate = limit.rate
        if rate is not None:
            chunk = min(chunk, max(MIN_LIMITED_CHUNK, int(rate * CHUNK_SECONDS)))
    return chunk
