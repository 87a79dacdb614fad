"""A download's first request, sent on a data connection: it is the probe, and its body is kept.

The control plane's probe (:mod:`.probe`) costs a connection and a round trip of its own
before any byte of the file moves.  Here the first data connection asks at once for the
bytes the download would fetch first (``Range: bytes=first-last``, one piece) and learns
from that answer's head what the probe would have: the size (``Content-Range``), whether
ranges work, the validators, a Content-Disposition name.  Its body is then written into the
file by the engine, from the connection as it stands.

Redirects are followed here under the probe's own rules (:mod:`.remote`): credentials are
dropped when a redirect leaves the origin, a URL's userinfo becomes Basic auth, every
``Location`` is checked as an :class:`~segdl.core.urls.HttpURL`.  Each hop gets a fresh
connection; a redirect's body is never read.

Blocking: runs in a worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import urljoin

from ..core.responses import FirstAnswer, ResponseHead, check_first_response
from ..core.urls import HttpURL
from ..errors import BadResponse, redact_url
from .dataplane import Endpoint
from .remote import MAX_REDIRECTS, ProbeResult, same_origin, strip_credentials, take_userinfo

__all__ = ["FirstResponse", "NotForTheDataPlane", "send_first_request"]


class NotForTheDataPlane(Exception):
    """A URL the data plane cannot send as it is (not ASCII: httpx encodes it, with IDNA for
    the host): the caller probes it on the control plane instead."""


class _Requester(Protocol):
    def request(
        self,
        *,
        headers: Mapping[str, str],
        first: int | None = None,
        last: int | None = None,
        method: str = "GET",
        any_status: bool = False,
    ) -> ResponseHead: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=_Requester)

# What httpx follows (its Response.is_redirect), so both probes follow the same answers.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class FirstResponse:
    """The answer to a first request: the probe it amounts to, and its unread body.

    ``conn`` holds the body, still in the socket; ``answer`` says which bytes of the file it
    is and whether it may be written.
    """

    probe: ProbeResult
    head: ResponseHead
    answer: FirstAnswer
    conn: _Requester


def send_first_request(
    url: HttpURL,
    headers: Mapping[str, str],
    *,
    first: int,
    last: int,
    open_connection: Callable[[Endpoint], C],
    on_hop: Callable[[C], None] = lambda conn: None,
) -> tuple[FirstResponse, C]:
    """Ask *url* for bytes ``first..last`` on a data connection, following redirects.

    *open_connection* gives a connection to an endpoint (it may be one opened ahead);
    *on_hop* is told each connection while its request is in flight (so that a cancelled
    download can abort it).  A server that cannot serve from *first* (a 416 when *first* is
    past the end of a file that shrank) is asked again from byte 0.

    Returns the first response and its connection, whose body is unread.

    Raises:
        DownloadError: an error status, a refused response (see
            :func:`~segdl.core.responses.check_first_response`), too many redirects, a
            network failure.
        NotForTheDataPlane: a URL (or a redirect's) that is not ASCII.
    """
    sent = dict(headers)
    current = take_userinfo(url, sent)
    for _ in range(MAX_REDIRECTS + 1):
        if not current.isascii():
            raise NotForTheDataPlane
        endpoint = Endpoint.from_url(current)
        conn = open_connection(endpoint)
        on_hop(conn)
        try:
            head = conn.request(headers=sent, first=first, last=last, any_status=True)
            if head.status == 416 and first > 0:
                first, last = 0, last - first
                head = conn.request(headers=sent, first=first, last=last, any_status=True)
            if head.status in REDIRECT_STATUSES:
                location = head.headers.get("location")
                if not location:
                    raise BadResponse(
                        f"redirect without Location from {endpoint.host_header}", url=current
                    )
                conn.close()
                target = HttpURL.parse(urljoin(current, location))
                if not same_origin(current, target):
                    sent = strip_credentials(sent)
                current = take_userinfo(target, sent)
                continue
            answer = check_first_response(
                head,
                first=first,
                last=last,
                url=current,
                host=endpoint.host_header,
                now=time.time(),
            )
        except BaseException:
            conn.close()
            raise
        probe = ProbeResult(
            url=current,
            size=answer.size,
            accepts_ranges=answer.accepts_ranges,
            etag=head.etag,
            last_modified=head.last_modified,
            content_disposition=head.headers.get("content-disposition"),
            content_type=head.headers.get("content-type"),
            headers=sent,
        )
        return FirstResponse(probe, head, answer, conn), conn
    raise BadResponse(f"too many redirects (over {MAX_REDIRECTS}) from {redact_url(url)}", url=url)
