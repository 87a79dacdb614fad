"""The resume decision table and the control file ⇄ piece map conversion, property-tested."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segdl.core.controlfile import ControlFile
from segdl.core.pieces import PieceMap
from segdl.core.resume import (
    Case,
    ControlState,
    DataState,
    FinalState,
    Hashed,
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
LENGTHS = st.integers(min_value=0, max_value=10_000)
TOTALS = st.one_of(st.none(), LENGTHS)


@st.composite
def on_disk(draw: st.DrawFn) -> OnDisk:
    final = draw(st.sampled_from(FinalState))
    partial = draw(st.sampled_from(DataState))
    control = draw(st.sampled_from(ControlState))
    in_place = draw(st.sampled_from(ControlState))
    return OnDisk(
        final=final,
        final_size=draw(LENGTHS) if final is not FinalState.ABSENT else 0,
        in_place_control=in_place,
        in_place_total=draw(LENGTHS) if in_place is ControlState.VALID else None,
        in_place_validators=draw(st.sampled_from(ValidatorsState)),
        partial=partial,
        partial_size=draw(LENGTHS) if partial is DataState.FILE else 0,
        control=control,
        control_total=draw(LENGTHS) if control is ControlState.VALID else None,
        validators=draw(st.sampled_from(ValidatorsState)),
    )


remotes = st.builds(Remote, size=SIZES, accepts_ranges=st.booleans())
wishes = st.builds(
    Wishes,
    continue_partial=st.booleans(),
    allow_overwrite=st.booleans(),
    checksum_known=st.booleans(),
)
# Cases that end with the partial renamed over whatever is at the model's name.
PUBLISHING = {Case.RESUME, Case.PUBLISH, Case.ADOPT, Case.CONTINUE, Case.FRESH}


def someones_file(disk: OnDisk) -> bool:
    """A finished file at the model's name that segdl cannot vouch for."""
    return (
        disk.final in (FinalState.UNKNOWN, FinalState.OUTDATED)
        and disk.in_place_control is ControlState.ABSENT
    )


@given(on_disk(), remotes, wishes)
def test_every_situation_has_one_answer(disk: OnDisk, remote: Remote, wish: Wishes) -> None:
    assert isinstance(decide(disk, remote, wish), Case)


@given(on_disk(), remotes, wishes)
def test_a_resume_continues_only_the_same_file(disk: OnDisk, remote: Remote, wish: Wishes) -> None:
    if decide(disk, remote, wish) is Case.RESUME:
        assert disk.partial is DataState.FILE
        assert disk.control is ControlState.VALID
        assert remote.size is not None
        assert remote.accepts_ranges
        assert disk.control_total == remote.size
        assert disk.validators is not ValidatorsState.CHANGED


@given(on_disk(), remotes, wishes)
def test_adopting_aria2cs_partial_follows_the_same_rules(
    disk: OnDisk, remote: Remote, wish: Wishes
) -> None:
    if decide(disk, remote, wish) is Case.ADOPT:
        assert disk.final in (FinalState.UNKNOWN, FinalState.OUTDATED)
        assert disk.in_place_control is ControlState.VALID
        assert remote.size is not None
        assert remote.accepts_ranges
        assert disk.in_place_total == remote.size
        assert disk.in_place_validators is not ValidatorsState.CHANGED


@given(on_disk(), remotes, wishes)
def test_a_partial_is_published_only_when_complete(
    disk: OnDisk, remote: Remote, wish: Wishes
) -> None:
    """A partial without a control file has the remote size only once complete (aria2c
    deleted its control file; segdl deletes its own only after the rename)."""
    if decide(disk, remote, wish) is Case.PUBLISH:
        assert disk.partial is DataState.FILE
        assert disk.control is ControlState.ABSENT
        assert remote.size is not None
        assert disk.partial_size == remote.size


@given(on_disk(), remotes, wishes)
def test_someone_elses_file_is_replaced_only_when_allowed(
    disk: OnDisk, remote: Remote, wish: Wishes
) -> None:
    """A finished file segdl cannot vouch for is replaced (by any case that publishes) only
    with -c or --allow-overwrite; aria2c's half-written file at the name is nobody's model."""
    case = decide(disk, remote, wish)
    if someones_file(disk) and case in PUBLISHING:
        assert wish.allow_overwrite or wish.continue_partial


@given(on_disk(), remotes, wishes)
def test_a_file_is_taken_as_this_download_only_with_proof(
    disk: OnDisk, remote: Remote, wish: Wishes
) -> None:
    """segdl's record, or aria2c's -c rule on a file of the remote size; never a file segdl
    knows to be another version, never when a checksum could tell instead."""
    case = decide(disk, remote, wish)
    if case is Case.EXISTING and disk.final is not FinalState.CURRENT:
        assert disk.final is FinalState.UNKNOWN
        assert wish.continue_partial
        assert not wish.checksum_known
        assert disk.final_size == remote.size
    if case is Case.HASH_FINAL:
        assert wish.checksum_known
        assert disk.final is FinalState.UNKNOWN
        assert disk.final_size == remote.size


