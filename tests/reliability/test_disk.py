"""Disk problems: a full disk mid-download, write errors, unusable destinations, free space.

Every failure is one clear line with aria2c's exit code (9 disk full, 17 file I/O), never a
traceback; a failure mid-download keeps the partial and its control file, and a later resume
completes byte-identical without fetching again what the control file claims; a destination
that cannot be used is refused before a single byte of data is fetched.

A full disk is staged for real on a small tmpfs when the tests may mount one (root), and
everywhere by making the data writes (``os.pwrite`` and ``os.splice``, the data plane's two
paths) fail with ENOSPC or EIO once a byte budget is spent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import trio
from support import (
    FIGURES,
    MIB,
    check_claims,
    claimed_ranges,
    data_requests,
    expect_exact,
    read_control,
    refetched,
    sidecars,
)

import segdl
from segdl.cli.main import main
from segdl.core.events import Event, Progress
from segdl.io import files
from segdl.testing.rangeserver import RangeServer, Resource

BODY = random.Random(9).randbytes(6 * MIB + 999)
NAME = "model.bin"


def fast_options(**changes: object) -> segdl.Options:
    fields: dict[str, object] = {
        "connections": 4,
        "split": 4,
        "piece_length": 256 * 1024,
        "save_interval": 0.05,
        "progress_interval": 0.05,
        "retry": segdl.RetryPolicy(base_delay=0.01, max_delay=0.05),
    }
    fields.update(changes)
    return segdl.Options(**fields)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[RangeServer]:
    with RangeServer() as started:
        started.add("/" + NAME, Resource(body=BODY))
        yield started
    assert not started.errors


class CliResult(NamedTuple):
    code: int
    out: str
    err: str


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> CliResult:
    """``segdl ARGV`` in this process (so that the disk can be made to fail under it)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    code = info.value.code
    assert isinstance(code, int)
    return CliResult(code, out, err)


