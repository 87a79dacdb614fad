"""Have it already?  The sha256 index of a models folder, on real files."""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from segdl.errors import FileExists
from segdl.jobs.hashindex import (
    CACHE_FILE_NAME,
    ModelIndex,
    find_model_by_sha256,
    iter_model_files,
    place_model_copy,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def models(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "models"
    write(root / "LoRA" / "dream.safetensors", b"dream" * 1000)
    write(root / "SD" / "base.ckpt", b"base" * 3000)
    write(root / "SD" / "sub" / "copy-of-dream.safetensors", b"dream" * 1000)
    return root


async def test_finds_every_copy_in_every_folder(
    models: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    found = await find_model_by_sha256(models, sha(b"dream" * 1000), cache_dir=tmp_path / "c")
    assert sorted(found) == [
        models / "LoRA" / "dream.safetensors",
        models / "SD" / "sub" / "copy-of-dream.safetensors",
    ]
    assert await find_model_by_sha256(models, "0" * 64, cache_dir=tmp_path / "c") == []
    # The cache lives in the cache directory, never in the models folder.
    assert (tmp_path / "c" / CACHE_FILE_NAME).exists()
    assert not [p for p in models.rglob("*") if "index" in p.name or p.suffix == ".json"]


async def test_each_file_is_hashed_once_then_answered_from_the_cache(
    models: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cache = tmp_path / "cache"
    first = ModelIndex(cache)
    await first.search(models, sha(b"base" * 3000))
    assert first.statistics().files_hashed == 3
    # A new index (a new process) reads the cache file: nothing is hashed again.
    second = ModelIndex(cache)
    result = await second.search(models, sha(b"base" * 3000))
    assert result.matches == (models / "SD" / "base.ckpt",)
    stats = second.statistics()
    assert (stats.files_hashed, stats.cache_hits) == (0, 3)


async def test_a_changed_file_is_hashed_again(models: pathlib.Path, tmp_path: pathlib.Path) -> None:
    index = ModelIndex(tmp_path / "cache")
    target = models / "SD" / "base.ckpt"
    await index.search(models, sha(b"base" * 3000))
    # Same size, new content and a new mtime: the old digest must not be trusted.
    new = b"BASE" * 3000
    target.write_bytes(new)
    info = target.stat()
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))
    result = await index.search(models, sha(new))
    assert result.matches == (target,)
    assert await index.search(models, sha(b"base" * 3000)) == type(result)(())
    assert index.statistics().files_hashed == 4


async def test_partials_and_non_models_never_count(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "models"
    data = b"x" * 5000
    write(root / "in-progress.safetensors", data)
    write(root / "in-progress.safetensors.aria2", b"ctl")
    write(root / "ours.safetensors", data)
    write(root / "ours.safetensors.segdl", b"{}")
    write(root / "partial.safetensors.part", data)
    write(root / "x.safetensors.tmp", data)
    write(root / "notes.txt", data)
    write(root / ".hidden" / "h.safetensors", data)
    write(root / "real.safetensors", data)
    assert list(iter_model_files(root)) == [root / "real.safetensors"]
    assert await find_model_by_sha256(root, sha(data), cache_dir=None) == [
        root / "real.safetensors"
    ]


async def test_size_hint_and_budget_bound_the_work(
    models: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    index = ModelIndex(None)
    size = len(b"dream" * 1000)
    result = await index.search(models, sha(b"dream" * 1000), size=size)
    assert len(result.matches) == 2
    stats = index.statistics()
    assert (stats.files_hashed, stats.skipped_by_size) == (2, 1)
    # A budget smaller than the first candidate: nothing hashed, everything reported unchecked.
    tight = ModelIndex(None)
    result = await tight.search(models, sha(b"dream" * 1000), max_hash_bytes=100)
    assert result.matches == ()
    assert not result.complete
    assert len(result.unchecked) == 3
    assert tight.statistics().bytes_hashed == 0


async def test_a_corrupt_or_unwritable_cache_never_fails_a_search(
    models: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / CACHE_FILE_NAME).write_bytes(b'{"format": "segdl-sha256-index", "files": [tru')
    found = await find_model_by_sha256(models, sha(b"base" * 3000), cache_dir=cache)
    assert found == [models / "SD" / "base.ckpt"]
    # The broken file was replaced by a good one.
    assert ModelIndex(cache)._load().lookup(
        os.path.realpath(models / "SD" / "base.ckpt"),
        (models / "SD" / "base.ckpt").stat().st_size,
        (models / "SD" / "base.ckpt").stat().st_mtime_ns,
    ) == sha(b"base" * 3000)
    blocked = tmp_path / "not-a-dir"
    blocked.write_bytes(b"")
    index = ModelIndex(blocked)  # the cache file would be inside a regular file
    assert (await index.search(models, sha(b"base" * 3000))).matches
    assert index.statistics().cache_errors


async def test_links_are_followed_once_and_loops_end(tmp_path: pathlib.Path) -> None:
    store = tmp_path / "store"
    data = b"linked" * 700
    write(store / "m.safetensors", data)
    root = tmp_path / "models"
    (root / "LoRA").mkdir(parents=True)
    (root / "LoRA" / "m.safetensors").symlink_to(store / "m.safetensors")
    (root / "LoRA" / "loop").symlink_to(root)
    (root / "other").symlink_to(store)
    index = ModelIndex(tmp_path / "cache")
    result = await index.search(root, sha(data))
    assert sorted(result.matches) == [
        root / "LoRA" / "m.safetensors",
        root / "other" / "m.safetensors",
    ]
    # Two paths, one file: hashed once (the cache is keyed by the real path).
    assert index.statistics().files_hashed == 1


async def test_place_model_copy_links_and_never_replaces(tmp_path: pathlib.Path) -> None:
    source = write(tmp_path / "SD" / "m.safetensors", b"model" * 100)
    target = tmp_path / "LoRA" / "m.safetensors"
    target.parent.mkdir()
    assert await place_model_copy(source, target) == "linked"
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_ino == source.stat().st_ino
    with pytest.raises(FileExists):
        await place_model_copy(source, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.safetensors"]


async def test_a_bad_digest_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="not a sha256"):
        await find_model_by_sha256(tmp_path, "xyz", cache_dir=None)


# -- the cache against a file that keeps changing (hypothesis drives the changes) ---------

changes = st.lists(
    st.tuples(
        st.sampled_from(["rewrite-same-size", "grow", "touch", "nothing"]),
        st.binary(min_size=1, max_size=64),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(changes)
def test_search_answers_track_every_change(steps: list[tuple[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = pathlib.Path(scratch) / "models"
        path = write(root / "m.safetensors", b"start")
        index = ModelIndex(pathlib.Path(scratch) / "cache")
        assert trio.run(index.search, root, sha(b"start")).matches == (path,)
        mtime = path.stat().st_mtime_ns
        for step, (kind, data) in enumerate(steps):
            current = path.read_bytes()
            if kind == "rewrite-same-size":
                new = (data * len(current))[: len(current)]
            elif kind == "grow":
                new = current + data
            else:
                new = current
            if kind != "nothing":
                path.write_bytes(new)
                mtime += 1_000_000 * (step + 1)
                os.utime(path, ns=(mtime, mtime))  # distinct mtimes, as a real clock gives
            before = index.statistics().files_hashed
            found = trio.run(index.search, root, sha(new))
            assert found.matches == (path,)
            if current != new and trio.run(index.search, root, sha(current)).matches:
                raise AssertionError("a stale digest was trusted after the file changed")
            hashed = index.statistics().files_hashed - before
            assert hashed == (0 if kind == "nothing" else 1)
