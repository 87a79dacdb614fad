"""The piece map of one file behind one lock, shared by trio tasks and worker threads.

:class:`~segdl.core.pieces.PieceMap` is pure and not thread-safe; connections touch it once
per written chunk (up to 1 MiB), never per ``recv``, so one lock is cheap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..core.controlfile import ControlFile
from ..core.pieces import Assignment, PieceMap
from ..core.resume import control_from_pieces

__all__ = ["Ledger"]


class Ledger:
    def __init__(self, pieces: PieceMap) -> None:
        self.pieces = pieces
        self.lock = threading.Lock()

    def claim(self, min_split: int) -> Assignment | None:
        with self.lock:
            return self.pieces.claim(min_split)

    def release(self, assignment_id: int) -> None:
        with self.lock:
            self.pieces.release(assignment_id)

    def committer(
        self, assignment_id: int, on_bytes: Callable[[int], None]
    ) -> Callable[[int, int], int]:
        """``commit(nbytes, chunk)`` for one assignment: records *nbytes* (also told to
        *on_bytes*, under the lock) and returns how much to read next (0: stop)."""

        def commit(nbytes: int, chunk: int) -> int:
            with self.lock:
                on_bytes(nbytes)
                return self.pieces.commit(assignment_id, nbytes, chunk)

        return commit

    def counters(self) -> tuple[int, int]:
        """Bytes downloaded, and ranges being fetched."""
        with self.lock:
            return self.pieces.downloaded, len(self.pieces.active)

    def control(self) -> ControlFile:
        """The resume state now, as aria2's control file."""
        with self.lock:
            return control_from_pieces(self.pieces)
