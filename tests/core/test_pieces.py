"""Properties of the piece map: ranges tile the file, never overlap, stealing keeps that; in
the endgame two connections may fetch the same bytes, but only one ever writes them."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segdl.core.pieces import Assignment, Endgame, PieceMap

MIB = 1024 * 1024
P = 64 * 1024  # small pieces keep the examples fast; the logic is size-agnostic


def coverage(pm: PieceMap) -> list[tuple[int, int, str]]:
    """Every byte range of the file labelled done / prefix / active / free (recomputed)."""
    spans: list[tuple[int, int, str]] = []
    partial = pm.partial_pieces()
    for index in range(pm.num_pieces):
        start = index * pm.piece_length
        if pm.is_done(index):
            spans.append((start, start + pm.piece_size(index), "done"))
        elif index in partial:
            spans.append((start, start + partial[index], "prefix"))
    for a in pm.active:
        # An endgame pair covers the same bytes: shown once, by the older of the two.
        if a.rival is not None and a.rival < a.id:
            continue
        spans.append((a.position, a.end, f"active{a.id}"))
    return sorted(s for s in spans if s[1] > s[0])


def write(pm: PieceMap, a: Assignment, nbytes: int, chunk: int) -> int:
    """What a connection does with a received chunk: admit, write, commit."""
    allowed = pm.admit(a.id, nbytes)
    return pm.commit(a.id, allowed, chunk)


def assert_disjoint(pm: PieceMap) -> None:
    spans = coverage(pm)
    for (s1, e1, l1), (s2, e2, l2) in itertools.pairwise(spans):
        assert e1 <= s2, f"{l1} [{s1},{e1}) overlaps {l2} [{s2},{e2})"
    for _, end, _ in spans:
        assert end <= pm.total_length


def drive(pm: PieceMap, actions: list[tuple[int, int]], min_split: int) -> None:
    """Apply claim/commit/release actions, checking invariants after each one."""
    for kind, amount in actions:
        active = pm.active
        if kind == 0 or not active:
            busy = {other.id for other in active if other.position < other.end}
            a = pm.claim(min_split)
            if a is not None:
                assert a.start < a.end
                pm.reserve(a.id, amount or 1)
                # A steal always leaves its victim some work.
                assert all(o.position < o.end for o in pm.active if o.id in busy)
        else:
            a = active[amount % len(active)]
            if kind == 1:
                # Write part of the reserved chunk, then reserve the next one.
                n = (a.reserved - a.position) if amount % 3 else (a.reserved - a.position) // 2
                write(pm, a, n, P)
                if a.position == a.reserved and a.position < a.end:
                    pm.reserve(a.id, amount or 1)
            else:
                pm.release(a.id)
        assert_disjoint(pm)
        done_bytes = sum(pm.piece_size(i) for i in pm.done_indices())
        assert pm.downloaded == done_bytes + sum(pm.partial_pieces().values())


def finish(pm: PieceMap, min_split: int) -> None:
    """Run every connection to the end; the file must end complete."""
    for _ in range(10 * pm.num_pieces + 100):
        active = pm.active
        if not active:
            a = pm.claim(min_split)
            if a is None:
                break
            pm.reserve(a.id, P)
            continue
        for a in active:
            write(pm, a, a.reserved - a.position, P)
            if a.position < a.end:
                pm.reserve(a.id, P)
            else:
                pm.release(a.id)
        assert_disjoint(pm)
    assert pm.complete
    assert pm.done_indices() == list(range(pm.num_pieces))


actions = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10 * P)), max_size=60)


@settings(deadline=None, max_examples=300)
@given(size=st.integers(0, 80 * P), actions=actions, min_split=st.sampled_from([P, 2 * P, 5 * P]))
def test_ranges_tile_and_never_overlap(
    size: int, actions: list[tuple[int, int]], min_split: int
) -> None:
    pm = PieceMap(size, P)
    drive(pm, actions, min_split)
    finish(pm, min_split)


@settings(deadline=None, max_examples=200)
@given(
    size=st.integers(1, 60 * P),
    done=st.sets(st.integers(0, 59)),
    partial=st.dictionaries(st.integers(0, 59), st.integers(1, P - 1)),
    actions=actions,
)
def test_resumed_state_is_completed_without_refetching(
    size: int, done: set[int], partial: dict[int, int], actions: list[tuple[int, int]]
) -> None:
    num = -(-size // P)
    done = {i for i in done if i < num}
    partial = {
        i: min(n, (size - i * P) - 1) for i, n in partial.items() if i < num and i not in done
    }
    partial = {i: n for i, n in partial.items() if n > 0}
    pm = PieceMap(size, P, done=done, partial=partial)
    before = pm.downloaded
    assert before == sum(min(P, size - i * P) for i in done) + sum(partial.values())
    drive(pm, actions, P)
    # Nothing claimed may start inside a done piece or a written prefix.
    finish(pm, P)
    assert pm.downloaded == size


def test_sixteen_claims_split_the_file_into_equal_ranges() -> None:
    pm = PieceMap(1024 * MIB, MIB)
    claims = [pm.claim(MIB) for _ in range(16)]
    assert all(c is not None for c in claims)
    sizes = sorted(a.end - a.start for a in pm.active)
    assert sizes == [64 * MIB] * 16


def test_steal_takes_the_second_half_of_the_largest_remaining_range() -> None:
    pm = PieceMap(16 * MIB, MIB)
    a = pm.claim(MIB)
    assert a is not None
    pm.reserve(a.id, MIB)
    write(pm, a, MIB, MIB)
    pm.reserve(a.id, MIB)  # one piece written, the second asked for
    b = pm.claim(MIB)
    assert b is not None
    # Stealable: pieces 2..15 (14 pieces): the thief takes the upper 7.
    assert (b.start, b.end) == (9 * MIB, 16 * MIB)
    assert a.end == 9 * MIB


def test_never_steals_the_piece_being_read() -> None:
    pm = PieceMap(2 * MIB, MIB)
    a = pm.claim(MIB)
    assert a is not None
    pm.reserve(a.id, MIB)  # asks for piece 0
    b = pm.claim(MIB)
    assert b is not None
    assert (b.start, b.end) == (MIB, 2 * MIB)
    assert pm.claim(MIB) is None  # piece 0 is being read, piece 1 is taken


def test_min_split_size_limits_stealing() -> None:
    pm = PieceMap(10 * MIB, MIB)
    a = pm.claim(4 * MIB)
    assert a is not None
    pm.reserve(a.id, MIB)
    # 9 stealable pieces: the thief would get 5 MiB ≥ 4 MiB.
    b = pm.claim(4 * MIB)
    assert b is not None
    assert b.end - b.start == 5 * MIB
    # Now a has 4 stealable pieces (half = 2 MiB) and b has 4 (after its first piece): too small.
    pm.reserve(b.id, MIB)
    assert pm.claim(4 * MIB) is None


def test_release_returns_the_unwritten_rest_and_keeps_the_prefix() -> None:
    pm = PieceMap(4 * MIB, MIB)
    a = pm.claim(MIB)
    assert a is not None
    pm.reserve(a.id, MIB)
    write(pm, a, MIB // 2 + 5, MIB)
    pm.release(a.id)
    assert pm.partial_pieces() == {0: MIB // 2 + 5}
    again = pm.claim(MIB)
    assert again is not None
    assert (again.start, again.end) == (MIB // 2 + 5, 4 * MIB)


def test_empty_file_is_complete() -> None:
    pm = PieceMap(0, MIB)
    assert pm.complete
    assert pm.claim(MIB) is None


def test_commit_beyond_reservation_is_refused() -> None:
    pm = PieceMap(4 * MIB, MIB)
    a: Assignment | None = pm.claim(MIB)
    assert a is not None
    pm.reserve(a.id, 1000)  # rounded up to the piece
    assert a.reserved == MIB
    assert pm.admit(a.id, 1000) == 1000
    with pytest.raises(ValueError, match="not admitted"):
        pm.commit(a.id, 1001, 1000)
    pm.commit(a.id, 1000, 1000)
    # A chunk running past the request is admitted up to its end; the rest is counted.
    assert pm.admit(a.id, MIB) == MIB - 1000
    assert pm.duplicate_bytes == 1000
    with pytest.raises(ValueError, match="beyond the reserved"):
        pm.commit(a.id, MIB, 1000)
    pm.commit(a.id, MIB - 1000, 1000)
    assert pm.is_done(0)


# ---- the endgame: twins of slow ranges, and who may write


class Writers:
    """The bytes of a file as connections write them: each must be written once, by one."""

    def __init__(self, size: int) -> None:
        self.times = bytearray(size)  # how often each byte was written (once at most)
        self.pending: dict[int, tuple[int, int]] = {}  # assignment → range being written

    def admit(self, pm: PieceMap, a: Assignment, nbytes: int) -> None:
        assert a.id not in self.pending
        allowed = pm.admit(a.id, nbytes)
        if allowed:
            lo, hi = a.position, a.position + allowed
            for other_lo, other_hi in self.pending.values():
                assert hi <= other_lo or other_hi <= lo, "two writers on the same bytes at once"
            assert not any(self.times[lo:hi]), "a byte written twice"
            self.pending[a.id] = (lo, hi)

    def finish(self, pm: PieceMap, a: Assignment) -> None:
        lo, hi = self.pending.pop(a.id)
        for i in range(lo, hi):
            self.times[i] += 1
        pm.commit(a.id, hi - lo, P)

    def abort_losers(self, pm: PieceMap) -> None:
        for loser in pm.take_losers():
            assert loser not in self.pending, "a loser was writing"
            pm.release(loser)


endgame_actions = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 8 * P), st.floats(0, 3)), max_size=80
)


@settings(deadline=None, max_examples=300)
@given(size=st.integers(1, 40 * P), actions=endgame_actions)
def test_endgame_pairs_never_write_a_byte_twice(
    size: int, actions: list[tuple[int, int, float]]
) -> None:
    pm = PieceMap(size, P)
    w = Writers(size)
    now = 0.0
    for kind, amount, step in actions:
        now += step
        active = [a for a in pm.active if not a.lost]
        if kind == 0 or not active:
            a = pm.claim(2 * P, Endgame(now=now, rate=amount, setup=0.5, stall=1.0))
            if a is not None:
                pm.reserve(a.id, amount or 1)
        else:
            a = active[amount % len(active)]
            if a.id in w.pending:
                w.finish(pm, a)
            elif kind == 1 and a.position < a.reserved:
                w.admit(pm, a, 1 + amount % (a.reserved - a.position))
            elif kind == 2 and a.position == a.reserved and a.position < a.end:
                pm.reserve(a.id, amount or 1)
            elif kind == 3:
                pm.release(a.id)  # the connection failed (between writes)
        w.abort_losers(pm)
        assert_disjoint_but_pairs(pm)
    # Then every connection runs to the end, nobody slow any more.
    for _ in range(20 * pm.num_pieces + 100):
        now += 1.0
        w.abort_losers(pm)
        active = pm.active
        if not active:
            a = pm.claim(2 * P, Endgame(now=now, rate=1.0))
            if a is None:
                break
            pm.reserve(a.id, P)
            continue
        for a in active:
            if pm.get(a.id) is None:
                continue
            if a.id in w.pending:
                w.finish(pm, a)
            elif a.lost or a.position == a.end:
                pm.release(a.id)
            elif a.position < a.reserved:
                w.admit(pm, a, a.reserved - a.position)
            else:
                pm.reserve(a.id, P)
    assert pm.complete
    assert bytes(w.times) == b"\x01" * size
    assert pm.downloaded == size


def assert_disjoint_but_pairs(pm: PieceMap) -> None:
    assert_disjoint(pm)
    for a in pm.active:
        if a.rival is not None:
            twin = pm.get(a.rival)
            assert twin is not None
            assert twin.rival == a.id
            assert (twin.position, twin.end) == (a.position, a.end)


def stalled_tail() -> tuple[PieceMap, Assignment]:
    """Two connections: one finished its range, the other wrote one chunk and then stalled."""
    pm = PieceMap(4 * MIB, MIB)
    slow = pm.claim(MIB, Endgame(now=0.0))
    fast = pm.claim(MIB, Endgame(now=0.0))
    assert slow is not None
    assert fast is not None
    assert (slow.start, fast.start) == (0, 2 * MIB)
    pm.reserve(slow.id, 2 * MIB)
    pm.admit(slow.id, 64 * 1024)
    pm.commit(slow.id, 64 * 1024, 64 * 1024, now=0.2)
    pm.reserve(fast.id, 2 * MIB)
    pm.admit(fast.id, 2 * MIB)
    pm.commit(fast.id, 2 * MIB, MIB, now=0.5)
    pm.release(fast.id)
    return pm, slow


STALLED = Endgame(now=3.0, rate=4 * MIB, stall=2.0)


def test_a_stalled_range_is_cut_then_its_last_piece_twinned() -> None:
    pm, slow = stalled_tail()
    assert pm.claim(MIB) is None  # without the endgame: nothing to take
    # Too young to judge (opened 0.4 s ago, an idle connection needs 0.5 s to start).
    assert pm.claim(MIB, Endgame(now=0.4, rate=4 * MIB, setup=0.5)) is None
    # First the slow one keeps only the rest of its piece; the next ones are free again.
    rest = pm.claim(MIB, STALLED)
    assert rest is not None
    assert (rest.start, rest.end) == (MIB, 2 * MIB)
    assert (slow.end, slow.reserved) == (MIB, MIB)
    assert not slow.lost
    # Then its piece gets a twin, from where it got to.
    twin = pm.claim(MIB, STALLED)
    assert twin is not None
    assert (twin.start, twin.end) == (64 * 1024, MIB)
    assert (twin.rival, slow.rival) == (slow.id, twin.id)
    assert pm.claim(MIB, STALLED) is None  # one twin each


def test_a_stalled_range_at_a_piece_boundary_is_taken_whole() -> None:
    pm = PieceMap(4 * MIB, MIB)
    slow = pm.claim(MIB, Endgame(now=0.0))
    assert slow is not None
    pm.reserve(slow.id, 4 * MIB)  # asked for everything, wrote nothing
    taker = pm.claim(MIB, STALLED)
    assert taker is not None
    assert (taker.start, taker.end) == (0, 4 * MIB)
    assert slow.lost
    assert pm.take_losers() == [slow.id]  # its connection is to be stopped
    # What it had received of its chunk meanwhile is refused and counted.
    assert pm.admit(slow.id, 5000) == 0
    assert pm.duplicate_bytes == 5000


def cut_to_its_piece(pm: PieceMap, slow: Assignment) -> Assignment:
    """The endgame's first step on stalled_tail(): the slow one keeps its piece's rest; then
    its twin, asking for its first chunk."""
    assert pm.claim(MIB, STALLED) is not None
    twin = pm.claim(MIB, STALLED)
    assert twin is not None
    pm.reserve(twin.id, MIB)
    return twin


def test_the_twin_delivering_first_wins_and_the_slow_one_writes_nothing_more() -> None:
    pm, slow = stalled_tail()
    twin = cut_to_its_piece(pm, slow)
    assert pm.admit(twin.id, 100_000) == 100_000
    assert pm.take_losers() == [slow.id]
    assert slow.lost
    assert slow.end == slow.position
    # The slow one's chunk arrives after all: refused, counted as duplicated.
    assert pm.admit(slow.id, 64 * 1024) == 0
    assert pm.duplicate_bytes == 64 * 1024
    assert pm.commit(slow.id, 0, MIB) == 0
    pm.release(slow.id)
    pm.commit(twin.id, 100_000, MIB)
    assert pm.partial_pieces() == {0: 64 * 1024 + 100_000}


def test_the_slow_one_delivering_first_keeps_its_range() -> None:
    pm, slow = stalled_tail()
    twin = cut_to_its_piece(pm, slow)
    assert pm.admit(slow.id, 64 * 1024) == 64 * 1024
    assert pm.take_losers() == [twin.id]
    assert pm.admit(twin.id, 10) == 0
    pm.commit(slow.id, 64 * 1024, MIB)
    pm.release(twin.id)
    assert pm.partial_pieces() == {0: 128 * 1024}
    assert slow.end == MIB


def test_a_range_that_is_merely_busy_gets_no_twin() -> None:
    pm, slow = stalled_tail()
    # It keeps writing at 1 MiB/s; an idle connection at 1.5 MiB/s would not be 2x faster.
    pm.admit(slow.id, 1000 * 1024)
    pm.commit(slow.id, 1000 * 1024, MIB, now=1.0)
    assert pm.claim(MIB, Endgame(now=1.0, rate=1.5 * MIB, setup=0.1)) is None
    # A connection 20x faster gains enough.
    assert pm.claim(MIB, Endgame(now=1.0, rate=20 * MIB, setup=0.1)) is not None


def test_no_twin_while_the_slow_one_is_writing_a_chunk() -> None:
    pm, slow = stalled_tail()
    pm.admit(slow.id, 1000)  # received, being written
    assert pm.claim(MIB, Endgame(now=9.0, rate=4 * MIB)) is None
    pm.commit(slow.id, 1000, MIB, now=1.0)
    assert pm.claim(MIB, Endgame(now=9.0, rate=4 * MIB)) is not None


def test_a_first_response_is_adopted_only_where_missing_data_begins() -> None:
    pm = PieceMap(4 * MIB, MIB, done=[0], partial={1: 5000})
    assert pm.first_missing() == MIB + 5000
    assert pm.claim_at(0, MIB) is None  # done
    assert pm.claim_at(MIB + 4000, 2 * MIB) is None  # inside the written prefix
    assert pm.claim_at(MIB + 6000, 2 * MIB) is None  # a hole would be left before it
    a = pm.claim_at(MIB + 5000, 2 * MIB)
    assert a is not None
    assert (a.start, a.reserved, a.end) == (MIB + 5000, 2 * MIB, 4 * MIB)
    # The others then steal above what it asked for.
    b = pm.claim(MIB)
    assert b is not None
    assert b.start >= 2 * MIB
    assert PieceMap(3, MIB, done=[0]).first_missing() is None
