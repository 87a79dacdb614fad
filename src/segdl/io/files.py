"""The file side: allocation, durable writes, the resume sidecar, publishing.

A download is written under a partial name no model scanner picks up (``NAME.part``), with
aria2's control file beside it (``NAME.part.aria2``, byte-compatible, see
:mod:`segdl.core.controlfile`) ending in segdl's trailer of the validators aria2 does not keep
(URL, ETag, Last-Modified, size; :mod:`segdl.core.trailer`).  Only a verified file is renamed
to ``NAME`` (:func:`publish`).  Ordering for crash safety: data is fsynced before a control
file claiming it is written; control files are replaced atomically (write a temporary file,
fsync, rename, fsync the dir); a data file goes before its control file (:func:`discard`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

from ..core.controlfile import ControlFile, ControlFileError
from ..core.resume import Validators
from ..core.trailer import seal, unseal
from ..errors import DiskError, DiskFull

__all__ = [
    "KEEP",
    "PART_SUFFIX",
    "Validators",
    "check_free_space",
    "check_writable_dir",
    "control_path",
    "discard",
    "fsync_file",
    "hash_file",
    "open_data_file",
    "partial_path",
    "publish",
    "read_control",
    "read_legacy_validators",
    "read_sealed",
    "remove_sidecars",
    "seal_control",
    "sync_file",
    "write_atomic",
    "write_control",
]

PART_SUFFIX = ".part"
CONTROL_SUFFIX = ".aria2"
# segdl 0.1 kept the validators beside the data file; read and removed, never written.
LEGACY_VALIDATORS_SUFFIX = ".segdl"


def partial_path(final: Path) -> Path:
    """Where the download of *final* is written until it is verified: ``NAME.part``."""
    return final.with_name(final.name + PART_SUFFIX)


def control_path(path: Path) -> Path:
    return path.with_name(path.name + CONTROL_SUFFIX)


def legacy_validators_path(path: Path) -> Path:
    return path.with_name(path.name + LEGACY_VALIDATORS_SUFFIX)


def disk_error(exc: OSError, what: str) -> DiskError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"disk full: {what}")
    return DiskError(f"{what}: {exc.strerror or exc}")


def check_writable_dir(directory: Path) -> None:
    """Create *directory* if needed and make sure files can be created in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise DiskError(f"{directory} exists and is not a directory") from exc
    except OSError as exc:
        raise disk_error(exc, f"cannot create directory {directory}") from exc
    if not directory.is_dir():
        raise DiskError(f"{directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DiskError(f"directory {directory} is not writable")


def check_free_space(directory: Path, needed: int, *, beside: Path | None = None) -> None:
    """Refuse a download of *needed* more bytes that does not fit in *directory*.

    *beside*: the file the download will replace.  It stays until the new one is complete
    and verified, so its bytes are not counted as free; the message says so.
    """
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if needed > free:
        why = (
            f" (beside {beside.name}, which stays until the new file is complete)" if beside else ""
        )
        raise DiskFull(
            f"not enough disk space in {directory}: need {needed} bytes{why}, {free} free"
        )


def open_data_file(path: Path, size: int | None, *, truncate: bool) -> int:
    """Open (creating) the partial file and reserve *size* bytes for it.

    ``posix_fallocate`` reserves real blocks, so a full disk fails here rather than midway;
    where the filesystem cannot (EOPNOTSUPP/EINVAL), the file is only extended.  On tmpfs
    allocating means zero-filling memory that is overwritten at once (a quarter second per
    GiB, measured), and reserves nothing the free-space check has not already checked, so
    there the file is only extended.
    """
    flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if truncate else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise disk_error(exc, f"cannot open {path}") from exc
    try:
        if size:
            current = os.fstat(fd).st_size
            if current > size:
                os.ftruncate(fd, size)
            allocated = False
            if not on_memory_filesystem(path):
                try:
                    os.posix_fallocate(fd, 0, size)
                    allocated = True
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
            if not allocated and current < size:
                os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        raise disk_error(exc, f"cannot allocate {size} bytes for {path}") from exc
    return fd


MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def on_memory_filesystem(path: Path) -> bool:
    """Is *path* on tmpfs/ramfs?  Reads /proc/self/mounts (Linux); False where unknown."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return False
    target = os.path.realpath(path)
    best, fstype = "", ""
    for mount_point, kind in mounts:
        mount_point = mount_point.replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, fstype = mount_point, kind
    return fstype in MEMORY_FILESYSTEMS


def fsync_file(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        raise disk_error(exc, "cannot flush the file to disk") from exc


def write_atomic(path: Path, data: bytes) -> None:
    """Replace *path* with *data* so a crash leaves the old or the new content, never a mix."""
    tmp = _temporary(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise disk_error(exc, f"cannot write {path}") from exc


def _temporary(path: Path) -> Path:
    # aria2's name for the file a control file is written to before the rename.
    return path.with_name(path.name + "__temp")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_sealed(path: Path) -> tuple[ControlFile, Validators | None] | None:
    """The control file beside the data file *path* and its trailer's validators (None: a
    control file aria2c wrote); None if there is no control file.

    Raises ControlFileError when the resume state cannot be trusted: it does not decode, or
    its trailer is damaged (:mod:`segdl.core.trailer`).
    """
    try:
        data = control_path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ControlFileError(f"cannot read {control_path(path)}: {exc.strerror}") from exc
    return unseal(data)


def read_control(path: Path) -> ControlFile | None:
    """The control file beside *path*, None if absent; ControlFileError if untrustworthy."""
    state = read_sealed(path)
    return None if state is None else state[0]


class _Keep:
    """write_control's default: the validators the control file already has."""


