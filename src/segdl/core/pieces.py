"""Piece bookkeeping and work stealing for one file.

Theory of operation
-------------------
The file is cut into fixed pieces of ``piece_length`` bytes (aria2's ``--piece-length``,
1 MiB), the unit of the resume bitfield.  A connection works on an :class:`Assignment`, a
byte range ``[start, end)`` that begins where missing data begins and ends on a piece
boundary (or at EOF).  Every byte of the file belongs to exactly one of: a done piece, the
written prefix of a partial piece, an active assignment, or a free run.

:meth:`PieceMap.claim` gives an idle connection work, the way aria2's
``getSparseMissingUnusedIndex`` does (reference/anchors.md §1.2–1.3):

* the largest free run, taken whole — at the start that is the whole file;
* or, when that is smaller, the second half of the largest *stealable* tail of an active
  assignment: the pieces after the one its connection is reading.  The victim's ``end``
  shrinks to the split point and its connection stops there.  Halving the largest range
  16 times gives 16 equal segments, and at the tail idle connections keep splitting slow
  ranges down to single pieces, so no byte is ever fetched twice at once.

A steal is accepted only when the stolen half is at least ``min_split_size`` (``-k``):
aria2 "does not split less than 2*SIZE byte range".

Connections read ahead of what they have written: before reading a chunk a connection
*reserves* it (:meth:`PieceMap.commit` returns the next chunk to read), and stealing never
takes a piece that overlaps a reservation.

Pure: no I/O, no clock, not thread-safe — the engine calls it under one lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Assignment", "PieceMap"]


@dataclass(slots=True)
class Assignment:
    """One connection's range.  ``[start, position)`` is written, ``[position, end)`` is not."""

    id: int
    start: int
    position: int
    reserved: int  # the connection may be reading up to here; stealing stays above it
    end: int  # exclusive; only ever shrinks (by a steal)

    @property
    def remaining(self) -> int:
        return self.end - self.position


