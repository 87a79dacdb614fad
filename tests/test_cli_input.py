"""Bad input on the command line: one clear line, aria2c's exit code, never a traceback."""

from __future__ import annotations

import os
import pathlib
import re
import socket

import pytest

from segdl.cli.main import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    code = info.value.code
    assert isinstance(code, int)
    return code, out, err


def assert_one_line_error(err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("segdl: error: ")
    assert "Traceback" not in err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not-a-url", "unsupported URL scheme"),
        # Spaces: refused either for them or for the missing scheme, in one line.
        ("not a url", "URL"),
        ("ftp://example.com/file.bin", "unsupported URL scheme 'ftp'"),
        ("file:///etc/passwd", "unsupported URL scheme 'file'"),
        ("http://", "no host"),
        ("http://host:99999/x", "invalid URL"),
    ],
)
def test_bad_urls_are_refused(
    url: str, needle: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["get", url, "-d", str(tmp_path)], capsys)
    assert code == 1
    assert_one_line_error(err)
    assert needle in err
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_is_a_network_error(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        ["get", f"http://127.0.0.1:{closed_port()}/f.bin", "-d", str(tmp_path)], capsys
    )
    assert code == 6
    assert_one_line_error(err)
    # The first request goes on a data connection (its wording), or on httpx (the probe's).
    assert re.search(r"cannot (reach|connect to) 127\.0\.0\.1", err), err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory_non_root(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run(["get", "http://127.0.0.1:1/f.bin", "-d", str(locked)], capsys)
    assert code == 17
    assert_one_line_error(err)


def test_directory_that_is_a_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(["get", "http://127.0.0.1:1/f.bin", "-d", str(blocker / "sub")], capsys)
    assert code == 17
    assert_one_line_error(err)
    assert blocker.read_text() == "x"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["get", "http://h/x", "-x", "17"], "between 1 and 16"),
        (["get", "http://h/x", "-k", "12Q"], "invalid size"),
        (["get", "http://h/x", "--checksum", "sha-256=xyz"], "sha-256"),
        (["get", "http://h/x", "--ca-certificate", "/nonexistent.pem"], "not found"),
        (["get"], "no URL given"),
        (["get", "-i", "/nonexistent/list.txt"], "cannot read input file"),
        (["get", "http://h/x", "--type", "../../etc"], "type"),
    ],
)
def test_bad_options(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(argv, capsys)
    assert code in (1, 28)
    assert_one_line_error(err)
    assert needle in err


def test_unknown_flag_uses_the_option_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["get", "--no-such-flag", "http://h/x"], capsys)
    assert code == 28
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["get", "http://h/x", "-j", "0"], "-j must be at least 1"),
        (["get", "http://h/x", "--max-overall-download-limit", "2X"], "invalid size"),
        (["get", "http://h/x", "--max-overall-download-limit", "-1"], "overall"),
        (["get", "http://h/x", "--max-download-limit", "fast"], "--max-download-limit"),
    ],
)
def test_bad_batch_options(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(argv, capsys)
    assert code == 28
    assert_one_line_error(err)
    assert needle in err


@pytest.mark.parametrize(
    ("text", "extra", "needle"),
    [
        ("http://h/a\n  out=a.bin\n  referer=x\n", [], "list.txt:3: unsupported option 'referer'"),
        ("\n  out=a.bin\nhttp://h/a\n", [], "list.txt:2: option line 'out=a.bin' comes before"),
        ("http://h/a\nftp://h/b\n", [], "list.txt:2: unsupported URL scheme 'ftp'"),
        ("http://h/a\n  split=0\n", [], "list.txt:2: invalid split 0"),
        ("http://h/a\nhttp://h/b\n", ["-o", "x.bin"], "-o and --checksum apply to one file"),
        ("http://h/a\n  out=x\nhttp://h/b\n  out=x\n", [], "both write"),
    ],
)
def test_bad_input_files(
    text: str,
    extra: list[str],
    needle: str,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(text)
    code, _, err = run(["get", "-i", str(listing), "-d", str(tmp_path / "o"), *extra], capsys)
    assert code == 28
    assert_one_line_error(err)
    assert needle in err
    assert not (tmp_path / "o").exists()


def test_unreadable_input_files(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["get", "-i", str(tmp_path)], capsys)
    assert code == 1
    assert_one_line_error(err)
    assert "cannot read input file" in err
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run(["get", "-i", str(binary)], capsys)
    assert code == 1
    assert_one_line_error(err)
    assert "not UTF-8" in err


def test_an_input_file_without_urls(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("# nothing yet\n")
    code, _, err = run(["get", "-i", str(listing)], capsys)
    assert code == 28
    assert_one_line_error(err)
    assert "no URL given" in err