def assert_one_line_error(err: str, needle: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("segdl: error: "), err
    assert needle in lines[0], err
    assert "Traceback" not in err


def check_partial(target: Path) -> list[tuple[int, int]]:
    """A failed download to *target* left a resumable partial: data, and a control file
    claiming only true bytes; nothing under the model's name.  Returns the ranges it claims."""
    assert not target.exists()
    partial = files.partial_path(target)
    control = read_control(partial)
    if not partial.exists() or control is None:
        FIGURES.lost_partial()
        raise AssertionError(f"no resumable partial: {sorted(os.listdir(target.parent))}")
    if check_claims(partial.read_bytes(), control, [BODY]) is None:
        FIGURES.wrong_file()
        raise AssertionError("the control file claims bytes that are not on disk")
    return claimed_ranges(control)


def check_resume_fetches_only_the_rest(
    server: RangeServer, since: int, claimed: list[tuple[int, int]]
) -> None:
    assert refetched(server, since, claimed) == [], claimed
    FIGURES.check("resume after a disk error fetched only the rest")


# -- write errors, simulated ------------------------------------------------------------------


class FailingDisk:
    """``os.pwrite`` and ``os.splice`` that fail with *code* once *budget* bytes have gone into
    the file *target*; every other file is written normally."""

    def __init__(self, target: str | Path, budget: int, code: int) -> None:
        self.target = os.fspath(target)
        self.budget = budget
        self.code = code
        self.written = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._pwrite = os.pwrite
        self._splice = os.splice

    def _is_target(self, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}") == self.target
        except OSError:
            return False

    def _spend(self, nbytes: int) -> None:
        with self._lock:
            if self.written + nbytes > self.budget:
                self.failures += 1
                raise OSError(self.code, os.strerror(self.code))
            self.written += nbytes

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        if self._is_target(fd):
            self._spend(len(data))
        return self._pwrite(fd, data, offset)

    def splice(
        self,
        src: int,
        dst: int,
        count: int,
        offset_src: int | None = None,
        offset_dst: int | None = None,
        flags: int = 0,
    ) -> int:
        if offset_dst is not None and self._is_target(dst):
            self._spend(count)
        return self._splice(
            src, dst, count, offset_src=offset_src, offset_dst=offset_dst, flags=flags
        )

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(os, "pwrite", self.pwrite)
        monkeypatch.setattr(os, "splice", self.splice)


async def test_disk_full_mid_download_keeps_a_resumable_partial(
    server: RangeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / NAME
    disk = FailingDisk(
        os.path.realpath(files.partial_path(target)), budget=2 * MIB + 12345, code=errno.ENOSPC
    )
    disk.install(monkeypatch)
    with pytest.raises(segdl.DiskFull) as info:
        await segdl.download(server.url("/" + NAME), tmp_path, options=fast_options())
    monkeypatch.undo()
    FIGURES.fault("ENOSPC (simulated)", disk.failures)
    FIGURES.outcome(f"error: {type(info.value).__name__}")
    assert info.value.exit_code == 9
    assert "disk full" in str(info.value)
    assert "\n" not in str(info.value)
    claimed = check_partial(target)
    assert claimed, "nothing was saved before the disk filled"
    since = len(server.requests)
    await segdl.download(server.url("/" + NAME), tmp_path, options=fast_options())
    FIGURES.outcome("resumed to the exact file")
    expect_exact(target, BODY)
    check_resume_fetches_only_the_rest(server, since, claimed)


@pytest.mark.parametrize(
    ("code", "exit_code", "needle"),
    [(errno.ENOSPC, 9, "disk full"), (errno.EDQUOT, 9, "disk full"), (errno.EIO, 17, "write")],
    ids=["ENOSPC", "EDQUOT", "EIO"],
)
def test_write_errors_on_the_command_line(
    server: RangeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    code: int,
    exit_code: int,
    needle: str,
) -> None:
    target = tmp_path / NAME
    disk = FailingDisk(os.path.realpath(files.partial_path(target)), budget=MIB + 777, code=code)
    disk.install(monkeypatch)
    argv = ["get", server.url("/" + NAME), "-d", str(tmp_path), "-q", "-t", "5"]
    failed = run_cli(argv, capsys)
    monkeypatch.undo()
    FIGURES.fault(f"{errno.errorcode[code]} (simulated)", disk.failures)
    FIGURES.outcome(f"exit {failed.code}")
    assert failed.code == exit_code, failed.err
    assert_one_line_error(failed.err, needle)
    claimed = check_partial(target)
    since = len(server.requests)
    resumed = run_cli([*argv, "-c"], capsys)
    assert resumed.code == 0, resumed.err
    FIGURES.outcome("resumed to the exact file")
    expect_exact(target, BODY)
    check_resume_fetches_only_the_rest(server, since, claimed)


# -- a full disk, for real --------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at *mount_point* for the block; skips where mounting is not allowed."""
    mount_point.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", options, "segdl-test", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        umount = shutil.which("umount") or "umount"
        if subprocess.run([umount, str(mount_point)], check=False).returncode != 0:
            subprocess.run([umount, "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of *directory*'s filesystem with one file."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        # Large writes, then small ones for the last partial chunk.
        for size in (256 * 1024, 4096):
            while True:
                try:
                    f.write(bytes(size))
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler


async def test_disk_really_full_mid_download(tmp_path: Path) -> None:
    """A 10 MiB tmpfs: the free-space check passes, then another file takes the space."""
    with tmpfs(tmp_path / "small", "size=10m") as small, RangeServer(rate_limit=MIB) as server:
        server.add("/" + NAME, Resource(body=BODY))
        target = small / NAME
        filled: list[Path] = []

        def on_event(event: Event) -> None:
            if isinstance(event, Progress) and event.downloaded >= 2 * MIB and not filled:
                filled.append(fill(small))

        with pytest.raises(segdl.DiskFull) as info, trio.fail_after(30):
            await segdl.download(
                server.url("/" + NAME),
                small,
                options=fast_options(buffer_size=64 * 1024),
                on_event=on_event,
            )
        assert filled, "the download ended before the disk was filled"
        FIGURES.fault("ENOSPC (tmpfs)")
        FIGURES.outcome(f"error: {type(info.value).__name__}")
        assert info.value.exit_code == 9
        assert "\n" not in str(info.value)
        claimed = check_partial(target)
        filled[0].unlink()
        server.rate_limit = None
        since = len(server.requests)
        await segdl.download(server.url("/" + NAME), small, options=fast_options())
        FIGURES.outcome("resumed to the exact file")
        expect_exact(target, BODY)
        check_resume_fetches_only_the_rest(server, since, claimed)


async def test_replacing_a_file_needs_room_for_both(tmp_path: Path) -> None:
    """A 10 MiB tmpfs holding a 6 MiB model; the server now has another 6 MiB version.  The
    old file stays until the new one is verified, so both must fit: refused before any data
    request (in place, 6 - 6 = 0 bytes would have looked enough), the old file intact."""
    new = random.Random(10).randbytes(len(BODY))
    with tmpfs(tmp_path / "small", "size=10m") as small, RangeServer() as server:
        server.add("/" + NAME, Resource(body=BODY, etag='"v1"'))
        await segdl.download(server.url("/" + NAME), small, options=fast_options())
        server.add("/" + NAME, Resource(body=new, etag='"v2"'))
        since = len(server.requests)
        with pytest.raises(segdl.DiskFull) as info:
            await segdl.download(
                server.url("/" + NAME), small, options=fast_options(allow_overwrite=True)
            )
        assert f"beside {NAME}, which stays until the new file is complete" in str(info.value)
        assert [r.range for r in server.requests[since:]] == ["bytes=0-0"]
        assert sorted(p.name for p in small.iterdir()) == [NAME]
        assert (small / NAME).read_bytes() == BODY
    FIGURES.check("free space for a replacement counted beside the old file")


# -- destinations that cannot be used ---------------------------------------------------------


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody may write into: a read-only tmpfs as root, mode 0500 otherwise."""
    if os.geteuid() == 0:
        with tmpfs(tmp_path / "ro", "ro,size=1m") as mounted:
            yield mounted
    else:
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        try:
            yield locked
        finally:
            locked.chmod(0o700)


def destination(kind: str, tmp_path: Path, read_only: Path | None) -> Path:
    if kind == "read-only directory":
        assert read_only is not None
        return read_only
    if kind == "missing parent that cannot be created":
        assert read_only is not None
        return read_only / "models" / "lora"
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"keep me")
    if kind == "a file in place of the directory":
        return blocker
    return blocker / "models"  # a file in place of a parent


@pytest.mark.parametrize(
    "kind",
    [
        "read-only directory",
        "missing parent that cannot be created",
        "a file in place of the directory",
        "a file in place of a parent",
    ],
)
def test_unusable_destination_is_refused_before_any_byte(
    server: RangeServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    kind: str,
) -> None:
    needs_read_only = kind in ("read-only directory", "missing parent that cannot be created")
    read_only = request.getfixturevalue("read_only_dir") if needs_read_only else None
    directory = destination(kind, tmp_path, read_only)
    result = run_cli(["get", server.url("/" + NAME), "-d", str(directory), "-q"], capsys)
    FIGURES.outcome(f"exit {result.code}")
    assert result.code == 17, result.err
    assert_one_line_error(result.err, str(directory))
    assert server.requests == [], "the server was asked for something"
    FIGURES.check("unusable destination refused before any request")
    if (tmp_path / "a-file").exists():
        assert (tmp_path / "a-file").read_bytes() == b"keep me"


def test_directory_in_place_of_the_file(
    server: RangeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / NAME).mkdir()
    for extra in ([], ["-c"]):
        result = run_cli(["get", server.url("/" + NAME), "-d", str(tmp_path), "-q", *extra], capsys)
        assert result.code == 17, result.err
        assert_one_line_error(result.err, "directory")
        assert sidecars(tmp_path) == []
    assert data_requests(server) == []


def test_free_space_is_checked_before_preallocating(
    server: RangeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = shutil.disk_usage

    def disk_usage(path: str | os.PathLike[str]) -> tuple[int, int, int]:
        usage = real(path)
        return usage._replace(free=len(BODY) // 2)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    result = run_cli(["get", server.url("/" + NAME), "-d", str(tmp_path), "-q"], capsys)
    FIGURES.outcome(f"exit {result.code}")
    assert result.code == 9, result.err
    assert_one_line_error(result.err, "not enough disk space")
    # Only the opening requests (the probe, and the connections opened meanwhile asking for
    # the next pieces: one piece each, in flight, never written): nothing more was asked
    # for, nothing was allocated.
    opening = {f"bytes={i * MIB}-{(i + 1) * MIB - 1}" for i in range(16)}
    asked = [r.range for r in server.requests]
    assert f"bytes=0-{MIB - 1}" in asked
    assert set(asked) <= opening, asked
    assert list(tmp_path.iterdir()) == []
    FIGURES.check("free space refused before any data request")
