"""Tests for segdl.core.headers: one concrete case per rule, then hypothesis properties."""

from __future__ import annotations

import hashlib
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segdl.core.checksum import Checksum, parse_checksum
from segdl.core.headers import (
    ContentRange,
    HeaderError,
    choose_filename,
    filename_from_url,
    format_open_range,
    format_range,
    parse_content_disposition_filename,
    parse_content_length,
    parse_content_range,
    parse_retry_after,
    sanitize_filename,
)
from segdl.core.sizes import parse_size

# --------------------------------------------------------------------------------------------
# Content-Range
# --------------------------------------------------------------------------------------------


def test_content_range_with_complete_length() -> None:
    rng = parse_content_range("bytes 0-499/1234")
    assert rng == ContentRange(first=0, last=499, complete_length=1234)
    assert rng.length == 500


def test_content_range_unknown_complete_length() -> None:
    assert parse_content_range("bytes 500-999/*") == ContentRange(500, 999, None)


def test_content_range_single_byte_at_end() -> None:
    rng = parse_content_range("bytes 1233-1233/1234")
    assert rng.length == 1


@pytest.mark.parametrize(
    "value",
    ["BYTES 0-499/1234", "Bytes 0-499/1234", "  bytes 0-499/1234\t", "bytes 0 - 499 / 1234"],
)
def test_content_range_tolerates_case_and_whitespace(value: str) -> None:
    assert parse_content_range(value) == ContentRange(0, 499, 1234)


@pytest.mark.parametrize(
    "value",
    [
        "items 0-499/1234",  # another unit
        "bytes 500-499/1234",  # last < first
        "bytes 0-1234/1234",  # last == complete length
        "bytes 0-2000/1234",  # last > complete length
        "bytes -1-499/1234",  # negative
        "bytes 0--499/1234",
        "bytes 0-499/-1234",
        "bytes a-499/1234",  # non-digit
        "bytes 0-4x9/1234",
        "bytes 0-499/12.5",
        "bytes 0x0-499/1234",
        "bytes ٠-٤٩٩/١٢٣٤",  # non-ASCII digits, which int() would accept
        "bytes 0-499",  # missing complete length
        "bytes=0-499/1234",  # request syntax
        "0-499/1234",  # missing unit
        "bytes 0-499/1234, bytes 500-999/1234",
        "bytes 0-99999999999999999999/*",  # 20 digits
        "bytes 0-499/" + "9" * 4000,
        "",
        "bytes",
    ],
)
def test_content_range_rejects(value: str) -> None:
    with pytest.raises(HeaderError):
        parse_content_range(value)


def test_content_range_unsatisfied_form_is_an_error() -> None:
    with pytest.raises(HeaderError, match="unsatisfied"):
        parse_content_range("bytes */1234")


def test_content_range_nineteen_digits_accepted() -> None:
    big = 10**18
    assert parse_content_range(f"bytes 0-{big}/*").last == big


def test_header_error_is_a_value_error() -> None:
    assert issubclass(HeaderError, ValueError)


def test_content_range_constructor_checks_invariants() -> None:
    with pytest.raises(ValueError, match="invalid byte range"):
        ContentRange(first=5, last=4, complete_length=None)
    with pytest.raises(ValueError, match="does not fit"):
        ContentRange(first=0, last=10, complete_length=10)


# --------------------------------------------------------------------------------------------
# Range
# --------------------------------------------------------------------------------------------


def test_format_range_is_inclusive() -> None:
    assert format_range(0, 499) == "bytes=0-499"
    assert format_range(7, 7) == "bytes=7-7"


@pytest.mark.parametrize(("first", "last"), [(-1, 5), (5, 4), (-3, -1)])
def test_format_range_rejects_invalid(first: int, last: int) -> None:
    with pytest.raises(ValueError, match="invalid byte range"):
        format_range(first, last)


def test_format_open_range() -> None:
    assert format_open_range(0) == "bytes=0-"
    assert format_open_range(1048576) == "bytes=1048576-"
    with pytest.raises(ValueError, match="invalid range start"):
        format_open_range(-1)


@settings(deadline=None)
@given(st.data())
def test_format_range_round_trips_through_content_range(data: st.DataObject) -> None:
    complete = data.draw(st.integers(min_value=1, max_value=2**50 - 1), label="n")
    last = data.draw(st.integers(min_value=0, max_value=complete - 1), label="b")
    first = data.draw(st.integers(min_value=0, max_value=last), label="a")
    spec = format_range(first, last).removeprefix("bytes=")
    rng = parse_content_range(f"bytes {spec}/{complete}")
    assert (rng.first, rng.last, rng.complete_length) == (first, last, complete)
    assert rng.length == last - first + 1


