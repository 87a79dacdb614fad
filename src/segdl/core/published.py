"""What segdl records about a file it published, and whether a file is still that one.

When segdl renames a verified download to the model's name it records the file's identity
(size, modification time, inode), the validators of the remote version (URL, ETag,
Last-Modified, size) and its sha256 when known.  Asked for the same file again, segdl judges
the file at that name against the record (:func:`judge`): the same file, and the server
still serving that version, means done at once, without a data request.

Records live outside the models folder (:mod:`segdl.io.records`), so nothing is left there.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from .resume import FinalState, Validators

__all__ = ["FileIdentity", "PublishedRecord", "judge"]


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What tells one file from another at the same name: rewritten, replaced or edited in
    place, at least one of these changes."""

    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True, slots=True)
class PublishedRecord:
    identity: FileIdentity
    validators: Validators
    sha256: str | None = None


def judge(
    record: PublishedRecord | None,
    found: FileIdentity,
    current: Validators,
    expected_sha256: str | None,
) -> FinalState:
    """The file *found* at a model's name, given segdl's *record* for that name, the remote's
    *current* validators and the sha256 the site publishes (or the user's ``--checksum``).

    * Not the recorded file (no record, or it was replaced or edited since): UNKNOWN.
    * A sha256 expected: the recorded digest decides; without one only hashing can tell, so
      UNKNOWN (the caller hashes it).
    * Otherwise the validators: CURRENT when they surely name the recorded version
      (:meth:`Validators.identifies`), OUTDATED when they surely do not, else UNKNOWN.
    """
    if record is None or record.identity != found:
        return FinalState.UNKNOWN
    if expected_sha256 is not None:
        if record.sha256 is None:
            return FinalState.UNKNOWN
        return (
            FinalState.CURRENT if record.sha256 == expected_sha256.lower() else FinalState.OUTDATED
        )
    if record.validators.identifies(current):
        return FinalState.CURRENT
    if not record.validators.matches(current) or record.validators.url != current.url:
        return FinalState.OUTDATED
    return FinalState.UNKNOWN
