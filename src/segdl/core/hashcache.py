"""The sha256 of model files, remembered by (path, size, mtime): each file is hashed once.  Pure.

A cached digest is trusted only while the file's size and modification time (in
nanoseconds) are what they were when it was hashed; any change makes it a miss.  The
serialised form is one JSON document::

    {"format": "segdl-sha256-index", "version": 1,
     "files": {"/abs/path.safetensors": {"size": 123, "mtime_ns": 456, "sha256": "…"}}}

Decoding never fails: a document that is not this (corrupt, truncated, another version) is an
empty cache, and an entry that does not hold exactly those three well-formed fields is
dropped alone.  The cache only saves hashing; it is never the authority on a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["CachedDigest", "HashCache"]

FORMAT: Final = "segdl-sha256-index"
VERSION: Final = 1
_SHA256: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class CachedDigest:
    size: int
    mtime_ns: int
    sha256: str


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class HashCache:
    """``lookup`` / ``store`` / ``forget``, and ``encode`` / ``decode`` for the file."""

    def __init__(self, entries: dict[str, CachedDigest] | None = None) -> None:
        self._entries: dict[str, CachedDigest] = dict(entries or {})

    def __len__(self) -> int:
        return len(self._entries)

    def paths(self) -> list[str]:
        return list(self._entries)

    def lookup(self, path: str, size: int, mtime_ns: int) -> str | None:
        """The digest stored for *path*, if the file still has this size and mtime."""
        entry = self._entries.get(path)
        if entry is None or entry.size != size or entry.mtime_ns != mtime_ns:
            return None
        return entry.sha256

    def store(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        digest = sha256.lower()
        if not _SHA256.fullmatch(digest):
            raise ValueError(f"not a sha256 digest: {sha256[:80]!r}")
        if not (_natural(size) and _natural(mtime_ns)):
            raise ValueError("size and mtime_ns must be non-negative integers")
        self._entries[path] = CachedDigest(size, mtime_ns, digest)

    def forget(self, paths: Iterable[str]) -> int:
        """Drop *paths* (files gone); returns how many were known."""
        dropped = 0
        for path in paths:
            if self._entries.pop(path, None) is not None:
                dropped += 1
        return dropped

    def encode(self) -> bytes:
        files = {
            path: {"size": e.size, "mtime_ns": e.mtime_ns, "sha256": e.sha256}
            for path, e in sorted(self._entries.items())
        }
        document = {"format": FORMAT, "version": VERSION, "files": files}
        return json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> HashCache:
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return cls()
        if not isinstance(document, dict):
            return cls()
        if document.get("format") != FORMAT or document.get("version") != VERSION:
            return cls()
        files = document.get("files")
        if not isinstance(files, dict):
            return cls()
        entries: dict[str, CachedDigest] = {}
        for path, raw in files.items():
            if not isinstance(raw, dict) or set(raw) != {"size", "mtime_ns", "sha256"}:
                continue
            size, mtime_ns, sha256 = raw["size"], raw["mtime_ns"], raw["sha256"]
            if not (_natural(size) and _natural(mtime_ns)):
                continue
            if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
                continue
            entries[path] = CachedDigest(size, mtime_ns, sha256)
        return cls(entries)
