"""URLs segdl fetches: checked once, where they enter, then carried as :class:`HttpURL`.

A URL reaches segdl from a user (the command line, a library call, a server message, an input
file) or from a server (a redirect's Location, a site API's answer).  Either way it is checked
once, by :meth:`HttpURL.parse`, and from then on its type says so: functions that send
requests take an :class:`HttpURL`, never a bare string, so nothing checks a URL twice and
nothing forgets to.

Pure: stdlib only.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

from ..errors import InvalidURL, redact_url

__all__ = ["MAX_URL_LENGTH", "HttpURL", "display_url", "signed_until"]


class HttpURL(str):
    """An http(s) URL with a host that a request line can carry.  Use :meth:`parse`."""

    __slots__ = ()

    @classmethod
    def parse(cls, text: str) -> HttpURL:
        """Check *text* and return it as an :class:`HttpURL`.

        Raises:
            InvalidURL: one line saying what is wrong; never the URL's credentials.
        """
        if isinstance(text, HttpURL):
            return text
        _check(text)
        return cls(text)

    @property
    def scheme(self) -> str:
        return urlsplit(self).scheme.lower()

    @property
    def host(self) -> str:
        """The host name (lower case) or IP literal, without brackets."""
        return urlsplit(self).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self).port or (443 if self.scheme == "https" else 80)

    @property
    def target(self) -> str:
        """The request target in origin form (RFC 9112 §3.2.1): path and query."""
        parts = urlsplit(self)
        target = parts.path or "/"
        return f"{target}?{parts.query}" if parts.query else target


def signed_until(url: str) -> float | None:
    """When a presigned URL stops working (POSIX seconds), if its query says so: S3/R2's
    ``X-Amz-Date`` + ``X-Amz-Expires`` (SigV4), Google's ``X-Goog-Date`` + ``X-Goog-Expires``,
    or an ``Expires`` timestamp (CloudFront, S3 SigV2, GCS V2)."""
    try:
        query = dict(parse_qsl(urlsplit(url).query))
    except ValueError:
        return None
    for prefix in ("X-Amz-", "X-Goog-"):
        date, expires = query.get(prefix + "Date"), query.get(prefix + "Expires")
        if date and expires and expires.isdigit():
            try:
                signed = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            except ValueError:
                return None
            return signed.timestamp() + int(expires)
    expires = query.get("Expires")
    return float(expires) if expires and expires.isdigit() else None


def display_url(url: str) -> str:
    """*url* for a message: without credentials or query, cut to a readable length."""
    return _display(url)


def _check(url: str) -> None:
    """Reject what is not an http(s) URL with a host, with one clear line.

    Also refused, before anything is sent: characters no request line may carry (controls,
    DEL, spaces and Unicode line separators, which would also split the error message) and
    host names the resolver cannot encode (an empty or over-long label, RFC 1035 §2.3.4).
    Messages show the URL only as :func:`_display` does, never its credentials.
    """
    if len(url) > MAX_URL_LENGTH:
        raise InvalidURL(f"URL is too long ({len(url)} characters)", url=None)
    if any(_unsafe_char(c) for c in url):
        shown = "".join("?" if _unsafe_char(c) else c for c in _display(url))
        raise InvalidURL(f"URL contains spaces or control characters: {shown}", url=url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        # Not urlsplit's words: they quote the "port", which may be half a password
        # ("http://user:pa/ss@host/").
        what = "port" if "port" in str(exc).lower() else "address"
        raise InvalidURL(f"invalid URL: bad {what} in {_display(url)}", url=url) from exc
    if parts.scheme.lower() not in ("http", "https"):
        scheme = parts.scheme or "none"
        # Only the scheme: what follows an unknown one ("user:secret@host") is not known
        # to be a path.
        raise InvalidURL(
            f"unsupported URL scheme {scheme[:20]!r}: only http and https URLs", url=url
        )
    if not parts.hostname:
        raise InvalidURL(f"URL has no host: {_display(url)}", url=url)
    if not _valid_host(parts.hostname):
        raise InvalidURL(f"invalid host name in {_display(url)}", url=url)


def _display(url: str) -> str:
    """*url* for a message: :func:`redact_url`, or only its scheme when it has no host (then
    what follows may be credentials, as in ``http:user:secret@host``)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018
    except ValueError:
        return "<invalid URL>"
    if not parts.hostname:
        return f"{parts.scheme[:20] or '?'}:…"
    shown = redact_url(url)
    return shown if len(shown) <= _MAX_SHOWN else shown[: _MAX_SHOWN - 1] + "…"


_MAX_SHOWN = 200


MAX_URL_LENGTH = 16384
_MAX_HOST = 253  # RFC 1035 §2.3.4, without the trailing dot
_MAX_LABEL = 63
# Bidi embeddings, overrides and isolates: they make a URL (and a message) read differently
# from what it is.
_BIDI_CONTROLS = frozenset(
    chr(c) for c in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
)


def _unsafe_char(char: str) -> bool:
    if char.isascii():
        return char <= " " or char == "\x7f"  # C0 controls, space, DEL
    # Cc: C1 controls; Zs, Zl, Zp: every other space and the line/paragraph separators;
    # Cs: a lone surrogate, which no encoding (of a request line, or of a message) can carry.
    return char in _BIDI_CONTROLS or unicodedata.category(char) in _UNSAFE_CATEGORIES


_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zs", "Zl", "Zp"})


def _valid_host(host: str) -> bool:
    """Can the resolver encode *host*?  IP literals always; names label by label (IDNA)."""
    if ":" in host:  # an IPv6 literal (urlsplit dropped the brackets)
        return True
    try:
        encoded = host.encode("idna")
    except UnicodeError:
        return False
    labels = encoded.rstrip(b".").split(b".")
    return len(encoded) <= _MAX_HOST and all(0 < len(label) <= _MAX_LABEL for label in labels)
