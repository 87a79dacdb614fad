"""The control plane: find out what a URL really serves, on httpx.

A probe is one ``GET`` with ``Range: bytes=0-0`` (not ``HEAD``: signed storage URLs are often
signed for GET only), following redirects by hand so credentials never travel to another
origin (RFC 9110 §15.4 leaves that to the client; httpx drops only ``Authorization``).
From the final answer it learns the size (``Content-Range`` of a 206, else
``Content-Length`` of a 200), whether ranges work, the validators and a filename.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx

from ..core.headers import (
    HeaderError,
    parse_content_length,
    parse_content_range,
    parse_retry_after,
)
from ..errors import (
    BadResponse,
    InvalidURL,
    NetworkError,
    Timeout,
    redact_url,
    status_error,
)

__all__ = [
    "ProbeResult",
    "check_url",
    "httpx_errors",
    "probe",
    "same_origin",
    "strip_credentials",
]

MAX_REDIRECTS = 20
# Headers that carry credentials; dropped when a redirect leaves the origin.
SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})


@dataclass(frozen=True, slots=True)
class ProbeResult:
    url: str  # final URL after redirects
    size: int | None
    accepts_ranges: bool
    etag: str | None = None
    last_modified: str | None = None
    content_disposition: str | None = None  # raw header; the name is chosen by the caller
    content_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # what the data plane must send


def check_url(url: str) -> str:
    """Reject what is not an http(s) URL with a host, with one clear line."""
    if len(url) > 16384:
        raise InvalidURL("URL is too long", url=None)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidURL(f"invalid URL: {redact_url(url)} ({exc})", url=url) from exc
    if parts.scheme.lower() not in ("http", "https"):
        scheme = parts.scheme or "none"
        raise InvalidURL(
            f"unsupported URL scheme {scheme!r} in {redact_url(url)}: only http and https",
            url=url,
        )
    if not parts.hostname:
        raise InvalidURL(f"URL has no host: {redact_url(url)}", url=url)
    if any(ord(c) < 0x21 for c in url):
        raise InvalidURL(f"URL contains spaces or control characters: {redact_url(url)}", url=url)
    return url


@contextmanager
def httpx_errors(url: str) -> Iterator[None]:
    """The one seam where httpx's exceptions become segdl's (probe and site APIs alike)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise Timeout(f"timed out talking to {_host(url)}", url=url) from exc
    except httpx.TooManyRedirects as exc:
        raise BadResponse(f"too many redirects from {redact_url(url)}", url=url) from exc
    except httpx.UnsupportedProtocol as exc:
        raise InvalidURL(f"unsupported URL: {redact_url(url)}", url=url) from exc
    except httpx.InvalidURL as exc:
        raise InvalidURL(f"invalid URL: {redact_url(url)}", url=url) from exc
    except httpx.TransportError as exc:
        raise NetworkError(f"cannot reach {_host(url)}: {_reason(exc)}", url=url) from exc


def same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def strip_credentials(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in SENSITIVE_HEADERS}


async def probe(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    now: float = 0.0,
) -> ProbeResult:
    """Probe *url*; the result's ``headers`` are safe to send to the final URL."""
    check_url(url)
    current = url
    sent = dict(headers or {})
    for _ in range(MAX_REDIRECTS + 1):
        request = client.build_request(
            "GET", current, headers={**sent, "Range": "bytes=0-0", "Accept-Encoding": "identity"}
        )
        with httpx_errors(current):
            response = await client.send(request, stream=True, follow_redirects=False)
        try:
            if response.is_redirect:
                location = response.headers.get("location")
                if not location:
                    raise BadResponse(
                        f"redirect without Location from {_host(current)}", url=current
                    )
                target = urljoin(current, location)
                check_url(target)
                if not same_origin(current, target):
                    sent = strip_credentials(sent)
                current = target
                continue
            return _result(response, current, sent, now=now)
        finally:
            await response.aclose()
    raise BadResponse(f"too many redirects (over {MAX_REDIRECTS}) from {redact_url(url)}", url=url)


def _result(
    response: httpx.Response, url: str, headers: dict[str, str], *, now: float
) -> ProbeResult:
    status = response.status_code
    h = response.headers
    # An empty file answers bytes=0-0 with 416 and "bytes */0".
    if status == 416 and h.get("content-range", "").replace(" ", "").lower() == "bytes*/0":
        return ProbeResult(url=url, size=0, accepts_ranges=False, headers=headers)
    if status >= 400:
        retry = h.get("retry-after")
        raise status_error(
            status,
            response.reason_phrase,
            url=url,
            retry_after=parse_retry_after(retry, now=now) if retry else None,
        )
    if status not in (200, 206):
        raise BadResponse(f"unexpected HTTP {status} from {_host(url)}", url=url)
    size: int | None
    try:
        if status == 206:
            rng = parse_content_range(h["content-range"]) if "content-range" in h else None
            if rng is None or rng.first != 0:
                raise BadResponse(f"206 without a usable Content-Range from {_host(url)}", url=url)
            size = rng.complete_length
            accepts = size is not None
        else:
            encoded = h.get("content-encoding", "identity").lower() not in ("", "identity")
            size = None if encoded else parse_content_length(h.get_list("content-length"))
            accepts = False
    except HeaderError as exc:
        raise BadResponse(f"invalid header from {_host(url)}: {exc}", url=url) from exc
    return ProbeResult(
        url=url,
        size=size,
        accepts_ranges=accepts,
        etag=h.get("etag"),
        last_modified=h.get("last-modified"),
        content_disposition=h.get("content-disposition"),
        content_type=h.get("content-type"),
        headers=headers,
    )


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or redact_url(url)


def _reason(exc: Exception) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"TLS certificate not trusted ({cause.verify_message}); "
                "use --ca-certificate or SSL_CERT_FILE"
            )
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__