@given(on_disk(), remotes, wishes)
def test_a_current_file_is_done_at_once(disk: OnDisk, remote: Remote, wish: Wishes) -> None:
    if disk.final is FinalState.CURRENT and disk.partial is not DataState.NOT_A_FILE:
        assert decide(disk, remote, wish) is Case.EXISTING


@given(on_disk(), remotes, wishes)
def test_a_resumable_partial_is_never_thrown_away(
    disk: OnDisk, remote: Remote, wish: Wishes
) -> None:
    """With nothing at the model's name, a partial its control file can resume is resumed."""
    resumable = (
        disk.partial is DataState.FILE
        and disk.control is ControlState.VALID
        and remote.size is not None
        and remote.accepts_ranges
        and disk.control_total == remote.size
        and disk.validators is not ValidatorsState.CHANGED
    )
    if resumable and disk.final is FinalState.ABSENT:
        assert decide(disk, remote, wish) is Case.RESUME


@given(on_disk(), remotes, wishes)
def test_continue_never_shrinks_or_guesses(disk: OnDisk, remote: Remote, wish: Wishes) -> None:
    case = decide(disk, remote, wish)
    if case is Case.CONTINUE:
        assert wish.continue_partial
        assert disk.final is FinalState.UNKNOWN
        assert remote.size is not None
        assert remote.accepts_ranges
        assert disk.final_size < remote.size  # equal: EXISTING; larger: refused
    if case is Case.REFUSE_LARGER:
        assert wish.continue_partial
        assert remote.size is not None
        assert disk.final_size > remote.size


@given(on_disk(), remotes, wishes)
def test_what_is_not_a_file_is_refused(disk: OnDisk, remote: Remote, wish: Wishes) -> None:
    not_a_file = disk.final is FinalState.NOT_A_FILE or disk.partial is DataState.NOT_A_FILE
    assert (decide(disk, remote, wish) is Case.REFUSE_NOT_A_FILE) == not_a_file


@given(on_disk(), remotes, wishes, st.booleans())
def test_hashing_the_file_at_the_name_settles_it(
    disk: OnDisk, remote: Remote, wish: Wishes, matches: bool
) -> None:
    if decide(disk, remote, wish) is not Case.HASH_FINAL:
        return
    case = decide(after_hash(disk, Hashed.FINAL, matches), remote, wish)
    assert case is not Case.HASH_FINAL
    assert (case is Case.EXISTING) == matches


@given(on_disk(), remotes, wishes)
def test_a_complete_partial_that_fails_its_checksum_is_never_used(
    disk: OnDisk, remote: Remote, wish: Wishes
) -> None:
    if decide(disk, remote, wish) is not Case.PUBLISH:
        return
    assert decide(after_hash(disk, Hashed.PARTIAL, True), remote, wish) is Case.PUBLISH
    case = decide(after_hash(disk, Hashed.PARTIAL, False), remote, wish)
    assert case not in (Case.PUBLISH, Case.RESUME)


# aria2's table (reference/anchors.md §1.4) and segdl's additions, row by row.
FILE, ABSENT = DataState.FILE, DataState.ABSENT
VALID, CORRUPT = ControlState.VALID, ControlState.CORRUPT
MATCH, CHANGED = ValidatorsState.MATCH, ValidatorsState.CHANGED
UNKNOWN, OUTDATED, CURRENT = FinalState.UNKNOWN, FinalState.OUTDATED, FinalState.CURRENT
R = Remote(100, True)
ALLOW, CONT, SUM = (
    Wishes(allow_overwrite=True),
    Wishes(continue_partial=True),
    Wishes(checksum_known=True),
)


def part(
    size: int, total: int | None = None, v: ValidatorsState = MATCH, c: ControlState = VALID
) -> OnDisk:
    """A partial NAME.part; with *total*, its control file."""
    if total is None:
        return OnDisk(partial=FILE, partial_size=size)
    return OnDisk(partial=FILE, partial_size=size, control=c, control_total=total, validators=v)


def at_name(
    state: FinalState, size: int = 100, *, base: OnDisk | None = None, **more: object
) -> OnDisk:
    """A file at the model's name (judged *state*), over *base* (a partial, say)."""
    return replace(base or OnDisk(), final=state, final_size=size, **more)  # type: ignore[arg-type]


