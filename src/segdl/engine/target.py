"""A download's target file: opened before any engine runs, finished after it.

Opening decides, as aria2 does (:func:`segdl.core.resume.decide` holds the rules), between
resuming from the control file, continuing a file's bytes (``-c``), starting afresh, taking a
file that is already there as finished, and refusing; then it prepares the file and its
sidecars for that case.  Finishing verifies (or digests) the file, removes the sidecars and
says :class:`~segdl.core.events.Success`.  Every engine downloads into a target opened here,
so a partial is the same thing whichever engine wrote it.

Synchronous (file system, hashing): run these in a worker thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.controlfile import ControlFile, ControlFileError
from ..core.events import Success
from ..core.pieces import PieceMap
from ..core.resume import (
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
from ..errors import ChecksumMismatch, DiskError, FileExists, ResumeError, redact_url
from ..io import files
from ..io.remote import ProbeResult
from .options import Options

__all__ = ["Target", "finish_target", "open_target", "restart_target"]


@dataclass(frozen=True, slots=True)
class Target:
    """An opened target: what is left to fetch into it.

    ``pieces`` is the piece map to fill (``None``: one stream without ranges, or nothing left);
    ``complete`` means nothing is left; ``resumed_bytes`` were there before this run.
    ``checksum_verified``: an existing file whose checksum already matched.
    """

    path: Path
    size: int | None
    pieces: PieceMap | None
    complete: bool
    resumed_bytes: int
    checksum_verified: bool = False


def open_target(path: Path, probe: ProbeResult, options: Options) -> Target:
    """Open *path* for the file *probe* describes, resuming what can be resumed.

    Raises:
        FileExists: someone's file is there (no ``-c``/``--allow-overwrite``).
        ResumeError: ``-c`` on a file larger than the remote one.
        DiskError: the path is a directory, or the file cannot be created or allocated.
    """
    current = validators_of(probe)
    disk, control = _inspect(path, current)
    wishes = Wishes(
        continue_partial=options.continue_partial,
        allow_overwrite=options.allow_overwrite,
        checksum_known=options.checksum is not None,
    )
    case = decide(disk, Remote(probe.size, probe.accepts_ranges), wishes)
    if case is Case.EXISTING and options.checksum is not None:
        # A finished file from an earlier run is taken only once its checksum proves it.
        checksum = options.checksum
        matches = files.hash_file(path, checksum.algorithm) == checksum.hexdigest
        case = after_hash(matches, wishes)
        if case is Case.REFUSE_EXISTS:
            raise FileExists(
                f"{path} already exists with other content (its {checksum.algorithm} "
                "differs); use --allow-overwrite to replace it"
            )
        if case is Case.EXISTING:
            return Target(path, probe.size, None, True, disk.data_size, checksum_verified=True)
    if case is Case.REFUSE_NOT_A_FILE:
        raise DiskError(f"{path} is a directory or a special file; choose another name with -o")
    if case is Case.REFUSE_EXISTS:
        raise FileExists(
            f"{path} already exists; use -c to continue it or --allow-overwrite to replace it"
        )
    if case is Case.REFUSE_LARGER:
        raise ResumeError(
            f"{path} is larger ({disk.data_size} bytes) than the remote file ({probe.size} bytes)"
        )
    if case is Case.EXISTING:
        return Target(path, probe.size, None, True, disk.data_size)
    if case is Case.RESUME:
        assert control is not None
        assert probe.size is not None
        pieces = pieces_from_control(control)
        _reopen(path, probe.size, current)
        return Target(path, probe.size, pieces, pieces.complete, pieces.downloaded)
    if case is Case.CONTINUE:
        assert probe.size is not None
        pieces = pieces_from_prefix(probe.size, options.piece_length, disk.data_size)
        _reopen(path, probe.size, current)
        files.write_control(path, control_from_pieces(pieces))
        return Target(path, probe.size, pieces, pieces.complete, pieces.downloaded)
    assert case is Case.FRESH
    return _fresh(path, probe, options, current)


def validators_of(probe: ProbeResult) -> Validators:
    return Validators(
        url=redact_url(probe.url),
        size=probe.size,
        etag=probe.etag,
        last_modified=probe.last_modified,
    )


def _inspect(path: Path, current: Validators) -> tuple[OnDisk, ControlFile | None]:
    """What is at *path* and beside it, for :func:`decide`."""
    if path.is_dir() or (path.exists() and not path.is_file()):
        return OnDisk(DataState.NOT_A_FILE), None
    control: ControlFile | None = None
    try:
        control = files.read_control(path)
        control_state = ControlState.ABSENT if control is None else ControlState.VALID
    except ControlFileError:
        control_state = ControlState.CORRUPT
    try:
        data_size = path.stat().st_size
        data = DataState.FILE
    except FileNotFoundError:
        data_size, data = 0, DataState.ABSENT
    saved = files.read_validators(path)
    if saved is None:
        validators = ValidatorsState.ABSENT
    elif saved.matches(current):
        validators = ValidatorsState.MATCH
    else:
        validators = ValidatorsState.CHANGED
    disk = OnDisk(
        data=data,
        data_size=data_size,
        control=control_state,
        control_total=control.total_length if control is not None else None,
        validators=validators,
    )
    return disk, control


def _reopen(path: Path, size: int, current: Validators) -> None:
    """Keep the partial's bytes, make sure it has its full size, record the version."""
    files.write_validators(path, current)
    os.close(files.open_data_file(path, size, truncate=False))


