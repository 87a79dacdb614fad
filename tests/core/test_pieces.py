"""Properties of the piece map: ranges tile the file, never overlap, stealing keeps that."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segdl.core.pieces import Assignment, PieceMap

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
        spans.append((a.position, a.end, f"active{a.id}"))
    return sorted(s for s in spans if s[1] > s[0])


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
                pm.commit(a.id, 0, amount or 1)
                # A steal always leaves its victim some work.
                assert all(o.position < o.end for o in pm.active if o.id in busy)
        else:
            a = active[amount % len(active)]
            if kind == 1:
                # Write part of the reserved chunk, then reserve the next one.
                n = (a.reserved - a.position) if amount % 3 else (a.reserved - a.position) // 2
                pm.commit(a.id, n, P)
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
            pm.commit(a.id, 0, P)
            continue
        for a in active:
            want = pm.commit(a.id, a.reserved - a.position, P)
            if want == 0:
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
    pm.commit(a.id, 0, MIB)
    pm.commit(a.id, MIB, MIB)  # one piece written, the second reserved
    b = pm.claim(MIB)
    assert b is not None
    # Stealable: pieces 2..15 (14 pieces): the thief takes the upper 7.
    assert (b.start, b.end) == (9 * MIB, 16 * MIB)
    assert a.end == 9 * MIB


def test_never_steals_the_piece_being_read() -> None:
    pm = PieceMap(2 * MIB, MIB)
    a = pm.claim(MIB)
    assert a is not None
    pm.commit(a.id, 0, MIB)  # reserves piece 0
    b = pm.claim(MIB)
    assert b is not None
    assert (b.start, b.end) == (MIB, 2 * MIB)
    assert pm.claim(MIB) is None  # piece 0 is being read, piece 1 is taken


def test_min_split_size_limits_stealing() -> None:
    pm = PieceMap(10 * MIB, MIB)
    a = pm.claim(4 * MIB)
    assert a is not None
    pm.commit(a.id, 0, MIB)
    # 9 stealable pieces: the thief would get 5 MiB ≥ 4 MiB.
    b = pm.claim(4 * MIB)
    assert b is not None
    assert b.end - b.start == 5 * MIB
    # Now a has 4 stealable pieces (half = 2 MiB) and b has 4 (after its first piece): too small.
    pm.commit(b.id, 0, MIB)
    assert pm.claim(4 * MIB) is None


def test_release_returns_the_unwritten_rest_and_keeps_the_prefix() -> None:
    pm = PieceMap(4 * MIB, MIB)
    a = pm.claim(MIB)
    assert a is not None
    pm.commit(a.id, 0, MIB)
    pm.commit(a.id, MIB // 2 + 5, MIB)
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
    pm.commit(a.id, 0, 1000)
    with pytest.raises(ValueError, match="reserved"):
        pm.commit(a.id, 1001, 1000)
