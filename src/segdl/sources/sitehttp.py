"""What the site resolvers share: recognising a site's URLs and talking to its web API.

Every request a resolver makes goes through :func:`open_response`, which is the one seam where
httpx's exceptions become segdl's (``raise … from exc``), and sends a non-browser
``User-Agent``: CivitAI answers a browser with a login page where it answers a program with a
JSON error (reference/sources.md §1.3), and a login page must never become a "model".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx

from ..core.useragent import USER_AGENT
from ..errors import BadResponse, redact_url
from ..io.probe import httpx_errors

__all__ = [
    "USER_AGENT",
    "as_dict",
    "as_int",
    "as_list",
    "as_str",
    "is_site_url",
    "open_response",
    "parse_json",
    "read_body",
    "site_path",
]

# Error pages and API answers are small; a "JSON" answer larger than this is not one.
MAX_BODY = 16 * 1024 * 1024


def _port(scheme: str, port: int | None) -> int:
    if port is not None:
        return port
    return 443 if scheme == "https" else 80


def _under_base(url: str, base: str) -> bool:
    """Is *url* on the configured *base* (same host and port, inside its path)?

    A base with an explicit port (a mirror, a test server) must match exactly; a base
    without one also accepts its subdomains (``www.``).
    """
    try:
        u, b = urlsplit(url), urlsplit(base)
        u_port, b_port = u.port, b.port
    except ValueError:
        return False
    host, base_host = (u.hostname or "").lower(), (b.hostname or "").lower()
    if not host or not base_host:
        return False
    if b_port is not None:
        if host != base_host or _port(u.scheme, u_port) != b_port:
            return False
    elif host != base_host and not host.endswith("." + base_host):
        return False
    prefix = b.path.rstrip("/")
    return not prefix or u.path == prefix or u.path.startswith(prefix + "/")


def is_site_url(url: str, base: str, public_hosts: Iterable[str]) -> bool:
    """Is *url* an http(s) URL on one of the site's public hosts or under its configured base?"""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme.lower() not in ("http", "https"):
        return False
    host = (parts.hostname or "").lower()
    return host in public_hosts or _under_base(url, base)


def site_path(url: str, base: str) -> str:
    """The path of *url* relative to the site root: a mirror's base path is removed."""
    path = urlsplit(url).path
    if _under_base(url, base):
        prefix = urlsplit(base).path.rstrip("/")
        path = path[len(prefix) :]
    return path or "/"


def _host(url: str) -> str:
    try:
        return urlsplit(url).netloc.rpartition("@")[2] or redact_url(url)
    except ValueError:
        return redact_url(url)


@asynccontextmanager
async def open_response(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    follow_redirects: bool = False,
) -> AsyncIterator[httpx.Response]:
    """Send one request and yield the streamed response (closed on exit).

    Redirects are not followed unless asked: resolvers read headers from the redirect itself
    (Hugging Face) or must not send a token to where it points (CivitAI).
    """
    request = client.build_request(
        method, url, headers={"User-Agent": USER_AGENT, **(headers or {})}, content=content
    )
    with httpx_errors(url):
        response = await client.send(request, stream=True, follow_redirects=follow_redirects)
    try:
        yield response
    finally:
        await response.aclose()


async def read_body(response: httpx.Response, *, limit: int = MAX_BODY) -> bytes:
    """Read a (small) response body; a body over *limit* is a :class:`BadResponse`."""
    url = str(response.url)
    chunks: list[bytes] = []
    total = 0
    with httpx_errors(url):
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > limit:
                raise BadResponse(
                    f"{_host(url)} sent more than {limit} bytes where a short answer was expected",
                    url=url,
                )
            chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes, *, url: str) -> object:
    try:
        parsed: object = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadResponse(f"{_host(url)} sent invalid JSON", url=url) from exc
    return parsed


# -- typed access to parsed JSON: an API that changes shape gives None, never a TypeError ----


def as_dict(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