def _fresh(path: Path, probe: ProbeResult, options: Options, current: Validators) -> Target:
    size = probe.size
    files.remove_sidecars(path)
    if size is not None:
        files.check_free_space(path.parent, size - _existing_size(path))
    if size is None or not probe.accepts_ranges:
        # aria2 writes no control file when the server cannot resume.  Not preallocated
        # either: a full-size file without a control file reads as a finished download, so
        # an interrupted stream must leave a shorter one, marked as ours by its validators
        # file so that the next run restarts it instead of refusing to touch it.
        files.write_validators(path, current)
        os.close(files.open_data_file(path, None, truncate=True))
        return Target(path, size, None, False, 0)
    # The state comes first: a crash before the data file is allocated leaves a control
    # file without data (discarded as defunct), never a full-size file without state.
    pieces = PieceMap(size, options.piece_length)
    files.write_validators(path, current)
    files.write_control(path, control_from_pieces(pieces))
    os.close(files.open_data_file(path, size, truncate=True))
    return Target(path, size, pieces, pieces.complete, 0)


def _existing_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def restart_target(path: Path) -> None:
    """Drop a partial that belongs to another version of the file.

    Data first: a crash in between leaves sidecars without data (discarded as defunct), never
    an old full-size file without its state.
    """
    path.unlink(missing_ok=True)
    files.remove_sidecars(path)


def finish_target(
    target: Target, options: Options, *, url: str, checksum_verified: bool = False
) -> Success:
    """Verify the finished file (unless already proven), remove its sidecars, say Success.

    *checksum_verified*: the engine checked ``options.checksum`` itself (aria2c does).
    ``Success.sha256`` is the file's sha256 when it is known without extra work (a sha256
    checksum) or was asked for (``options.compute_sha256``).

    Raises:
        ChecksumMismatch: the file's digest is not the expected one.
    """
    path = target.path
    checksum = options.checksum
    digest: str | None = None
    if checksum is not None:
        if not (checksum_verified or target.checksum_verified):
            got = files.hash_file(path, checksum.algorithm)
            if got != checksum.hexdigest:
                raise ChecksumMismatch(
                    f"checksum mismatch for {path.name}: expected {checksum.algorithm} "
                    f"{checksum.hexdigest}, got {got}",
                    url=url,
                )
        if checksum.algorithm == "sha256":
            digest = checksum.hexdigest
    if digest is None and options.compute_sha256:
        digest = files.hash_file(path, "sha256")
    files.remove_sidecars(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise files.disk_error(exc, f"cannot read {path}") from exc
    return Success(path=str(path), size=size, sha256=digest)
