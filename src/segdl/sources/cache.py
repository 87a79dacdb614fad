"""An on-disk cache of API answers (JSON) with an expiry.

The download is resolved on every attempt (signed storage URLs expire), so without a cache a
resume would ask the metadata API again each time.  One file per key; a corrupt, unreadable or
expired entry is a miss; a cache that cannot be written is silently skipped — the cache saves
requests, it never fails a download.  Tokens never reach it: only the API's answers are kept.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

__all__ = ["JsonCache"]

_SAFE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class JsonCache:
    """``await cache.get(key)`` / ``await cache.put(key, value)``; *directory* None: no cache."""

    def __init__(
        self,
        directory: Path | None,
        *,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.ttl = ttl
        self._clock = clock

    def _path(self, key: str) -> Path | None:
        if self.directory is None:
            return None
        if not _SAFE_KEY.fullmatch(key):
            raise ValueError(f"unsafe cache key {key!r}")
        return self.directory / f"{key}.json"

    async def get(self, key: str) -> object | None:
        path = self._path(key)
        if path is None:
            return None
        return await trio.to_thread.run_sync(self._read, path)

    async def put(self, key: str, value: object) -> None:
        path = self._path(key)
        if path is not None:
            await trio.to_thread.run_sync(self._write, path, value)

    def _read(self, path: Path) -> object | None:
        try:
            entry = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict):
            return None
        stored = entry.get("stored")
        if not isinstance(stored, int | float) or isinstance(stored, bool):
            return None
        age = self._clock() - stored
        # An entry from the future (clock changed) is not trusted either.
        if not 0 <= age < self.ttl:
            return None
        value: object = entry.get("value")
        return value

    def _write(self, path: Path, value: object) -> None:
        data = json.dumps({"stored": self._clock(), "value": value}).encode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:
            pass
