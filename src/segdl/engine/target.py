"""A download's target: opened before any engine runs, published after it.

The layout (DESIGN.md "Resume and publishing"): every engine writes ``NAME.part``, its
control file beside it (``NAME.part.aria2``, aria2's format with segdl's validators as a
trailer); only a file whose size and checksum verified is renamed to ``NAME``
(:func:`publish_target`: fsync, rename, directory fsync).  A model scanner looking at the
folder during a download finds no model file, and a wrong file never gets the model's name.

Opening decides, as aria2 does plus segdl's own rules (:func:`segdl.core.resume.decide` holds
them), between taking the file at ``NAME`` as this download (segdl's record of it says so, a
checksum proves it, or ``-c``), publishing a partial aria2c finished, resuming, adopting
aria2c's partial at ``NAME``, continuing a file's bytes (``-c``), starting afresh beside the
old file, and refusing; then it prepares the partial for that case.

Finishing is :func:`verify_target` (size and checksum), the source's own check (MEGA's MAC,
run by the flow), then :func:`publish_target`, which also records the file outside the
folder (:mod:`segdl.io.records`) so that asking again succeeds at once.  A file that fails a
check is deleted (:func:`reject`): the next run downloads it anew.

Synchronous (file system, hashing): run these in a worker thread.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..core.checksum import Checksum
from ..core.controlfile import ControlFile, ControlFileError
from ..core.events import Success
from ..core.pieces import PieceMap
from ..core.published import PublishedRecord, judge
from ..core.resume import (
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
from ..errors import ChecksumMismatch, DiskError, FileExists, ResumeError, redact_url
from ..io import files, records
from ..io.remote import ProbeResult
from .options import Options

__all__ = [
    "Target",
    "Verified",
    "finish_target",
    "open_target",
    "publish_target",
    "reject",
    "restart_target",
    "verify_target",
]


@dataclass(frozen=True, slots=True)
class Target:
    """An opened target: what is left to fetch into it, and where it goes once verified.

    ``path`` is what the engine fills (the partial, ``NAME.part``); ``final`` the model's
    name.  ``pieces`` is the piece map to fill (``None``: one stream without ranges, or
    nothing left); ``complete`` means nothing is left; ``resumed_bytes`` were there before
    this run.  ``validators`` name the remote version (recorded when it is published).
    ``published``: the file at ``final`` already is this download (nothing to publish);
    ``checksum_verified``: the checksum already matched; ``sha256``: the digest, when known
    without hashing; ``on_trust``: taken as finished on ``-c`` alone, so not recorded.
    """

    path: Path
    final: Path
    size: int | None
    pieces: PieceMap | None
    complete: bool
    resumed_bytes: int
    validators: Validators
    checksum_verified: bool = False
    published: bool = False
    sha256: str | None = None
    on_trust: bool = False


@dataclass(frozen=True, slots=True)
class Verified:
    """A target whose size and checksum checked out; ``sha256`` when known."""

    sha256: str | None


@dataclass(frozen=True, slots=True)
class _Found:
    """What :func:`_inspect` read, beside the :class:`OnDisk` summary."""

    disk: OnDisk
    control: ControlFile | None  # the partial's
    in_place: ControlFile | None  # aria2c's, at the model's name
    record: PublishedRecord | None


def open_target(path: Path, probe: ProbeResult, options: Options) -> Target:
    """Open the download of the file *probe* describes, to be published at *path*.

    Raises:
        FileExists: a file segdl cannot vouch for is at *path* (no ``-c``/``--allow-overwrite``).
        ResumeError: ``-c`` on a file larger than the remote one.
        DiskError: *path* or its partial is a directory, or the partial cannot be created,
            moved or allocated; DiskFull when the new file does not fit beside the old one.
    """
    final, partial = path, files.partial_path(path)
    current = validators_of(probe)
    expected = _expected_sha256(options.checksum)
    found = _inspect(final, partial, current, expected)
    disk = found.disk
    remote = Remote(probe.size, probe.accepts_ranges)
    wishes = Wishes(
        continue_partial=options.continue_partial,
        allow_overwrite=options.allow_overwrite,
        checksum_known=options.checksum is not None,
    )
    case = decide(disk, remote, wishes)
    final_proven = partial_proven = hashed_final = False
    if case is Case.HASH_FINAL:
        assert options.checksum is not None
        hashed_final = True
        final_proven = _hash_matches(final, options.checksum)
        disk = after_hash(disk, Hashed.FINAL, final_proven)
        case = decide(disk, remote, wishes)
    if case is Case.PUBLISH and options.checksum is not None:
        partial_proven = _hash_matches(partial, options.checksum)
        if not partial_proven:
            disk = after_hash(disk, Hashed.PARTIAL, partial_proven)
            case = decide(disk, remote, wishes)
    if case is Case.REFUSE_NOT_A_FILE:
        where = final if disk.final is FinalState.NOT_A_FILE else partial
        raise DiskError(f"{where} is a directory or a special file; choose another name with -o")
    if case is Case.REFUSE_EXISTS:
        raise FileExists(_exists_message(final, disk.final, hashed_final, options.checksum))
    if case is Case.REFUSE_LARGER:
        raise ResumeError(
            f"{final} is larger ({disk.final_size} bytes) than the remote file ({probe.size} bytes)"
        )
    size = probe.size
    if case is Case.EXISTING:
        # A partial beside a finished file is a leftover (of an earlier try to replace it).
        files.discard(partial)
        current_by_record = disk.final is FinalState.CURRENT and found.record is not None
        return Target(
            partial,
            final,
            size,
            None,
            complete=True,
            resumed_bytes=disk.final_size,
            validators=current,
            # judge() vouches by a recorded sha256 whenever one is expected.
            checksum_verified=final_proven or (current_by_record and expected is not None),
            published=True,
            sha256=found.record.sha256 if current_by_record and found.record else None,
            on_trust=not (current_by_record or final_proven),
        )
    if case is Case.PUBLISH:
        return Target(
            partial,
            final,
            size,
            None,
            complete=True,
            resumed_bytes=disk.partial_size,
            validators=current,
            checksum_verified=partial_proven,
        )
    if case is Case.RESUME:
        assert found.control is not None
        assert size is not None
        # Sealed again with the version being downloaded: a control file aria2c rewrote
        # had lost its trailer, and a later change of the remote file must show.
        files.write_control(partial, found.control, current)
        os.close(files.open_data_file(partial, size, truncate=False))
        return _resumable(partial, final, pieces_from_control(found.control), current)
    if case is Case.ADOPT:
        assert found.in_place is not None
        assert size is not None
        _move_to_partial(final, partial, found.in_place, current, size - disk.final_size)
        return _resumable(partial, final, pieces_from_control(found.in_place), current)
    if case is Case.CONTINUE:
        assert size is not None
        pieces = pieces_from_prefix(size, options.piece_length, disk.final_size)
        _move_to_partial(
            final, partial, control_from_pieces(pieces), current, size - disk.final_size
        )
        return _resumable(partial, final, pieces, current)
    assert case is Case.FRESH
    return _fresh(final, partial, probe, options, current, replacing=disk.final)


def _resumable(partial: Path, final: Path, pieces: PieceMap, current: Validators) -> Target:
    return Target(
        partial,
        final,
        pieces.total_length,
        pieces,
        complete=pieces.complete,
        resumed_bytes=pieces.downloaded,
        validators=current,
    )


def validators_of(probe: ProbeResult) -> Validators:
    return Validators(
        url=redact_url(probe.url),
        size=probe.size,
        etag=probe.etag,
        last_modified=probe.last_modified,
    )


def _expected_sha256(checksum: Checksum | None) -> str | None:
    if checksum is not None and checksum.algorithm == "sha256":
        return checksum.hexdigest.lower()
    return None


def _hash_matches(path: Path, checksum: Checksum) -> bool:
    return files.hash_file(path, checksum.algorithm) == checksum.hexdigest.lower()


def _exists_message(final: Path, state: FinalState, hashed: bool, checksum: Checksum | None) -> str:
    if hashed and checksum is not None:
        return f"{final} already exists with other content (its {checksum.algorithm} differs)"
    if state is FinalState.OUTDATED:
        return (
            f"{final} already exists: segdl downloaded it, and the server's file has changed since"
        )
    return (
        f"{final} already exists and segdl cannot tell it is this download "
        "(segdl did not download it there, or it was changed since)"
    )


def _kind(path: Path) -> tuple[DataState, os.stat_result | None]:
    try:
        found = path.stat()
    except FileNotFoundError:
        return DataState.ABSENT, None
    except NotADirectoryError:
        return DataState.ABSENT, None
    except OSError as exc:
        raise files.disk_error(exc, f"cannot read {path}") from exc
    if not stat.S_ISREG(found.st_mode):
        return DataState.NOT_A_FILE, found
    return DataState.FILE, found


def _read_control(path: Path) -> tuple[ControlState, ControlFile | None, Validators | None]:
    try:
        saved = files.read_sealed(path)
    except ControlFileError:
        return ControlState.CORRUPT, None, None
    if saved is None:
        return ControlState.ABSENT, None, None
    return ControlState.VALID, saved[0], saved[1]


def _compare(saved: Validators | None, current: Validators) -> ValidatorsState:
    if saved is None:
        return ValidatorsState.ABSENT
    return ValidatorsState.MATCH if saved.matches(current) else ValidatorsState.CHANGED


def _inspect(final: Path, partial: Path, current: Validators, expected: str | None) -> _Found:
    """What is at the model's name, at its partial name and beside them, for :func:`decide`."""
    final_kind, final_stat = _kind(final)
    final_state, record = FinalState.ABSENT, None
    in_place_state, in_place, in_place_validators = ControlState.ABSENT, None, None
    if final_kind is DataState.NOT_A_FILE:
        final_state = FinalState.NOT_A_FILE
    elif final_stat is not None:
        record = records.read_record(final)
        final_state = judge(record, records.identity_of(final_stat), current, expected)
        in_place_state, in_place, in_place_validators = _read_control(final)
        # segdl 0.1 kept a partial at the model's name, its validators in NAME.segdl.
        in_place_validators = in_place_validators or files.read_legacy_validators(final)
    partial_kind, partial_stat = _kind(partial)
    control_state, control, validators = _read_control(partial)
    disk = OnDisk(
        final=final_state,
        final_size=final_stat.st_size if final_stat is not None else 0,
        in_place_control=in_place_state,
        in_place_total=in_place.total_length if in_place is not None else None,
        in_place_validators=_compare(in_place_validators, current),
        partial=partial_kind,
        partial_size=partial_stat.st_size if partial_stat is not None else 0,
        control=control_state,
        control_total=control.total_length if control is not None else None,
        validators=_compare(validators, current),
    )
    return _Found(disk, control, in_place, record)