# --------------------------------------------------------------------------------------------
# Content-Length
# --------------------------------------------------------------------------------------------


def test_content_length_absent() -> None:
    assert parse_content_length([]) is None


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["1234"], 1234),
        (["0"], 0),
        ([" 42 "], 42),
        (["5", "5"], 5),
        (["5, 5"], 5),
        (["5,5", "5"], 5),
        (["5, , 5"], 5),  # empty list elements are ignored (RFC 9110 §5.6.1)
    ],
)
def test_content_length_accepts(values: list[str], expected: int) -> None:
    assert parse_content_length(values) == expected


@pytest.mark.parametrize(
    "values",
    [
        ["5", "6"],
        ["5, 6"],
        ["-1"],
        ["+5"],
        ["1.0"],
        ["12a"],
        ["0x10"],
        ["١٢"],
        [""],
        [" , "],
        ["9" * 20],
    ],
)
def test_content_length_rejects(values: list[str]) -> None:
    with pytest.raises(HeaderError):
        parse_content_length(values)


# --------------------------------------------------------------------------------------------
# Retry-After
# --------------------------------------------------------------------------------------------

# Sun, 06 Nov 1994 08:49:37 GMT, the example date of RFC 9110 §5.6.7.
EXAMPLE_DATE = 784111777.0


def test_retry_after_delta_seconds() -> None:
    assert parse_retry_after("120", now=EXAMPLE_DATE) == 120.0
    assert parse_retry_after(" 0 ", now=EXAMPLE_DATE) == 0.0


def test_retry_after_delta_is_capped() -> None:
    assert parse_retry_after("86400", now=0.0) == 3600.0
    assert parse_retry_after("9" * 5000, now=0.0) == 3600.0


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850 form
        "Sun Nov  6 08:49:37 1994",  # asctime, which carries no zone: it is still GMT
    ],
)
def test_retry_after_http_date(value: str) -> None:
    assert parse_retry_after(value, now=EXAMPLE_DATE - 30) == pytest.approx(30.0)


def test_retry_after_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=EXAMPLE_DATE + 99) == 0.0


def test_retry_after_date_far_ahead_is_capped() -> None:
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=0.0) == 3600.0


@pytest.mark.parametrize(
    "value", ["", "soon", "-5", "1.5", "12 s", "Fri, 31 Dec 99999 23:59:59 GMT", "Mon, 99 Foo"]
)
def test_retry_after_unparseable(value: str) -> None:
    assert parse_retry_after(value, now=EXAMPLE_DATE) is None


@settings(deadline=None)
@given(st.text(), st.floats(min_value=0, max_value=4e9))
def test_retry_after_is_none_or_bounded(value: str, now: float) -> None:
    delay = parse_retry_after(value, now=now)
    assert delay is None or 0.0 <= delay <= 3600.0


