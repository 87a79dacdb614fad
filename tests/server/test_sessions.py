"""Sessions (server/sessions.py), the outbox hand-over and the queue's transfer hook, unit by
unit.  Time is trio's autojump clock: the 60-second waits take no real time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from segdl.core.clientids import ClientIds
from segdl.core.events import Event, Success
from segdl.jobs.request import DownloadRequest
from segdl.server.downloads import DownloadQueue, Subscriber
from segdl.server.outbox import Outbox
from segdl.server.sessions import Session, Sessions


@dataclass(eq=False)
class FakePeer:
    alive: bool = False  # answers pings
    dropped: bool = False

    async def answers_ping(self) -> bool:
        if self.alive:
            return True
        await trio.sleep_forever()  # a half-open connection: the ping is never answered
        raise AssertionError("unreachable")

    def drop(self) -> None:
        self.dropped = True


@dataclass
class Log:
    moves: list[tuple[int, int]]
    ends: list[int]


@pytest.fixture
def log() -> Log:
    return Log([], [])


def make(nursery: trio.Nursery, log: Log, **kw: float) -> Sessions:
    async def end(session: Session) -> None:
        log.ends.append(session.id)

    def move(old: Session, new: Session) -> None:
        log.moves.append((old.id, new.id))

    return Sessions(nursery, ClientIds(b"0123456789abcdef"), move=move, end=end, **kw)


async def test_a_lost_client_that_reconnects_in_time_is_moved(
    autojump_clock: trio.abc.Clock, log: Log
) -> None:
    async with trio.open_nursery() as nursery:
        sessions = make(nursery, log, grace=60)
        old = sessions.open(Outbox(), FakePeer())
        sessions.lost(old)
        await trio.sleep(59)
        new = sessions.open(Outbox(), FakePeer())
        assert await sessions.reconnect(new, old.id)
        assert log.moves == [(old.id, new.id)]
        assert sessions.get(old.id) is new
        await trio.sleep(120)
        assert log.ends == []  # the wait was called off
        assert len(sessions) == 1


async def test_a_lost_client_that_does_not_come_back_ends_after_the_grace(
    autojump_clock: trio.abc.Clock, log: Log
) -> None:
    async with trio.open_nursery() as nursery:
        sessions = make(nursery, log, grace=60)
        old = sessions.open(Outbox(), FakePeer())
        sessions.lost(old)
        await trio.sleep(59.9)
        assert log.ends == []
        await trio.sleep(0.2)
        assert log.ends == [old.id]
        new = sessions.open(Outbox(), FakePeer())
        assert not await sessions.reconnect(new, old.id)
        assert log.moves == []


async def test_a_client_that_said_goodbye_ends_at_once(log: Log) -> None:
    async with trio.open_nursery() as nursery:
        sessions = make(nursery, log)
        old = sessions.open(Outbox(), FakePeer())
        await sessions.closed(old)
        assert log.ends == [old.id]
        new = sessions.open(Outbox(), FakePeer())
        assert not await sessions.reconnect(new, old.id)
        assert len(sessions) == 1


async def test_overflowing_replies_end_a_lost_session_early(
    autojump_clock: trio.abc.Clock, log: Log
) -> None:
    async with trio.open_nursery() as nursery:
        sessions = make(nursery, log, grace=60)
        outbox = Outbox(limit=2)
        old = sessions.open(outbox, FakePeer())
        sessions.lost(old)
        for n in range(3):
            outbox.put({"n": n})
        await trio.sleep(1)
        assert log.ends == [old.id]


async def test_unknown_and_own_ids_change_nothing(log: Log) -> None:
    async with trio.open_nursery() as nursery:
        sessions = make(nursery, log)
        session = sessions.open(Outbox(), FakePeer())
        assert not await sessions.reconnect(session, session.id)
        assert not await sessions.reconnect(session, session.id % (2**31 - 1) + 1)
        assert log.moves == []
        assert log.ends == []


async def test_a_live_peer_that_answers_keeps_its_session(
    autojump_clock: trio.abc.Clock, log: Log
) -> None:
    async with trio.open_nursery() as nursery:
        sessions = make(nursery, log)
        peer = FakePeer(alive=True)
        owner = sessions.open(Outbox(), peer)
        thief = sessions.open(Outbox(), FakePeer())
        assert not await sessions.reconnect(thief, owner.id)
        assert not peer.dropped
        assert sessions.get(owner.id) is owner
        assert log.moves == []


async def test_a_live_peer_that_does_not_answer_is_taken_over(
    autojump_clock: trio.abc.Clock, log: Log
) -> None:
    async with trio.open_nursery() as nursery:
        sessions = make(nursery, log, probe_timeout=5)
        peer = FakePeer(alive=False)
        old = sessions.open(Outbox(), peer)
        new = sessions.open(Outbox(), FakePeer())
        start = trio.current_time()
        assert await sessions.reconnect(new, old.id)
        assert trio.current_time() - start == pytest.approx(5)
        assert peer.dropped
        # The old connection's handler then reports it lost or closed: nothing more happens.
        sessions.lost(old)
        await sessions.closed(old)
        await trio.sleep(120)
        assert log.moves == [(old.id, new.id)]
        assert log.ends == []


async def test_qdiffusion_names_its_first_id_on_every_reconnect(
    autojump_clock: trio.abc.Clock, log: Log
) -> None:
    async with trio.open_nursery() as nursery:
        sessions = make(nursery, log)
        first = sessions.open(Outbox(), FakePeer())
        sessions.lost(first)
        second = sessions.open(Outbox(), FakePeer())
        assert await sessions.reconnect(second, first.id)
        sessions.lost(second)
        third = sessions.open(Outbox(), FakePeer())
        assert await sessions.reconnect(third, first.id)  # the first id, again
        assert log.moves == [(first.id, second.id), (second.id, third.id)]
        assert sessions.get(first.id) is sessions.get(second.id) is third
        await sessions.closed(third)
        assert log.ends == [third.id]
        assert sessions.get(first.id) is None
        assert len(sessions) == 0


async def test_ids_are_never_repeated(log: Log) -> None:
    async with trio.open_nursery() as nursery:
        sessions = make(nursery, log)
        seen = set()
        for _ in range(2000):
            session = sessions.open(Outbox(), FakePeer())
            assert session.id not in seen
            seen.add(session.id)
            await sessions.closed(session)


def test_bad_settings_are_refused() -> None:
    async def end(session: Session) -> None:
        pass

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ids = ClientIds(b"0123456789abcdef")
            with pytest.raises(ValueError, match="grace"):
                Sessions(nursery, ids, move=lambda a, b: None, end=end, grace=-1)
            with pytest.raises(ValueError, match="probe_timeout"):
                Sessions(nursery, ids, move=lambda a, b: None, end=end, probe_timeout=0)

    trio.run(main)


# ---- the hand-over of queued replies and subscriptions


async def test_adopt_moves_replies_in_order_and_keeps_coalescing() -> None:
    old, new = Outbox(), Outbox()
    new.put({"type": "hello", "n": "new"})
    old.put({"type": "hello", "n": "old"})
    old.put({"type": "download", "n": 1})
    old.put({"type": "progress", "n": 2}, coalesce=("progress", 5))
    old.put({"type": "download", "n": 3})
    moved = new.adopt(old, keep=lambda m: m["type"] != "hello")
    assert moved == 3
    assert old.closed
    assert len(old) == 0
    # A later progress for the same request replaces the moved one in place.
    new.put({"type": "progress", "n": 4}, coalesce=("progress", 5))
    got = [await new.get() for _ in range(len(new))]
    assert [m["n"] for m in got if m] == ["new", 1, 4, 3]


async def test_adopt_may_exceed_the_limit_without_overflowing() -> None:
    old, new = Outbox(limit=4), Outbox(limit=4)
    for n in range(4):
        old.put({"n": n})
    for n in range(3):
        new.put({"n": 10 + n})
    assert new.adopt(old) == 4
    assert len(new) == 7
    assert not new.overflowed


async def test_the_queue_transfers_subscriptions(tmp_path: Path) -> None:
    async def never_ends(request: DownloadRequest, emit: Callable[[Event], None]) -> Success:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with trio.open_nursery() as nursery:
        queue = DownloadQueue(nursery, tmp_path, run=never_ends, max_concurrent=1)
        old, new, other = Outbox(), Outbox(), Outbox()
        job = queue.submit(queue.request("http://x/", "SD"), "SD", Subscriber(old, 10))
        queue.submit(queue.request("http://x/", "SD"), "SD", Subscriber(other, 11))
        queue.submit(queue.request("http://x/", "SD"), "SD", Subscriber(old, 12))
        assert queue.transfer(old, new) == 2
        assert [(s.outbox, s.request_id) for s in job.subscribers] == [
            (other, 11),
            (new, 10),
            (new, 12),
        ]
        assert queue.find(new, 10) is job
        assert queue.find(old, 10) is None
        nursery.cancel_scope.cancel()
