"""``segdl get -i FILE -j N``: concurrency, failures, per-file options, limits, the terminal."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pathlib
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from segdl.cli.main import build_parser, main
from segdl.testing.rangeserver import RangeServer, Resource

KIB = 1024
MIB = 1024 * KIB


def body(seed: int, size: int = 256 * KIB) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: pathlib.Path) -> str:
    return sha256(path.read_bytes())


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    code = info.value.code
    assert isinstance(code, int)
    return code, out, err


def peak_in_flight(json_lines: str) -> int:
    """How many files were between their ``started`` and their end at once, in the order
    the CLI reported them (``--json``).

    Counted from the client's events: since a download's first request is its probe and
    asks for a whole small file at once, the server cannot tell when a file is done with.
    """
    flying = peak = 0
    for line in json_lines.splitlines():
        kind = json.loads(line)["type"]
        if kind == "started":
            flying += 1
            peak = max(peak, flying)
        elif kind in ("success", "error", "cancelled"):
            flying -= 1
    return peak


def test_j_bounds_the_files_in_flight(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bodies = {f"/f{i}.bin": body(i) for i in range(6)}
    with RangeServer(rate_limit=512 * KIB) as server:
        for path, data in bodies.items():
            server.add(path, Resource(body=data))
        listing = tmp_path / "list.txt"
        listing.write_text("".join(server.url(path) + "\n" for path in bodies))
        out_dir = tmp_path / "out"
        code, out, err = run(
            ["get", "-i", str(listing), "-d", str(out_dir), "-j", "2", "--json"], capsys
        )
        assert not server.errors
    assert code == 0, err
    assert peak_in_flight(out) == 2, out
    for path, data in bodies.items():
        assert file_sha(out_dir / path.lstrip("/")) == sha256(data)
    assert out.count('"type": "success"') == 6


def test_one_404_fails_its_file_only(
    tmp_path: pathlib.Path, range_server: RangeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    bodies = {"a.bin": body(1), "c.bin": body(3)}
    for name, data in bodies.items():
        range_server.add(f"/{name}", Resource(body=data))
    listing = tmp_path / "list.txt"
    secret = range_server.url("/missing.bin") + "?token=hunter2"
    listing.write_text(f"{range_server.url('/a.bin')}\n{secret}\n{range_server.url('/c.bin')}\n")
    code, out, err = run(["get", "-i", str(listing), "-d", str(tmp_path / "o")], capsys)
    assert code == 3
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.bin", "c.bin"]
    for name, data in bodies.items():
        assert file_sha(tmp_path / "o" / name) == sha256(data)
    results = out[out.index("Download Results:") :].splitlines()
    ok_lines = [line for line in results if "|OK  |" in line]
    err_lines = [line for line in results if "|ERR |" in line]
    assert len(ok_lines) == 2
    assert str(tmp_path / "o" / "a.bin") in "".join(ok_lines)
    (failure,) = err_lines
    assert failure.lstrip().startswith("2|")
    assert "/missing.bin" in failure
    assert "HTTP 404" in failure
    # The failure is also one line on stderr; the token never shows.
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1
    assert errors[0].startswith("segdl: error: #2: ")
    assert "404" in errors[0]
    assert "hunter2" not in out + err
    assert "Traceback" not in err


def test_dir_out_checksum_lines_are_honoured(
    tmp_path: pathlib.Path, range_server: RangeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two, three = body(1), body(2), body(3)
    range_server.add("/one.bin", Resource(body=one))
    range_server.add("/two.bin", Resource(body=two))
    range_server.add("/three.bin", Resource(body=three))
    elsewhere = tmp_path / "elsewhere"
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"{range_server.url('/one.bin')}\n"
        f"  dir={elsewhere}\n"
        "  out=first.safetensors\n"
        f"  checksum=sha-256={sha256(one)}\n"
        f"{range_server.url('/two.bin')}\n"
        f"  checksum=sha-256={sha256(one)}\n"
        f"{range_server.url('/three.bin')}\n"
        "  split=1\n"
        "  max-connection-per-server=1\n"
    )
    out_dir = tmp_path / "o"
    code, out, err = run(["get", "-i", str(listing), "-d", str(out_dir)], capsys)
    assert code == 32
    assert file_sha(elsewhere / "first.safetensors") == sha256(one)
    assert file_sha(out_dir / "three.bin") == sha256(three)
    assert "checksum mismatch" in err
    assert "#2" in err
    (failure,) = [line for line in out.splitlines() if "|ERR |" in line]
    assert "/two.bin" in failure


def test_command_line_urls_join_the_input_file(
    tmp_path: pathlib.Path, range_server: RangeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = body(1), body(2)
    range_server.add("/first.bin", Resource(body=first))
    range_server.add("/second.bin", Resource(body=second))
    listing = tmp_path / "list.txt"
    listing.write_text(range_server.url("/second.bin") + "\n")
    code, out, err = run(
        [
            "get",
            range_server.url("/nowhere.bin"),
            range_server.url("/first.bin"),
            "-o",
            "named.bin",
            "--checksum",
            f"sha-256={sha256(first)}",
            "-i",
            str(listing),
            "-d",
            str(tmp_path / "o"),
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["named.bin", "second.bin"]
    events = [json.loads(line) for line in out.splitlines()]
    assert {event["download"] for event in events} == {1, 2}
    ends = {event["download"]: event for event in events if event["type"] == "success"}
    assert ends[1]["path"] == str(tmp_path / "o" / "named.bin")
    assert ends[2]["path"] == str(tmp_path / "o" / "second.bin")
    assert err == ""


def test_quiet_batch_prints_only_errors(
    tmp_path: pathlib.Path, range_server: RangeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    range_server.add("/a.bin", Resource(body=body(1)))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{range_server.url('/a.bin')}\n{range_server.url('/b.bin')}\n")
    code, out, err = run(["get", "-q", "-i", str(listing), "-d", str(tmp_path / "o")], capsys)
    assert code == 3
    assert out == ""
    assert len(err.strip().splitlines()) == 1


def test_overall_limit_reaches_the_downloads(
    tmp_path: pathlib.Path, range_server: RangeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    size = 3 * MIB // 2
    for name in ("x", "y"):
        range_server.add(f"/{name}.bin", Resource(body=body(ord(name), size)))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{range_server.url('/x.bin')}\n{range_server.url('/y.bin')}\n")
    started = time.monotonic()
    code, _, err = run(
        [
            "get",
            "-i",
            str(listing),
            "-d",
            str(tmp_path / "o"),
            "--max-overall-download-limit",
            "2M",
        ],
        capsys,
    )
    elapsed = time.monotonic() - started
    assert code == 0, err
    # 3 MiB at 2 MiB/s is 1.5 s; each file alone would be allowed 2 MiB/s (0.75 s).
    assert elapsed >= 1.1, elapsed


def test_per_file_limit_line_reaches_its_download(
    tmp_path: pathlib.Path, range_server: RangeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    range_server.add("/slow.bin", Resource(body=body(9, 768 * KIB)))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{range_server.url('/slow.bin')}\n  max-download-limit=512K\n")
    started = time.monotonic()
    code, _, err = run(["get", "-i", str(listing), "-d", str(tmp_path / "o")], capsys)
    elapsed = time.monotonic() - started
    assert code == 0, err
    assert elapsed >= 1.1, elapsed  # 768 KiB at 512 KiB/s is 1.5 s


def test_rate_flags_reach_the_options() -> None:
    from segdl.cli.main import _options_from_args

    args = build_parser().parse_args(["get", "http://h/x", "--max-download-limit", "512K"])
    assert _options_from_args(args).max_download_limit == 512 * KIB
    args = build_parser().parse_args(["get", "http://h/x", "--max-download-limit", "0"])
    assert _options_from_args(args).max_download_limit is None


# -- a real terminal ----------------------------------------------------------------------------


def _read_all(
    fd: int,
    process: subprocess.Popen[bytes],
    deadline: float,
    *,
    interrupt_after: bytes | None = None,
) -> bytes:
    """Everything the process writes to the pty; Ctrl-C once *interrupt_after* was written."""
    chunks: list[bytes] = []
    while time.monotonic() < deadline:
        if interrupt_after is not None and interrupt_after in b"".join(chunks):
            process.send_signal(signal.SIGINT)
            interrupt_after = None
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError as exc:  # EIO: the other side of the pty is closed
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    return b"".join(chunks)


def _spawn_in_pty(argv: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "segdl", *argv],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "xterm"},
        close_fds=True,
    )
    os.close(follower)
    return process, leader


def test_live_display_on_a_pseudo_terminal(tmp_path: pathlib.Path) -> None:
    bodies = {f"/model-{i}.safetensors": body(i, 512 * KIB) for i in range(4)}
    with RangeServer(rate_limit=512 * KIB) as server:
        for path, data in bodies.items():
            server.add(path, Resource(body=data))
        listing = tmp_path / "list.txt"
        listing.write_text("".join(server.url(path) + "\n" for path in bodies))
        process, leader = _spawn_in_pty(
            ["get", "-i", str(listing), "-d", str(tmp_path / "o"), "-j", "2"]
        )
        try:
            raw = _read_all(leader, process, time.monotonic() + 60)
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            os.close(leader)
    text = raw.decode("utf-8", "replace")
    assert code == 0, text
    # Lines redrawn in place: cursor up, erase to end of line.
    assert "\x1b[K" in text
    assert "\x1b[2A" in text or "\x1b[3A" in text
    assert "Total: " in text
    assert "#1 model-0.safetensors" in text
    assert "MiB/s" in text
    assert "conn" in text
    assert "Download Results:" in text
    assert text.count("|OK  |") == 4
    assert "Traceback" not in text
    # Every line of the display fits the 100 columns (so it never wraps).
    moves = re.sub(r"\x1b\[[0-9]*[AJ]", "", text)
    drawn = re.findall(r"([^\x1b\r\n]*)\x1b\[K", moves)
    assert drawn
    assert all(len(line) < 100 for line in drawn), drawn
    for path, data in bodies.items():
        assert file_sha(tmp_path / "o" / path.lstrip("/")) == sha256(data)


def test_ctrl_c_stops_the_batch_with_code_7_and_keeps_partials(tmp_path: pathlib.Path) -> None:
    with RangeServer(rate_limit=256 * KIB) as server:
        for i in range(3):
            server.add(f"/big-{i}.bin", Resource(body=body(i, 4 * MIB)))
        listing = tmp_path / "list.txt"
        listing.write_text("".join(server.url(f"/big-{i}.bin") + "\n" for i in range(3)))
        process, leader = _spawn_in_pty(
            ["get", "-i", str(listing), "-d", str(tmp_path / "o"), "-j", "2"]
        )
        try:
            # Interrupted once some data has arrived (a progress line with KiB of it).
            raw = _read_all(leader, process, time.monotonic() + 60, interrupt_after=b" KiB/4.0 MiB")
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            os.close(leader)
    text = raw.decode("utf-8", "replace")
    assert code == 7, text
    assert "Traceback" not in text
    assert text.rstrip().endswith("segdl: interrupted; run the same command again to resume")
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert "big-0.bin.part.aria2" in names
    assert "big-1.bin.part.aria2" in names
    assert not [n for n in names if n.startswith("big-2.bin")]