# --------------------------------------------------------------------------------------------
# Content-Disposition
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # filename* wins over filename (RFC 6266 §4.3), whichever comes first.
        (
            "attachment; filename*=UTF-8''na%C3%AFve%20file.safetensors; filename=\"fallback.bin\"",
            "naïve file.safetensors",
        ),
        (
            "attachment; filename=\"fallback.bin\"; filename*=utf-8''na%C3%AFve.bin",
            "naïve.bin",
        ),
        ("attachment; filename*=UTF-8'en'%E2%82%AC%20rates.txt", "€ rates.txt"),
        ("attachment; filename*=ISO-8859-1''%E9t%E9.txt", "été.txt"),
        ("attachment; filename*=\"UTF-8''quoted%20anyway.bin\"", "quoted anyway.bin"),
        # Token and quoted forms.
        ("attachment; filename=model.safetensors", "model.safetensors"),
        ('attachment; filename="model.safetensors"', "model.safetensors"),
        (r'attachment; filename="say \"hi\".txt"', 'say "hi".txt'),
        (r'attachment; filename="back\\slash.txt"', "back\\slash.txt"),
        ('attachment; filename="semi;colon=equals.bin"; size=12', "semi;colon=equals.bin"),
        ('attachment; filename="quoted.bin" junk; x=y', "quoted.bin"),
        # Parameter names are case-insensitive; whitespace around "=" is tolerated.
        ('attachment; FileName="Upper.bin"', "Upper.bin"),
        ("attachment; FILENAME*=UTF-8''upper%2Dext.bin", "upper-ext.bin"),
        ('attachment ;  filename = "spaced.bin" ', "spaced.bin"),
        # Sloppy forms seen in the wild.
        ("attachment; filename=my model file.gguf; size=3", "my model file.gguf"),
        ('filename="no-type.bin"', "no-type.bin"),
        ("inline;filename=tight.bin", "tight.bin"),
        ("attachment filename=missing-semicolon.bin", "missing-semicolon.bin"),
        ('attachment; filename="unterminated.bin', "unterminated.bin"),
        # Raw UTF-8 in the header, decoded as ISO-8859-1 by the HTTP layer, is repaired.
        ('attachment; filename="na\u00c3\u00afve.bin"', "naïve.bin"),
        # ...but a genuine ISO-8859-1 name is left alone.
        ('attachment; filename="caf\u00e9.bin"', "café.bin"),
        # The first occurrence counts.
        ('attachment; filename="one.bin"; filename="two.bin"', "one.bin"),
        # Path components are returned raw: sanitising is a separate step.
        ('attachment; filename="../../etc/passwd"', "../../etc/passwd"),
    ],
)
def test_content_disposition_filename(value: str, expected: str) -> None:
    assert parse_content_disposition_filename(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # An unusable filename* falls back to filename.
        ("attachment; filename*=UTF-8''%FF%FE; filename=\"ok.bin\"", "ok.bin"),
        ("attachment; filename*=KOI8-R''%E1; filename=\"ok.bin\"", "ok.bin"),
        ('attachment; filename*=no-quotes; filename="ok.bin"', "ok.bin"),
        ("attachment; filename*=UTF-8''; filename=\"ok.bin\"", "ok.bin"),
    ],
)
def test_content_disposition_bad_extended_value_falls_back(value: str, expected: str) -> None:
    assert parse_content_disposition_filename(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "attachment",
        "inline",
        'attachment; filename=""',
        "attachment; filename=",
        "attachment; name=field",
        "attachment; filename*=UTF-8''%C3",
        ";;;===;;",
        '"',
        "\\",
    ],
)
def test_content_disposition_without_filename(value: str) -> None:
    assert parse_content_disposition_filename(value) is None


@settings(deadline=None)
@given(st.text())
def test_content_disposition_never_raises(value: str) -> None:
    result = parse_content_disposition_filename(value)
    assert result is None or isinstance(result, str)


@settings(deadline=None)
@given(st.text())
def test_content_disposition_never_raises_after_a_filename_prefix(tail: str) -> None:
    # Reach the parameter scanner and the ext-value decoder with arbitrary text.
    for prefix in (
        "attachment; filename=",
        'filename="',
        "attachment; filename*=",
        "a; filename*=UTF-8''",
    ):
        parse_content_disposition_filename(prefix + tail)


# --------------------------------------------------------------------------------------------
# File names from URLs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/models/model.safetensors", "model.safetensors"),
        ("https://example.com/a/b/file.bin?download=true&x=/y.bin#frag/z", "file.bin"),
        ("https://example.com/dir/", "dir"),
        ("https://example.com/dir//", "dir"),
        ("https://example.com/na%C3%AFve%20file.gguf", "naïve file.gguf"),
        ("https://example.com/bad%FFutf8.bin", "bad\ufffdutf8.bin"),
        ("https://example.com/a%2Fb.bin", "a/b.bin"),  # decoded after splitting
        ("relative/path/name.txt", "name.txt"),
    ],
)
def test_filename_from_url(url: str, expected: str) -> None:
    assert filename_from_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com",
        "https://example.com/",
        "https://example.com/?q=a.bin",
        "",
        "http://[::1/x",
    ],
)
def test_filename_from_url_none(url: str) -> None:
    assert filename_from_url(url) is None


