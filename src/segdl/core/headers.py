"""Header values and user-supplied strings, parsed and formatted without any I/O.

Everything a download needs to read from or write into a header line lives here, so the
network layers only move bytes and every rule is tested on its own:

* ``Range`` / ``Content-Range`` — RFC 9110 §14.2 and §14.4; positions are *inclusive*.
* ``Content-Length`` — RFC 9110 §8.6, including the duplicated-value rule.
* ``Retry-After`` — RFC 9110 §10.2.3, delta-seconds or an HTTP-date (§5.6.7).
* ``Content-Disposition`` — RFC 6266, with RFC 8187 extended parameters (``filename*``), and
  the file name chosen from it or from the URL path (RFC 3986 §3.3), made safe to create.

Pure: stdlib only, no sockets, no clock (``now`` is passed in), no file system.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC
from urllib.parse import unquote, unquote_to_bytes, urlsplit

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PARTIAL_NAME_BYTES",
    "ContentRange",
    "HeaderError",
    "choose_filename",
    "filename_from_url",
    "format_open_range",
    "format_range",
    "parse_content_disposition_filename",
    "parse_content_length",
    "parse_content_range",
    "parse_retry_after",
    "sanitize_filename",
    "shown",
]


class HeaderError(ValueError):
    """A header value could not be parsed."""


def shown(text: str, limit: int = 80) -> str:
    """``repr`` of *text* for an error message, cut short so one bad value stays one line."""
    if len(text) > limit:
        return repr(text[:limit]) + "…"
    return repr(text)


# --------------------------------------------------------------------------------------------
# Range / Content-Range (RFC 9110 §14)
# --------------------------------------------------------------------------------------------

# 19 digits hold every 63-bit size; longer numbers are not lengths but attacks or garbage, and
# refusing them early keeps int() away from the str-to-int digit limit.
_MAX_DIGITS = 19

# RFC 9110 §14.4: Content-Range = range-unit SP range-resp; range-resp = incl-range "/"
# ( complete-length / "*" ).  Digits are spelled [0-9] because \d also matches non-ASCII
# digits, which int() would happily accept.  Optional whitespace around "-" and "/" is
# tolerated: it is unambiguous and some servers emit it.
_CONTENT_RANGE = re.compile(
    r"([A-Za-z]+)[ \t]+([0-9]+)[ \t]*-[ \t]*([0-9]+)[ \t]*/[ \t]*([0-9]+|\*)",
)
_UNSATISFIED_RANGE = re.compile(r"([A-Za-z]+)[ \t]+\*[ \t]*/[ \t]*[0-9]+")


@dataclass(frozen=True, slots=True)
class ContentRange:
    """The byte range a 206 response carries (RFC 9110 §14.4); positions are inclusive."""

    first: int
    last: int  # inclusive
    complete_length: int | None  # None for "*": the server does not know (or tell) the size

    def __post_init__(self) -> None:
        if self.first < 0 or self.last < self.first:
            raise ValueError(f"invalid byte range {self.first}-{self.last}")
        if self.complete_length is not None and self.last >= self.complete_length:
            raise ValueError(
                f"byte range {self.first}-{self.last} does not fit in {self.complete_length} bytes"
            )

    @property
    def length(self) -> int:
        """Number of bytes in the range."""
        return self.last - self.first + 1


def _bounded_int(digits: str, what: str, value: str) -> int:
    if len(digits) > _MAX_DIGITS:
        raise HeaderError(f"{what} has too many digits in {shown(value)}")
    return int(digits)


def parse_content_range(value: str) -> ContentRange:
    """Parse a ``Content-Range`` header of a 206 response.

    Args:
        value: the field value, e.g. ``"bytes 0-499/1234"`` or ``"bytes 0-499/*"``.

    Returns:
        The inclusive range and the complete length (``None`` for ``*``).

    Raises:
        HeaderError: the value is not a satisfied byte range, e.g. another unit, ``last`` before
            ``first``, ``last`` beyond the complete length, or the ``bytes */1234`` form (which
            belongs to a 416 answer, not to a body).
    """
    text = value.strip()
    match = _CONTENT_RANGE.fullmatch(text)
    if match is None:
        if _UNSATISFIED_RANGE.fullmatch(text):
            raise HeaderError(f"unsatisfied-range Content-Range {shown(value)} carries no body")
        raise HeaderError(f"malformed Content-Range {shown(value)}")
    unit, first_s, last_s, complete_s = match.groups()
    # RFC 9110 §14.1: range units are compared case-insensitively; only "bytes" is defined.
    if unit.lower() != "bytes":
        raise HeaderError(f"unsupported range unit in Content-Range {shown(value)}")
    first = _bounded_int(first_s, "first-pos", value)
    last = _bounded_int(last_s, "last-pos", value)
    complete = None if complete_s == "*" else _bounded_int(complete_s, "complete-length", value)
    # RFC 9110 §14.4: a last-pos before first-pos, or at/after complete-length, is invalid.
    if last < first:
        raise HeaderError(f"Content-Range ends before it starts: {shown(value)}")
    if complete is not None and last >= complete:
        raise HeaderError(f"Content-Range goes past the complete length: {shown(value)}")
    return ContentRange(first=first, last=last, complete_length=complete)


def format_range(first: int, last: int) -> str:
    """Format a ``Range`` request header value for one closed byte range.

    Args:
        first: position of the first byte wanted.
        last: position of the last byte wanted, *inclusive* (RFC 9110 §14.1.1).

    Returns:
        ``"bytes=first-last"``.

    Raises:
        ValueError: ``first`` is negative or ``last`` is before ``first``.
    """
    if first < 0 or last < first:
        raise ValueError(f"invalid byte range {first}-{last}")
    return f"bytes={first}-{last}"


def format_open_range(first: int) -> str:
    """Format a ``Range`` value from *first* to the end of the representation.

    Raises:
        ValueError: ``first`` is negative.
    """
    if first < 0:
        raise ValueError(f"invalid range start {first}")
    return f"bytes={first}-"


# --------------------------------------------------------------------------------------------
# Content-Length (RFC 9110 §8.6)
# --------------------------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")


def parse_content_length(values: list[str]) -> int | None:
    """Parse every ``Content-Length`` field line of a response.

    Args:
        values: the field values in order, one per field line (a line may itself be a
            comma-joined list such as ``"5, 5"``).

    Returns:
        The length, or ``None`` when the header is absent (``values`` is empty).

    Raises:
        HeaderError: a value is not a non-negative decimal number, or the values disagree.
    """
    if not values:
        return None
    lengths: set[int] = set()
    for line in values:
        # RFC 9110 §8.6: a recipient may accept "the same decimal value repeated" (as several
        # field lines or a list), but anything else means the framing cannot be trusted.
        # Empty list elements are ignored as §5.6.1 asks of list-based fields.
        for item in line.split(","):
            item = item.strip(" \t")
            if not item:
                continue
            if not _DIGITS.fullmatch(item):
                raise HeaderError(f"invalid Content-Length {shown(line)}")
            lengths.add(_bounded_int(item, "Content-Length", line))
    if not lengths:
        raise HeaderError(f"empty Content-Length {shown(', '.join(values))}")
    if len(lengths) > 1:
        raise HeaderError(f"conflicting Content-Length values {shown(', '.join(values))}")
    return lengths.pop()


# --------------------------------------------------------------------------------------------
# Retry-After (RFC 9110 §10.2.3)
# --------------------------------------------------------------------------------------------

# A server asking for more than an hour is better treated as "give up for now" by the retry
# policy than obeyed; capping also keeps absurd values from overflowing timers.
MAX_RETRY_AFTER = 3600.0


def parse_retry_after(value: str, *, now: float) -> float | None:
    """Seconds to wait before retrying, from a ``Retry-After`` header.

    Args:
        value: delta-seconds (``"120"``) or an HTTP-date (``"Fri, 31 Dec 1999 23:59:59 GMT"``).
        now: the current Unix time, passed in so this function needs no clock.

    Returns:
        The delay in seconds, between 0 and 3600 inclusive, or ``None`` when the value is
        neither form.
    """
    text = value.strip()
    if _DIGITS.fullmatch(text):
        # Anything past the cap is the cap; do not convert a thousand digits to get there.
        if len(text) > 6:
            return MAX_RETRY_AFTER
        return min(float(int(text)), MAX_RETRY_AFTER)
    # Imported here: email.utils costs a download's start-up ~10 ms, and dates are rare.
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # RFC 9110 §5.6.7: HTTP-dates are always UTC; "-0000" and asctime dates come back
        # naive, and .timestamp() would read them as local time.
        when = when.replace(tzinfo=UTC)
    try:
        delay = when.timestamp() - now
    except (OverflowError, ValueError):
        return None
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


# --------------------------------------------------------------------------------------------
# Content-Disposition (RFC 6266, RFC 8187)
# --------------------------------------------------------------------------------------------

# RFC 8187 §3.2.1: UTF-8 must be supported and ISO-8859-1 is the other charset seen in the
# wild (RFC 5987 had both).  The values are Python codec names.
_EXT_CHARSETS = {
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "iso-8859-1": "iso-8859-1",
    "iso8859-1": "iso-8859-1",
    "latin1": "iso-8859-1",
    "latin-1": "iso-8859-1",
}


def _disposition_params(value: str) -> list[tuple[str, str]]:
    """Split a Content-Disposition value into ``(lower-case name, value)`` pairs.

    Written as a small scanner rather than a regex because a quoted-string (RFC 9110 §5.6.4)
    may contain ";" and "=", and real servers send everything from perfect RFC 6266 to
    ``filename=my file.bin`` with no disposition type at all.
    """
    params: list[tuple[str, str]] = []
    n = len(value)
    i = 0
    while i < n:
        semi = value.find(";", i)
        equals = value.find("=", i)
        end = n if semi < 0 else semi
        if equals < 0 or equals > end:
            # No "=" in this element: the disposition type, or junk; neither names a file.
            i = end + 1
            continue
        # The last word before "=" is the name, which also copes with a missing ";" as in
        # "attachment filename=x".
        words = value[i:equals].split()
        name = words[-1].lower() if words else ""
        i = equals + 1
        while i < n and value[i] in " \t":
            i += 1
        if i < n and value[i] == '"':
            # quoted-string: a backslash escapes the next character (quoted-pair).  An
            # unterminated string runs to the end of the value.
            i += 1
            chars: list[str] = []
            while i < n:
                char = value[i]
                if char == "\\" and i + 1 < n:
                    chars.append(value[i + 1])
                    i += 2
                elif char == '"':
                    i += 1
                    break
                else:
                    chars.append(char)
                    i += 1
            param = "".join(chars)
            # Whatever follows the closing quote up to the next ";" is not part of the value.
            semi = value.find(";", i)
            i = n if semi < 0 else semi + 1
        else:
            # token, or the common sloppy form: an unquoted name with spaces, up to ";".
            semi = value.find(";", i)
            end = n if semi < 0 else semi
            param = value[i:end].strip(" \t")
            i = end + 1
        params.append((name, param))
    return params


def _decode_ext_value(value: str) -> str | None:
    """Decode an RFC 8187 ext-value ``charset'[language]'pct-encoded``, or ``None``."""
    parts = value.split("'", 2)
    if len(parts) != 3:
        return None
    charset, _language, encoded = parts
    codec = _EXT_CHARSETS.get(charset.strip().lower())
    if codec is None:
        return None
    try:
        # Stray raw characters (not percent-encoded, against the RFC) are read in the
        # declared charset too, so both spellings of a name decode alike.
        return unquote_to_bytes(encoded.strip().encode(codec)).decode(codec)
    except UnicodeError:
        return None


def _repair_mojibake(name: str) -> str:
    """Undo UTF-8 bytes that a lower layer decoded as ISO-8859-1.

    Header bytes outside ASCII are obs-text (RFC 9110 §5.5) and are commonly decoded as
    ISO-8859-1, yet servers put raw UTF-8 in ``filename="…"``.  When the text re-encodes to
    bytes that are valid UTF-8 and not plain ASCII, that is what the server meant (browsers
    make the same guess); a genuine ISO-8859-1 name almost never forms valid UTF-8.
    """
    try:
        raw = name.encode("iso-8859-1")
    except UnicodeEncodeError:
        return name  # already decoded beyond Latin-1: it was never mojibake
    if raw.isascii():
        return name
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return name


def parse_content_disposition_filename(value: str) -> str | None:
    """Extract the file name a ``Content-Disposition`` header suggests.

    ``filename*`` (RFC 8187, UTF-8 or ISO-8859-1) wins over ``filename`` as RFC 6266 §4.3
    asks; ``filename`` may be a token, a quoted-string with backslash escapes, or (sloppy but
    common) an unquoted name containing spaces.  Parameter names are case-insensitive, the
    first occurrence of each counts, and a missing disposition type is tolerated.

    Args:
        value: the field value, e.g. ``'attachment; filename="model.safetensors"'``.

    Returns:
        The raw name — *not* safe to use as a path, pass it through :func:`sanitize_filename`
        — or ``None`` when no usable name is present.  Raw UTF-8 in ``filename`` that was
        decoded as ISO-8859-1 is repaired; nothing else is changed.  Never raises.
    """
    if not isinstance(value, str):
        return None
    extended: str | None = None
    plain: str | None = None
    for name, param in _disposition_params(value):
        if name == "filename*" and extended is None:
            # An undecodable or empty filename* is ignored, falling back to filename
            # (RFC 6266 §4.3 expects senders to provide both for that reason).
            extended = _decode_ext_value(param) or None
        elif name == "filename" and plain is None:
            plain = param or None
    if extended is not None:
        return extended
    if plain is not None:
        return _repair_mojibake(plain)
    return None


def filename_from_url(url: str) -> str | None:
    """The last non-empty path segment of *url*, percent-decoded.

    The query and fragment are ignored; invalid UTF-8 after decoding becomes U+FFFD.

    Returns:
        The raw (unsanitised) segment, or ``None`` when the path has no segment or the URL
        cannot be split.
    """
    try:
        path = urlsplit(url).path
    except ValueError:  # e.g. an unbalanced "[" in the authority
        return None
    # Split before decoding: an encoded "%2F" belongs to the segment (RFC 3986 §2.2), and
    # sanitize_filename deals with it later.
    segments = [segment for segment in path.split("/") if segment]
    if not segments:
        return None
    return unquote(segments[-1], encoding="utf-8", errors="replace") or None


# --------------------------------------------------------------------------------------------
# Safe file names
# --------------------------------------------------------------------------------------------

# Most file systems limit a name to 255 bytes (ext4, btrfs) or 255 UTF-16 units (APFS, NTFS);
# 255 UTF-8 bytes satisfies both, since no character takes more UTF-16 units than UTF-8 bytes.
MAX_NAME_BYTES = 255
# A download is written under a partial name with its control file beside it, and that is
# replaced through a temporary file first (io/files.py): "NAME.part.aria2__temp", the longest.
MAX_PARTIAL_NAME_BYTES = MAX_NAME_BYTES - len(".part.aria2__temp")

# An extension longer than this is not worth keeping at the expense of the name itself.
_MAX_EXTENSION_BYTES = 32

# Removed: C0 controls, DEL and C1 controls (all of Unicode category Cc), plus the bidi
# embedding/override/isolate marks that make "evil\u202etxt.exe" display as "evilexe.txt".
_REMOVED = [
    *range(0x20),
    *range(0x7F, 0xA0),
    0x200E,
    0x200F,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
]
# Replaced by "_": characters Windows refuses in names (":" also separates macOS paths
# in Finder).
_TRANSLATION: dict[int, str | None] = dict.fromkeys(_REMOVED)
_TRANSLATION.update(dict.fromkeys(map(ord, '<>:"|?*'), "_"))
# Lone surrogates cannot be encoded for macOS or Windows names (nor as UTF-8 at all).
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SEPARATOR = re.compile(r"[/\\]")

# Windows device names, reserved with any extension ("con.txt") and in any case.  Besides the
# classic list, COM0/LPT0, the superscript-digit ports and the console names are reserved too.
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{port}{digit}" for port in ("COM", "LPT") for digit in "0123456789¹²³"]
)


def _is_windows_reserved(name: str) -> bool:
    # Windows ignores everything from the first dot, and trailing spaces before it.
    base = name.split(".", 1)[0].rstrip(" ")
    return base.upper() in _WINDOWS_RESERVED


def _truncate(name: str, limit: int) -> str:
    """Cut *name* to at most *limit* UTF-8 bytes, keeping a short extension whole."""
    encoded = name.encode("utf-8")
    if len(encoded) <= limit:
        return name
    dot = name.rfind(".")
    if dot > 0:
        extension = name[dot:]
        ext_bytes = len(extension.encode("utf-8"))
        if 1 < ext_bytes <= _MAX_EXTENSION_BYTES:
            stem = name[:dot].encode("utf-8")[: limit - ext_bytes]
            # "ignore" drops a character cut in half by the byte limit.
            return stem.decode("utf-8", "ignore") + extension
    # Without an extension the cut end is the end of the name, so it must not leave a
    # trailing space or dot (Windows strips those, making the name differ from what we wrote).
    return encoded[:limit].decode("utf-8", "ignore").rstrip(" .")


def _clean(name: str, max_bytes: int = MAX_NAME_BYTES) -> str | None:
    """Sanitise *name*, or return ``None`` when nothing usable remains."""
    # Only the last component: a server must never choose the directory ("../../etc/passwd").
    # Empty components ("dir/") are skipped so the name that is there is used.
    components = [part for part in _SEPARATOR.split(name) if part]
    if not components:
        return None
    cleaned = _SURROGATE.sub("_", components[-1].translate(_TRANSLATION))
    # Leading dots hide files (or form "." and ".."); Windows drops trailing spaces and dots.
    cleaned = cleaned.strip(" .")
    if not cleaned:
        return None
    cleaned = _truncate(cleaned, max_bytes)
    # Checked after truncation, which could otherwise expose a device name ("CON   …x").
    if _is_windows_reserved(cleaned):
        cleaned = _truncate("_" + cleaned, max_bytes)
    return cleaned or None


def sanitize_filename(
    name: str, *, fallback: str = "download", max_bytes: int = MAX_NAME_BYTES
) -> str:
    """Make *name* a single file name that is safe to create on Linux, macOS and Windows.

    Keeps only the part after the last ``/`` or ``\\``; removes control characters and bidi
    overrides; replaces ``<>:"|?*`` with ``_``; strips leading and trailing spaces and dots;
    prefixes Windows device names (``CON``, ``nul.txt``, ``COM1``…) with ``_``; and truncates
    to 255 UTF-8 bytes, keeping a short extension.  Idempotent.

    Args:
        name: an untrusted name, e.g. from a server.
        fallback: used when nothing of *name* survives; sanitised the same way, and replaced
            by ``"download"`` if nothing of it survives either.
        max_bytes: the longest name, in UTF-8 bytes.  A download's name needs room for its
            partial's suffixes (``NAME.part.aria2``, and the temporary ``NAME.part.aria2__temp``
            while it is replaced): :data:`MAX_PARTIAL_NAME_BYTES`.

    Returns:
        A non-empty name that is never ``.`` or ``..``.
    """
    # Room for a whole extension (up to _MAX_EXTENSION_BYTES) and some of the stem.
    if not 2 * _MAX_EXTENSION_BYTES <= max_bytes <= MAX_NAME_BYTES:
        raise ValueError(f"max_bytes must be between 64 and {MAX_NAME_BYTES}, not {max_bytes}")
    return _clean(name, max_bytes) or _clean(fallback, max_bytes) or "download"


def choose_filename(
    content_disposition: str | None,
    url: str,
    *,
    fallback: str = "download",
    max_bytes: int = MAX_NAME_BYTES,
) -> str:
    """Pick the local file name for a download, always sanitised.

    The ``Content-Disposition`` name is preferred (RFC 6266 §4.3), then the last segment of
    the URL path, then *fallback*; a candidate that sanitises to nothing (say ``".."``) is
    skipped in favour of the next.
    """
    candidates = (
        parse_content_disposition_filename(content_disposition) if content_disposition else None,
        filename_from_url(url),
    )
    for candidate in candidates:
        if candidate:
            cleaned = _clean(candidate, max_bytes)
            if cleaned:
                return cleaned
    return sanitize_filename(fallback, max_bytes=max_bytes)
