"""``segdl get`` asked again for a file it has: done at once when segdl's record shows the
file is the server's version; otherwise aria2c's refusal (exit 13) with a hint, and with
``--allow-overwrite`` a replacement that leaves the old file whole until the new one is."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from segdl.cli.main import main
from segdl.testing.rangeserver import RangeServer, Resource

MIB = 1024 * 1024
NAME = "model.safetensors"
OLD = random.Random(11).randbytes(3 * MIB + 7)
NEW = random.Random(12).randbytes(4 * MIB + 99)
SEGDL = [sys.executable, "-m", "segdl"]


class CliResult(NamedTuple):
    code: int
    out: str
    err: str


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> CliResult:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert isinstance(info.value.code, int)
    return CliResult(info.value.code, out, err)


def data_requests(server: RangeServer, since: int = 0) -> list[str | None]:
    return [r.range for r in server.requests[since:] if r.range != "bytes=0-0"]


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def server() -> Iterator[RangeServer]:
    with RangeServer() as started:
        started.add("/" + NAME, Resource(body=OLD, etag='"v1"'))
        yield started
    assert not started.errors


def test_asked_again_an_unchanged_file_is_done_at_once(
    server: RangeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["get", server.url("/" + NAME), "-d", str(tmp_path)]
    assert run_cli(argv, capsys).code == 0
    since = len(server.requests)
    again = run_cli(argv, capsys)
    assert again.code == 0, again.err
    assert again.err == ""
    assert f"Download complete: {tmp_path / NAME}" in again.out
    assert data_requests(server, since) == []
    assert listing(tmp_path) == [NAME]


@pytest.mark.parametrize("why", ["changed on the server", "not segdl's"])
def test_a_file_it_cannot_vouch_for_is_refused_with_a_hint(
    server: RangeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], why: str
) -> None:
    """aria2c's exit 13, one line that says what happened and what to do; the file is kept.
    With --allow-overwrite it is replaced by the verified new download."""
    argv = ["get", server.url("/" + NAME), "-d", str(tmp_path)]
    if why == "changed on the server":
        assert run_cli(argv, capsys).code == 0
        server.add("/" + NAME, Resource(body=NEW, etag='"v2"'))
        expected, served = "the server's file has changed since", NEW
    else:
        (tmp_path / NAME).write_bytes(OLD)  # the same bytes, but nothing says so
        expected, served = "cannot tell it is this download", OLD
    kept = (tmp_path / NAME).read_bytes()
    refused = run_cli(argv, capsys)
    assert refused.code == 13
    lines = refused.err.splitlines()
    assert len(lines) == 1, refused.err
    assert lines[0].startswith("segdl: error: ")
    assert expected in lines[0]
    assert "--allow-overwrite" in lines[0]
    assert "complete and verified" in lines[0]
    assert (tmp_path / NAME).read_bytes() == kept
    assert listing(tmp_path) == [NAME]

    replaced = run_cli([*argv, "--allow-overwrite"], capsys)
    assert replaced.code == 0, replaced.err
    assert (tmp_path / NAME).read_bytes() == served
    assert listing(tmp_path) == [NAME]


def test_killed_while_replacing_the_old_file_stays_whole(tmp_path: Path) -> None:
    """``segdl get --allow-overwrite`` replacing a changed file, killed with SIGKILL at
    random moments: the model's name always holds the old file or the whole new one (never
    a mix, never nothing), no other model file appears; the last run leaves the new file
    alone."""
    final = tmp_path / NAME
    rng = random.Random(5)
    with RangeServer() as server:
        server.add("/" + NAME, Resource(body=OLD, etag='"v1"'))
        url = server.url("/" + NAME)
        command = [*SEGDL, "get", url, "-d", str(tmp_path), "-q", "--allow-overwrite"]
        subprocess.run(command, check=True, timeout=60)
        server.add("/" + NAME, Resource(body=NEW, etag='"v2"'))
        # 2 MiB/s over 16 connections: a run killed within 1.5 s cannot finish the 4 MiB.
        server.rate_limit = 128 * 1024
        kills = 0
        for _ in range(6):
            proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.2, 1.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            assert final.read_bytes() in (OLD, NEW)
            models = [n for n in listing(tmp_path) if n.endswith(".safetensors")]
            assert models == [NAME]
            if final.read_bytes() == NEW:
                break
        assert kills >= 2
        server.rate_limit = None
        subprocess.run(command, check=True, timeout=60)
    assert final.read_bytes() == NEW
    assert listing(tmp_path) == [NAME]