# --------------------------------------------------------------------------------------------
# sanitize_filename
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.safetensors", "model.safetensors"),
        ("naïve file.safetensors", "naïve file.safetensors"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\Windows\\system.ini", "system.ini"),
        ("C:\\Users\\me\\file.txt", "file.txt"),
        ("/absolute/path.bin", "path.bin"),
        ("dir/", "dir"),
        ("a\x00b.bin", "ab.bin"),
        ("tab\there\nnew\x7fline\x9f.txt", "tabherenewline.txt"),
        ("evil\u202etxt.exe", "eviltxt.exe"),
        ('a<b>c:d"e|f?g*h.bin', "a_b_c_d_e_f_g_h.bin"),
        ("file.txt:stream", "file.txt_stream"),
        ("  .hidden file. . ", "hidden file"),
        ("...dots", "dots"),
        ("CON", "_CON"),
        ("CON.txt", "_CON.txt"),
        ("con.tar.gz", "_con.tar.gz"),
        ("nul", "_nul"),
        ("Prn.log", "_Prn.log"),
        ("aux", "_aux"),
        ("COM1", "_COM1"),
        ("com9.dat", "_com9.dat"),
        ("LPT1.txt", "_LPT1.txt"),
        ("lpt9", "_lpt9"),
        ("CON .txt", "_CON .txt"),  # Windows ignores the space before the extension
        ("CONSOLE.txt", "CONSOLE.txt"),
        ("COM10", "COM10"),
        ("icon.png", "icon.png"),
        ("x_CON.txt", "x_CON.txt"),
    ],
)
def test_sanitize_filename(name: str, expected: str) -> None:
    assert sanitize_filename(name) == expected


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "...", " ", " . ", "/", "\\", "a/..", "x/.", "\x00", "\x00\x01", "\u202e"],
)
def test_sanitize_filename_fallback(name: str) -> None:
    assert sanitize_filename(name) == "download"
    assert sanitize_filename(name, fallback="model.bin") == "model.bin"


def test_sanitize_filename_fallback_is_itself_sanitised() -> None:
    assert sanitize_filename("..", fallback="../x/CON") == "_CON"
    assert sanitize_filename("..", fallback="..") == "download"


def test_sanitize_filename_truncates_keeping_the_extension() -> None:
    name = "m" * 400 + ".safetensors"
    result = sanitize_filename(name)
    assert result.endswith(".safetensors")
    assert len(result.encode("utf-8")) == 255
    assert result == "m" * (255 - len(".safetensors")) + ".safetensors"


def test_sanitize_filename_truncates_without_splitting_characters() -> None:
    name = "é" * 300 + ".gguf"  # two bytes each
    result = sanitize_filename(name)
    assert result.endswith(".gguf")
    assert len(result.encode("utf-8")) <= 255
    assert set(result.removesuffix(".gguf")) == {"é"}


def test_sanitize_filename_truncates_a_long_extension_with_the_name() -> None:
    name = "a.b" + "c" * 300
    result = sanitize_filename(name)
    assert len(result.encode("utf-8")) == 255
    assert result.startswith("a.bccc")


def test_sanitize_filename_truncation_does_not_expose_a_device_name() -> None:
    result = sanitize_filename("CON" + " " * 300 + "x")
    assert result == "_CON"
    assert sanitize_filename(result) == result


def test_sanitize_filename_keeps_exactly_255_bytes() -> None:
    name = "a" * 251 + ".bin"
    assert sanitize_filename(name) == name


def test_sanitize_filename_replaces_lone_surrogates() -> None:
    assert sanitize_filename("a\udcffb.bin") == "a_b.bin"


def _is_safe_component(result: str) -> bool:
    return (
        result not in ("", ".", "..")
        and "/" not in result
        and "\\" not in result
        and "\x00" not in result
        and all(unicodedata.category(char) != "Cc" for char in result)
        and len(result.encode("utf-8")) <= 255
        and result == result.strip(" .")
    )


@settings(deadline=None)
@given(st.text())
def test_sanitize_filename_output_is_one_safe_component(name: str) -> None:
    result = sanitize_filename(name)
    assert _is_safe_component(result)
    assert not set('<>:"|?*') & set(result)
    assert sanitize_filename(result) == result


@settings(deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(["a", "é", "€", "😀", " ", ".", "/", "\\", "\x00", "C", "O", "N"])
    )
)
def test_sanitize_filename_properties_on_hostile_alphabet(name: str) -> None:
    # A small alphabet reaches the interesting edges (dots, spaces, device names) far more often.
    result = sanitize_filename(name)
    assert _is_safe_component(result)
    assert sanitize_filename(result) == result


@settings(deadline=None)
@given(st.text(min_size=200, max_size=400), st.sampled_from(["", ".bin", ".safetensors", ".é"]))
def test_sanitize_filename_long_names(stem: str, extension: str) -> None:
    result = sanitize_filename(stem + extension)
    assert _is_safe_component(result)
    assert sanitize_filename(result) == result


