"""The benchmarks' WAN-like relay: bytes pass unchanged, and the delays and caps it promises
are really imposed (lower bounds only: a loaded machine can make things slower, never faster)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable

import trio

from segdl.testing.wanrelay import RelayConfig, RelayStats, serve_wan_relay

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def start_upstream(nursery: trio.Nursery, handler: Handler) -> int:
    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def start_relay(nursery: trio.Nursery, config: RelayConfig, stats: RelayStats) -> int:
    port: int = await nursery.start(
        lambda task_status: serve_wan_relay(config, stats=stats, task_status=task_status)
    )
    return port


async def receive_all(stream: trio.SocketStream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_bytes_pass_unchanged_both_ways_with_half_close() -> None:
    request = os.urandom(200_000)
    reply_tail = os.urandom(300_000)

    async def upstream(stream: trio.SocketStream) -> None:
        got = await receive_all(stream)  # ends only if the relay passed the client's EOF on
        await stream.send_all(hashlib.sha256(got).digest() + reply_tail)
        await stream.aclose()

    stats = RelayStats()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            up = await start_upstream(nursery, upstream)
            port = await start_relay(nursery, RelayConfig("127.0.0.1", up, rtt=0.02), stats)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(request)
            await client.send_eof()
            reply = await receive_all(client)
            await client.aclose()
            nursery.cancel_scope.cancel()
    assert reply == hashlib.sha256(request).digest() + reply_tail
    [record] = stats.connections
    assert (record.number, record.to_server, record.to_client) == (1, len(request), len(reply))


async def test_each_exchange_pays_the_round_trip_and_the_first_one_a_handshake_too() -> None:
    rtt = 0.15

    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(1024):
            await stream.send_all(data)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            up = await start_upstream(nursery, echo)
            port = await start_relay(nursery, RelayConfig("127.0.0.1", up, rtt=rtt), RelayStats())
            client = await trio.open_tcp_stream("127.0.0.1", port)
            elapsed = []
            for message in (b"first", b"second"):
                started = trio.current_time()
                await client.send_all(message)
                assert await client.receive_some(1024) == message
                elapsed.append(trio.current_time() - started)
            await client.aclose()
            nursery.cancel_scope.cancel()
    assert elapsed[0] >= 2 * rtt
    assert elapsed[1] >= rtt


async def test_the_server_to_client_direction_is_capped_per_connection() -> None:
    rate = 1024 * 1024
    size = 512 * 1024
    body = os.urandom(size)

    async def upstream(stream: trio.SocketStream) -> None:
        await stream.send_all(body)
        await stream.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            up = await start_upstream(nursery, upstream)
            port = await start_relay(nursery, RelayConfig("127.0.0.1", up, rate=rate), RelayStats())
            client = await trio.open_tcp_stream("127.0.0.1", port)
            started = trio.current_time()
            got = await receive_all(client)
            elapsed = trio.current_time() - started
            await client.aclose()
            nursery.cancel_scope.cancel()
    assert got == body
    # The bucket is one quantum (20 ms of data) deep: two may leave at once, not more.
    assert elapsed >= (size - 2 * rate * 0.02) / rate


async def test_only_the_chosen_connection_crawls() -> None:
    crawl_rate = 64 * 1024
    size = 64 * 1024
    body = os.urandom(size)

    async def upstream(stream: trio.SocketStream) -> None:
        await stream.send_all(body)
        await stream.aclose()

    stats = RelayStats()
    config = RelayConfig("127.0.0.1", 0, crawl=frozenset({2}), crawl_rate=crawl_rate)
    elapsed: dict[int, float] = {}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            up = await start_upstream(nursery, upstream)
            config = RelayConfig("127.0.0.1", up, crawl=config.crawl, crawl_rate=crawl_rate)
            port = await start_relay(nursery, config, stats)
            for number in (1, 2, 3):
                client = await trio.open_tcp_stream("127.0.0.1", port)
                started = trio.current_time()
                assert await receive_all(client) == body
                elapsed[number] = trio.current_time() - started
                await client.aclose()
            nursery.cancel_scope.cancel()
    assert [(c.number, c.rate) for c in stats.connections] == [(1, 0.0), (2, crawl_rate), (3, 0.0)]
    assert elapsed[2] >= (size - 2 * crawl_rate * 0.02) / crawl_rate


async def test_a_vanished_client_closes_the_server_side() -> None:
    server_saw_close = trio.Event()

    async def endless(stream: trio.SocketStream) -> None:
        block = bytes(65536)
        try:
            while True:
                await stream.send_all(block)
        except trio.BrokenResourceError:
            server_saw_close.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            up = await start_upstream(nursery, endless)
            port = await start_relay(nursery, RelayConfig("127.0.0.1", up), RelayStats())
            client = await trio.open_tcp_stream("127.0.0.1", port)
            assert await client.receive_some(65536)
            # A SIGKILLed client: the kernel resets the connection (SO_LINGER 0 does the same).
            client.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            await client.aclose()
            await server_saw_close.wait()
            nursery.cancel_scope.cancel()
    assert server_saw_close.is_set()
