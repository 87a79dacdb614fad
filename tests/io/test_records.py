"""Records of published files: kept in the cache directory, keyed by the file's real path,
never failing a download."""

from __future__ import annotations

import pathlib

import pytest

from segdl.core.published import FileIdentity, PublishedRecord
from segdl.core.resume import Validators
from segdl.io import records

V1 = Validators(url="https://h/m.bin", size=3, etag='"a"', last_modified=None)


@pytest.fixture
def cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("SEGDL_CACHE_DIR", str(directory))
    return directory


def test_a_record_round_trips_outside_the_folder(
    tmp_path: pathlib.Path, cache: pathlib.Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    final = models / "m.bin"
    final.write_bytes(b"abc")
    record = PublishedRecord(records.identity_of(final.stat()), V1, "ab" * 32)
    records.write_record(final, record)
    assert records.read_record(final) == record
    assert list(models.iterdir()) == [final]  # nothing beside the model
    assert [p.parent.name for p in cache.rglob("*.json")] == ["published"]
    records.forget_record(final)
    assert records.read_record(final) is None


def test_one_folder_reached_two_ways_is_one_record(
    tmp_path: pathlib.Path, cache: pathlib.Path
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    record = PublishedRecord(FileIdentity(3, 1, 2), V1)
    records.write_record(tmp_path / "link" / "m.bin", record)
    assert records.read_record(real / "m.bin") == record
    assert records.read_record(real / "other.bin") is None


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        '{"version": 2}',
        '{"version": 1, "size": -1, "mtime_ns": 1, "inode": 1, "validators": {"url": "u"}}',
        '{"version": 1, "size": 1, "mtime_ns": 1, "inode": 1, "validators": {"url": 5}}',
        '{"version": 1, "size": 1, "mtime_ns": 1, "inode": 1, "sha256": 5,'
        ' "validators": {"url": "u"}}',
    ],
)
def test_a_damaged_record_is_no_record(
    tmp_path: pathlib.Path, cache: pathlib.Path, text: str
) -> None:
    final = tmp_path / "m.bin"
    records.write_record(final, PublishedRecord(FileIdentity(3, 1, 2), V1))
    (path,) = cache.rglob("*.json")
    path.write_text(text)
    assert records.read_record(final) is None


def test_an_unwritable_cache_fails_nothing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file where the cache directory should be: no one, root included, can create it.
    (tmp_path / "not-a-dir").write_bytes(b"")
    monkeypatch.setenv("SEGDL_CACHE_DIR", str(tmp_path / "not-a-dir" / "cache"))
    final = tmp_path / "m.bin"
    records.write_record(final, PublishedRecord(FileIdentity(3, 1, 2), V1))
    assert records.read_record(final) is None


def test_the_cache_directory_follows_the_environment() -> None:
    assert records.records_dir({"SEGDL_CACHE_DIR": "/c"}) == pathlib.Path("/c/published")
    assert records.records_dir({"XDG_CACHE_HOME": "/x"}) == pathlib.Path("/x/segdl/published")
