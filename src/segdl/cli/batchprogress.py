"""What a batch looks like on a terminal: a line per active file, a total line, a summary.

The drawing is split in two: :func:`render_lines` is a pure function from the batch's state and
the terminal's width to text lines (unit-tested on made-up state), and :class:`LiveDisplay`
puts those lines on the terminal, redrawing them in place with ANSI cursor movement — one
write per frame, each line overwritten then erased to its end (``CSI K``), never cleared
first, so nothing flickers.  :class:`BatchReporter` routes a batch's events to the display,
to JSON lines or to plain lines, and :func:`summary_lines` is aria2c's "Download Results".
"""

from __future__ import annotations

import json
import os
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TextIO

from ..batch import BatchJob, BatchResult
from ..core.events import Aborted, Event, Failed, Metadata, Progress, Started, Success
from ..core.headers import filename_from_url
from ..errors import redact_url
from .progressbar import format_bytes, format_eta

__all__ = [
    "BatchReporter",
    "BatchView",
    "JobState",
    "JobView",
    "LiveDisplay",
    "render_lines",
    "summary_lines",
]

MIB = 1024 * 1024
# Lines are kept one column short of the width: writing the last column makes some terminals
# wrap at once, and a wrapped line would break the cursor arithmetic of the redraw.
_MARGIN = 1
_MIN_NAME = 8
_BAR_MAX = 30
_BAR_MIN = 10


class JobState(Enum):
    QUEUED = "queued"
    ACTIVE = "active"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class JobView:
    """What the display knows of one job."""

    name: str
    state: JobState = JobState.QUEUED
    size: int | None = None
    progress: Progress | None = None

    @property
    def downloaded(self) -> int:
        if self.state is JobState.DONE and self.size is not None:
            return self.size
        return self.progress.downloaded if self.progress is not None else 0


@dataclass
class BatchView:
    """The state of a batch as its events tell it."""

    jobs: list[JobView] = field(default_factory=list)

    @classmethod
    def for_jobs(cls, jobs: list[BatchJob]) -> BatchView:
        return cls([JobView(name=job.out or _name_from_url(job.urls[0])) for job in jobs])

    def apply(self, index: int, event: Event) -> bool:
        """Record *event* of job *index*; True when a job changed state (worth a redraw now)."""
        job = self.jobs[index]
        before = job.state
        if isinstance(event, Started):
            job.name = event.filename
            job.size = event.size
            job.state = JobState.ACTIVE
        elif isinstance(event, Metadata):
            job.state = JobState.ACTIVE
        elif isinstance(event, Progress):
            job.progress = event
            job.size = event.total if event.total is not None else job.size
            job.state = JobState.ACTIVE
        elif isinstance(event, Success):
            job.size = event.size
            job.state = JobState.DONE
        elif isinstance(event, Failed):
            job.state = JobState.FAILED
        elif isinstance(event, Aborted):
            job.state = JobState.CANCELLED
        return job.state is not before

    def count(self, state: JobState) -> int:
        return sum(1 for job in self.jobs if job.state is state)


def _name_from_url(url: str) -> str:
    name = filename_from_url(url) if url.lower().startswith(("http://", "https://")) else None
    return name or redact_url(url)


# -- pure rendering ---------------------------------------------------------------------------


