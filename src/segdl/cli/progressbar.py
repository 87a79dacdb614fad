"""A one-line progress display for terminals; redrawn in place with ``\\r``."""

from __future__ import annotations

import shutil
from typing import TextIO

from ..core.events import Event, Progress, Started, Success

__all__ = ["ProgressBar", "format_bytes", "format_eta"]


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """Draws the latest progress of one or more downloads on one terminal line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._names: dict[int, str] = {}
        self._progress: dict[int, Progress] = {}
        self._drawn = False

    def handle(self, download_id: int, event: Event) -> None:
        if isinstance(event, Started):
            self._names[download_id] = event.filename
        elif isinstance(event, Progress):
            self._progress[download_id] = event
            self._draw()
        elif isinstance(event, Success):
            self._progress.pop(download_id, None)
            self.clear()

    def line(self, width: int) -> str:
        if not self._progress:
            return ""
        if len(self._progress) == 1:
            ((download_id, p),) = self._progress.items()
            label = self._names.get(download_id, "")
        else:
            p = _combine(list(self._progress.values()))
            label = f"{len(self._progress)} files"
        done = format_bytes(p.downloaded)
        total = format_bytes(p.total) if p.total else "?"
        info = (
            f" {p.progress * 100:5.1f}% {done}/{total} {p.rate:7.1f} MiB/s "
            f"ETA {format_eta(p.eta)} [{p.connections} conn]"
        )
        room = width - len(info) - 3
        if room >= 10:
            bar_width = min(40, room // 2) if label else min(40, room)
            label = label[: max(0, room - bar_width - 1)]
            filled = int(bar_width * p.progress)
            bar = "#" * filled + "-" * (bar_width - filled)
            return f"{label} [{bar}]{info}".strip()
        return info.strip()[: max(0, width - 1)]

    def _draw(self) -> None:
        width = shutil.get_terminal_size((80, 24)).columns
        text = self.line(width)
        self._stream.write("\r" + text.ljust(width - 1)[: width - 1])
        self._stream.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            width = shutil.get_terminal_size((80, 24)).columns
            self._stream.write("\r" + " " * (width - 1) + "\r")
            self._stream.flush()
            self._drawn = False


def _combine(items: list[Progress]) -> Progress:
    downloaded = sum(p.downloaded for p in items)
    totals = [p.total for p in items]
    total = sum(t for t in totals if t) if all(totals) else None
    rate = sum(p.rate for p in items)
    eta = None
    if total is not None and rate > 0:
        eta = (total - downloaded) / (rate * 1024 * 1024)
    return Progress(
        progress=downloaded / total if total else 0.0,
        rate=rate,
        eta=eta,
        downloaded=downloaded,
        total=total,
        connections=sum(p.connections for p in items),
    )
