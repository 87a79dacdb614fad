"""A byte-rate token bucket, counted in bytes rather than tokens.

Pure: the caller passes the clock reading, so tests drive time directly.  The bucket is
charged *after* bytes arrive (a connection learns a chunk's size once it is read); each
charge gets a ticket — the running total of bytes charged — and the reader waits until the
bucket's *allowance* (the rate integrated over time) reaches its ticket.  Readers are thus
served in the order they charged, whichever download they belong to, and a connection that
finished its range reserves nothing: the limit is shared by whoever is reading.

Idle time earns credit only up to ``tolerance`` seconds of the rate, so a pause does not let
a burst through afterwards.  Over any interval of length ``t`` the bytes let through never
exceed ``rate × (t + tolerance)`` plus the one chunk each reader holds while it waits.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    """``rate`` bytes per second (``None``: unlimited)."""

    rate: float | None
    tolerance: float
    _allowed: float  # bytes the rate has permitted up to _updated
    _updated: float
    _charged: int  # bytes charged so far (the last ticket handed out)

    @classmethod
    def create(cls, rate: float | None, *, now: float, tolerance: float = 0.1) -> TokenBucket:
        check_rate(rate)
        if tolerance < 0:
            raise ValueError("tolerance must not be negative")
        return cls(rate=rate, tolerance=tolerance, _allowed=0.0, _updated=now, _charged=0)

    def charge(self, nbytes: int, now: float) -> int:
        """Account for *nbytes* read at *now*; return the ticket to wait for."""
        self._advance(now)
        self._charged += nbytes
        return self._charged

    def delay(self, ticket: int, now: float) -> float:
        """Seconds until the bytes up to *ticket* are within the limit (0: go on)."""
        self._advance(now)
        if self.rate is None or ticket <= self._allowed:
            return 0.0
        return (ticket - self._allowed) / self.rate

    def set_rate(self, rate: float | None, now: float) -> None:
        """Change the rate from *now* on; bytes charged but not yet allowed wait at the new one."""
        check_rate(rate)
        self._advance(now)
        self.rate = rate
        if rate is None:
            self._allowed = float(self._charged)

    def _advance(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._updated = max(self._updated, now)
        if self.rate is None:
            self._allowed = float(self._charged)
            return
        credit_limit = self._charged + self.rate * self.tolerance
        self._allowed = min(self._allowed + elapsed * self.rate, max(self._allowed, credit_limit))


def check_rate(rate: float | None) -> None:
    if rate is not None and not rate > 0:
        raise ValueError("a rate limit must be positive (or None for unlimited)")
