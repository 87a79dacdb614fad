"""What a URL serves (:class:`ProbeResult`), and the rules for following it to another URL.

Shared by the two ways segdl first asks a server about a file: the httpx probe of the
control plane (:mod:`.probe`) and a download's first request on a data connection
(:mod:`.firstrequest`).  Both follow redirects by hand under the same rules, so credentials
never travel to another origin (RFC 9110 §15.4 leaves that to the client; httpx drops only
``Authorization``), and a URL's ``user:password@`` becomes a Basic ``Authorization`` header
that follows the same rules as a token.

No httpx here: a download that needs no site API never loads it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from ..core.urls import HttpURL

__all__ = [
    "MAX_REDIRECTS",
    "SENSITIVE_HEADERS",
    "ProbeResult",
    "same_origin",
    "strip_credentials",
    "take_userinfo",
]

MAX_REDIRECTS = 20
# Headers that carry credentials; dropped when a redirect leaves the origin.
SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})


@dataclass(frozen=True, slots=True)
class ProbeResult:
    url: HttpURL  # final URL after redirects
    size: int | None
    accepts_ranges: bool
    etag: str | None = None
    last_modified: str | None = None
    content_disposition: str | None = None  # raw header; the name is chosen by the caller
    content_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # what the data plane must send


def same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def strip_credentials(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in SENSITIVE_HEADERS}


def take_userinfo(url: HttpURL, headers: dict[str, str]) -> HttpURL:
    """*url* without ``user:password@``, which becomes a Basic ``Authorization`` in *headers*.

    As a header the credentials follow the same rules as a token's: dropped when a redirect
    leaves the origin, sent by the data plane too; and the URL httpx logs has none.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    if not any(name.lower() == "authorization" for name in headers):
        # RFC 7617 §2: user-id ":" password, UTF-8 (the charset RFC 7617 §2.1 allows).
        pair = f"{unquote(user)}:{unquote(password)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return HttpURL(urlunsplit(parts._replace(netloc=host)))
