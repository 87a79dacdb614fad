"""An uploaded file on disk: written under a partial name, then published or discarded.

Blocking calls, for a worker thread.  The partial file is created fresh (``O_EXCL``, never
through a symbolic link); publishing makes the data durable before the name claims it
(fsync, rename over the final name, fsync of the directory), so a crash leaves the old file
or the complete new one, never a mix; discarding leaves the final name untouched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DiskError
from .files import disk_error, publish

__all__ = ["PartialUpload", "open_partial_upload"]


@dataclass(eq=False)
class PartialUpload:
    partial: Path
    final: Path
    fd: int | None
    written: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)

    def append(self, data: bytes) -> None:
        if self.fd is None:
            raise DiskError(f"{self.partial} is closed")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise disk_error(exc, f"cannot write {self.partial.name}") from exc
        self.written += len(data)
        self.digest.update(data)

    def publish(self) -> None:
        """Make the data durable, then give it the final name (replacing a file there)."""
        if self.fd is None:
            raise DiskError(f"{self.partial} is closed")
        self._close()
        if self.final.is_dir():
            raise DiskError(f"{self.final.name} is a directory in {self.final.parent.name}")
        publish(self.partial, self.final)

    def discard(self) -> None:
        """Close and remove the partial file; the final name is not touched."""
        self._close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial)

    def _close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def open_partial_upload(partial: Path, final: Path) -> PartialUpload:
    """Create *partial* empty (a leftover of an earlier run is removed first)."""
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, f"cannot create the folder {partial.parent.name}") from exc
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)  # a symbolic link is removed, never followed
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(partial, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise DiskError(f"{partial.name} appeared while it was being created") from exc
        raise disk_error(exc, f"cannot create {partial.name}") from exc
    return PartialUpload(partial, final, fd)
