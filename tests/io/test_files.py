"""File allocation, the partial and its control file, publishing: sizes, atomic
replacement, the validators trailer, the order of removals."""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import asdict

import pytest

from segdl.core.controlfile import ControlFile, ControlFileError
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


V1 = files.Validators(url="http://h/f.bin", size=10, etag='"a"', last_modified=None)
CONTROL = ControlFile(piece_length=MIB, total_length=3 * MIB, bitfield=b"\x80")


def test_the_partial_name_and_its_control_file(tmp_path: pathlib.Path) -> None:
    final = tmp_path / "m.safetensors"
    partial = files.partial_path(final)
    assert partial.name == "m.safetensors.part"
    assert files.control_path(partial).name == "m.safetensors.part.aria2"


def test_validators_travel_in_the_control_files_trailer(tmp_path: pathlib.Path) -> None:
    partial = tmp_path / "f.bin.part"
    files.write_control(partial, CONTROL, V1)
    assert files.read_sealed(partial) == (CONTROL, V1)
    # An engine saving progress keeps them without knowing them.
    later = ControlFile(piece_length=MIB, total_length=3 * MIB, bitfield=b"\xc0")
    files.write_control(partial, later)
    assert files.read_sealed(partial) == (later, V1)
    assert files.read_control(partial) == later
    # One file beside the data, nothing else.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin.part.aria2"]


def test_a_control_file_aria2c_rewrote_is_sealed_again(tmp_path: pathlib.Path) -> None:
    partial = tmp_path / "f.bin.part"
    control = files.control_path(partial)
    control.write_bytes(CONTROL.encode())  # as aria2c writes it: no trailer
    files.write_control(partial, CONTROL)
    assert files.read_sealed(partial) == (CONTROL, None)  # kept aria2c's
    files.seal_control(partial, V1)
    assert files.read_sealed(partial) == (CONTROL, V1)
    # Nothing to seal: no control file, or a damaged one (left for open_target to judge).
    files.seal_control(tmp_path / "none.part", V1)
    assert not (tmp_path / "none.part.aria2").exists()
    damaged = control.read_bytes()[:-3]
    control.write_bytes(damaged)
    files.seal_control(partial, V1)
    assert control.read_bytes() == damaged
    with pytest.raises(ControlFileError):
        files.read_sealed(partial)


def test_segdl_0_1_validators_are_read_and_removed(tmp_path: pathlib.Path) -> None:
    final = tmp_path / "f.bin"
    legacy = tmp_path / "f.bin.segdl"
    legacy.write_text(json.dumps({"version": 1, **asdict(V1), "control_sha256": "00"}))
    assert files.read_legacy_validators(final) == V1
    for bad in ("{not json", '{"url": 1}', '{"url": "u", "size": "big"}', "[]"):
        legacy.write_text(bad)
        assert files.read_legacy_validators(final) is None
    (tmp_path / "f.bin.aria2").write_bytes(CONTROL.encode())
    (tmp_path / "f.bin.aria2__temp").write_bytes(b"half")
    files.remove_sidecars(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_discard_removes_the_data_before_its_control_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash in between must leave a defunct control file, never a full-size partial
    without state (it would read as a complete download)."""
    partial = tmp_path / "f.bin.part"
    partial.write_bytes(b"x" * 10)
    files.write_control(partial, CONTROL, V1)
    order: list[str] = []
    real_unlink = pathlib.Path.unlink

    def unlink(self: pathlib.Path, missing_ok: bool = False) -> None:
        order.append(self.name)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    files.discard(partial)
    assert order[0] == "f.bin.part"
    assert "f.bin.part.aria2" in order
    assert list(tmp_path.iterdir()) == []


def test_publish_replaces_the_old_file_whole(tmp_path: pathlib.Path) -> None:
    final = tmp_path / "m.bin"
    final.write_bytes(b"old")
    partial = files.partial_path(final)
    partial.write_bytes(b"new file")
    inode = partial.stat().st_ino
    files.publish(partial, final)
    assert final.read_bytes() == b"new file"
    assert final.stat().st_ino == inode  # renamed, not copied: the record's identity holds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]


def test_free_space_check(tmp_path: pathlib.Path) -> None:
    files.check_free_space(tmp_path, 1)
    with pytest.raises(DiskFull, match="not enough disk space"):
        files.check_free_space(tmp_path, 1 << 60)
    with pytest.raises(DiskFull, match=r"beside m\.bin, which stays until the new file"):
        files.check_free_space(tmp_path, 1 << 60, beside=tmp_path / "m.bin")