def _move_to_partial(
    final: Path, partial: Path, control: ControlFile, current: Validators, needed: int
) -> None:
    """Take the file at the model's name over as the partial, *control* saying what it holds.

    The state first: a crash before the rename leaves the file where it was (opened the same
    way next time) and a control file without its data (defunct); after it, a partial with
    its state.  Never a full-size partial without state, which would read as complete.
    """
    files.discard(partial)
    files.check_free_space(final.parent, needed)
    files.write_control(partial, control, current)
    try:
        os.replace(final, partial)
    except OSError as exc:
        raise files.disk_error(exc, f"cannot rename {final} to {partial.name}") from exc
    # aria2c's control file now describes nothing at the model's name.
    files.remove_sidecars(final)
    os.close(files.open_data_file(partial, current.size, truncate=False))


def _fresh(
    final: Path,
    partial: Path,
    probe: ProbeResult,
    options: Options,
    current: Validators,
    *,
    replacing: FinalState,
) -> Target:
    size = probe.size
    files.discard(partial)
    if size is not None:
        # The file at the model's name, if any, stays until the new one is verified.
        beside = final if replacing is not FinalState.ABSENT else None
        files.check_free_space(final.parent, size, beside=beside)
    if size is None or not probe.accepts_ranges:
        # aria2 writes no control file when the server cannot resume.  Not preallocated
        # either: a full-size partial without a control file reads as a finished download,
        # so an interrupted stream must leave a shorter one (restarted next time).
        os.close(files.open_data_file(partial, None, truncate=True))
        return Target(partial, final, size, None, False, 0, current)
    # The state comes first: a crash before the data file is allocated leaves a control
    # file without data (discarded as defunct), never a full-size file without state.
    pieces = PieceMap(size, options.piece_length)
    files.write_control(partial, control_from_pieces(pieces), current)
    os.close(files.open_data_file(partial, size, truncate=True))
    return Target(partial, final, size, pieces, pieces.complete, 0, current)


