"""Piece bookkeeping, work stealing and the endgame for one file.

Theory of operation
-------------------
The file is cut into fixed pieces of ``piece_length`` bytes (aria2's ``--piece-length``,
1 MiB), the unit of the resume bitfield.  A connection works on an :class:`Assignment`, a
byte range ``[start, end)`` that begins where missing data begins and ends on a piece
boundary (or at EOF).  Every byte of the file belongs to exactly one of: a done piece, the
written prefix of a partial piece, an active assignment (or an endgame pair, below), or a
free run.

A connection fetches its assignment in *requests*: :meth:`PieceMap.reserve` marks the next
closed range it asks the server for (``[position, reserved)``, sized by the engine to what
the connection will take in a second or two), so that an abort, a steal or a crash never
leaves a server pushing megabytes nobody will read.

:meth:`PieceMap.claim` gives an idle connection work, the way aria2's
``getSparseMissingUnusedIndex`` does (reference/anchors.md §1.2–1.3):

* the largest free run, taken whole — at the start that is the whole file;
* or, when that is smaller, the second half of the largest *stealable* tail of an active
  assignment: the pieces after the ones its connection has asked for.  The victim's ``end``
  shrinks to the split point and its connection stops there.  Halving the largest range
  16 times gives 16 equal segments, and at the tail idle connections keep splitting slow
  ranges down to single pieces, so no byte is ever fetched twice at once.
* A steal is accepted only when the stolen half is at least ``min_split_size`` (``-k``):
  aria2 "does not split less than 2*SIZE byte range".

The endgame: when nothing is free or stealable and an active assignment is far slower than
the idle connection would be (or has stalled), the slow one is *cut*: it keeps only the
rest of the piece it is in, and everything after is free again — taken by the idle
connection, and split further by the others as any free run is.  When the slow one has
nothing left but part of a piece, the idle connection gets a *twin* of it: an assignment of
the same bytes ``[position, end)``, started where the slow one has got to.  Both fetch; the
first to deliver a chunk wins (:meth:`PieceMap.admit`, asked before any byte is written):
the winner owns the range, the loser is marked ``lost``, must write nothing more and is
reported in :attr:`PieceMap.losers` for the engine to abort (so is a slow one cut at a
piece boundary, with nothing left).  So at most one writer ever writes a byte, and the
duplicated bytes are only what the losers and the cut ones had received but may not write
(counted in :attr:`PieceMap.duplicate_bytes`).

Pure: no I/O, no clock (times are passed in), not thread-safe — the engine calls it under
one lock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Assignment", "Endgame", "PieceMap"]


@dataclass(slots=True)
class Assignment:
    """One connection's range.  ``[start, position)`` is written, ``[position, end)`` is not.

    ``reserved`` is the end of the request in flight: stealing stays above it.  ``rival`` is
    the endgame twin fetching the same bytes until one of them delivers; ``lost`` means the
    twin delivered first and this one must write nothing more.
    """

    id: int
    start: int
    position: int
    reserved: int
    end: int  # exclusive; only ever shrinks (by a steal, or by losing an endgame race)
    admitted: int = 0  # written up to here once the chunk being written is committed
    opened_at: float = 0.0
    progressed_at: float = 0.0  # when it last wrote (or was opened)
    rival: int | None = None
    lost: bool = False

    @property
    def remaining(self) -> int:
        return self.end - self.position

    @property
    def written(self) -> int:
        return self.position - self.start


@dataclass(frozen=True, slots=True)
class Endgame:
    """What an idle connection knows when nothing is left to claim but slow work.

    ``rate``: its own recent rate (bytes/s; 0: unknown — a connection that has fetched
    nothing says nothing of how fast it would be, and starts no twin).  ``setup``: seconds
    it needs before its first byte (a request, perhaps a new connection).  A twin is started
    for an assignment that has had ``setup`` seconds to show its speed and, at that speed,
    would finish more than ``factor`` times later than the idle connection; one that wrote
    nothing for ``stall`` seconds counts as never finishing.
    """

    now: float
    rate: float = 0.0
    setup: float = 0.5
    stall: float = 2.0
    factor: float = 2.0


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
        # Endgame results: assignments that lost their race (to be aborted by the engine),
        # and the bytes losers had received that were never written.
        self.losers: list[int] = []
        self.duplicate_bytes = 0
        self.twins_started = 0
        self.cuts = 0
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
            if a.lost:
                continue  # it wrote nothing in the range its twin won
            index = a.position // self.piece_length
            if index < self.num_pieces and not self._done[index]:
                offset = a.position - index * self.piece_length
                if offset > 0:
                    result[index] = offset
        return result

    def first_missing(self) -> int | None:
        """The first byte a download would fetch (where a first request should start), or
        None when the file is complete."""
        for index in range(self.num_pieces):
            if not self._done[index]:
                return index * self.piece_length + self._prefix.get(index, 0)
        return None

    @property
    def complete(self) -> bool:
        return self.downloaded == self.total_length

    @property
    def active(self) -> list[Assignment]:
        return list(self._active.values())

    def get(self, assignment_id: int) -> Assignment | None:
        return self._active.get(assignment_id)

    # -- claiming ------------------------------------------------------------------------

    def claim(
        self, min_split_size: int, endgame: Endgame | None = None, *, now: float | None = None
    ) -> Assignment | None:
        """Give an idle connection a range, or None when nothing is worth taking now.

        With *endgame*, an idle connection that finds nothing free or stealable may cut a slow
        assignment and take its rest, or get a twin of it (see the module's docstring).
        *now* (else the endgame's) is when the range is opened: the endgame judges ranges by
        their speed since then.
        """
        if now is None:
            now = endgame.now if endgame is not None else 0.0
        free = self._largest_free_run()
        steal = self._best_steal(min_split_size)
        if free is None and steal is None:
            victim = self._slowest(endgame) if endgame is not None else None
            if victim is None:
                return None
            cut = -(-victim.position // self.piece_length) * self.piece_length
            if cut >= victim.end:
                return self._open_twin(victim, now)
            self._cut(victim, cut)
            free = self._largest_free_run()
            assert free is not None, "a cut frees the rest of the slow range"
        if steal is None or (free is not None and free[1] - free[0] >= steal[2] - steal[1]):
            assert free is not None
            start, end = free
        else:
            victim_of_steal, start, end = steal
            victim_of_steal.end = start
        return self._open(start, end, now)

    def claim_at(
        self, start: int, reserved: int, *, exact: bool = False, now: float = 0.0
    ) -> Assignment | None:
        """The free run that begins exactly at *start*, for a response already asked for
        (``[start, reserved)``: a download's first requests); None if those bytes are not
        wanted.  With *exact*, the assignment ends with the response (at the piece boundary
        after it): other responses asked ahead own what follows.

        Only where missing data begins (a piece boundary or the end of a written prefix):
        the resume state cannot describe a hole before *start* inside its piece.
        """
        if not 0 <= start < self.total_length or reserved <= start:
            return None
        index = start // self.piece_length
        if self._done[index] or start != index * self.piece_length + self._prefix.get(index, 0):
            return None
        owned = self._owned()
        if owned[index]:
            return None
        last = index + 1
        while last < self.num_pieces and not self._done[last] and not owned[last]:
            if last in self._prefix:
                break
            last += 1
        end = min(last * self.piece_length, self.total_length)
        if exact:
            end = min(end, -(-reserved // self.piece_length) * self.piece_length)
        a = self._open(start, end, now)
        a.reserved = min(reserved, end)
        return a

    def _open(self, start: int, end: int, now: float) -> Assignment:
        index = start // self.piece_length
        # A partial piece's prefix now belongs to the assignment's count, not the map's.
        self._prefix.pop(index, None)
        a = Assignment(
            id=self._next_id,
            start=start,
            position=start,
            reserved=start,
            end=end,
            admitted=start,
            opened_at=now,
            progressed_at=now,
        )
        self._next_id += 1
        self._active[a.id] = a
        return a

    def _owned(self) -> bytearray:
        owned = bytearray(self.num_pieces)
        for a in self._active.values():
            if a.position >= a.end:
                continue  # finished or lost: nothing more of it is fetched
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
            if a.rival is not None or a.lost:
                continue  # an endgame pair is settled by its race, not split
            # Never take what the connection has asked for, nor the piece it is about to
            # start on: stealing starts above both.
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

    # -- the endgame ---------------------------------------------------------------------

    def _slowest(self, eg: Endgame) -> Assignment | None:
        """The assignment a twin would gain most on, if any gains enough."""
        rate = eg.rate
        if rate <= 0:
            return None
        best: Assignment | None = None
        best_gain = 0.0
        for a in self._active.values():
            if a.rival is not None or a.lost or a.remaining <= 0 or a.admitted > a.position:
                continue  # paired already, or writing a chunk this instant: next time
            age = eg.now - a.opened_at
            if age < eg.setup:
                continue  # still connecting: its speed is not known yet
            if eg.now - a.progressed_at >= eg.stall:
                theirs = math.inf  # nothing written for that long (or ever, since opened)
            elif a.written == 0:
                continue  # not a chunk yet, but not for long: too early to judge
            else:
                # Its speed since its first byte could come: its own setup is not slowness.
                theirs = a.remaining * max(age - eg.setup, 1e-3) / a.written
            ours = eg.setup + a.remaining / rate
            if theirs <= eg.factor * ours:
                continue
            gain = theirs - ours
            if (
                best is None
                or gain > best_gain
                or (gain == best_gain and a.remaining > best.remaining)
            ):
                best, best_gain = a, gain
        return best

    def _open_twin(self, victim: Assignment, now: float) -> Assignment:
        twin = Assignment(
            id=self._next_id,
            start=victim.position,
            position=victim.position,
            reserved=victim.position,
            end=victim.end,
            admitted=victim.position,
            opened_at=now,
            progressed_at=now,
            rival=victim.id,
        )
        self._next_id += 1
        self._active[twin.id] = twin
        victim.rival = twin.id
        self.twins_started += 1
        return twin

    def admit(self, assignment_id: int, nbytes: int) -> int:
        """How many of *nbytes* just received at the assignment's position may be written.

        Asked before writing.  The first of an endgame pair to ask wins the race: its twin is
        marked lost (and listed in :attr:`losers`); a lost assignment may write nothing, one
        that was cut only up to its new end; what they received beyond counts as duplicated.
        """
        a = self._active[assignment_id]
        if nbytes < 0:
            raise ValueError("a negative chunk")
        if a.lost:
            self.duplicate_bytes += nbytes
            return 0
        if a.admitted != a.position:
            raise ValueError("admit before the last admitted chunk was committed")
        allowed = min(nbytes, a.reserved - a.position)
        self.duplicate_bytes += nbytes - allowed
        if a.rival is not None and allowed > 0:
            self._lose(self._active[a.rival])
            a.rival = None
        a.admitted = a.position + allowed
        return allowed

    def _cut(self, victim: Assignment, cut: int) -> None:
        """The slow *victim* keeps ``[position, cut)`` only (nothing, at a piece boundary)."""
        self.cuts += 1
        if cut <= victim.position:
            self._lose(victim)
            return
        victim.end = cut
        victim.reserved = min(victim.reserved, cut)

    def _lose(self, loser: Assignment) -> None:
        loser.rival = None
        loser.lost = True
        loser.end = loser.reserved = loser.position
        self.losers.append(loser.id)

    def take_losers(self) -> list[int]:
        """Assignments that lost a race since the last call (their connections should stop)."""
        losers, self.losers = self.losers, []
        return losers

    # -- progress ------------------------------------------------------------------------

    def reserve(self, assignment_id: int, nbytes: int) -> int:
        """Mark the next request of the assignment: about *nbytes* from its position, ending on
        a piece boundary (or at its end).  Returns the request's end (exclusive); equal to the
        position when nothing is left."""
        a = self._active[assignment_id]
        if nbytes <= 0:
            raise ValueError("a request must ask for at least one byte")
        wanted = a.position + nbytes
        aligned = -(-wanted // self.piece_length) * self.piece_length
        a.reserved = max(a.reserved, min(a.end, aligned))
        return a.reserved

    def commit(self, assignment_id: int, nbytes: int, chunk: int, *, now: float = 0.0) -> int:
        """Record *nbytes* written at the assignment's position.

        Returns how many bytes the connection should read next (at most *chunk*), 0 when its
        request is finished (or the assignment lost its race).
        """
        a = self._active[assignment_id]
        if nbytes < 0 or a.position + nbytes > a.reserved:
            raise ValueError("commit beyond the reserved chunk")
        if nbytes:
            if a.position + nbytes > a.admitted:
                raise ValueError("commit of bytes that were not admitted")
            first = a.position // self.piece_length
            a.position += nbytes
            a.progressed_at = now
            self.downloaded += nbytes
            last = a.position // self.piece_length
            if a.position == self.total_length:
                last = self.num_pieces
            for index in range(first, min(last, self.num_pieces)):
                self._done[index] = 1
        a.admitted = a.position
        return min(chunk, a.reserved - a.position)

    def release(self, assignment_id: int) -> Assignment:
        """The connection stopped (done, failed or cancelled): its unwritten rest is free."""
        a = self._active.pop(assignment_id)
        if a.rival is not None:
            # Its twin carries on alone and covers the same bytes: nothing is freed.
            other = self._active.get(a.rival)
            if other is not None:
                other.rival = None
            a.rival = None
        else:
            index = a.position // self.piece_length
            if a.position < a.end and index < self.num_pieces and not self._done[index]:
                offset = a.position - index * self.piece_length
                if offset > 0:
                    self._prefix[index] = offset
        if a.lost and assignment_id in self.losers:
            self.losers.remove(assignment_id)
        a.reserved = a.admitted = a.position
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
