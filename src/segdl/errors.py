"""The one exception tree users catch.

    DownloadError                     anything that stopped a download (exit 1)
    ├── InvalidURL                    not an http(s) URL we can fetch (exit 1)
    │   └── DestinationRefused        a destination the policy forbids: link-local, cloud
    │                                 metadata, internal addresses for a public server (exit 1)
    ├── NetworkError                  connect/read failed, reset, DNS (exit 6)
    │   ├── Timeout                   connect or idle timeout (exit 2)
    │   └── ProxyError                the proxy refused the tunnel or failed (exit 6)
    ├── HTTPStatusError               the server answered with an error status (exit 22)
    │   ├── NotFound                  404 / 410 (exit 3)
    │   ├── AuthError                 401 / 403 (exit 24)
    │   │   └── LinkExpired           a site's signed link expired and could not be renewed
    │   │   └── ProxyAuthError        the proxy wants (other) credentials: 407, SOCKS (exit 24)
    │   └── ServerBusy                503 / 429 after all retries (exit 29)
    ├── BadResponse                   malformed or inconsistent answer: wrong Content-Range,
    │   │                             short body, size disagreeing with the plan (exit 22)
    │   └── RemoteChanged             the server now serves another version of the file (new
    │                                 ETag, Last-Modified or size): the download restarts
    ├── ResumeError                   the partial file cannot be continued safely (exit 8)
    ├── FileExists                    the target exists and may not be replaced (exit 13)
    │   └── DuplicateModel            the same model (sha256) is already in another folder
    ├── DiskError                     could not create/write/allocate the file (exit 17)
    │   └── DiskFull                  ENOSPC, or not enough free space for the size (exit 9)
    └── ChecksumMismatch              the finished file has the wrong digest (exit 32)

Every exception carries ``exit_code`` (aria2c's table, see reference/anchors.md §1.11) and
``url`` when one is known.  Lower layers translate foreign exceptions (OSError, ssl, h11,
httpx) into this tree at one seam each, with ``raise … from exc``.  Messages never contain
credentials: URLs are passed through :func:`redact_url` before they are formatted.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "AuthError",
    "BadResponse",
    "ChecksumMismatch",
    "DestinationRefused",
    "DiskError",
    "DiskFull",
    "DownloadError",
    "DuplicateModel",
    "FileExists",
    "HTTPStatusError",
    "InvalidURL",
    "LinkExpired",
    "NetworkError",
    "NotFound",
    "ProxyAuthError",
    "ProxyError",
    "RemoteChanged",
    "ResumeError",
    "ServerBusy",
    "Timeout",
    "redact_url",
]


def redact_url(url: str) -> str:
    """Return *url* without userinfo and without its query string.

    Query strings of signed storage URLs (CivitAI's R2, S3) are credentials, so they never
    reach a message or a log.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<invalid URL>"
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


class DownloadError(Exception):
    """Base class of every error segdl raises for a failed download."""

    exit_code: int = 1

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Keep exceptions picklable/copyable despite the keyword-only argument.
        return (_rebuild, (type(self), self.message, self.url, self.__dict__))


def _rebuild(
    cls: type[DownloadError], message: str, url: str | None, state: dict[str, object]
) -> DownloadError:
    exc = cls.__new__(cls)
    DownloadError.__init__(exc, message, url=url)
    exc.__dict__.update(state)
    return exc


class InvalidURL(DownloadError):
    exit_code = 1


class DestinationRefused(InvalidURL):
    """The destination policy (``segdl serve``) forbids the address a URL leads to."""

    exit_code = 1


class NetworkError(DownloadError):
    exit_code = 6


class Timeout(NetworkError):
    exit_code = 2


class ProxyError(NetworkError):
    """The proxy failed: unreachable, refused the tunnel, or a SOCKS error.  The message names
    the proxy as ``scheme://host:port``, never with its credentials."""

    exit_code = 6


class HTTPStatusError(DownloadError):
    exit_code = 22

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int = 0,
        retry_after: float | None = None,
        body: str = "",
    ) -> None:
        super().__init__(message, url=url)
        self.status = status
        self.retry_after = retry_after
        # The start of a short error body, to tell causes apart (an expired signature);
        # never shown as it is.
        self.body = body


class NotFound(HTTPStatusError):
    exit_code = 3


class AuthError(HTTPStatusError):
    exit_code = 24


class ProxyAuthError(AuthError):
    """The proxy asks for credentials, or refused the ones in its URL (407, SOCKS auth)."""

    exit_code = 24


class ServerBusy(HTTPStatusError):
    exit_code = 29


class BadResponse(DownloadError):
    exit_code = 22


class RemoteChanged(BadResponse):
    """The server now serves a different version of the file (ETag, Last-Modified or size
    changed): the partial belongs to the old one.  The download flow restarts from a new probe
    rather than mix versions; raised to the user only when the file keeps changing."""


class LinkExpired(AuthError):
    """A signed download link a site handed out expired, and asking the site for a fresh one
    did not work; the partial file is kept (exit 24)."""


class ResumeError(DownloadError):
    exit_code = 8


class FileExists(DownloadError):
    exit_code = 13


class DuplicateModel(FileExists):
    """The model asked for is already under the models directory, in another folder: linked
    only when asked (``--link-existing``), never downloaded twice silently."""


class DiskError(DownloadError):
    exit_code = 17


class DiskFull(DiskError):
    exit_code = 9


class ChecksumMismatch(DownloadError):
    exit_code = 32


def status_error(
    status: int, reason: str, *, url: str, retry_after: float | None = None, body: str = ""
) -> HTTPStatusError:
    """Build the right :class:`HTTPStatusError` subclass for an error status."""
    where = redact_url(url)
    message = f"HTTP {status} {reason} from {where}".rstrip()
    cls: type[HTTPStatusError]
    if status in (404, 410):
        cls = NotFound
    elif status in (401, 403):
        cls = AuthError
        message += " (authentication failed or a token is required)"
    elif status in (429, 503, 509):
        # 509 "Bandwidth Limit Exceeded" (non-standard; MEGA's storage hosts send it).
        cls = ServerBusy
    else:
        cls = HTTPStatusError
    return cls(message, url=url, status=status, retry_after=retry_after, body=body)
