"""A WAN-like TCP relay for benchmarks and tests: round-trip time and per-connection caps.

Why a relay and not the kernel: the kernel of this machine (and of CI) has no ``netem`` and
no ``fq`` qdisc (``tc qdisc add … netem`` answers "Specified qdisc kind is unknown"; only
``pfifo``, ``tbf`` and ``htb`` load), so neither delay nor a per-flow cap can be had from
``tc``. The relay stands between a client and a server (nginx) and forwards bytes unchanged,
so TLS passes through it end to end.

How each accepted connection is treated:

- **Round-trip time.** Every chunk read on one side is held for ``rtt / 2`` before it is
  written to the other side, in both directions, so a request and its response pay one RTT.
  The relay's kernel completes the client's TCP handshake at once; to stand in for the
  handshake's round trip, the client's *first* bytes wait one extra RTT. TCP's own dynamics
  (slow start, loss) are not modelled: each hop is a loopback connection.
- **Per-connection cap.** Server-to-client bytes leave at ``rate`` at most: a token bucket one
  quantum deep (about 20 ms of data, at least 1 KiB) — a virtual clock advances by ``n / rate``
  for every ``n`` bytes sent, the relay sleeps until it before sending the next quantum, and a
  late wake-up is made up for within one quantum — so bursts stay short and the cap is reached
  on a busy machine too.
- **A crawling connection.** The connections whose accept numbers (1-based) are listed in
  ``crawl`` get ``crawl_rate`` instead (e.g. 8 KiB/s): one flow out of sixteen throttled.
- **Bounded buffering.** At most ``buffer_limit`` bytes (plus one RTT of data at the cap) are
  held per direction; beyond that the relay stops reading, so TCP pushes back on the server
  as a CDN edge's socket buffer would.

Counts per connection (bytes each way) are kept in :class:`RelayStats`; run as a program, the
relay writes one JSON line per closed connection to ``--log``, its port on stdout, and its
own CPU time can be read from ``/proc`` by whoever started it.

    python -m segdl.testing.wanrelay --upstream 127.0.0.1:8443 --rtt 0.08 --rate 6M \
        [--crawl 3 --crawl-rate 8K] [--port 0] [--log FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import trio

__all__ = ["ConnectionStats", "RelayConfig", "RelayStats", "main", "serve_wan_relay"]

_READ_SIZE = 256 * 1024
_MIN_QUANTUM = 1024
_QUANTUM_SECONDS = 0.02


@dataclass(frozen=True)
class RelayConfig:
    """What the path does to each connection. Rates are bytes per second (0: no cap)."""

    upstream_host: str
    upstream_port: int
    rtt: float = 0.0
    rate: float = 0.0
    crawl: frozenset[int] = frozenset()
    crawl_rate: float = 8 * 1024
    buffer_limit: int = 256 * 1024

    def __post_init__(self) -> None:
        if self.rtt < 0 or self.rate < 0 or self.crawl_rate <= 0 or self.buffer_limit <= 0:
            raise ValueError("rtt and rate must be >= 0, crawl_rate and buffer_limit > 0")

    def rate_for(self, number: int) -> float:
        return self.crawl_rate if number in self.crawl else self.rate


@dataclass
class ConnectionStats:
    number: int
    rate: float
    to_server: int = 0
    to_client: int = 0
    opened_at: float = 0.0
    closed_at: float | None = None


@dataclass
class RelayStats:
    connections: list[ConnectionStats] = field(default_factory=list)

    @property
    def bytes_to_client(self) -> int:
        return sum(c.to_client for c in self.connections)


class _DelayLine:
    """Chunks waiting for their due time, with the bytes held counted for back-pressure."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: collections.deque[tuple[float, bytes]] = collections.deque()
        self.held = 0
        self.ended = False
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def put(self, due: float, data: bytes) -> None:
        while self.held >= self.limit:
            await self._changed.wait()
        self.chunks.append((due, data))
        self.held += len(data)
        self._notify()

    def end(self) -> None:
        self.ended = True
        self._notify()

    async def get(self) -> tuple[float, bytes] | None:
        """The oldest chunk, or None once the source has ended and everything was taken."""
        while not self.chunks:
            if self.ended:
                return None
            await self._changed.wait()
        due, data = self.chunks.popleft()
        self.held -= len(data)
        self._notify()
        return due, data


async def _read_side(
    source: trio.SocketStream,
    line: _DelayLine,
    delay: float,
    first_extra: float,
) -> None:
    extra = first_extra
    try:
        while data := await source.receive_some(_READ_SIZE):
            await line.put(trio.current_time() + delay + extra, data)
            extra = 0.0
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        line.end()


