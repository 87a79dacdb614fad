"""Have it already?  Find a model file by its sha256 under a models directory.

Only files SD tools load as models are considered (:data:`MODEL_EXTENSIONS`); a file beside
an aria2 control file or a segdl validators file (``NAME.aria2``, ``NAME.segdl``) is a partial
download and never counts, and partial names (``.part``, ``.tmp``, ``.aria2``…) are not model
extensions at all.  Directories starting with a dot are skipped; symbolic links are followed,
each directory visited once.

Each file is hashed at most once while it stays the same: digests are cached by (real path,
size, mtime_ns) in ``CACHE_DIR/sha256-index.json`` (the segdl cache directory, never the models
folder).  The cost of a search is bounded: when the site publishes the size, only files of
that size are hashed (usually none or one); hashing runs in a worker thread, one file at a
time, and stops at a file boundary once ``max_hash_bytes`` have been read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..core.hashcache import HashCache
from ..core.modelinfo import MODEL_EXTENSIONS
from ..errors import DiskError, FileExists
from ..io.files import disk_error, write_atomic

__all__ = [
    "CACHE_FILE_NAME",
    "IndexSearch",
    "IndexStatistics",
    "ModelIndex",
    "find_model_by_sha256",
    "iter_model_files",
    "place_model_copy",
]

CACHE_FILE_NAME = "sha256-index.json"
PARTIAL_SIDECARS = (".aria2", ".segdl")
_CHUNK = 4 * 1024 * 1024
# Seconds between saves of the cache during a long search (and once at its end).
SAVE_INTERVAL = 2.0


@dataclass(frozen=True, slots=True)
class IndexSearch:
    """What a search found; ``unchecked`` are candidates left unhashed by the byte budget."""

    matches: tuple[Path, ...]
    unchecked: tuple[Path, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.unchecked


@dataclass(slots=True)
class IndexStatistics:
    """Counters since the index was made (``ModelIndex.statistics()`` returns a copy)."""

    files_seen: int = 0
    skipped_by_size: int = 0
    cache_hits: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0
    cache_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Candidate:
    path: Path  # as found under the models directory
    key: str  # real path: the cache key, so two links to one file are hashed once
    size: int
    mtime_ns: int


def iter_model_files(models_dir: Path) -> Iterator[Path]:
    """Every finished model file under *models_dir* (see the module docstring)."""
    seen_dirs: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(models_dir, followlinks=True):
        try:
            info = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen_dirs:
            dirs[:] = []  # a link loop, or a second way into a folder already walked
            continue
        seen_dirs.add((info.st_dev, info.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = set(files)
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() not in MODEL_EXTENSIONS:
                continue
            if any(name + suffix in names for suffix in PARTIAL_SIDECARS):
                continue
            yield Path(root) / name


def _sha256_file(path: Path, stop: threading.Event) -> tuple[str, int] | None:
    """(digest, bytes read), or None if *stop* was set meanwhile.  Runs in a worker thread."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            if stop.is_set():
                return None
            n = f.readinto(buffer)
            if not n:
                return digest.hexdigest(), total
            digest.update(view[:n])  # hashlib releases the GIL for large updates
            total += n


