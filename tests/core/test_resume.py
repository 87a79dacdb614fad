"""The resume decision table and the control file ⇄ piece map conversion, property-tested."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segdl.core.controlfile import ControlFile
from segdl.core.pieces import PieceMap
from segdl.core.resume import (
    Case,
    ControlState,
    DataState,
    OnDisk,
    Remote,
    Validators,
    ValidatorsState,
    Wishes,
    after_hash,
    control_from_pieces,
    decide,
    pieces_from_control,
    pieces_from_prefix,
)

SIZES = st.one_of(st.none(), st.integers(min_value=0, max_value=10_000))


@st.composite
def on_disk(draw: st.DrawFn) -> OnDisk:
    data = draw(st.sampled_from(DataState))
    control = draw(st.sampled_from(ControlState))
    return OnDisk(
        data=data,
        data_size=draw(st.integers(min_value=0, max_value=10_000)) if data is DataState.FILE else 0,
        control=control,
        control_total=draw(st.integers(min_value=0, max_value=10_000))
        if control is ControlState.VALID
        else None,
        validators=draw(st.sampled_from(ValidatorsState)),
    )


remotes = st.builds(Remote, size=SIZES, accepts_ranges=st.booleans())
wishes = st.builds(
    Wishes,
    continue_partial=st.booleans(),
    allow_overwrite=st.booleans(),
    checksum_known=st.booleans(),
)


@given(on_disk(), remotes, wishes)
def test_every_situation_has_one_answer(disk: OnDisk, remote: Remote, wish: Wishes) -> None:
    assert isinstance(decide(disk, remote, wish), Case)


@given(on_disk(), remotes, wishes)
def test_a_resume_continues_only_the_same_file(disk: OnDisk, remote: Remote, wish: Wishes) -> None:
    if decide(disk, remote, wish) is Case.RESUME:
        assert disk.data is DataState.FILE
        assert disk.control is ControlState.VALID
        assert remote.size is not None
        assert remote.accepts_ranges
        assert disk.control_total == remote.size
        assert disk.validators is not ValidatorsState.CHANGED


@given(on_disk(), remotes, wishes)
def test_someone_elses_file_is_touched_only_when_allowed(
    disk: OnDisk, remote: Remote, wish: Wishes
) -> None:
    """A file with no sidecars of ours is replaced or continued only with -c or
    --allow-overwrite, and taken as finished only with -c or a checksum to prove it."""
    foreign = (
        disk.data is DataState.FILE
        and disk.control is ControlState.ABSENT
        and disk.validators is ValidatorsState.ABSENT
    )
    case = decide(disk, remote, wish)
    if foreign and case in (Case.FRESH, Case.CONTINUE):
        assert wish.allow_overwrite or wish.continue_partial
    if case is Case.EXISTING:
        assert wish.continue_partial or wish.checksum_known
        assert disk.data_size == remote.size


@given(on_disk(), remotes, wishes)
def test_our_unresumable_state_starts_over(disk: OnDisk, remote: Remote, wish: Wishes) -> None:
    """A corrupt control file, a missing data file, or our validators without a control file
    say nothing a resume could trust: afresh (unless the path is not a file at all)."""
    case = decide(disk, remote, wish)
    if disk.data is DataState.NOT_A_FILE:
        assert case is Case.REFUSE_NOT_A_FILE
    else:
        ours_without_state = (
            disk.control is ControlState.ABSENT and disk.validators is not ValidatorsState.ABSENT
        )
        if disk.data is DataState.ABSENT or disk.control is ControlState.CORRUPT:
            assert case is Case.FRESH
        if ours_without_state:
            assert case is Case.FRESH


@given(on_disk(), remotes, wishes)
def test_continue_never_shrinks_or_guesses(disk: OnDisk, remote: Remote, wish: Wishes) -> None:
    case = decide(disk, remote, wish)
    if case is Case.CONTINUE:
        assert remote.size is not None
        assert remote.accepts_ranges
        assert disk.data_size < remote.size  # equal: EXISTING; larger: refused
    if case is Case.REFUSE_LARGER:
        assert wish.continue_partial
        assert remote.size is not None
        assert disk.data_size > remote.size


# aria2's table (reference/anchors.md §1.4) and segdl's additions, row by row.
FILE = DataState.FILE
VALID, CHANGED = ControlState.VALID, ValidatorsState.CHANGED
R = Remote(100, True)
TABLE = [
    # control file of the same length and version, ranges: resume
    (OnDisk(FILE, 50, VALID, 100, ValidatorsState.MATCH), R, Wishes(), Case.RESUME),
    # aria2c's own partial (no validators): trusted as aria2c trusts it
    (OnDisk(FILE, 100, ControlState.VALID, 100), Remote(100, True), Wishes(), Case.RESUME),
    # the server changed the file: never mix versions
    (OnDisk(FILE, 100, VALID, 100, CHANGED), R, Wishes(), Case.FRESH),
    # another length, or no ranges any more
    (OnDisk(FILE, 100, ControlState.VALID, 90), Remote(100, True), Wishes(), Case.FRESH),
    (OnDisk(FILE, 100, ControlState.VALID, 100), Remote(100, False), Wishes(), Case.FRESH),
    # a defunct control file (no data)
    (OnDisk(DataState.ABSENT, 0, ControlState.VALID, 100), Remote(100, True), Wishes(), Case.FRESH),
    # someone's file: refused without -c/--allow-overwrite
    (OnDisk(FILE, 40), Remote(100, True), Wishes(), Case.REFUSE_EXISTS),
    (OnDisk(FILE, 40), Remote(100, True), Wishes(allow_overwrite=True), Case.FRESH),
    (OnDisk(FILE, 40), Remote(100, True), Wishes(continue_partial=True), Case.CONTINUE),
    (OnDisk(FILE, 140), Remote(100, True), Wishes(continue_partial=True), Case.REFUSE_LARGER),
    # -c where the server cannot resume: aria2 starts over
    (OnDisk(FILE, 40), Remote(100, False), Wishes(continue_partial=True), Case.FRESH),
    # the right size: done with -c, or once a checksum proves it
    (OnDisk(FILE, 100), Remote(100, True), Wishes(continue_partial=True), Case.EXISTING),
    (OnDisk(FILE, 100), Remote(100, True), Wishes(checksum_known=True), Case.EXISTING),
    (OnDisk(FILE, 100), Remote(100, True), Wishes(), Case.REFUSE_EXISTS),
    # a directory where the file goes
    (OnDisk(DataState.NOT_A_FILE), R, Wishes(allow_overwrite=True), Case.REFUSE_NOT_A_FILE),
]  # fmt: skip


@pytest.mark.parametrize(("disk", "remote", "wish", "expected"), TABLE)
def test_the_table(disk: OnDisk, remote: Remote, wish: Wishes, expected: Case) -> None:
    assert decide(disk, remote, wish) is expected


@given(st.booleans(), wishes)
def test_an_existing_file_after_hashing(matches: bool, wish: Wishes) -> None:
    case = after_hash(matches, wish)
    if matches:
        assert case is Case.EXISTING
    else:
        assert case is (Case.FRESH if wish.allow_overwrite else Case.REFUSE_EXISTS)


def test_validators_compare_what_both_sides_know() -> None:
    v = Validators(url="http://h/f.bin", size=10, etag='"a"', last_modified="Mon")
    assert v.matches(Validators(url="x", size=10, etag='W/"a"', last_modified="Tue"))
    assert not v.matches(Validators(url="x", size=10, etag='"b"', last_modified="Mon"))
    assert not v.matches(Validators(url="x", size=11, etag='"a"', last_modified=None))
    assert v.matches(Validators(url="x", size=10, etag=None, last_modified="Mon"))
    assert not v.matches(Validators(url="x", size=10, etag=None, last_modified="Tue"))


# -- conversion --------------------------------------------------------------------------------


@st.composite
def piece_maps(draw: st.DrawFn) -> PieceMap:
    piece_length = draw(st.sampled_from([16 * 1024, 32 * 1024, 1024 * 1024]))
    total = draw(st.integers(min_value=0, max_value=40 * piece_length))
    pieces = PieceMap(total, piece_length)
    num = pieces.num_pieces
    done = draw(st.sets(st.integers(min_value=0, max_value=max(0, num - 1)))) if num else set()
    partial = {}
    for index in draw(st.sets(st.integers(min_value=0, max_value=max(0, num - 1)))) if num else ():
        if index not in done:
            # Whole 16 KiB blocks: what aria2's block bitfield can say.
            blocks = pieces.piece_size(index) // (16 * 1024)
            if blocks > 1:
                partial[index] = draw(st.integers(min_value=1, max_value=blocks - 1)) * 16 * 1024
    return PieceMap(total, piece_length, done=done, partial=partial)


@given(piece_maps())
def test_control_file_round_trips_the_piece_map(pieces: PieceMap) -> None:
    control = control_from_pieces(pieces)
    back = pieces_from_control(ControlFile.decode(control.encode()))
    assert back.done_indices() == pieces.done_indices()
    assert back.partial_pieces() == pieces.partial_pieces()
    assert back.downloaded == pieces.downloaded


@given(st.integers(min_value=0, max_value=5_000_000), st.data())
def test_a_prefix_is_exactly_its_bytes(total: int, data: st.DataObject) -> None:
    prefix = data.draw(st.integers(min_value=0, max_value=total))
    pieces = pieces_from_prefix(total, 1024 * 1024, prefix)
    assert pieces.downloaded == prefix
    assert pieces.complete == (prefix == total)


def test_a_prefix_larger_than_the_file_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        pieces_from_prefix(10, 1024 * 1024, 11)