async def _write_side(
    sink: trio.SocketStream,
    line: _DelayLine,
    rate: float,
    count: Callable[[int], None],
) -> None:
    quantum = max(_MIN_QUANTUM, int(rate * _QUANTUM_SECONDS)) if rate else _READ_SIZE
    allowed_at = 0.0  # the pacing clock: when the next byte may leave
    while (item := await line.get()) is not None:
        due, data = item
        await trio.sleep_until(due)
        view = memoryview(data)
        while view:
            piece = view[:quantum]
            if rate:
                await trio.sleep_until(allowed_at)
                # A token bucket one quantum deep: a wake-up that came late (a busy machine)
                # is made up for, instead of lowering the cap by its lateness every time.
                floor = trio.current_time() - _QUANTUM_SECONDS
                allowed_at = max(allowed_at, floor) + len(piece) / rate
            await sink.send_all(piece)
            count(len(piece))
            view = view[len(piece) :]
    # The source ended: pass the half-close on (HTTP/1.1 peers close after their last bytes).
    with trio.move_on_after(1):
        await sink.send_eof()


async def _relay_one(
    client: trio.SocketStream, record: ConnectionStats, config: RelayConfig
) -> None:
    one_way = config.rtt / 2
    try:
        server = await trio.open_tcp_stream(config.upstream_host, config.upstream_port)
    except OSError:
        await client.aclose()
        return

    def up(n: int) -> None:
        record.to_server += n

    def down(n: int) -> None:
        record.to_client += n

    # Held per direction: the configured limit plus what one RTT carries at the cap.
    in_flight = int(record.rate * config.rtt) if record.rate else 0
    upward = _DelayLine(config.buffer_limit + in_flight)
    downward = _DelayLine(config.buffer_limit + in_flight)
    try:
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(_read_side, client, upward, one_way, config.rtt)
            nursery.start_soon(_read_side, server, downward, one_way, 0.0)
            nursery.start_soon(_write_side, server, upward, 0.0, up)
            nursery.start_soon(_write_side, client, downward, record.rate, down)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # a peer reset or vanished (a client SIGKILLed): the other side is closed too


async def serve_wan_relay(
    config: RelayConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    stats: RelayStats | None = None,
    on_close: Callable[[ConnectionStats], None] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on ``host:port`` and relay each connection to the upstream, shaped by
    ``config``; ``task_status.started`` receives the port actually bound."""
    stats = RelayStats() if stats is None else stats
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound: int = listeners[0].socket.getsockname()[1]
    task_status.started(bound)
    accepted = 0

    async def relay(client: trio.SocketStream, number: int) -> None:
        record = ConnectionStats(
            number=number, rate=config.rate_for(number), opened_at=trio.current_time()
        )
        stats.connections.append(record)
        try:
            await _relay_one(client, record, config)
        finally:
            # Also when the relay is being stopped: the counts of open connections matter.
            record.closed_at = trio.current_time()
            if on_close is not None:
                on_close(record)

    # Our own accept loop rather than trio.serve_listeners: connections are numbered in the
    # order they were accepted (the crawling one is chosen by that number).
    try:
        async with trio.open_nursery() as nursery:
            while True:
                client = await listeners[0].accept()
                accepted += 1
                nursery.start_soon(relay, client, accepted)
    finally:
        for listener in listeners:
            listener.socket.close()


def _parse_rate(text: str) -> float:
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper()
    suffix = text[-1] if text and text[-1] in "KMG" else ""
    value = float(text[: len(text) - len(suffix)])
    if value < 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a rate: {text!r}")
    return value * units[suffix]


def _parse_upstream(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None, *, out: TextIO | None = None) -> None:
    parser = argparse.ArgumentParser(description="A WAN-like TCP relay (RTT, per-flow caps).")
    parser.add_argument("--upstream", type=_parse_upstream, required=True, help="HOST:PORT")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rtt", type=float, default=0.0, help="seconds")
    parser.add_argument("--rate", type=_parse_rate, default=0.0, help="per connection, e.g. 6M")
    parser.add_argument("--crawl", default="", help="accept numbers that crawl, e.g. 3,20")
    parser.add_argument("--crawl-rate", type=_parse_rate, default=8 * 1024.0)
    parser.add_argument("--log", type=Path, help="one JSON line per closed connection")
    args = parser.parse_args(argv)
    upstream_host, upstream_port = args.upstream
    config = RelayConfig(
        upstream_host=upstream_host,
        upstream_port=upstream_port,
        rtt=args.rtt,
        rate=args.rate,
        crawl=frozenset(int(n) for n in args.crawl.split(",") if n.strip()),
        crawl_rate=args.crawl_rate,
    )
    out = sys.stdout if out is None else out
    log = None if args.log is None else args.log.open("a", buffering=1)

    def closed(record: ConnectionStats) -> None:
        if log is not None:
            log.write(
                json.dumps(
                    {
                        "connection": record.number,
                        "rate": record.rate,
                        "to_server": record.to_server,
                        "to_client": record.to_client,
                        "seconds": (record.closed_at or 0.0) - record.opened_at,
                    }
                )
                + "\n"
            )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: serve_wan_relay(
                    config,
                    host=args.host,
                    port=args.port,
                    on_close=closed,
                    task_status=task_status,
                )
            )
            print(port, file=out, flush=True)

    try:
        trio.run(run)
    except* KeyboardInterrupt:
        pass  # how the benchmark stops it (the interrupt may arrive inside the nursery)
    finally:
        if log is not None:
            log.close()


if __name__ == "__main__":
    main()