def restart_target(path: Path) -> None:
    """Drop the partial of the download to *path* (the model's name): it belongs to another
    version of the file.  The file at *path* is not touched."""
    files.discard(files.partial_path(path))


def reject(target: Target, error: ChecksumMismatch) -> ChecksumMismatch:
    """Delete the bytes that failed a check, and say so: the error to raise instead.

    Never kept under any name, so the next run downloads the file anew rather than
    verifying the same bytes again.  A file already at the model's name is not touched.
    """
    if target.published:
        return error  # the file at its name was there before this run: not ours to delete
    files.discard(target.path)
    return ChecksumMismatch(
        f"{error}; the downloaded file was deleted, so running the download again fetches it anew",
        url=error.url,
    )


def verify_target(
    target: Target, options: Options, *, url: str, checksum_verified: bool = False
) -> Verified:
    """Check the finished file's size and checksum (unless already proven).

    *checksum_verified*: the engine checked ``options.checksum`` itself (aria2c does).
    ``Verified.sha256`` is the file's sha256 when it is known without extra work (a sha256
    checksum, segdl's record) or was asked for (``options.compute_sha256``).

    Raises:
        ChecksumMismatch: the file is not the expected one (the caller :func:`reject` s it).
    """
    path = target.final if target.published else target.path
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise files.disk_error(exc, f"cannot read {path}") from exc
    name = target.final.name
    if not target.published and target.size is not None and size != target.size:
        raise ChecksumMismatch(
            f"{name} is {size} bytes once downloaded, but the server's file is {target.size}",
            url=url,
        )
    checksum = options.checksum
    digest = target.sha256
    if checksum is not None:
        if not (checksum_verified or target.checksum_verified):
            got = files.hash_file(path, checksum.algorithm)
            if got != checksum.hexdigest.lower():
                raise ChecksumMismatch(
                    f"checksum mismatch for {name}: expected {checksum.algorithm} "
                    f"{checksum.hexdigest}, got {got}",
                    url=url,
                )
        if checksum.algorithm == "sha256":
            digest = checksum.hexdigest.lower()
    if digest is None and options.compute_sha256:
        digest = files.hash_file(path, "sha256")
    return Verified(sha256=digest)


