"""Resume state: what a partial file on disk means, and what to do with it.

Two pure halves of opening a download's target (the I/O is :mod:`segdl.engine.target`):

* the conversion between aria2's control file (:mod:`.controlfile`) and the piece map the
  engine works on (:mod:`.pieces`): done pieces and the written prefix of partial pieces;
* :func:`decide`, the table of aria2's resume rules (reference/anchors.md §1.4) plus segdl's
  own: given what is at the model's name, at its partial name and beside them, and what the
  server says, resume, adopt aria2c's partial, continue (``-c``), publish a complete
  partial, start afresh beside the old file, take the file that is there as finished, or
  refuse.

The layout the table reads (DESIGN.md "Resume and publishing")::

    NAME                the model: only ever a file whose size and checksum verified
    NAME.part           segdl's partial (no model scanner picks it up)
    NAME.part.aria2     its aria2 control file, with segdl's validators as a trailer
    NAME.aria2          aria2c's own control file of a partial it keeps *at* NAME

Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from .controlfile import ControlFile, InFlightPiece, bitfield_indices, make_bitfield
from .pieces import PieceMap

__all__ = [
    "Case",
    "ControlState",
    "DataState",
    "FinalState",
    "Hashed",
    "OnDisk",
    "Remote",
    "Validators",
    "ValidatorsState",
    "Wishes",
    "after_hash",
    "control_from_pieces",
    "decide",
    "pieces_from_control",
    "pieces_from_prefix",
]


# -- control file ⇄ piece map ---------------------------------------------------------------


def control_from_pieces(pieces: PieceMap) -> ControlFile:
    """aria2's control file for the current state: done pieces and partial pieces' blocks."""
    in_flight = tuple(
        InFlightPiece.from_prefix(index, pieces.piece_size(index), nbytes)
        for index, nbytes in sorted(pieces.partial_pieces().items())
    )
    return ControlFile(
        piece_length=pieces.piece_length,
        total_length=pieces.total_length,
        bitfield=make_bitfield(pieces.num_pieces, pieces.done_indices()),
        # aria2 rejects in-flight entries with no completed block; they carry nothing.
        in_flight=tuple(p for p in in_flight if p.completed_prefix() > 0),
    )


def pieces_from_control(control: ControlFile) -> PieceMap:
    """The piece map a control file describes (a partial piece counts up to its first hole)."""
    return PieceMap(
        control.total_length,
        control.piece_length,
        done=bitfield_indices(control.bitfield, control.num_pieces),
        partial={p.index: p.completed_prefix() for p in control.in_flight},
    )


def pieces_from_prefix(total_length: int, piece_length: int, prefix: int) -> PieceMap:
    """aria2's ``-c`` on a file without a control file: its first *prefix* bytes are taken as
    downloaded, unverified."""
    if not 0 <= prefix <= total_length:
        raise ValueError(f"a prefix of {prefix} bytes does not fit a {total_length}-byte file")
    whole, rest = divmod(prefix, piece_length)
    return PieceMap(
        total_length,
        piece_length,
        done=range(whole),
        partial={whole: rest} if rest else {},
    )


# -- which remote version a file belongs to --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Validators:
    """What identifies the remote version a file came from (RFC 9110 §8.8)."""

    url: str
    size: int | None
    etag: str | None
    last_modified: str | None

    def matches(self, other: Validators) -> bool:
        """Could *other* be the same remote file?  Only fields both sides know are compared:
        enough to refuse mixing two versions into one partial."""
        if self.size != other.size:
            return False
        if self.etag and other.etag:
            return _same_etag(self.etag, other.etag)
        if self.last_modified and other.last_modified:
            return self.last_modified == other.last_modified
        return True

    def identifies(self, other: Validators) -> bool:
        """Is *other* surely the same remote file?  Enough to skip a download: the same URL
        and size, and a validator both sides have that agrees (an ETag when either has one,
        else Last-Modified).  A size alone proves nothing."""
        if self.url != other.url or self.size is None or self.size != other.size:
            return False
        if self.etag and other.etag:
            return _same_etag(self.etag, other.etag)
        if self.etag or other.etag:
            return False  # one side has a tag the other cannot confirm
        return bool(self.last_modified) and self.last_modified == other.last_modified


def _same_etag(a: str, b: str) -> bool:
    # Weak and strong forms of one tag name the same version for our purpose.
    return a.removeprefix("W/") == b.removeprefix("W/")


# -- the decision table -----------------------------------------------------------------------


class DataState(enum.Enum):
    ABSENT = "absent"
    FILE = "file"
    NOT_A_FILE = "not a file"  # a directory or a special file where the data goes


class ControlState(enum.Enum):
    ABSENT = "absent"
    VALID = "valid"
    CORRUPT = "corrupt"  # undecodable, or its trailer damaged


class ValidatorsState(enum.Enum):
    ABSENT = "absent"  # none saved: aria2c wrote the control file
    MATCH = "match"  # saved, and the server still serves that version
    CHANGED = "changed"  # saved, and the server now serves another version


class FinalState(enum.Enum):
    """The file at the model's name, judged against what segdl recorded when it published
    it there (:mod:`.published`)."""

    ABSENT = "absent"
    NOT_A_FILE = "not a file"
    CURRENT = "current"  # segdl published it and the server still serves that version
    OUTDATED = "outdated"  # segdl published it and the server now serves another version
    UNKNOWN = "unknown"  # no record says what it is: someone's file, or changed since


@dataclass(frozen=True, slots=True)
class OnDisk:
    """What is at the model's name and its partial name, as the I/O layer found it."""

    final: FinalState = FinalState.ABSENT
    final_size: int = 0
    # NAME.aria2: aria2c's control file of a partial it keeps at the model's name.
    in_place_control: ControlState = ControlState.ABSENT
    in_place_total: int | None = None
    in_place_validators: ValidatorsState = ValidatorsState.ABSENT
    # NAME.part and NAME.part.aria2: segdl's partial and its state.
    partial: DataState = DataState.ABSENT
    partial_size: int = 0
    control: ControlState = ControlState.ABSENT
    control_total: int | None = None  # TOTAL LENGTH of a valid control file
    validators: ValidatorsState = ValidatorsState.ABSENT