def _char_width(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Cc", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Columns *text* takes on a terminal (wide East Asian characters count two)."""
    return sum(_char_width(char) for char in text)


def cut(text: str, width: int, *, ellipsis: bool = False) -> str:
    """The longest start of *text* that fits in *width* columns (ending in ``…`` if cut)."""
    if display_width(text) <= width:
        return text
    room = width - 1 if ellipsis else width
    kept: list[str] = []
    used = 0
    for char in text:
        char_width = _char_width(char)
        if used + char_width > room:
            break
        kept.append(char)
        used += char_width
    return "".join(kept) + ("…" if ellipsis and width > 0 else "")


def _printable(text: str) -> str:
    """A name from a server may hold control characters; they must not reach the terminal."""
    return "".join(char if char.isprintable() else "?" for char in text)


def file_line(number: int, job: JobView, width: int) -> str:
    """One active file: name, bar, percent, bytes, rate, ETA, connections — fit to *width*.

    On a narrow terminal the bar goes first, then the connections, the bytes and the ETA;
    the name keeps at least a few columns as long as the percentage fits.
    """
    p = job.progress
    total = p.total if p is not None and p.total is not None else job.size
    done = p.downloaded if p is not None else 0
    percent = f"{done / total * 100:5.1f}%" if total else "    ?%"
    amount = f"{format_bytes(done)}/{format_bytes(total) if total else '?'}"
    rate = f"{p.rate if p is not None else 0.0:6.1f} MiB/s"
    eta = f"ETA {format_eta(p.eta if p is not None else None)}"
    connections = f"{p.connections if p is not None else 0:2d} conn"
    prefix = f"#{number} "
    name = _printable(job.name)
    limit = width - _MARGIN
    variants = (
        f" {percent} {amount} {rate} {eta} {connections}",
        f" {percent} {amount} {rate} {eta}",
        f" {percent} {rate} {eta}",
        f" {percent} {rate}",
        f" {percent}",
    )
    for level, info in enumerate(variants):
        room = limit - display_width(prefix) - display_width(info)
        if level == 0 and room >= _MIN_NAME + 3 + _BAR_MIN:
            bar_width = max(_BAR_MIN, min(_BAR_MAX, (room - 3) // 2))
            name_room = room - bar_width - 3
            fraction = min(1.0, done / total) if total else 0.0
            filled = int(bar_width * fraction)
            bar = "#" * filled + "-" * (bar_width - filled)
            shown = cut(name, name_room, ellipsis=True)
            padding = " " * (name_room - display_width(shown))
            return f"{prefix}{shown}{padding} [{bar}]{info}"
        if room >= _MIN_NAME:
            return f"{prefix}{cut(name, room, ellipsis=True)}{info}"
    return cut(f"{prefix}{name}", limit, ellipsis=True)


def total_line(view: BatchView, width: int) -> str:
    """Files done/failed/active/queued, bytes so far, overall rate."""
    active = [job for job in view.jobs if job.state is JobState.ACTIVE]
    rate = sum(job.progress.rate for job in active if job.progress is not None)
    downloaded = sum(job.downloaded for job in view.jobs)
    done, failed = view.count(JobState.DONE), view.count(JobState.FAILED)
    queued = view.count(JobState.QUEUED)
    tail = f" | {format_bytes(downloaded)} | {rate:.1f} MiB/s"
    variants = (
        f"Total: {done} done, {failed} failed, {len(active)} active, {queued} queued{tail}",
        f"{done} done {failed} failed {len(active)} active {queued} queued{tail}",
        f"{done} done {failed} failed {len(active)} active {queued} queued",
    )
    limit = width - _MARGIN
    for text in variants:
        if display_width(text) <= limit:
            return text
    return cut(variants[-1], limit)


def render_lines(view: BatchView, width: int, *, height: int | None = None) -> list[str]:
    """The lines to show: one per active file, then the total line.

    *height* bounds the number of lines (the terminal's rows): files that do not fit are
    counted on one ``… N more active`` line.
    """
    width = max(width, 2)
    active = [
        (number, job) for number, job in enumerate(view.jobs, 1) if job.state is JobState.ACTIVE
    ]
    shown = active
    if height is not None and len(active) + 1 > height:
        shown = active[: max(0, height - 2)]
    lines = [file_line(number, job, width) for number, job in shown]
    if len(shown) < len(active):
        lines.append(cut(f"… {len(active) - len(shown)} more active", width - _MARGIN))
    lines.append(total_line(view, width))
    return lines


# -- the terminal -----------------------------------------------------------------------------

_UP = "\x1b[{}A"  # CSI n A: cursor up n lines (ECMA-48 CUU)
_ERASE_LINE_END = "\x1b[K"  # CSI K: erase to the end of the line (EL)
_ERASE_BELOW = "\x1b[J"  # CSI J: erase from the cursor to the end of the screen (ED)


def terminal_size(stream: TextIO) -> os.terminal_size:
    """The size of the terminal *stream* writes to (80×24 when it cannot be asked)."""
    try:
        return os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return os.terminal_size((80, 24))


class LiveDisplay:
    """Keeps :func:`render_lines` of a :class:`BatchView` on the terminal, redrawn in place.

    The cursor rests at the start of the line below the block; a redraw moves it up over the
    block and writes every line anew.  Progress redraws are at most one per ``interval``
    seconds; a file starting or ending redraws at once.
    """

    def __init__(
        self,
        stream: TextIO,
        view: BatchView,
        *,
        interval: float = 0.2,
        size: Callable[[], os.terminal_size] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self.view = view
        self._interval = interval
        self._size = size or (lambda: terminal_size(stream))
        self._clock = clock
        self._drawn = 0
        self._last = -float("inf")

    def event(self, index: int, event: Event) -> None:
        changed = self.view.apply(index, event)
        self.refresh(force=changed)

    def refresh(self, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        columns, rows = self._size()
        lines = render_lines(self.view, columns, height=max(2, rows - 1))
        frame = [self._home()]
        frame.extend(line + _ERASE_LINE_END + "\n" for line in lines)
        frame.append(_ERASE_BELOW)
        self._stream.write("".join(frame))
        self._stream.flush()
        self._drawn = len(lines)

    def _home(self) -> str:
        return "\r" + _UP.format(self._drawn) if self._drawn else "\r"

    def clear(self) -> None:
        """Remove the block from the screen (the cursor ends where it began)."""
        if self._drawn:
            self._stream.write(self._home() + _ERASE_BELOW)
            self._stream.flush()
            self._drawn = 0

    def print_above(self, text: str, stream: TextIO) -> None:
        """Print a line on *stream* (often the same terminal) above the block, then redraw."""
        self.clear()
        stream.write(text + "\n")
        stream.flush()
        self.refresh(force=True)


# -- the summary ------------------------------------------------------------------------------


def summary_lines(result: BatchResult) -> list[str]:
    """aria2c's "Download Results": one line per file, OK or ERR, speed, path or URL + reason."""
    lines = [
        "Download Results:",
        "   #|stat|   avg speed|path/URL",
        "----+----+------------+" + "-" * 40,
    ]
    for outcome in result:
        number = f"{outcome.index + 1:4d}"
        if outcome.result is not None:
            speed = outcome.average_speed
            shown = f"{format_bytes(speed)}/s" if speed is not None else "-"
            lines.append(f"{number}|OK  |{shown:>12}|{outcome.result.path}")
        else:
            where = redact_url(outcome.job.urls[0])
            reason = str(outcome.error) if outcome.error is not None else "not run"
            lines.append(f"{number}|ERR |{'-':>12}|{where} ({reason})")
    lines.append("Status Legend: (OK) saved, (ERR) failed: the reason follows the URL.")
    return lines


# -- events → output --------------------------------------------------------------------------


@dataclass
class BatchReporter:
    """Turns a batch's events into output: a live display, JSON lines, or plain lines.

    Successes are one line each on *stdout*, failures one line each on *stderr* (as they
    happen, so a long batch does not hide them until the end), JSON carries the 1-based
    ``download`` number of the file.
    """

    json_lines: bool
    quiet: bool
    stdout: TextIO
    stderr: TextIO
    display: LiveDisplay | None = None

    def __call__(self, index: int, event: Event) -> None:
        if self.json_lines:
            data = event.to_dict()
            data["download"] = index + 1
            self.stdout.write(json.dumps(data) + "\n")
            self.stdout.flush()
        elif self.display is not None:
            self.display.event(index, event)
        if isinstance(event, Success) and not self.quiet and not self.json_lines:
            line = f"Download complete: {event.path} ({format_bytes(event.size)})"
            if event.sha256:
                line += f" sha256={event.sha256}"
            self._print(line, self.stdout)
        elif isinstance(event, Failed):
            self._print(f"segdl: error: #{index + 1}: {event.message}", self.stderr)

    def _print(self, line: str, stream: TextIO) -> None:
        if self.display is not None:
            self.display.print_above(line, stream)
        else:
            print(line, file=stream, flush=True)

    def close(self) -> None:
        """Take the live display off the screen (at the end, or on an interrupt)."""
        if self.display is not None:
            self.display.clear()

    def finish(self, result: BatchResult) -> None:
        self.close()
        if not self.json_lines and not self.quiet:
            for line in summary_lines(result):
                print(line, file=self.stdout)
            self.stdout.flush()
