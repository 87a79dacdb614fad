"""Progress accounting: transfer rate over a sliding window and the ETA it implies.

Pure: the caller passes the clock reading with every sample, so tests drive time directly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["MIB", "RateMeter", "Snapshot"]

MIB = 1024 * 1024

# Long enough to smooth the bursts of 16 connections, short enough that the rate shown
# follows a real slow-down within a few seconds (aria2 uses a similar window).
DEFAULT_WINDOW = 5.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    downloaded: int
    total: int | None
    rate: float  # bytes per second
    eta: float | None  # seconds, None when unknown

    @property
    def fraction(self) -> float:
        if not self.total:
            return 0.0
        return min(1.0, self.downloaded / self.total)


class RateMeter:
    """Bytes-per-second over the last *window* seconds of samples.

    Feed it the cumulative byte count with :meth:`sample`; the bytes already present when
    the meter started (a resumed download) never count as speed.
    """

    def __init__(
        self, *, total: int | None, start_bytes: int, now: float, window: float = DEFAULT_WINDOW
    ) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.total = total
        self._window = window
        self._samples: deque[tuple[float, int]] = deque([(now, start_bytes)])
        self._last = start_bytes

    def sample(self, downloaded: int, now: float) -> Snapshot:
        self._last = downloaded
        self._samples.append((now, downloaded))
        # Keep one sample older than the window so the rate spans the whole window.
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()
        return self.snapshot()

    def snapshot(self) -> Snapshot:
        rate = self.rate()
        eta: float | None = None
        if self.total is not None:
            remaining = max(0, self.total - self._last)
            if remaining == 0:
                eta = 0.0
            elif rate > 0:
                eta = remaining / rate
        return Snapshot(downloaded=self._last, total=self.total, rate=rate, eta=eta)

    def rate(self) -> float:
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return 0.0
        return max(0.0, (b1 - b0) / (t1 - t0))