@dataclass(frozen=True, slots=True)
class Remote:
    """What the server says of the file."""

    size: int | None
    accepts_ranges: bool


@dataclass(frozen=True, slots=True)
class Wishes:
    """What the user allowed (aria2c's ``-c`` and ``--allow-overwrite``) and whether a checksum
    will prove the finished file."""

    continue_partial: bool = False
    allow_overwrite: bool = False
    checksum_known: bool = False


class Case(enum.Enum):
    EXISTING = "existing"  # the file at the model's name is this download: done at once
    HASH_FINAL = "hash final"  # a checksum will tell whether the file there is this one
    PUBLISH = "publish"  # the partial is complete (aria2c finished it): verify and publish
    RESUME = "resume"  # continue the partial from its control file
    ADOPT = "adopt"  # move aria2c's partial (NAME + NAME.aria2) to the partial name, resume
    CONTINUE = "continue"  # -c: move the file to the partial name, its bytes a prefix
    FRESH = "fresh"  # download afresh under the partial name; an old file stays until then
    REFUSE_NOT_A_FILE = "refuse: not a file"
    REFUSE_EXISTS = "refuse: exists"  # a file that may be someone's: -c/--allow-overwrite
    REFUSE_LARGER = "refuse: larger"  # -c on a file larger than the remote one


class Hashed(enum.Enum):
    """Which file :func:`after_hash` was told about."""

    FINAL = "final"
    PARTIAL = "partial"