KEEP = _Keep()


def write_control(
    path: Path, control: ControlFile, validators: Validators | _Keep | None = KEEP
) -> None:
    """Replace the control file beside *path*, sealed with *validators* in its trailer.

    By default the trailer the control file has is kept: an engine saving its progress
    does not know the validators, and a control file aria2c rewrote (no trailer) stays
    aria2c's.  A damaged one is not carried over.
    """
    if isinstance(validators, _Keep):
        try:
            saved = read_sealed(path)
        except ControlFileError:
            saved = None
        validators = None if saved is None else saved[1]
    data = control.encode() if validators is None else seal(control, validators)
    write_atomic(control_path(path), data)


def seal_control(path: Path, validators: Validators) -> None:
    """Give the control file beside *path* a trailer again if a writer that does not keep
    one (aria2c) replaced it; nothing if there is none or it cannot be read."""
    try:
        saved = read_sealed(path)
    except ControlFileError:
        return
    if saved is not None and saved[1] is None:
        write_control(path, saved[0], validators)


def read_legacy_validators(path: Path) -> Validators | None:
    """The validators segdl 0.1 kept beside a partial at the model's name (``NAME.segdl``),
    so a partial left by that version is still checked against the server; None if there are
    none or they cannot be read."""
    try:
        raw = json.loads(legacy_validators_path(path).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    url, size = raw.get("url"), raw.get("size")
    etag, last_modified = raw.get("etag"), raw.get("last_modified")
    if not isinstance(url, str) or not (size is None or type(size) is int):
        return None
    if not all(v is None or isinstance(v, str) for v in (etag, last_modified)):
        return None
    return Validators(url=url, size=size, etag=etag, last_modified=last_modified)


def hash_file(path: Path, algorithm: str) -> str:
    """The hex digest of the file at *path* (a hashlib algorithm name)."""
    h = hashlib.new(algorithm)
    buf = bytearray(4 * 1024 * 1024)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
    except OSError as exc:
        raise disk_error(exc, f"cannot read {path}") from exc
    return h.hexdigest()


def remove_sidecars(path: Path) -> None:
    """Remove the control file beside *path* (and the temporary file of one a crash left
    half-written), and segdl 0.1's validators file."""
    for side in (control_path(path), legacy_validators_path(path)):
        for name in (side, _temporary(side)):
            with contextlib.suppress(FileNotFoundError):
                name.unlink()


def discard(path: Path) -> None:
    """Remove a data file and then its sidecars.

    Data first: a crash in between leaves a control file without data (discarded as
    defunct), never a full-size file without the state that says what it holds — which
    would be taken for a complete download.
    """
    try:
        path.unlink(missing_ok=True)
    except IsADirectoryError:
        pass
    except OSError as exc:
        raise disk_error(exc, f"cannot remove {path}") from exc
    remove_sidecars(path)


def sync_file(path: Path) -> None:
    """fsync the file at *path*: its data is on disk when this returns."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise disk_error(exc, f"cannot flush {path} to disk") from exc


def publish(partial: Path, final: Path) -> None:
    """Put the verified *partial* under its *final* name: fsync the data, rename it over
    whatever is there (atomically: a reader sees the old file or the new, never a mix),
    fsync the directory so the rename survives a power loss."""
    sync_file(partial)
    try:
        os.replace(partial, final)
    except OSError as exc:
        raise disk_error(exc, f"cannot rename {partial.name} to {final.name}") from exc
    _fsync_dir(final.parent)
