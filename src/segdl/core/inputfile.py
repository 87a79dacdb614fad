"""aria2c's input-file format (``-i FILE``), parsed and formatted without any I/O.

The format, as aria2c reads it (manual, "Input File")::

    https://mirror-a/model.safetensors<TAB>https://mirror-b/model.safetensors
      dir=models/Stable-diffusion
      out=model.safetensors
      checksum=sha-256=0123…
    # a comment
    hf://owner/repo/lora.safetensors
      max-download-limit=2M

* A line that does not start with white space is a URI line: one file, named by one or more
  URLs separated by TABs (mirrors of the same bytes).
* The lines after it that start with white space are ``name=value`` options of that file.
* Blank lines and lines whose first non-blank character is ``#`` are skipped.

segdl understands the options it can honour and refuses every other one by name, so that an
input file written for aria2c never silently loses a setting.  URLs are checked for their
scheme only (http, https, and the site short forms ``hf://`` and ``urn:air:``); whether the
rest makes sense is the downloader's business.

Pure: text in, entries out.  Every error is an :class:`InputFileError` naming ``FILE:LINE``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Final

from .checksum import Checksum, parse_checksum
from .sizes import parse_size

__all__ = [
    "OPTION_NAMES",
    "InputEntry",
    "InputFileError",
    "format_checksum",
    "format_input_file",
    "parse_input_file",
    "url_scheme_problem",
]

#: The options an input-file entry may carry, in the order :func:`format_input_file` writes them.
OPTION_NAMES: Final = (
    "dir",
    "out",
    "checksum",
    "max-download-limit",
    "split",
    "max-connection-per-server",
)
# aria2's own bound for -x (OptionHandlerFactory.cc: NumberOptionHandler(…, 1, 16, 'x')).
MAX_CONNECTIONS: Final = 16
# Longer numbers are not option values but garbage; refusing them keeps int() cheap.
_MAX_DIGITS: Final = 19
_DIGITS = re.compile(r"[0-9]+")
# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_WHITESPACE: Final = " \t"


class InputFileError(ValueError):
    """A line of an input file is malformed.  ``str()`` is one line: ``FILE:LINE: reason``."""

    def __init__(self, filename: str, line: int, reason: str) -> None:
        super().__init__(f"{filename}:{line}: {reason}")
        self.filename = filename
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class InputEntry:
    """One file of an input file: its URLs (mirrors) and its options (``None``: not given).

    ``max_download_limit`` is in bytes per second, ``0`` meaning "no limit" (as in aria2).
    ``line`` is where the entry's URI line is, for messages; it takes no part in equality.
    """

    urls: tuple[str, ...]
    directory: str | None = None
    out: str | None = None
    checksum: Checksum | None = None
    max_download_limit: int | None = None
    split: int | None = None
    connections: int | None = None
    line: int = field(default=0, compare=False)


def _shown(text: str, limit: int = 60) -> str:
    if len(text) > limit:
        return repr(text[:limit]) + "…"
    return repr(text)


def url_scheme_problem(url: str) -> str | None:
    """Why *url* cannot be downloaded judging by its scheme alone, or ``None`` if it may be.

    Accepted: ``http://``, ``https://``, ``hf://`` (Hugging Face short form) and CivitAI's
    ``urn:air:…`` identifiers.
    """
    match = _SCHEME.match(url)
    if match is None:
        return f"not a URL: {_shown(url)} (expected http://, https://, hf:// or urn:air:)"
    scheme = match.group(1).lower()
    if scheme in ("http", "https", "hf"):
        return None
    if scheme == "urn" and url[4:8].lower() == "air:":
        return None
    return f"unsupported URL scheme {_shown(match.group(1))}: only http, https, hf and urn:air"


def _number(name: str, value: str, low: int, high: int | None) -> int:
    if not _DIGITS.fullmatch(value) or len(value) > _MAX_DIGITS:
        raise ValueError(f"invalid {name} {_shown(value)}: expected a whole number")
    number = int(value)
    if number < low or (high is not None and number > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"invalid {name} {value}: must be {bounds}")
    return number


def _with_option(entry: InputEntry, name: str, value: str) -> InputEntry:
    """*entry* with option *name* set from its text; ValueError with a one-line reason."""
    if name == "dir":
        return replace(entry, directory=value)
    if name == "out":
        return replace(entry, out=value)
    if name == "checksum":
        return replace(entry, checksum=parse_checksum(value))
    if name == "max-download-limit":
        try:
            limit = parse_size(value)
        except ValueError as exc:
            raise ValueError(f"max-download-limit: {exc}") from None
        return replace(entry, max_download_limit=limit)
    if name == "split":
        return replace(entry, split=_number(name, value, 1, None))
    if name == "max-connection-per-server":
        return replace(entry, connections=_number(name, value, 1, MAX_CONNECTIONS))
    supported = ", ".join(OPTION_NAMES)
    raise ValueError(f"unsupported option {_shown(name)} (supported: {supported})")


def parse_input_file(text: str, *, filename: str = "<input>") -> list[InputEntry]:
    """Parse an aria2c input file.

    Lines end at ``\\n`` (a ``\\r`` before it is dropped), so line numbers are an editor's.

    Raises:
        InputFileError: the first malformed line — an option line before any URI line, an
            option without ``=`` or with an empty value, an unknown or repeated option, a bad
            checksum or number, a URL with an unsupported scheme.
    """
    entries: list[InputEntry] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            if line[0] in _WHITESPACE:
                if not entries:
                    raise ValueError(f"option line {_shown(stripped)} comes before any URL line")
                name, sep, value = stripped.partition("=")
                name, value = name.strip(), value.strip()
                if not sep:
                    raise ValueError(f"option line {_shown(stripped)} is not name=value")
                if name in seen:
                    raise ValueError(f"option {name!r} is given twice for the same file")
                if not value and name in OPTION_NAMES:
                    raise ValueError(f"option {name!r} has an empty value")
                entries[-1] = _with_option(entries[-1], name, value)
                seen.add(name)
            else:
                entries.append(InputEntry(urls=_uri_line(line), line=number))
                seen.clear()
        except ValueError as exc:
            raise InputFileError(filename, number, str(exc)) from None
    return entries


def _uri_line(line: str) -> tuple[str, ...]:
    urls = tuple(url.strip() for url in line.split("\t") if url.strip())
    for url in urls:
        problem = url_scheme_problem(url)
        if problem is not None:
            raise ValueError(problem)
    return urls


def format_checksum(checksum: Checksum) -> str:
    """``TYPE=HEX`` as aria2 spells it (``sha-256=…``), the inverse of ``parse_checksum``."""
    algorithm = checksum.algorithm
    if algorithm.startswith("sha") and not algorithm.startswith("sha-"):
        algorithm = "sha-" + algorithm[3:]
    return f"{algorithm}={checksum.hexdigest}"


def _representable(what: str, value: str) -> None:
    if not value or value != value.strip() or any(c in value for c in "\t\r\n"):
        raise ValueError(
            f"{what} {_shown(value)} cannot be written to an input file "
            "(empty, surrounding white space, or a TAB or line break inside)"
        )


def format_input_file(entries: Iterable[InputEntry]) -> str:
    """Write *entries* in the input-file format; :func:`parse_input_file` reads them back.

    Raises:
        ValueError: an entry cannot be represented (no URL, a URL or value with a TAB, a line
            break or surrounding white space, a URL that would not parse back).
    """
    lines: list[str] = []
    for entry in entries:
        if not entry.urls:
            raise ValueError("an input-file entry needs at least one URL")
        for url in entry.urls:
            _representable("URL", url)
            if url.startswith("#"):
                raise ValueError(f"URL {_shown(url)} would read as a comment")
            problem = url_scheme_problem(url)
            if problem is not None:
                raise ValueError(problem)
        lines.append("\t".join(entry.urls))
        values: dict[str, object] = {
            "dir": entry.directory,
            "out": entry.out,
            "checksum": format_checksum(entry.checksum) if entry.checksum else None,
            "max-download-limit": entry.max_download_limit,
            "split": entry.split,
            "max-connection-per-server": entry.connections,
        }
        for name in OPTION_NAMES:
            value = values[name]
            if value is None:
                continue
            text = str(value)
            _representable(f"option {name}", text)
            lines.append(f"  {name}={text}")
    return "".join(line + "\n" for line in lines)