class ModelIndex:
    """Finds model files by sha256, remembering digests in *cache_dir* (None: no cache).

    One instance may serve many searches (e.g. a server's downloads): searches through one
    instance run one at a time, so a file is never hashed twice by parallel requests.
    """

    def __init__(self, cache_dir: Path | None) -> None:
        self.cache_path = cache_dir / CACHE_FILE_NAME if cache_dir is not None else None
        self._lock = trio.Lock()
        self._stats = IndexStatistics()

    def statistics(self) -> IndexStatistics:
        s = self._stats
        return IndexStatistics(
            s.files_seen,
            s.skipped_by_size,
            s.cache_hits,
            s.files_hashed,
            s.bytes_hashed,
            list(s.cache_errors),
        )

    async def search(
        self,
        models_dir: Path,
        sha256: str,
        *,
        size: int | None = None,
        size_tolerance: int = 0,
        max_hash_bytes: int | None = None,
    ) -> IndexSearch:
        """The model files under *models_dir* whose content has digest *sha256*.

        *size*: the published size, when known; only files within *size_tolerance* bytes of
        it are hashed (CivitAI's ``sizeKB`` is rounded: pass a tolerance of a few KiB).
        *max_hash_bytes*: stop hashing (at a file boundary) after this many bytes; the files
        left are reported as ``unchecked``.
        """
        wanted = sha256.strip().lower()
        if len(wanted) != 64 or any(c not in "0123456789abcdef" for c in wanted):
            raise ValueError(f"not a sha256 digest: {sha256[:80]!r}")
        async with self._lock:
            cache = await trio.to_thread.run_sync(self._load)
            candidates = await trio.to_thread.run_sync(
                self._candidates, models_dir, size, size_tolerance
            )
            matches: list[Path] = []
            unchecked: list[Path] = []
            budget = max_hash_bytes
            dirty, saved_at = False, trio.current_time()
            try:
                for candidate in candidates:
                    cached = cache.lookup(candidate.key, candidate.size, candidate.mtime_ns)
                    if cached is not None:
                        self._stats.cache_hits += 1
                        if cached == wanted:
                            matches.append(candidate.path)
                        continue
                    if budget is not None and candidate.size > budget:
                        unchecked.append(candidate.path)
                        budget = 0  # at a file boundary: the rest are left too
                        continue
                    digest = await self._hash(candidate.path)
                    if digest is None:
                        continue  # vanished or unreadable: not a match
                    if budget is not None:
                        budget -= candidate.size
                    if await trio.to_thread.run_sync(self._unchanged, candidate):
                        cache.store(candidate.key, candidate.size, candidate.mtime_ns, digest)
                        dirty = True
                    if dirty and trio.current_time() - saved_at >= SAVE_INTERVAL:
                        # A long search that is interrupted keeps most of its work.
                        await trio.to_thread.run_sync(self._save, cache)
                        dirty, saved_at = False, trio.current_time()
                    if digest == wanted:
                        matches.append(candidate.path)
            finally:
                if dirty:
                    # Small and bounded (one JSON file), so done even when cancelled.
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(self._save, cache)
            return IndexSearch(tuple(matches), tuple(unchecked))

    def _candidates(self, models_dir: Path, size: int | None, tolerance: int) -> list[_Candidate]:
        found: list[_Candidate] = []
        for path in iter_model_files(models_dir):
            try:
                info = path.stat()
                key = os.path.realpath(path)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            self._stats.files_seen += 1
            if size is not None and abs(info.st_size - size) > tolerance:
                self._stats.skipped_by_size += 1
                continue
            found.append(_Candidate(path, key, info.st_size, info.st_mtime_ns))
        return found

    async def _hash(self, path: Path) -> str | None:
        stop = threading.Event()
        try:
            result = await trio.to_thread.run_sync(_sha256_file, path, stop, abandon_on_cancel=True)
        except OSError:
            return None
        finally:
            stop.set()  # an abandoned (cancelled) thread stops after its current chunk
        if result is None:
            return None
        digest, read = result
        self._stats.files_hashed += 1
        self._stats.bytes_hashed += read
        return digest

    @staticmethod
    def _unchanged(candidate: _Candidate) -> bool:
        """Was the file left alone while it was hashed?  Only then is its digest kept."""
        try:
            info = candidate.path.stat()
        except OSError:
            return False
        return (info.st_size, info.st_mtime_ns) == (candidate.size, candidate.mtime_ns)

    def _load(self) -> HashCache:
        if self.cache_path is None:
            return HashCache()
        try:
            data = self.cache_path.read_bytes()
        except FileNotFoundError:
            return HashCache()
        except OSError as exc:
            self._stats.cache_errors.append(f"cannot read {self.cache_path}: {exc.strerror}")
            return HashCache()
        return HashCache.decode(data)

    def _save(self, cache: HashCache) -> None:
        if self.cache_path is None:
            return
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.cache_path, cache.encode())
        except (OSError, DiskError) as exc:
            # The cache saves work; it never fails a search.
            self._stats.cache_errors.append(str(exc))


async def find_model_by_sha256(
    models_dir: Path,
    sha256: str,
    *,
    cache_dir: Path | None,
    size: int | None = None,
    size_tolerance: int = 0,
    max_hash_bytes: int | None = None,
) -> list[Path]:
    """The model files under *models_dir* with this sha256 (see :meth:`ModelIndex.search`)."""
    search = await ModelIndex(cache_dir).search(
        models_dir,
        sha256,
        size=size,
        size_tolerance=size_tolerance,
        max_hash_bytes=max_hash_bytes,
    )
    return list(search.matches)


def _place(source: Path, target: Path, allow_copy: bool) -> str:
    if target.exists() or target.is_symlink():
        raise FileExists(f"{target} already exists")
    try:
        os.link(source, target)
        return "linked"
    except OSError as exc:
        # Another filesystem, or one without hard links: copy, if allowed.
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP) or not (
            allow_copy
        ):
            raise disk_error(exc, f"cannot link {source} to {target}") from exc
    temporary = target.with_name(f".{target.name}.segdl-copy")
    try:
        shutil.copyfile(source, temporary)
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() fails if the target appeared meanwhile: never replace someone's file.
        os.link(temporary, target)
        _fsync_directory(target.parent)
    except FileExistsError as exc:
        raise FileExists(f"{target} already exists") from exc
    except OSError as exc:
        raise disk_error(exc, f"cannot copy {source} to {target}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    return "copied"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def place_model_copy(source: Path, target: Path, *, allow_copy: bool = True) -> str:
    """Make *target* hold the same model as *source*: a hard link when the filesystem allows
    (no space used), else a copy published under its name only once complete.  Never
    replaces an existing *target*.  Returns ``"linked"`` or ``"copied"``.
    """
    return await trio.to_thread.run_sync(_place, source, target, allow_copy)
