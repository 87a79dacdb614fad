"""The sha256 cache: trusted only while size and mtime are unchanged; never fails to load."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from segdl.core.hashcache import HashCache

digests = st.text("0123456789abcdef", min_size=64, max_size=64)
naturals = st.integers(0, 2**63)
paths = st.text(min_size=1, max_size=30)


@given(path=paths, size=naturals, mtime=naturals, digest=digests, size2=naturals, mtime2=naturals)
def test_a_digest_is_returned_only_for_the_same_size_and_mtime(
    path: str, size: int, mtime: int, digest: str, size2: int, mtime2: int
) -> None:
    cache = HashCache()
    cache.store(path, size, mtime, digest)
    assert cache.lookup(path, size, mtime) == digest
    expected = digest if (size2, mtime2) == (size, mtime) else None
    assert cache.lookup(path, size2, mtime2) == expected
    assert cache.lookup(path + "x", size, mtime) is None


@given(st.dictionaries(paths, st.tuples(naturals, naturals, digests), max_size=8))
def test_encode_decode_round_trips(entries: dict[str, tuple[int, int, str]]) -> None:
    cache = HashCache()
    for path, (size, mtime, digest) in entries.items():
        cache.store(path, size, mtime, digest)
    again = HashCache.decode(cache.encode())
    assert len(again) == len(entries)
    for path, (size, mtime, digest) in entries.items():
        assert again.lookup(path, size, mtime) == digest
    assert again.encode() == cache.encode()


@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_cache(data: bytes) -> None:
    cache = HashCache.decode(data)
    cache.encode()


json_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)


@given(st.dictionaries(paths, json_junk, max_size=5))
def test_malformed_entries_are_dropped_one_by_one(files: dict[str, object]) -> None:
    good = {"size": 5, "mtime_ns": 6, "sha256": "a" * 64}
    document = {
        "format": "segdl-sha256-index",
        "version": 1,
        "files": {**files, "/good": good},
    }
    cache = HashCache.decode(json.dumps(document).encode())
    assert cache.lookup("/good", 5, 6) == "a" * 64
    for path, raw in files.items():
        if path == "/good":
            continue
        kept = cache.lookup(path, 5, 6)
        if kept is not None:
            assert raw == {"size": 5, "mtime_ns": 6, "sha256": kept}


def test_another_format_or_version_is_an_empty_cache() -> None:
    entry = {"/m": {"size": 1, "mtime_ns": 2, "sha256": "b" * 64}}
    for header in ({"format": "x", "version": 1}, {"format": "segdl-sha256-index", "version": 2}):
        cache = HashCache.decode(json.dumps({**header, "files": entry}).encode())
        assert len(cache) == 0


def test_forget_drops_known_paths() -> None:
    cache = HashCache()
    cache.store("/a", 1, 1, "c" * 64)
    assert cache.forget(["/a", "/b"]) == 1
    assert cache.lookup("/a", 1, 1) is None
