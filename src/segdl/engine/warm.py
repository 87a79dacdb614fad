"""A download begun before its target is opened: the first response, and connections opened
ahead, for the native engine to adopt.

Today's order — probe, open the target, then connect — pays a connection and a round trip
for the probe and another handshake for every data connection before the file's bytes move.
Here, from the start (:class:`~.early.EarlyStart`, in threads):

* the first data connection sends the download's first request, which is also its probe
  (:mod:`segdl.io.firstrequest`): its head gives the size, the validators and the name, and
  its body waits in the socket until the engine writes it;
* the other connections open (TCP and TLS) in parallel, so they ask for their ranges the
  moment the size is known.  They share a TLS session cache with the first one: connections
  opened later (after a steal, a lost race, a server's close) resume the session.

``segdl get`` may have begun all this before trio was imported (:func:`.early.begin_head_start`):
it is taken over here when it is the same beginning.  A busy answer (429, 5xx) to the first
request is retried as the probe's is; the connections opened ahead follow the first request
to the host it ends on (a redirect to another origin opens them there instead).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Mapping, Sequence

import trio

from ..core.urls import HttpURL
from ..errors import HTTPStatusError
from ..io.dataplane import Endpoint, TLSSessions
from ..io.firstrequest import FirstResponse
from ..io.remote import same_origin
from .connections import ConnectionFactory, ConnectionLike
from .early import EarlyKey, EarlyStart, Preconnects, take_head_start
from .options import Options

__all__ = ["WarmStart", "start_warm"]

# How often an unanswered first request is looked at (to hedge it).
HEDGE_CHECK = 0.05


class WarmStart:
    """What :func:`start_warm` began: the probe, the first response's unread body, and the
    connections opened ahead.  The engine takes them; :meth:`close` closes what is left."""

    def __init__(
        self,
        first: FirstResponse,
        conn: ConnectionLike,
        preconnects: Preconnects | None,
        sessions: TLSSessions | None,
    ) -> None:
        self.probe = first.probe
        self._first: tuple[FirstResponse, ConnectionLike] | None = (first, conn)
        self.preconnects = preconnects
        self.sessions = sessions  # the TLS sessions of the probe's host

    def take_first(self) -> tuple[FirstResponse, ConnectionLike] | None:
        """The first response and its connection (once; None after)."""
        first, self._first = self._first, None
        return first

    async def take_connection(self) -> ConnectionLike | None:
        """A connection opened ahead, once its handshake is over (None: none left)."""
        slot = self.preconnects.pop() if self.preconnects is not None else None
        if slot is None:
            return None
        try:
            await trio.to_thread.run_sync(slot.ready.wait, abandon_on_cancel=True)
        except BaseException:
            slot.cancel()
            raise
        return slot.conn

    def close(self) -> None:
        taken = self.take_first()
        if taken is not None:
            taken[1].close()
        if self.preconnects is not None:
            self.preconnects.close()


async def start_warm(
    url: HttpURL,
    headers: Mapping[str, str],
    options: Options,
    *,
    connect: ConnectionFactory,
    ranges: Sequence[tuple[int, int]],
    ahead: int,
) -> WarmStart:
    """Send a download's first request (bytes ``ranges[0]`` of *url*) while *ahead* more
    connections open to its host and ask for the other *ranges* — or take over the head
    start that already did.

    Raises:
        DownloadError: as the probe raises it (a busy answer is retried first).
        NotForTheDataPlane: a URL the data plane cannot send (probe it with httpx).
    """
    key = EarlyKey.of(url, headers, options, ranges=ranges, ahead=ahead)
    early = take_head_start(key) or EarlyStart(
        url, headers, options, connect=connect, ranges=ranges, ahead=ahead
    )
    policy = options.retry
    try:
        for attempt in itertools.count(1):
            try:
                response, conn = await _outcome(early)
                break
            except HTTPStatusError as exc:
                # Busy or failing for a moment (429, 5xx): wait as the data connections do.
                busy = exc.status >= 500 or exc.status == 429
                if not busy or attempt >= policy.max_tries:
                    raise
                await trio.sleep(
                    policy.delay(attempt, retry_after=exc.retry_after, rand=random.random())
                )
                early.ask()
        final = Endpoint.from_url(response.probe.url)
        preconnects = early.preconnects
        if preconnects is not None and not same_origin(preconnects.endpoint.url, final.url):
            # Redirected to another host: the connections opened ahead are of no use there.
            preconnects.close()
            preconnects = early.preconnects = early.open_ahead(final)
    except BaseException:
        early.close()
        raise
    return WarmStart(response, conn, preconnects, early.tls_for(final)[1])


async def _outcome(early: EarlyStart) -> tuple[FirstResponse, ConnectionLike]:
    """Wait for the first request's answer, hedging it if it crawls; cancellation aborts
    it (the caller closes the early start)."""
    hedged = False
    while not await trio.to_thread.run_sync(
        early.answered.wait, None if hedged else HEDGE_CHECK, abandon_on_cancel=True
    ):
        hedged = early.hedge(time.monotonic())
    return early.answer()
