"""Resume state: what a partial file on disk means, and what to do with it.

Two pure halves of opening a download's target (the I/O is :mod:`segdl.engine.target`):

* the conversion between aria2's control file (:mod:`.controlfile`) and the piece map the
  engine works on (:mod:`.pieces`): done pieces and the written prefix of partial pieces;
* :func:`decide`, the table of aria2's resume rules (reference/anchors.md §1.4) plus segdl's
  own: given what is on disk and what the server says, resume, continue (``-c``), start
  afresh, take an existing file as finished, or refuse.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .controlfile import ControlFile, InFlightPiece, bitfield_indices, make_bitfield
from .pieces import PieceMap

__all__ = [
    "Case",
    "ControlState",
    "DataState",
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


# -- which remote version a partial belongs to ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Validators:
    """What identifies the remote version a partial file came from (RFC 9110 §8.8)."""

    url: str
    size: int | None
    etag: str | None
    last_modified: str | None

    def matches(self, other: Validators) -> bool:
        """Same remote file?  Only fields both sides know are compared."""
        if self.size != other.size:
            return False
        if self.etag and other.etag:
            # Weak and strong forms of one tag name the same version for our purpose.
            return self.etag.removeprefix("W/") == other.etag.removeprefix("W/")
        if self.last_modified and other.last_modified:
            return self.last_modified == other.last_modified
        return True


# -- the decision table -----------------------------------------------------------------------


class DataState(enum.Enum):
    ABSENT = "absent"
    FILE = "file"
    NOT_A_FILE = "not a file"  # a directory or a special file where the data goes


class ControlState(enum.Enum):
    ABSENT = "absent"
    VALID = "valid"
    CORRUPT = "corrupt"  # undecodable, or its seal or validators file damaged


class ValidatorsState(enum.Enum):
    ABSENT = "absent"  # none saved: aria2c's own partial, or someone else's file
    MATCH = "match"  # saved, and the server still serves that version
    CHANGED = "changed"  # saved, and the server now serves another version


@dataclass(frozen=True, slots=True)
class OnDisk:
    """What is at the target's path, as the I/O layer found it."""

    data: DataState
    data_size: int = 0
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
    RESUME = "resume"  # continue from the control file
    CONTINUE = "continue"  # -c: take the file's bytes as a prefix, write a control file
    FRESH = "fresh"  # start over: sidecars removed, the file truncated and allocated
    EXISTING = "existing"  # a file of the right size taken as finished (-c or a checksum)
    REFUSE_NOT_A_FILE = "refuse: not a file"
    REFUSE_EXISTS = "refuse: exists"  # someone's file; -c or --allow-overwrite decide
    REFUSE_LARGER = "refuse: larger"  # -c on a file larger than the remote one


def decide(disk: OnDisk, remote: Remote, wishes: Wishes) -> Case:
    """aria2's resume rules (anchors §1.4), with segdl's validators and checksums.

    * A control file resumes only what it describes: the same total length, a server that
      serves ranges, and the same remote version (saved validators; a partial aria2c wrote
      has none and is trusted as aria2c trusts it).  Anything else starts afresh, as does a
      corrupt control file: it says nothing trustworthy about the data.
    * Our own partial without a control file (validators only: a stream without ranges, or a
      crash before the first state) cannot be resumed: afresh.
    * A file of the remote size with no sidecars is finished only with ``-c`` (aria2c's
      rule) or when a checksum will prove it; otherwise it may be another version.
    * ``-c`` continues any other file (its bytes a prefix) when ranges work; without ``-c``
      or ``--allow-overwrite`` someone's file is never touched.
    """
    if disk.data is DataState.NOT_A_FILE:
        return Case.REFUSE_NOT_A_FILE
    if disk.data is DataState.ABSENT or disk.control is ControlState.CORRUPT:
        return Case.FRESH
    size = remote.size
    if disk.control is ControlState.VALID:
        resumable = (
            size is not None
            and remote.accepts_ranges
            and disk.control_total == size
            and disk.validators is not ValidatorsState.CHANGED
        )
        return Case.RESUME if resumable else Case.FRESH
    if disk.validators is not ValidatorsState.ABSENT:
        return Case.FRESH
    proven = wishes.continue_partial or wishes.checksum_known
    if size is not None and disk.data_size == size and proven:
        return Case.EXISTING
    if wishes.continue_partial and size is not None and remote.accepts_ranges:
        return Case.REFUSE_LARGER if disk.data_size > size else Case.CONTINUE
    if not (wishes.allow_overwrite or wishes.continue_partial):
        return Case.REFUSE_EXISTS
    return Case.FRESH


def after_hash(matches: bool, wishes: Wishes) -> Case:
    """An :data:`Case.EXISTING` file with a checksum, once hashed: finished if it matches;
    otherwise it is someone's other file, replaced only with ``--allow-overwrite``."""
    if matches:
        return Case.EXISTING
    return Case.FRESH if wishes.allow_overwrite else Case.REFUSE_EXISTS