class PieceMap:
    def __init__(
        self,
        total_length: int,
        piece_length: int,
        *,
        done: Iterable[int] = (),
        partial: Mapping[int, int] | None = None,
    ) -> None:
        """Create the map, optionally from resume state.

        Args:
            done: indices of complete pieces.
            partial: piece index → bytes already written from the start of that piece.
        """
        if piece_length <= 0:
            raise ValueError("piece_length must be positive")
        if total_length < 0:
            raise ValueError("total_length must not be negative")
        self.total_length = total_length
        self.piece_length = piece_length
        self.num_pieces = -(-total_length // piece_length)
        self._done = bytearray(self.num_pieces)
        self._prefix: dict[int, int] = {}
        self._active: dict[int, Assignment] = {}
        self._next_id = 0
        for index in done:
            self._check_index(index)
            self._done[index] = 1
        for index, nbytes in (partial or {}).items():
            self._check_index(index)
            if not self._done[index] and nbytes > 0:
                if nbytes >= self.piece_size(index):
                    self._done[index] = 1
                else:
                    self._prefix[index] = nbytes
        self.downloaded = sum(
            self.piece_size(i) for i in range(self.num_pieces) if self._done[i]
        ) + sum(self._prefix.values())

    # -- queries -------------------------------------------------------------------------

    def piece_size(self, index: int) -> int:
        start = index * self.piece_length
        return min(self.piece_length, self.total_length - start)

    def is_done(self, index: int) -> bool:
        return bool(self._done[index])

    def done_indices(self) -> list[int]:
        return [i for i in range(self.num_pieces) if self._done[i]]

    def partial_pieces(self) -> dict[int, int]:
        """Piece index → bytes written from its start, for every incomplete piece with data."""
        result = dict(self._prefix)
        for a in self._active.values():
            index = a.position // self.piece_length
            if index < self.num_pieces and not self._done[index]:
                offset = a.position - index * self.piece_length
                if offset > 0:
                    result[index] = offset
        return result

    @property
    def complete(self) -> bool:
        return self.downloaded == self.total_length

    @property
    def active(self) -> list[Assignment]:
        return list(self._active.values())

    # -- claiming ------------------------------------------------------------------------

    def claim(self, min_split_size: int) -> Assignment | None:
        """Give an idle connection a range, or None when nothing is worth taking now."""
        free = self._largest_free_run()
        steal = self._best_steal(min_split_size)
        if free is None and steal is None:
            return None
        if steal is None or (free is not None and free[1] - free[0] >= steal[2] - steal[1]):
            assert free is not None
            start, end = free
        else:
            victim, start, end = steal
            victim.end = start
        return self._open(start, end)

    def _open(self, start: int, end: int) -> Assignment:
        index = start // self.piece_length
        # A partial piece's prefix now belongs to the assignment's count, not the map's.
        self._prefix.pop(index, None)
        a = Assignment(id=self._next_id, start=start, position=start, reserved=start, end=end)
        self._next_id += 1
        self._active[a.id] = a
        return a

    def _owned(self) -> bytearray:
        owned = bytearray(self.num_pieces)
        for a in self._active.values():
            first = a.start // self.piece_length
            last = -(-a.end // self.piece_length)
            owned[first:last] = b"\x01" * (last - first)
        return owned

    def _largest_free_run(self) -> tuple[int, int] | None:
        owned = self._owned()
        best: tuple[int, int] | None = None
        run_start: int | None = None
        for index in range(self.num_pieces + 1):
            free = index < self.num_pieces and not self._done[index] and not owned[index]
            # A piece with a written prefix starts a new run: its prefix is not free.
            if free and run_start is not None and index in self._prefix:
                best = _larger(best, (run_start, index * self.piece_length))
                run_start = None
            if free and run_start is None:
                run_start = index * self.piece_length + self._prefix.get(index, 0)
            elif not free and run_start is not None:
                best = _larger(best, (run_start, min(index * self.piece_length, self.total_length)))
                run_start = None
        return best

    def _best_steal(self, min_split_size: int) -> tuple[Assignment, int, int] | None:
        best: tuple[Assignment, int, int] | None = None
        for a in self._active.values():
            # Never take the piece being read, nor the piece a connection is about to start
            # on: stealing starts above both.
            floor = max(-(-a.reserved // self.piece_length), a.position // self.piece_length + 1)
            end_index = -(-a.end // self.piece_length)
            pieces = end_index - floor
            if pieces <= 0:
                continue
            split = floor + pieces // 2
            start = split * self.piece_length
            # Counted in whole pieces, as aria2 does: a short last piece counts as one.
            if (end_index - split) * self.piece_length < min_split_size:
                continue
            if best is None or a.end - start > best[2] - best[1]:
                best = (a, start, a.end)
        return best

    # -- progress ------------------------------------------------------------------------

    def commit(self, assignment_id: int, nbytes: int, chunk: int) -> int:
        """Record *nbytes* written at the assignment's position; reserve the next chunk.

        Returns how many bytes the connection should read next (at most *chunk*), 0 when its
        range is finished (possibly cut short by a steal).
        """
        a = self._active[assignment_id]
        if nbytes < 0 or a.position + nbytes > a.reserved:
            raise ValueError("commit beyond the reserved chunk")
        if nbytes:
            first = a.position // self.piece_length
            a.position += nbytes
            self.downloaded += nbytes
            last = a.position // self.piece_length
            if a.position == self.total_length:
                last = self.num_pieces
            for index in range(first, min(last, self.num_pieces)):
                self._done[index] = 1
        want = min(chunk, a.end - a.position)
        a.reserved = a.position + want
        return want

    def release(self, assignment_id: int) -> Assignment:
        """The connection stopped (done, failed or cancelled): its unwritten rest is free."""
        a = self._active.pop(assignment_id)
        index = a.position // self.piece_length
        if a.position < a.end and index < self.num_pieces and not self._done[index]:
            offset = a.position - index * self.piece_length
            if offset > 0:
                self._prefix[index] = offset
        a.reserved = a.position
        return a

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_pieces:
            raise ValueError(f"piece index {index} out of range 0..{self.num_pieces - 1}")


def _larger(a: tuple[int, int] | None, b: tuple[int, int]) -> tuple[int, int] | None:
    if b[1] <= b[0]:
        return a
    if a is None or b[1] - b[0] > a[1] - a[0]:
        return b
    return a
