"""File allocation and the sidecars: sizes, atomic replacement, validators."""

from __future__ import annotations

import os
import pathlib

import pytest

from segdl.errors import DiskFull
from segdl.io import files

MIB = 1024 * 1024


@pytest.mark.parametrize("directory", ["disk", "memory"])
def test_open_data_file_reserves_the_size(tmp_path: pathlib.Path, directory: str) -> None:
    if directory == "memory":
        if not files.on_memory_filesystem(pathlib.Path("/dev/shm")):
            pytest.skip("/dev/shm is not a tmpfs here")
        base = pathlib.Path("/dev/shm") / f"segdl-test-{os.getpid()}"
        base.mkdir(exist_ok=True)
    else:
        base = tmp_path
    path = base / "f.bin"
    try:
        fd = files.open_data_file(path, 3 * MIB + 5, truncate=True)
        os.pwrite(fd, b"abc", 3 * MIB)
        os.close(fd)
        assert path.stat().st_size == 3 * MIB + 5
        # Reopening for a resume keeps the data.
        fd = files.open_data_file(path, 3 * MIB + 5, truncate=False)
        assert os.pread(fd, 3, 3 * MIB) == b"abc"
        os.close(fd)
    finally:
        path.unlink(missing_ok=True)
        if directory == "memory":
            base.rmdir()


def test_memory_filesystem_detection() -> None:
    assert files.on_memory_filesystem(pathlib.Path("/proc/nonexistent")) is False
    with open("/proc/self/mounts", encoding="utf-8") as f:
        tmpfs = [line.split()[1] for line in f if line.split()[2] == "tmpfs"]
    if tmpfs:
        assert files.on_memory_filesystem(pathlib.Path(tmpfs[0]) / "x" / "y") is True


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "f.aria2"
    files.write_atomic(target, b"one")
    files.write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.aria2"]


def test_validators_round_trip_and_matching(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "f.bin"
    v = files.Validators(url="http://h/f.bin", size=10, etag='"a"', last_modified=None)
    files.write_validators(path, v)
    assert files.read_validators(path) == v
    assert v.matches(files.Validators(url="x", size=10, etag='W/"a"', last_modified="y"))
    assert not v.matches(files.Validators(url="x", size=10, etag='"b"', last_modified=None))
    assert not v.matches(files.Validators(url="x", size=11, etag='"a"', last_modified=None))
    (tmp_path / "f.bin.segdl").write_text("{not json")
    assert files.read_validators(path) is None


def test_free_space_check(tmp_path: pathlib.Path) -> None:
    files.check_free_space(tmp_path, 1)
    with pytest.raises(DiskFull, match="not enough disk space"):
        files.check_free_space(tmp_path, 1 << 60)