def decide(disk: OnDisk, remote: Remote, wishes: Wishes) -> Case:
    """aria2's resume rules (anchors §1.4), with segdl's partial name, validators, records
    and checksums.

    * The file at the model's name is only ever replaced by a complete, verified download
      (the engine works on NAME.part).  It is *this* download when segdl's record says so
      (:data:`FinalState.CURRENT`): done at once.  One segdl cannot vouch for is replaced
      only with ``-c`` or ``--allow-overwrite`` (the server and ``download_model`` always
      allow it), unless it is aria2c's partial (a NAME.aria2 beside it) — a half-written file
      is nobody's model.  With a checksum it is hashed first (:data:`Case.HASH_FINAL`); with
      ``-c`` and the remote size it is taken as finished (aria2c's rule) unless segdl knows
      the server's file changed.
    * A control file resumes only what it describes: the same total length, a server that
      serves ranges, and the same remote version (the trailer's validators; a control file
      aria2c rewrote has none and is trusted as aria2c trusts it).
    * A partial without a control file is complete when it has the remote size (aria2c
      deletes its control file when it finishes; segdl publishes before it deletes its own):
      published, after its checksum if there is one.  Any other one cannot be resumed.
    * aria2c's partial at the model's name is adopted (moved to the partial name) when its
      control file could be resumed, and replaced otherwise.
    * ``-c`` continues a file of someone's (its bytes a prefix) when ranges work.
    """
    if disk.partial is DataState.NOT_A_FILE or disk.final is FinalState.NOT_A_FILE:
        return Case.REFUSE_NOT_A_FILE
    if disk.final is FinalState.CURRENT:
        return Case.EXISTING
    size = remote.size
    ranged = size is not None and remote.accepts_ranges
    in_place = (
        disk.final is not FinalState.ABSENT and disk.in_place_control is not ControlState.ABSENT
    )
    someones = disk.final in (FinalState.UNKNOWN, FinalState.OUTDATED) and not in_place
    unknown_of_remote_size = (
        someones
        and disk.final is FinalState.UNKNOWN
        and size is not None
        and disk.final_size == size
    )
    if unknown_of_remote_size and wishes.checksum_known:
        return Case.HASH_FINAL
    may_replace = not someones or wishes.allow_overwrite or wishes.continue_partial
    if disk.partial is DataState.FILE:
        resumable = (
            disk.control is ControlState.VALID
            and ranged
            and disk.control_total == size
            and disk.validators is not ValidatorsState.CHANGED
        )
        complete = (
            disk.control is ControlState.ABSENT and size is not None and disk.partial_size == size
        )
        if resumable or complete:
            if not may_replace:
                return Case.REFUSE_EXISTS
            return Case.RESUME if resumable else Case.PUBLISH
    if in_place:
        adoptable = (
            disk.in_place_control is ControlState.VALID
            and ranged
            and disk.in_place_total == size
            and disk.in_place_validators is not ValidatorsState.CHANGED
        )
        return Case.ADOPT if adoptable else Case.FRESH
    if someones and wishes.continue_partial and disk.final is FinalState.UNKNOWN:
        if unknown_of_remote_size:
            return Case.EXISTING
        if ranged:
            assert size is not None
            return Case.REFUSE_LARGER if disk.final_size > size else Case.CONTINUE
    if not may_replace:
        return Case.REFUSE_EXISTS
    return Case.FRESH


def after_hash(disk: OnDisk, hashed: Hashed, matches: bool) -> OnDisk:
    """What is on disk, once the file :func:`decide` asked about has been hashed: decide
    again with it.

    The file at the model's name is then the checksum's file (CURRENT) or known to be
    another one (OUTDATED: replaced on the same terms as any file segdl cannot vouch for).
    A complete partial that does not match is worth nothing: the rest is decided without it.
    """
    if hashed is Hashed.FINAL:
        return replace(disk, final=FinalState.CURRENT if matches else FinalState.OUTDATED)
    if matches:
        return disk
    return replace(disk, partial=DataState.ABSENT, partial_size=0)