def publish_target(target: Target, verified: Verified) -> Success:
    """Put the verified file under the model's name and record it; say Success.

    In this order, each step safe to interrupt: the partial is made durable and its control
    file goes (a complete partial without one is published by the next run, without a data
    request); the record is written, describing the partial (a rename keeps the inode and
    the modification time); the rename replaces whatever is at the name in one step, and
    the directory is fsynced; then what described a partial at the model's name goes too
    (aria2c's NAME.aria2, segdl 0.1's NAME.segdl).  Nothing else is left in the folder.
    """
    final = target.final
    path = final if target.published else target.path
    if not target.published:
        files.sync_file(path)
        files.remove_sidecars(path)
    try:
        found = path.stat()
    except OSError as exc:
        raise files.disk_error(exc, f"cannot read {path}") from exc
    if not target.on_trust:
        record = PublishedRecord(records.identity_of(found), target.validators, verified.sha256)
        records.write_record(final, record)
    if not target.published:
        files.publish(path, final)
        files.remove_sidecars(final)
    return Success(path=str(final), size=found.st_size, sha256=verified.sha256)


def finish_target(
    target: Target, options: Options, *, url: str, checksum_verified: bool = False
) -> Success:
    """:func:`verify_target`, then :func:`publish_target`; a file that fails is deleted.

    Raises:
        ChecksumMismatch: the file was not the expected one (it is gone).
    """
    try:
        verified = verify_target(target, options, url=url, checksum_verified=checksum_verified)
    except ChecksumMismatch as exc:
        rejected = reject(target, exc)
        if rejected is exc:
            raise
        raise rejected from exc
    return publish_target(target, verified)
