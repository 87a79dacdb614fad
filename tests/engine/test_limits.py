"""Bandwidth limits, measured in real time against an unlimited local server.

What is measured is what the client takes off its sockets (the ``downloaded`` count of
progress events, emitted every 20 ms): the server's own count of bytes sent is no measure on
loopback, where the kernel buffers tens of MiB per connection (tcp_rmem max 32 MiB here), so
the server "sends" a whole test file within a second whatever the client reads.  The server's
count is still checked to be at least what the client received.  Windows are long enough
for the issue's "within 5 % over 10 s".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import pytest
import trio

import segdl
from segdl.engine.throttle import RateLimit
from segdl.testing.rangeserver import RangeServer, Resource

MIB = 1024 * 1024
WARM_UP = 2.0


class Received:
    """The latest ``downloaded`` count of a download, from its progress events."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, event: segdl.Event) -> None:
        if isinstance(event, segdl.Progress):
            self.count = event.downloaded


async def measure_rate(received: Received, seconds: float) -> float:
    """Bytes per second the client received over the next *seconds*."""
    before, start = received.count, trio.current_time()
    await trio.sleep(seconds)
    return (received.count - before) / (trio.current_time() - start)


def options(connections: int = 16, max_download_limit: int | None = None) -> segdl.Options:
    return segdl.Options(
        connections=connections,
        split=connections,
        progress_interval=0.02,
        max_download_limit=max_download_limit,
    )


async def rate_after_warm_up(
    server: RangeServer,
    directory: Path,
    seconds: float,
    *,
    options: segdl.Options,
    limits: Sequence[RateLimit] = (),
) -> float:
    """Download a large file from *server*; its rate over *seconds* once warmed up."""
    received = Received()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(
                segdl.download,
                server.url("/big.bin"),
                directory,
                options=options,
                limits=limits,
                on_event=received,
            )
        )
        await trio.sleep(WARM_UP)
        rate = await measure_rate(received, seconds)
        nursery.cancel_scope.cancel()
    assert server.bytes_sent >= received.count
    return rate


async def test_the_limit_holds_within_5_percent_over_10_s(
    range_server: RangeServer, tmp_path: Path
) -> None:
    limit = 3 * MIB
    range_server.add("/big.bin", Resource(os.urandom(48 * MIB)))
    rate = await rate_after_warm_up(
        range_server, tmp_path, 10.0, options=options(16), limits=[RateLimit(limit)]
    )
    assert rate == pytest.approx(limit, rel=0.05)


async def test_one_connection_gets_the_whole_limit(
    range_server: RangeServer, tmp_path: Path
) -> None:
    """A token bucket, not a share per connection: alone, a connection uses all of it."""
    limit = 2 * MIB
    range_server.add("/big.bin", Resource(os.urandom(24 * MIB)))
    rate = await rate_after_warm_up(
        range_server, tmp_path, 4.0, options=options(1), limits=[RateLimit(limit)]
    )
    assert rate == pytest.approx(limit, rel=0.1)


async def test_the_per_download_option_limits_too(
    range_server: RangeServer, tmp_path: Path
) -> None:
    limit = 2 * MIB
    range_server.add("/big.bin", Resource(os.urandom(24 * MIB)))
    rate = await rate_after_warm_up(
        range_server, tmp_path, 4.0, options=options(max_download_limit=limit)
    )
    assert rate == pytest.approx(limit, rel=0.1)


async def test_a_limit_changed_while_running_takes_effect(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.add("/big.bin", Resource(os.urandom(64 * MIB)))
    limit = RateLimit(1 * MIB)
    received = Received()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: segdl.download(
                range_server.url("/big.bin"),
                tmp_path,
                options=options(16),
                limits=[limit],
                on_event=received,
            )
        )
        await trio.sleep(WARM_UP)
        slow = await measure_rate(received, 3.0)
        limit.set(4 * MIB)
        await trio.sleep(0.5)
        fast = await measure_rate(received, 3.0)
        nursery.cancel_scope.cancel()
    assert slow == pytest.approx(1 * MIB, rel=0.1)
    assert fast == pytest.approx(4 * MIB, rel=0.1)


async def test_lifting_a_limit_lets_the_download_finish_at_full_speed(
    range_server: RangeServer, tmp_path: Path
) -> None:
    body = os.urandom(32 * MIB)
    range_server.add("/big.bin", Resource(body))
    limit = RateLimit(256 * 1024)
    received = Received()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            done: list[segdl.Success] = []

            async def run() -> None:
                done.append(
                    await segdl.download(
                        range_server.url("/big.bin"),
                        tmp_path,
                        options=options(16),
                        limits=[limit],
                        on_event=received,
                    )
                )

            nursery.start_soon(run)
            await trio.sleep(1.0)
            assert received.count < 2 * MIB  # held back
            limit.set(None)
    assert (tmp_path / "big.bin").read_bytes() == body
    assert [r.size for r in done] == [len(body)]


async def test_an_overall_limit_is_shared_fairly_by_two_downloads(tmp_path: Path) -> None:
    """One RateLimit given to two downloads (one server each, to count them apart): their sum
    holds the limit within 5 % over 10 s and neither starves."""
    limit = RateLimit(4 * MIB)
    counts = (Received(), Received())
    with RangeServer() as first, RangeServer() as second:
        for server in (first, second):
            server.add("/big.bin", Resource(os.urandom(48 * MIB)))
        async with trio.open_nursery() as nursery:
            for index, server in enumerate((first, second)):
                nursery.start_soon(
                    partial(
                        segdl.download,
                        server.url("/big.bin"),
                        tmp_path / str(index),
                        options=options(16),
                        limits=[limit],
                        on_event=counts[index],
                    )
                )
            await trio.sleep(WARM_UP)
            before = counts[0].count, counts[1].count
            start = trio.current_time()
            await trio.sleep(10.0)
            elapsed = trio.current_time() - start
            rates = (
                (counts[0].count - before[0]) / elapsed,
                (counts[1].count - before[1]) / elapsed,
            )
            nursery.cancel_scope.cancel()
    assert sum(rates) == pytest.approx(4 * MIB, rel=0.05)
    assert min(rates) > 0.35 * sum(rates), rates


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimit(0)
    with pytest.raises(ValueError, match="positive"):
        RateLimit(1).set(-5)
    with pytest.raises(ValueError, match="positive"):
        segdl.Options(max_download_limit=0)
