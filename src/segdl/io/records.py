"""Where segdl keeps what it recorded about the files it published: outside the models folder.

One small JSON file per published path, in ``$SEGDL_CACHE_DIR/published/`` (default
``$XDG_CACHE_HOME/segdl`` or ``~/.cache/segdl``, the cache the sources use), named by the
sha256 of the file's absolute path.  A cache, and used as one: a record that is missing,
unreadable or stale (the file was replaced or edited since, see
:func:`segdl.core.published.judge`) only means segdl cannot vouch for the file, and a record
that cannot be written never fails a download.  No token is ever written: the URL is
redacted (no user-info, no query) before it becomes a validator.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from ..core.published import FileIdentity, PublishedRecord
from ..core.resume import Validators
from ..errors import DiskError
from .files import write_atomic

__all__ = ["forget_record", "identity_of", "read_record", "records_dir", "write_record"]

_VERSION = 1


def records_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    cache = env.get("SEGDL_CACHE_DIR") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "segdl"
    )
    return Path(cache) / "published"


def _key(final: Path) -> str:
    # The directory resolved (symlinks, ".."), so one folder reached two ways is one key.
    where = os.path.join(os.path.realpath(final.parent), final.name)
    return hashlib.sha256(os.fsencode(where)).hexdigest()


def _record_path(final: Path) -> Path:
    return records_dir() / f"{_key(final)}.json"


def identity_of(stat: os.stat_result) -> FileIdentity:
    return FileIdentity(size=stat.st_size, mtime_ns=stat.st_mtime_ns, inode=stat.st_ino)


def read_record(final: Path) -> PublishedRecord | None:
    """segdl's record of the file it published at *final*; None if there is none usable."""
    try:
        raw = json.loads(_record_path(final).read_bytes())
        return _parse(raw)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_record(final: Path, record: PublishedRecord) -> None:
    """Record what segdl published at *final*; skipped silently if the cache is unwritable."""
    v = record.validators
    data = {
        "version": _VERSION,
        "path": os.path.join(os.path.realpath(final.parent), final.name),
        "size": record.identity.size,
        "mtime_ns": record.identity.mtime_ns,
        "inode": record.identity.inode,
        "sha256": record.sha256,
        "validators": {
            "url": v.url,
            "size": v.size,
            "etag": v.etag,
            "last_modified": v.last_modified,
        },
    }
    target = _record_path(final)
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)
    # A record only saves a later download; failing to keep one fails nothing.
    with contextlib.suppress(DiskError):
        write_atomic(target, json.dumps(data, indent=1).encode())


def forget_record(final: Path) -> None:
    with contextlib.suppress(OSError):
        _record_path(final).unlink()


def _parse(raw: object) -> PublishedRecord:
    if not isinstance(raw, dict) or raw.get("version") != _VERSION:
        raise ValueError("not a record")
    numbers = [raw["size"], raw["mtime_ns"], raw["inode"]]
    if not all(type(n) is int and n >= 0 for n in numbers):
        raise ValueError("bad identity")
    sha256 = raw.get("sha256")
    if sha256 is not None and not isinstance(sha256, str):
        raise ValueError("bad sha256")
    v = raw["validators"]
    if not isinstance(v, dict) or not isinstance(v.get("url"), str):
        raise ValueError("bad validators")
    size = v.get("size")
    if size is not None and type(size) is not int:
        raise ValueError("bad size")
    texts = v.get("etag"), v.get("last_modified")
    if not all(t is None or isinstance(t, str) for t in texts):
        raise ValueError("bad validators")
    return PublishedRecord(
        identity=FileIdentity(size=numbers[0], mtime_ns=numbers[1], inode=numbers[2]),
        validators=Validators(url=v["url"], size=size, etag=texts[0], last_modified=texts[1]),
        sha256=sha256,
    )
