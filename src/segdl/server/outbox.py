"""A client's outgoing messages: bounded, and coalescing so a slow client never slows anything.

Downloads put their events here without ever waiting.  Progress messages carry a coalescing
key (one per download request), so a client that reads slowly gets the latest progress
instead of a backlog.  Messages that must not be lost (started, success, error, replies) take
a slot each; when a client lets ``limit`` of them pile up it is too slow to keep, and the
outbox closes itself so the connection can be dropped.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import trio

__all__ = ["Outbox"]

Message = dict[str, Any]


class Outbox:
    def __init__(self, *, limit: int = 256) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._items: OrderedDict[tuple[str, Hashable], Message] = OrderedDict()
        self._serial = itertools.count()
        self._changed = trio.Event()
        self._taken = trio.Event()
        self._overflow = trio.Event()
        self.closed = False
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: Message, *, coalesce: Hashable | None = None) -> None:
        """Queue *message*; with *coalesce*, replace a queued message of the same key in place.

        Never blocks.  On a closed outbox the message is dropped.
        """
        if self.closed:
            return
        if coalesce is not None and ("c", coalesce) in self._items:
            self._items[("c", coalesce)] = message
            return
        if len(self._items) >= self._limit:
            self.overflowed = True
            self._overflow.set()
            self.close()
            return
        key = ("c", coalesce) if coalesce is not None else ("s", next(self._serial))
        self._items[key] = message
        self._changed.set()

    def adopt(self, other: Outbox, *, keep: Callable[[Message], bool] = lambda _: True) -> int:
        """Move *other*'s queued messages (those *keep* accepts) behind ours, and close it.

        Used when a client reconnects: what its lost connection had not sent yet comes on the
        new one.  A coalescing message keeps its key, so later progress replaces it in place;
        where both outboxes hold the same key, ours is the newer and stays.  The moved
        messages were admitted once already, so they may exceed the limit (the connection
        then reads no requests until they are sent).  Returns how many were moved.
        """
        moved = 0
        for key, message in other._items.items():
            if not keep(message):
                continue
            if key[0] == "c":
                if key in self._items:
                    continue
            else:
                key = ("s", next(self._serial))
            if self.closed:
                break
            self._items[key] = message
            moved += 1
        other._items.clear()
        other.close()
        if moved:
            self._changed.set()
        return moved

    def close(self) -> None:
        """Accept no more messages; :meth:`get` returns ``None`` once the queue is drained
        (at once, if the outbox overflowed)."""
        self.closed = True
        if self.overflowed:
            self._items.clear()
        self._changed.set()

    async def wait_overflow(self) -> None:
        """Return once the client has let too many messages pile up."""
        await self._overflow.wait()

    async def get(self) -> Message | None:
        """The oldest message, waiting for one; ``None`` when closed and empty."""
        while not self._items:
            if self.closed:
                return None
            self._changed = trio.Event()
            await self._changed.wait()
        _, message = self._items.popitem(last=False)
        self._taken.set()
        return message

    async def wait_for_room(self) -> None:
        """Wait until at most half the limit is queued (or the outbox is closed): where a
        connection stops reading requests until its client has read the answers."""
        while len(self._items) > self._limit // 2 and not self.closed:
            self._taken = trio.Event()
            await self._taken.wait()