# --------------------------------------------------------------------------------------------
# choose_filename
# --------------------------------------------------------------------------------------------


def test_choose_filename_prefers_content_disposition() -> None:
    cd = 'attachment; filename="from-header.bin"'
    assert choose_filename(cd, "https://h/from-url.bin") == "from-header.bin"


def test_choose_filename_uses_url_without_content_disposition() -> None:
    assert choose_filename(None, "https://h/dir/from%20url.bin?token=x") == "from url.bin"
    assert choose_filename("attachment", "https://h/from-url.bin") == "from-url.bin"


def test_choose_filename_skips_a_name_that_sanitises_to_nothing() -> None:
    assert choose_filename('attachment; filename=".."', "https://h/from-url.bin") == "from-url.bin"


def test_choose_filename_falls_back() -> None:
    assert choose_filename(None, "https://h/") == "download"
    assert choose_filename(None, "https://h/", fallback="index.html") == "index.html"
    assert choose_filename('attachment; filename="/"', "https://h/..", fallback="..") == "download"


def test_choose_filename_is_sanitised() -> None:
    cd = "attachment; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd"
    assert choose_filename(cd, "https://h/x") == "passwd"
    assert choose_filename(None, "https://h/CON.txt") == "_CON.txt"


@settings(deadline=None)
@given(st.one_of(st.none(), st.text()), st.text())
def test_choose_filename_always_safe(cd: str | None, url: str) -> None:
    assert _is_safe_component(choose_filename(cd, url))


# --------------------------------------------------------------------------------------------
# parse_size
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("1K", 1024),
        ("1k", 1024),
        ("1M", 1048576),
        ("1m", 1048576),
        ("1G", 1073741824),
        ("1KiB", 1024),
        ("1kib", 1024),
        ("1MiB", 1048576),
        ("2GiB", 2 * 1073741824),
        ("1.5M", 1572864),
        ("1.5K", 1536),
        ("0.1K", 102),  # 102.4 rounded down
        ("1.", 1),
        (" 20M ", 20 * 1048576),
        ("1 M", 1048576),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "-1",
        "-1M",
        "M",
        "1X",
        "1T",
        "1KB",
        "1.5.5M",
        ".5M",
        "1e6",
        "1_000",
        "١",
        "1M1",
        "9" * 30,
    ],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_parse_size_message_quotes_the_input() -> None:
    with pytest.raises(ValueError, match=r"^invalid size '12Q'"):
        parse_size("12Q")


@given(st.integers(min_value=0, max_value=2**40))
def test_parse_size_megabytes(n: int) -> None:
    assert parse_size(f"{n}M") == n * 1048576


# --------------------------------------------------------------------------------------------
# parse_checksum
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "algorithm"),
    [
        ("md5", "md5"),
        ("sha-1", "sha1"),
        ("sha-224", "sha224"),
        ("sha-256", "sha256"),
        ("sha-384", "sha384"),
        ("sha-512", "sha512"),
        ("sha256", "sha256"),
        ("sha1", "sha1"),
        ("SHA-256", "sha256"),
    ],
)
def test_parse_checksum(kind: str, algorithm: str) -> None:
    digest = hashlib.new(algorithm, b"segdl").hexdigest()
    expected = Checksum(algorithm=algorithm, hexdigest=digest)
    assert parse_checksum(f"{kind}={digest}") == expected
    assert parse_checksum(f" {kind}={digest.upper()} ") == expected
    assert expected.algorithm in hashlib.algorithms_available


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected TYPE=HEXDIGEST"),
        ("d41d8cd98f00b204e9800998ecf8427e", "expected TYPE=HEXDIGEST"),
        ("sha-3=" + "0" * 64, "unsupported checksum type"),
        ("crc32=00000000", "unsupported checksum type"),
        ("=abc", "unsupported checksum type"),
        ("md5=" + "g" * 32, "must be hexadecimal"),
        ("md5=", "must be hexadecimal"),
        ("sha-256=0x" + "0" * 62, "must be hexadecimal"),
        ("sha-256=" + "0" * 63, "64 hex digits, not 63"),
        ("sha-1=" + "0" * 64, "40 hex digits, not 64"),
    ],
)
def test_parse_checksum_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_checksum(text)
    assert "\n" not in str(info.value)
