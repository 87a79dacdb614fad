"""The control plane: find out what a URL really serves, on httpx.

A probe is one ``GET`` with ``Range: bytes=0-0`` (not ``HEAD``: signed storage URLs are often
signed for GET only), following redirects by hand so credentials never travel to another
origin (RFC 9110 §15.4 leaves that to the client; httpx drops only ``Authorization``).
From the final answer it learns the size (``Content-Range`` of a 206, else
``Content-Length`` of a 200), whether ranges work, the validators and a filename.

URLs come checked (:class:`~segdl.core.urls.HttpURL`), and so is every redirect's; the URL's
``user:password@`` becomes a Basic ``Authorization`` header, under the same rules as a
token's (:mod:`.remote` holds the rules, shared with a download's first request on a data
connection); and the result's URL is ASCII, as the data plane sends it.  httpx's own request log
shows segdl's URLs without their query (signed URLs and pasted tokens are credentials).
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from urllib.parse import urljoin, urlsplit

import httpx

from ..core.headers import (
    HeaderError,
    parse_content_length,
    parse_content_range,
)
from ..core.responses import check_probe_status
from ..core.urls import HttpURL
from ..errors import (
    BadResponse,
    InvalidURL,
    NetworkError,
    Timeout,
    redact_url,
)
from .remote import (
    MAX_REDIRECTS,
    SENSITIVE_HEADERS,
    ProbeResult,
    same_origin,
    strip_credentials,
    take_userinfo,
)

__all__ = [
    "MAX_REDIRECTS",
    "SENSITIVE_HEADERS",
    "ProbeResult",
    "httpx_errors",
    "probe",
    "same_origin",
    "strip_credentials",
]

# httpx logs every request's URL, query and all, at INFO ("HTTP Request: GET …"), and httpcore
# logs response heads at DEBUG (a redirect's Location among them).  The query of a signed
# storage URL is a credential, and so is a ``?token=`` a user pasted: while segdl talks
# through httpx (inside httpx_errors), those records show URLs as redact_url does.  A context
# variable scopes this to segdl's own requests; others using httpx keep their logs.
_REDACTING: ContextVar[bool] = ContextVar("segdl_redact_httpx_urls", default=False)
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_HTTP_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
)


class _RedactRequestURLs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not _REDACTING.get():
            return True
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                redact_url(str(arg)) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        elif isinstance(record.msg, str):
            record.msg = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), record.msg)
        return True


_FILTER = _RedactRequestURLs()
for _name in _HTTP_LOGGERS:
    # A filter on "httpcore" would not see its children's records: each logger has its own.
    logging.getLogger(_name).addFilter(_FILTER)


@contextmanager
def httpx_errors(url: str) -> Iterator[None]:
    """The one seam where httpx's exceptions become segdl's (probe and site APIs alike).

    Inside it, httpx's request log shows URLs without their query (see ``_REDACTING``).
    """
    redacting = _REDACTING.set(True)
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
    finally:
        _REDACTING.reset(redacting)


async def probe(
    client: httpx.AsyncClient,
    url: HttpURL,
    *,
    headers: Mapping[str, str] | None = None,
    now: float = 0.0,
) -> ProbeResult:
    """Probe *url*; the result's ``headers`` are safe to send to the final URL."""
    sent = dict(headers or {})
    current = _take_userinfo(url, sent)
    for _ in range(MAX_REDIRECTS + 1):
        with httpx_errors(current):
            request = client.build_request(
                "GET",
                current,
                headers={**sent, "Range": "bytes=0-0", "Accept-Encoding": "identity"},
            )
            response = await client.send(request, stream=True, follow_redirects=False)
        if not current.isascii():
            # The data plane sends the URL as it is, and a request line is ASCII: use the
            # form httpx sent (RFC 3986 §2.1 percent-encoding of the UTF-8 bytes).
            current = HttpURL.parse(str(request.url))
        try:
            if response.is_redirect:
                location = response.headers.get("location")
                if not location:
                    raise BadResponse(
                        f"redirect without Location from {_host(current)}", url=current
                    )
                target = urljoin(current, location)
                if not same_origin(current, target):
                    sent = strip_credentials(sent)
                current = _take_userinfo(HttpURL.parse(target), sent)
                continue
            return _result(response, current, sent, now=now)
        finally:
            await response.aclose()
    raise BadResponse(f"too many redirects (over {MAX_REDIRECTS}) from {redact_url(url)}", url=url)


# The name this module had for it; io/remote.py holds the rule now.
_take_userinfo = take_userinfo


def _result(
    response: httpx.Response, url: HttpURL, headers: dict[str, str], *, now: float
) -> ProbeResult:
    status = response.status_code
    h = response.headers
    empty = check_probe_status(
        status,
        response.reason_phrase,
        content_range=h.get("content-range"),
        retry_after=h.get("retry-after"),
        url=url,
        host=_host(url),
        now=now,
    )
    if empty:
        return ProbeResult(url=url, size=0, accepts_ranges=False, headers=headers)
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
