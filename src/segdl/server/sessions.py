"""Clients that outlive their connection: ids, ``reconnect``, and the wait for a lost client.

Every connection is a :class:`Session` with the id its ``hello`` announced.  qDiffusion, when
its connection drops without a closing handshake, connects again and sends
``{"type": "reconnect", "data": {"id": FIRST_ID}}`` naming the id of its *first* ``hello``,
whatever happened since (``source/remote.py``, ``RemoteInference.run``).  As in
sd-inference-server's ``server.py`` (``handle_connection``):

- a connection lost without a closing handshake keeps its session for a while
  (sd-inference-server waits 60 s): the downloads it asked for keep sending their replies to
  its outbox, its uploads stay open;
- ``reconnect`` moves that session's queued replies, and the ownership of its requests, to
  the new connection (the caller's *move* callback does it), which answers to the old id from
  then on too (so a second reconnect naming the first id finds it);
- a session whose client closed properly, or that nobody reconnected to in time, ends (the
  caller's *end* callback: subscriptions dropped, uploads aborted);
- an unknown id changes nothing.

Security: sd-inference-server lets any client take over any id.  Here ids are 31-bit values
from a keyed permutation (:mod:`segdl.core.clientids`), told only to their own client inside
the encrypted channel, and every client already knows the password; on top of that a
*live* connection is never taken over while it still answers a WebSocket ping within
``probe_timeout``.  One that does not (a half-open TCP connection the server has not noticed
yet is the usual reason qDiffusion reconnects) is closed and its session moved.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ..core.clientids import ClientIds
from .outbox import Outbox

__all__ = ["Peer", "Session", "Sessions"]

log = logging.getLogger("segdl.server")


class Peer(Protocol):
    """The live connection of a session, as far as reconnecting needs it."""

    async def answers_ping(self) -> bool:
        """Ping the client and wait for its pong; ``False`` if the connection is closed.
        The caller bounds the wait."""

    def drop(self) -> None:
        """End the connection now, without waiting for anything."""


@dataclass(eq=False)
class Session:
    id: int
    outbox: Outbox
    peer: Peer | None
    #: Its own id and the ids of the sessions it took over.
    names: set[int] = field(default_factory=set)
    ended: bool = False
    _waiting: trio.CancelScope | None = field(default=None, repr=False)

    @property
    def connected(self) -> bool:
        return self.peer is not None


class Sessions:
    """The sessions of one server: live ones and lost ones waiting for their client.

    *move(old, new)* hands *old*'s requests and queued replies to *new*; *end(session)* lets
    go of a session for good.  Both are called with the session already out of the registry.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        ids: ClientIds,
        *,
        move: Callable[[Session, Session], None],
        end: Callable[[Session], Awaitable[None]],
        grace: float = 60.0,
        probe_timeout: float = 5.0,
    ) -> None:
        if grace < 0 or probe_timeout <= 0:
            raise ValueError("grace must not be negative and probe_timeout must be positive")
        self._nursery = nursery
        self._ids = ids
        self._move = move
        self._end = end
        self.grace = grace
        self.probe_timeout = probe_timeout
        self._by_id: dict[int, Session] = {}

    def __len__(self) -> int:
        return len({id(s) for s in self._by_id.values()})

    def get(self, client_id: int) -> Session | None:
        return self._by_id.get(client_id)

    def open(self, outbox: Outbox, peer: Peer) -> Session:
        session = Session(next(self._ids), outbox, peer)
        session.names.add(session.id)
        self._by_id[session.id] = session
        return session

    async def closed(self, session: Session) -> None:
        """Its client said goodbye (a closing handshake): end it now."""
        if session.ended:
            return
        session.peer = None
        await self._finish(session)

    def lost(self, session: Session) -> None:
        """Its connection is gone without a goodbye: keep it for :attr:`grace` seconds."""
        if session.ended:
            return
        session.peer = None
        scope = trio.CancelScope()
        session._waiting = scope
        self._nursery.start_soon(self._wait_for_client, session, scope)

    async def _wait_for_client(self, session: Session, scope: trio.CancelScope) -> None:
        with scope:
            with trio.move_on_after(self.grace):
                # Replies pile up meanwhile; too many and they are lost anyway.
                await session.outbox.wait_overflow()
            log.info("client %d did not come back: forgetting it", session.id)
            await self._finish(session)

    async def _finish(self, session: Session) -> None:
        self._forget(session)
        with trio.CancelScope(shield=True):
            await self._end(session)

    def _forget(self, session: Session) -> None:
        session.ended = True
        for name in session.names:
            if self._by_id.get(name) is session:
                del self._by_id[name]

    async def reconnect(self, session: Session, old_id: int) -> bool:
        """Give *session* what the session known as *old_id* had.  ``False`` (and nothing
        changed) for an unknown id, *session* itself, or a live connection that answers."""
        old = self._by_id.get(old_id)
        if old is None or old is session or session.ended:
            return False
        peer = old.peer
        if peer is not None:
            alive = False
            with trio.move_on_after(self.probe_timeout):
                alive = await peer.answers_ping()
            if alive:
                log.warning(
                    "client %d asked for client %d's replies, which is still connected: refused",
                    session.id,
                    old.id,
                )
                return False
            # Checked again below: it may have gone (or been taken) while we waited.
        if old.ended or session.ended or self._by_id.get(old_id) is not old:
            return False
        if old.peer is not None:
            old.peer.drop()
            old.peer = None
        if old._waiting is not None:
            old._waiting.cancel()
        self._forget(old)
        session.names |= old.names
        for name in old.names:
            self._by_id[name] = session
        self._move(old, session)
        log.info("client %d is client %d again", session.id, old.id)
        return True
