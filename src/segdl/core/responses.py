"""What a data connection's response must say before one byte of its body is written.

A range request (RFC 9110 §14.2) is answered by ``206`` with a ``Content-Range`` naming
exactly the bytes asked for, a ``Content-Length`` of that many bytes, and the validators of
the version the download began with (§8.8: the ETag, else Last-Modified); a whole-file
stream by ``200``.  Anything else is refused before the body touches the file: a server that
ignores ``Range`` (200), sends other bytes, or now serves another version would make a wrong
file.  These rules hold on every response, the first one (the probe) included.

Pure: the response head is data, parsed by the I/O layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadResponse, RemoteChanged, status_error
from .headers import ContentRange, HeaderError, parse_content_range, parse_retry_after

__all__ = [
    "Expected",
    "FirstAnswer",
    "ResponseHead",
    "check_first_response",
    "check_probe_status",
    "check_range_response",
    "check_stream_response",
]


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    content_length: int | None
    content_range: ContentRange | None
    chunked: bool
    keep_alive: bool

    @property
    def etag(self) -> str | None:
        return self.headers.get("etag")

    @property
    def last_modified(self) -> str | None:
        return self.headers.get("last-modified")


@dataclass(frozen=True, slots=True)
class Expected:
    """The version of the file a download is fetching, and where from (for messages)."""

    url: str
    host: str  # as shown in messages (the Host header's form)
    size: int | None
    etag: str | None = None
    last_modified: str | None = None


def _check_version(expected: Expected, head: ResponseHead) -> None:
    host, url = expected.host, expected.url
    etag = head.etag
    if expected.etag and etag and etag.removeprefix("W/") != expected.etag.removeprefix("W/"):
        raise RemoteChanged(f"the file on {host} changed during the download (new ETag)", url=url)
    modified = head.last_modified
    # Without ETags on both sides, Last-Modified names the version (RFC 9110 §8.8.2).
    if (
        not (expected.etag and etag)
        and expected.last_modified
        and modified
        and modified != expected.last_modified
    ):
        raise RemoteChanged(
            f"the file on {host} changed during the download (new Last-Modified)", url=url
        )


def check_range_response(expected: Expected, head: ResponseHead, first: int, last: int) -> None:
    """Refuse a response to ``Range: bytes=first-last`` that is not exactly those bytes of
    the expected version.

    Raises:
        RemoteChanged: another version (ETag, Last-Modified or complete length differ).
        BadResponse: not a 206, or a 206 whose Content-Range/Content-Length do not match.
    """
    _check_version(expected, head)
    host, url = expected.host, expected.url
    if head.status != 206:
        raise BadResponse(
            f"{host} answered a range request with HTTP {head.status} instead of 206", url=url
        )
    rng = head.content_range
    if rng is None:
        raise BadResponse(f"{host} sent 206 without Content-Range", url=url)
    if rng.complete_length is not None and rng.complete_length != expected.size:
        raise RemoteChanged(
            f"the file on {host} changed size ({rng.complete_length} bytes, expected "
            f"{expected.size})",
            url=url,
        )
    if (rng.first, rng.last) != (first, last):
        raise BadResponse(
            f"{host} sent bytes {rng.first}-{rng.last} for a request of {first}-{last}", url=url
        )
    if head.content_length is None:
        # A body that ends when the server closes cannot show where the range's bytes are in
        # it: refuse it rather than trust the first bytes that come.
        raise BadResponse(f"{host} sent 206 without Content-Length", url=url)
    if head.content_length != last - first + 1:
        raise BadResponse(
            f"{host} sent Content-Length {head.content_length} for {last - first + 1} bytes",
            url=url,
        )


def check_stream_response(expected: Expected, head: ResponseHead) -> None:
    """Refuse a whole-file response that is not a 200 of the expected size.

    Raises:
        BadResponse: not a 200.
        RemoteChanged: a Content-Length other than the expected size.
    """
    if head.status != 200:
        raise BadResponse(f"expected HTTP 200, got {head.status}", url=expected.url)
    size = expected.size
    if size is not None and head.content_length is not None and head.content_length != size:
        raise RemoteChanged("the file changed size since it was probed", url=expected.url)


@dataclass(frozen=True, slots=True)
class FirstAnswer:
    """What a download's first response says of the file, and of its own body.

    ``size`` and ``accepts_ranges`` as a probe learns them; the body holds the file's bytes
    ``[body_first, body_end)`` (``body_end`` None: up to the end of the file, whose size is
    not known) when ``body_usable``.
    """

    size: int | None
    accepts_ranges: bool
    body_first: int
    body_end: int | None
    body_usable: bool


def check_probe_status(
    status: int,
    reason: str,
    *,
    content_range: str | None,
    retry_after: str | None,
    url: str,
    host: str,
    now: float,
) -> bool:
    """What a probe's status says, read the same by both probes (the data plane's first
    request and the control plane's): True when the file is empty.

    Raises:
        HTTPStatusError: an error status (416 only when the file is not empty).
        BadResponse: anything but 200 and 206.
    """
    # An empty file cannot satisfy any range: 416 with "bytes */0" (RFC 9110 §15.5.17).
    if status == 416 and (content_range or "").replace(" ", "").lower() == "bytes*/0":
        return True
    if status >= 400:
        raise status_error(
            status,
            reason,
            url=url,
            retry_after=parse_retry_after(retry_after, now=now) if retry_after else None,
        )
    if status not in (200, 206):
        raise BadResponse(f"unexpected HTTP {status} from {host}", url=url)
    return False


def check_first_response(
    head: ResponseHead, *, first: int, last: int, url: str, host: str, now: float
) -> FirstAnswer:
    """Read the answer to a download's first request, ``Range: bytes=first-last``, which is
    also its probe: the file's size and whether ranges work, as the control plane's probe
    reads them, and whether its body can be written into the file.

    A ``206`` is held to :func:`check_range_response` for the range it must hold (the bytes
    asked for, cut at the end of the file); a ``200`` is the whole file, without ranges.

    Raises:
        HTTPStatusError: an error status (416 only when the file is not empty).
        BadResponse: any other status, or a 206 that is not the bytes asked for.
    """
    status = head.status
    empty = check_probe_status(
        status,
        head.reason,
        content_range=head.headers.get("content-range"),
        retry_after=head.headers.get("retry-after"),
        url=url,
        host=host,
        now=now,
    )
    if empty:
        return FirstAnswer(0, False, 0, 0, False)
    if status == 200:
        encoded = head.headers.get("content-encoding", "identity").lower() not in ("", "identity")
        size = None if encoded else head.content_length
        if "content-range" in head.headers and not _whole(head.headers["content-range"], size):
            # A 200 is the whole file, yet this one says it holds a part of it: its body is
            # written as the file, so such a contradiction is refused (the separate probe
            # of old caught it when the next request disagreed on the size).
            raise BadResponse(
                f"{host} answered a range request with HTTP 200 and a partial Content-Range",
                url=url,
            )
        return FirstAnswer(size, False, 0, size, not encoded)
    rng = head.content_range
    if rng is None or rng.first != first:
        raise BadResponse(f"206 without a usable Content-Range from {host}", url=url)
    size = rng.complete_length
    if size is None:
        # Ranges without a known length cannot be split or resumed: one stream instead.
        return FirstAnswer(None, False, first, None, False)
    if rng.last > min(last, size - 1):
        raise BadResponse(
            f"{host} sent bytes {rng.first}-{rng.last} for a request of {first}-{last}", url=url
        )
    # Fewer bytes than asked for are still those bytes (the old probe asked for one).
    check_range_response(
        Expected(url=url, host=host, size=size, etag=head.etag, last_modified=head.last_modified),
        head,
        first,
        rng.last,
    )
    return FirstAnswer(size, True, first, rng.last + 1, True)


def _whole(content_range: str, size: int | None) -> bool:
    """Whether a Content-Range names every byte of a body of *size* bytes."""
    try:
        rng = parse_content_range(content_range)
    except HeaderError:
        return False
    return size is not None and (rng.first, rng.last + 1, rng.complete_length) == (0, size, size)