TABLE = [
    # nothing there: download
    (OnDisk(), R, Wishes(), Case.FRESH),
    # the partial's control file, same length and version, ranges: resume
    (part(50, 100), R, Wishes(), Case.RESUME),
    # a control file aria2c rewrote (no trailer): trusted as aria2c trusts it
    (part(50, 100, ValidatorsState.ABSENT), R, Wishes(), Case.RESUME),
    # the server changed the file: never mix versions
    (part(100, 100, CHANGED), R, Wishes(), Case.FRESH),
    # another length, or no ranges any more
    (part(100, 90), R, Wishes(), Case.FRESH),
    (part(100, 100), Remote(100, False), Wishes(), Case.FRESH),
    # a corrupt control file, a defunct one (no data)
    (part(100, 100, c=CORRUPT), R, Wishes(), Case.FRESH),
    (OnDisk(control=VALID, control_total=100, validators=MATCH), R, Wishes(), Case.FRESH),
    # a complete partial without control file (aria2c finished it): publish
    (part(100), R, Wishes(), Case.PUBLISH),
    (part(100), Remote(100, False), Wishes(), Case.PUBLISH),
    # a shorter one (an interrupted stream), or a size nobody knows: afresh
    (part(40), R, Wishes(continue_partial=True), Case.FRESH),
    (part(40), Remote(None, False), Wishes(), Case.FRESH),
    # segdl's record: the file there is the server's version
    (at_name(CURRENT), R, Wishes(), Case.EXISTING),
    (at_name(CURRENT, base=part(30, 100)), R, Wishes(), Case.EXISTING),
    # segdl published it, the server's file changed: refused, or replaced once verified
    (at_name(OUTDATED), R, Wishes(), Case.REFUSE_EXISTS),
    (at_name(OUTDATED), R, ALLOW, Case.FRESH),
    (at_name(OUTDATED), R, CONT, Case.FRESH),  # -c never takes a known other version
    # someone's file: refused without -c/--allow-overwrite
    (at_name(UNKNOWN, 40), R, Wishes(), Case.REFUSE_EXISTS),
    (at_name(UNKNOWN, 40), R, ALLOW, Case.FRESH),
    (at_name(UNKNOWN, 40), R, CONT, Case.CONTINUE),
    (at_name(UNKNOWN, 140), R, CONT, Case.REFUSE_LARGER),
    # -c where the server cannot resume: aria2 starts over
    (at_name(UNKNOWN, 40), Remote(100, False), CONT, Case.FRESH),
    # the right size: done with -c (aria2c's rule), or hashed when a checksum can tell
    (at_name(UNKNOWN), R, CONT, Case.EXISTING),
    (at_name(UNKNOWN), R, SUM, Case.HASH_FINAL),
    (at_name(UNKNOWN), R, Wishes(), Case.REFUSE_EXISTS),
    # replacing someone's file that was allowed before: the partial resumes, and only then
    (at_name(UNKNOWN, base=part(30, 100)), R, ALLOW, Case.RESUME),
    (at_name(UNKNOWN, base=part(30, 100)), R, Wishes(), Case.REFUSE_EXISTS),
    # aria2c's partial at the model's name: adopted when it can be resumed, else replaced
    (at_name(UNKNOWN, 100, in_place_control=VALID, in_place_total=100), R, Wishes(), Case.ADOPT),
    (at_name(UNKNOWN, 100, in_place_control=VALID, in_place_total=90), R, Wishes(), Case.FRESH),
    (at_name(UNKNOWN, 100, in_place_control=CORRUPT), R, Wishes(), Case.FRESH),
    (at_name(UNKNOWN, in_place_control=VALID, in_place_total=100, in_place_validators=CHANGED),
     R, Wishes(), Case.FRESH),
    # a directory where the file or its partial goes
    (at_name(FinalState.NOT_A_FILE), R, ALLOW, Case.REFUSE_NOT_A_FILE),
    (OnDisk(partial=DataState.NOT_A_FILE), R, ALLOW, Case.REFUSE_NOT_A_FILE),
]  # fmt: skip


@pytest.mark.parametrize(("disk", "remote", "wish", "expected"), TABLE)
def test_the_table(disk: OnDisk, remote: Remote, wish: Wishes, expected: Case) -> None:
    assert decide(disk, remote, wish) is expected


def test_validators_compare_what_both_sides_know() -> None:
    v = Validators(url="http://h/f.bin", size=10, etag='"a"', last_modified="Mon")
    assert v.matches(Validators(url="x", size=10, etag='W/"a"', last_modified="Tue"))
    assert not v.matches(Validators(url="x", size=10, etag='"b"', last_modified="Mon"))
    assert not v.matches(Validators(url="x", size=11, etag='"a"', last_modified=None))
    assert v.matches(Validators(url="x", size=10, etag=None, last_modified="Mon"))
    assert not v.matches(Validators(url="x", size=10, etag=None, last_modified="Tue"))


def test_validators_identify_a_version_only_with_a_validator() -> None:
    """Skipping a download needs more than "nothing contradicts": the same URL and size and
    a validator both sides have."""
    v = Validators(url="http://h/f.bin", size=10, etag='"a"', last_modified="Mon")
    assert v.identifies(Validators(url="http://h/f.bin", size=10, etag='W/"a"', last_modified=None))
    assert not v.identifies(
        Validators(url="http://h/g.bin", size=10, etag='"a"', last_modified="Mon")
    )
    assert not v.identifies(
        Validators(url="http://h/f.bin", size=10, etag=None, last_modified="Mon")
    )
    bare = Validators(url="http://h/f.bin", size=10, etag=None, last_modified=None)
    assert not bare.identifies(bare)
    dated = Validators(url="http://h/f.bin", size=10, etag=None, last_modified="Mon")
    assert dated.identifies(dated)
    unsized = Validators(url="http://h/f.bin", size=None, etag='"a"', last_modified=None)
    assert not unsized.identifies(unsized)


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
