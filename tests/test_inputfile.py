"""aria2c's input-file format: what is read, what is refused (with FILE:LINE), round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segdl.core.checksum import Checksum
from segdl.core.inputfile import (
    InputEntry,
    InputFileError,
    format_checksum,
    format_input_file,
    parse_input_file,
    url_scheme_problem,
)

SHA = "ab" * 32


def test_a_full_file() -> None:
    text = (
        "# models for the weekend\n"
        "\n"
        "https://a.example/model.safetensors\thttps://b.example/model.safetensors\n"
        "  dir=models/SD\n"
        "\tout=model.safetensors\n"
        f"  checksum=sha-256={SHA.upper()}\n"
        "  max-download-limit=2M\n"
        "  split=4\n"
        "  max-connection-per-server=8\n"
        "   # an indented comment\n"
        "hf://owner/repo/lora.safetensors\r\n"
        "  max-download-limit=0\r\n"
        "urn:air:sdxl:lora:civitai:12@34\n"
        "http://c.example/plain.bin   \n"
    )
    entries = parse_input_file(text, filename="list.txt")
    assert entries == [
        InputEntry(
            urls=("https://a.example/model.safetensors", "https://b.example/model.safetensors"),
            directory="models/SD",
            out="model.safetensors",
            checksum=Checksum("sha256", SHA),
            max_download_limit=2 * 1024 * 1024,
            split=4,
            connections=8,
        ),
        InputEntry(urls=("hf://owner/repo/lora.safetensors",), max_download_limit=0),
        InputEntry(urls=("urn:air:sdxl:lora:civitai:12@34",)),
        InputEntry(urls=("http://c.example/plain.bin",)),
    ]
    assert [entry.line for entry in entries] == [3, 11, 13, 14]


def test_empty_and_comment_only_files_have_no_entries() -> None:
    assert parse_input_file("") == []
    assert parse_input_file("\n# nothing\n   \n\t\n") == []


def test_values_keep_inner_spaces_and_equals_signs() -> None:
    (entry,) = parse_input_file("http://h/x\n  dir = my models/a=b \n  out= a b.bin\n")
    assert entry.directory == "my models/a=b"
    assert entry.out == "a b.bin"


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("  out=x.bin\nhttp://h/x\n", 1, "comes before any URL line"),
        ("# c\n\n\tdir=a\n", 3, "comes before any URL line"),
        ("http://h/x\n  out\n", 2, "is not name=value"),
        ("http://h/x\n  out=\n", 2, "'out' has an empty value"),
        ("http://h/x\n  dir=   \n", 2, "'dir' has an empty value"),
        ("http://h/x\n  header=Cookie: a\n", 2, "unsupported option 'header'"),
        ("http://h/x\n  =x\n", 2, "unsupported option ''"),
        ("http://h/x\n  out=a\n\n  out=b\n", 4, "'out' is given twice"),
        ("http://h/x\n  checksum=sha-256=abc\n", 2, "64 hex digits"),
        ("http://h/x\n  checksum=crc32=00\n", 2, "unsupported checksum type"),
        ("http://h/x\n  max-download-limit=fast\n", 2, "max-download-limit: invalid size"),
        ("http://h/x\n  max-download-limit=-1\n", 2, "invalid size"),
        ("http://h/x\n  split=0\n", 2, "invalid split 0: must be at least 1"),
        ("http://h/x\n  split=two\n", 2, "expected a whole number"),
        ("http://h/x\n  split=+3\n", 2, "expected a whole number"),
        ("http://h/x\n  max-connection-per-server=17\n", 2, "between 1 and 16"),
        ("http://h/x\n  max-connection-per-server=0\n", 2, "between 1 and 16"),
        ("http://h/x\nftp://h/y\n", 2, "unsupported URL scheme 'ftp'"),
        ("http://h/x\tfile:///etc/passwd\n", 1, "unsupported URL scheme 'file'"),
        ("urn:isbn:123\n", 1, "unsupported URL scheme 'urn'"),
        ("example.com/model.bin\n", 1, "not a URL"),
        ("http://h/x\n# c\n\n  out=a\nhttp://h/y\n  out=a\n  out=b\n", 7, "given twice"),
    ],
)
def test_malformed_lines_name_file_and_line(text: str, line: int, needle: str) -> None:
    with pytest.raises(InputFileError) as info:
        parse_input_file(text, filename="list.txt")
    error = info.value
    assert error.filename == "list.txt"
    assert error.line == line
    assert needle in error.reason
    message = str(error)
    assert message.startswith(f"list.txt:{line}: ")
    assert "\n" not in message


def test_the_error_is_a_value_error() -> None:
    assert issubclass(InputFileError, ValueError)


def test_options_reset_with_each_uri_line() -> None:
    entries = parse_input_file("http://h/x\n  out=a\nhttp://h/y\n  out=a\n")
    assert [entry.out for entry in entries] == ["a", "a"]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://h/x", True),
        ("HTTPS://h/x", True),
        ("hf://o/r/f", True),
        ("urn:air:sd1:checkpoint:civitai:4201", True),
        ("URN:AIR:x", True),
        ("ftp://h/x", False),
        ("urn:x", False),
        ("//h/x", False),
        ("", False),
    ],
)
def test_scheme_check(url: str, ok: bool) -> None:
    assert (url_scheme_problem(url) is None) is ok


def test_format_checksum_is_arias_spelling() -> None:
    assert format_checksum(Checksum("sha256", SHA)) == f"sha-256={SHA}"
    assert format_checksum(Checksum("md5", "0" * 32)) == "md5=" + "0" * 32


@pytest.mark.parametrize(
    "entry",
    [
        InputEntry(urls=()),
        InputEntry(urls=("http://h/a\tb",)),
        InputEntry(urls=(" http://h/a",)),
        InputEntry(urls=("ftp://h/a",)),
        InputEntry(urls=("http://h/a",), out="two\nlines"),
        InputEntry(urls=("http://h/a",), directory=" padded"),
    ],
)
def test_unrepresentable_entries_are_refused(entry: InputEntry) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        format_input_file([entry])


# -- properties ---------------------------------------------------------------------------------

# Text that survives a trip through a line: no line breaks or TABs, no surrounding spaces.
_ONE_LINE = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\t\r\n"), min_size=1
).filter(lambda s: s == s.strip())

_URL = st.one_of(
    st.builds(
        lambda s, rest: s + rest, st.sampled_from(["http://", "https://", "hf://"]), _ONE_LINE
    ),
    st.builds(lambda rest: "urn:air:" + rest, _ONE_LINE),
).filter(lambda url: url == url.strip())

_DIGITS = {"md5": 32, "sha1": 40, "sha224": 56, "sha256": 64, "sha384": 96, "sha512": 128}
_CHECKSUM = st.sampled_from(sorted(_DIGITS)).flatmap(
    lambda algorithm: st.builds(
        Checksum,
        st.just(algorithm),
        st.text("0123456789abcdef", min_size=_DIGITS[algorithm], max_size=_DIGITS[algorithm]),
    )
)

_ENTRY = st.builds(
    InputEntry,
    urls=st.lists(_URL, min_size=1, max_size=3).map(tuple),
    directory=st.none() | _ONE_LINE,
    out=st.none() | _ONE_LINE,
    checksum=st.none() | _CHECKSUM,
    max_download_limit=st.none() | st.integers(0, 2**62),
    split=st.none() | st.integers(1, 10**9),
    connections=st.none() | st.integers(1, 16),
)


@given(st.lists(_ENTRY, max_size=6))
def test_format_then_parse_round_trips(entries: list[InputEntry]) -> None:
    text = format_input_file(entries)
    parsed = parse_input_file(text, filename="round.txt")
    assert parsed == entries
    lines = text.split("\n")
    for entry in parsed:
        assert lines[entry.line - 1] == "\t".join(entry.urls)
    assert format_input_file(parsed) == text


_FRAGMENTS = st.sampled_from(
    [
        "http://h/x",
        "hf://o/r/f",
        "ftp://h",
        "\t",
        "  ",
        " out=",
        "out=a",
        "dir=b",
        "split=3",
        "split=0",
        "max-connection-per-server=99",
        "max-download-limit=1M",
        "checksum=sha-256=",
        "a" * 64,
        "#",
        "=",
        "\n",
        "\r\n",
        "\x00",
        "é",
        "\u2028",
    ]
)


@given(st.one_of(st.text(), st.lists(_FRAGMENTS, max_size=30).map("".join)))
def test_arbitrary_text_raises_only_the_parsers_error(text: str) -> None:
    error: InputFileError | None = None
    try:
        entries = parse_input_file(text, filename="fuzz.txt")
    except InputFileError as exc:
        error = exc
    if error is None:
        assert all(entry.urls for entry in entries)
    else:
        assert str(error).startswith("fuzz.txt:")
        assert 1 <= error.line <= text.count("\n") + 1
