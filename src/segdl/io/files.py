"""The file side: allocation, durable writes, and the resume sidecars.

A partial download keeps its final name.  Beside it sit aria2's control file
(``NAME.aria2``, byte-compatible, see :mod:`segdl.core.controlfile`) and a small JSON file of
the validators aria2 does not keep (``NAME.segdl``: URL, ETag, Last-Modified, size).
Ordering for crash safety: data is fsynced before a control file claiming it is written, and
control files are replaced atomically (write a temporary file, fsync, rename, fsync the dir).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from ..core.controlfile import ControlFile, ControlFileError
from ..core.resume import Validators
from ..errors import DiskError, DiskFull

__all__ = [
    "Validators",
    "check_free_space",
    "check_writable_dir",
    "fsync_file",
    "hash_file",
    "open_data_file",
    "read_control",
    "read_validators",
    "remove_sidecars",
    "write_atomic",
]

VALIDATORS_SUFFIX = ".segdl"
CONTROL_SUFFIX = ".aria2"


def control_path(path: Path) -> Path:
    return path.with_name(path.name + CONTROL_SUFFIX)


def validators_path(path: Path) -> Path:
    return path.with_name(path.name + VALIDATORS_SUFFIX)


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


def check_free_space(directory: Path, needed: int) -> None:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if needed > free:
        raise DiskFull(f"not enough disk space in {directory}: need {needed} bytes, {free} free")


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


def read_control(path: Path) -> ControlFile | None:
    """The control file beside *path*, None if absent.

    Raises ControlFileError when the resume state cannot be trusted: the control file is
    corrupt, or the validators file beside it exists but cannot be read.  Without validators
    a resume cannot tell that the remote file changed and would mix two versions; a partial
    that aria2c started has no validators file at all, and is trusted as aria2c trusts it.
    """
    try:
        data = control_path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ControlFileError(f"cannot read {control_path(path)}: {exc.strerror}") from exc
    control = ControlFile.decode(data)
    try:
        raw = _load_validators_json(path)
    except FileNotFoundError:
        return control
    except (OSError, ValueError) as exc:
        raise ControlFileError(f"{validators_path(path)} is damaged: {exc}") from exc
    _check_seal(path, data, raw)
    return control


def _check_seal(path: Path, data: bytes, raw: dict[str, object]) -> None:
    """A control file that decodes can still be wrong (a flipped bit claiming a piece that
    was never fetched).  write_control seals each version in the validators file: its
    digest and the control file's mtime.  A different digest with the *same* mtime is damage
    at rest; a different mtime means another writer (aria2c resuming our partial) replaced
    it, which is trusted as aria2c trusts its own files.
    """
    digest, mtime = raw.get("control_sha256"), raw.get("control_mtime_ns")
    if not isinstance(digest, str) or not isinstance(mtime, int):
        return  # written before seals, or by a writer that does not seal
    if hashlib.sha256(data).hexdigest() == digest:
        return
    try:
        current_mtime = control_path(path).stat().st_mtime_ns
    except OSError as exc:
        raise ControlFileError(f"cannot read {control_path(path)}: {exc.strerror}") from exc
    if current_mtime == mtime:
        raise ControlFileError(f"{control_path(path)} does not match its seal: damaged")


def write_control(path: Path, control: ControlFile) -> None:
    """Replace the control file, then seal it in the validators file (see _check_seal).

    A crash between the two leaves the new control file with the old seal: a different
    mtime, so it is trusted — it is a complete, fsynced version of our own.
    """
    data = control.encode()
    target = control_path(path)
    write_atomic(target, data)
    try:
        raw = _load_validators_json(path)
    except (OSError, ValueError):
        return  # no validators to seal into (open_target writes them first)
    raw["control_sha256"] = hashlib.sha256(data).hexdigest()
    try:
        raw["control_mtime_ns"] = target.stat().st_mtime_ns
    except OSError as exc:
        raise disk_error(exc, f"cannot read {target}") from exc
    write_atomic(validators_path(path), json.dumps(raw, indent=1).encode())


def read_validators(path: Path) -> Validators | None:
    """The validators saved beside *path*; None if there are none or they cannot be read."""
    try:
        return _load_validators(path)
    except (OSError, ValueError):
        return None


def _load_validators_json(path: Path) -> dict[str, object]:
    """The validators file as written; ValueError unless it holds valid validators."""
    raw = json.loads(validators_path(path).read_bytes())
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    _validators_from(raw)
    seal = raw.get("control_sha256"), raw.get("control_mtime_ns")
    if seal != (None, None) and (
        not isinstance(seal[0], str) or not isinstance(seal[1], int) or isinstance(seal[1], bool)
    ):
        raise ValueError(f"bad control seal {seal!r}")
    return raw


def _load_validators(path: Path) -> Validators:
    """Parse the validators file; ValueError for anything but what write_validators writes."""
    return _validators_from(_load_validators_json(path))


def _validators_from(raw: dict[str, object]) -> Validators:
    url, size = raw.get("url"), raw.get("size")
    etag, last_modified = raw.get("etag"), raw.get("last_modified")
    if not isinstance(url, str):
        raise ValueError("no url")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ValueError(f"bad size {size!r}")
    return Validators(
        url=url,
        size=size,
        etag=_optional_text(etag, "etag"),
        last_modified=_optional_text(last_modified, "last_modified"),
    )


def _optional_text(value: object, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"bad {name} {value!r}")
    return value


def write_validators(path: Path, validators: Validators) -> None:
    data = json.dumps({"version": 1, **asdict(validators)}, indent=1).encode()
    write_atomic(validators_path(path), data)


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
    """Remove both sidecars, and the temporary file of one a crash left half-written."""
    for side in (control_path(path), validators_path(path)):
        for name in (side, _temporary(side)):
            with contextlib.suppress(FileNotFoundError):
                name.unlink()
