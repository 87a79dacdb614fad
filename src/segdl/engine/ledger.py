"""The piece map of one file behind one lock, shared by trio tasks and worker threads.

:class:`~segdl.core.pieces.PieceMap` is pure and not thread-safe; connections touch it twice
per received chunk (up to 1 MiB: admit, then commit), never per ``recv``, so one lock is
cheap.  The ledger also knows which connection fetches which assignment, so that the loser
of an endgame race is aborted the moment its twin delivers: its socket is shut down, which
wakes its thread, and the server stops sending it bytes nobody will write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..core.controlfile import ControlFile
from ..core.pieces import Assignment, Endgame, PieceMap
from ..core.resume import control_from_pieces

__all__ = ["Ledger", "LedgerStatistics", "RangeSink"]


class _Abortable(Protocol):
    def abort(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LedgerStatistics:
    """``duplicate_bytes``: bytes received in the endgame and never written (a loser's, or a
    cut range's past its new end); ``cuts``: slow ranges cut short; ``twins``: twins
    started; ``stopped``: connections stopped because another had their range."""

    downloaded: int
    active: int
    duplicate_bytes: int
    cuts: int
    twins: int
    stopped: int


class RangeSink:
    """The data plane's ``admit`` and ``commit`` for one assignment."""

    def __init__(self, ledger: Ledger, assignment_id: int, on_bytes: Callable[[int], None]) -> None:
        self._ledger = ledger
        self._id = assignment_id
        self._on_bytes = on_bytes

    def admit(self, nbytes: int) -> int:
        """How many of the *nbytes* just received may be written (asked before writing)."""
        return self._ledger.admit(self._id, nbytes)

    def commit(self, nbytes: int, chunk: int) -> int:
        """Record *nbytes* written; returns how much to read next (0: stop)."""
        ledger = self._ledger
        with ledger.lock:
            self._on_bytes(nbytes)
            return ledger.pieces.commit(self._id, nbytes, chunk, now=time.monotonic())


class Ledger:
    def __init__(self, pieces: PieceMap) -> None:
        self.pieces = pieces
        self.lock = threading.Lock()
        self._fetching: dict[int, _Abortable] = {}
        self._stopped = 0

    def claim(self, min_split: int, endgame: Endgame | None = None) -> Assignment | None:
        with self.lock:
            claimed = self.pieces.claim(min_split, endgame, now=time.monotonic())
            # A slow range cut short with nothing left: its connection stops at once.
            losers = [self._fetching.get(i) for i in self.pieces.take_losers()]
            self._stopped += sum(conn is not None for conn in losers)
        for conn in losers:
            if conn is not None:
                conn.abort()
        return claimed

    def claim_at(self, start: int, reserved: int, *, exact: bool = False) -> Assignment | None:
        with self.lock:
            return self.pieces.claim_at(start, reserved, exact=exact, now=time.monotonic())

    def reserve(self, assignment_id: int, nbytes: int, connections: int) -> tuple[int, int]:
        """The next request of the assignment: ``(first, end)``, *end* exclusive (equal to
        *first* when nothing is left of it).  About *nbytes*, and no more than a fair share
        of what is still missing among *connections*: at the tail, what is left unrequested
        can still be split between them."""
        with self.lock:
            pieces = self.pieces
            share = (pieces.total_length - pieces.downloaded) // max(1, connections)
            nbytes = max(1, min(nbytes, share))
            end = self.pieces.reserve(assignment_id, nbytes)
            a = self.pieces.get(assignment_id)
            assert a is not None
            return a.position, end

    def finished(self, assignment_id: int) -> bool:
        """Nothing is left for this assignment's connection (done, stolen or lost)."""
        with self.lock:
            a = self.pieces.get(assignment_id)
            return a is None or a.position >= a.end

    def attach(self, assignment_id: int, conn: _Abortable) -> None:
        with self.lock:
            self._fetching[assignment_id] = conn

    def release(self, assignment_id: int) -> None:
        with self.lock:
            self._fetching.pop(assignment_id, None)
            self.pieces.release(assignment_id)

    def sink(self, assignment_id: int, on_bytes: Callable[[int], None]) -> RangeSink:
        return RangeSink(self, assignment_id, on_bytes)

    def admit(self, assignment_id: int, nbytes: int) -> int:
        with self.lock:
            allowed = self.pieces.admit(assignment_id, nbytes)
            losers = [self._fetching.get(i) for i in self.pieces.take_losers()]
            self._stopped += sum(conn is not None for conn in losers)
        for conn in losers:
            if conn is not None:
                conn.abort()  # wakes its thread; the server stops sending it the range
        return allowed

    def counters(self) -> tuple[int, int]:
        """Bytes downloaded, and ranges being fetched."""
        with self.lock:
            active = sum(1 for a in self.pieces.active if not a.lost)
            return self.pieces.downloaded, active

    def statistics(self) -> LedgerStatistics:
        with self.lock:
            pieces = self.pieces
            return LedgerStatistics(
                downloaded=pieces.downloaded,
                active=len(pieces.active),
                duplicate_bytes=pieces.duplicate_bytes,
                cuts=pieces.cuts,
                twins=pieces.twins_started,
                stopped=self._stopped,
            )

    def control(self) -> ControlFile:
        """The resume state now, as aria2's control file."""
        with self.lock:
            return control_from_pieces(self.pieces)
