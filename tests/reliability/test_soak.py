"""Load and soak: ``segdl serve`` with many clients and a queue of downloads, for a while.

On loopback, with a RangeServer as the file host: ``SEGDL_SOAK_CLIENTS`` WebSocket clients
(default 50) connect and get ``hello``; some ping all along, some ask for downloads, some ask
for the same URL (joining), some keep disconnecting and reconnecting; ``SEGDL_SOAK_DOWNLOADS``
downloads (default 20) wait behind a concurrency limit of 3.  It runs ``SEGDL_SOAK_SECONDS``
(default 45 s; the file host's rate is chosen so the queue drains in about half of that).

Then: every file is exact (sha256), every client that stayed got every answer it asked for
(``success`` for each download, a ``pong`` for each ping), this process's memory after the
warm-up and at the end differ by less than 30 MiB, and the trio tasks and threads are back to
what they were before the clients came.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import trio
from hostile_support import (
    ProtocolClient,
    open_client,
    open_server,
    poll_until,
    record,
    rss_bytes,
    trio_task_count,
    working_threads,
)

import segdl
from segdl.server import ServeSettings
from segdl.testing.rangeserver import RangeServer, Resource

MIB = 1024 * 1024
SECONDS = float(os.environ.get("SEGDL_SOAK_SECONDS", "45"))
CLIENTS = int(os.environ.get("SEGDL_SOAK_CLIENTS", "50"))
DOWNLOADS = int(os.environ.get("SEGDL_SOAK_DOWNLOADS", "20"))
MAX_CONCURRENT = 3
FILE_SIZE = 2 * MIB
CONNECTIONS = 2
RSS_GROWTH_LIMIT = 30 * MIB
REPLY_TIMEOUT = 20.0


@dataclass
class Tally:
    """What the clients did and saw."""

    hellos: int = 0
    pings: int = 0
    pongs: int = 0
    slowest_pong: float = 0.0
    successes: int = 0
    reconnects: int = 0
    abandoned: int = 0  # download requests whose client left before the end
    joins: int = 0
    late_joiners: int = 0  # found nothing left to join
    drained_at: float = 0.0  # seconds from the start until the last success
    options: int = 0
    errors: list[str] = field(default_factory=list)


def file_bodies(count: int) -> list[bytes]:
    """*count* distinct files sharing one random block (little memory for many files)."""
    block = os.urandom(FILE_SIZE)
    return [i.to_bytes(8, "big") + block[8 : FILE_SIZE - (i % 7) * 1000] for i in range(count)]


async def ping(client: ProtocolClient, tally: Tally) -> None:
    id = secrets.randbelow(2**31 - 2) + 1
    start = trio.current_time()
    await client.send("ping", id=id)
    tally.pings += 1
    with trio.fail_after(REPLY_TIMEOUT):
        await client.expect("pong", id=id)
    tally.pongs += 1
    tally.slowest_pong = max(tally.slowest_pong, trio.current_time() - start)


async def download(client: ProtocolClient, folder: str, url: str, tally: Tally) -> None:
    id = await client.send("download", {"type": folder, "url": url})
    with trio.fail_after(SECONDS + 120):
        replies = await client.download_replies(id)
    final = replies[-1]
    if final["status"] != "success":
        tally.errors.append(f"{url} into {folder} at {trio.current_time():.1f}: {final}")
    else:
        tally.successes += 1
        tally.drained_at = max(tally.drained_at, trio.current_time())


async def test_soak(tmp_path: Path) -> None:
    rng = random.Random(20260601)
    bodies = file_bodies(DOWNLOADS)
    # Paced so the queue (MAX_CONCURRENT at a time, CONNECTIONS each) drains in about half
    # of the run: the whole run sees downloads queued, running and done.
    rate = max(32 * 1024, int(DOWNLOADS * FILE_SIZE / (MAX_CONCURRENT * CONNECTIONS * SECONDS / 2)))
    models = tmp_path / "models"
    tally = Tally()
    settings = ServeSettings(
        max_concurrent=MAX_CONCURRENT,
        options=segdl.Options(
            connections=CONNECTIONS,
            split=CONNECTIONS,
            min_split_size=MIB,
            progress_interval=0.25,
            save_interval=0.5,
        ),
    )
    with RangeServer(rate_limit=rate) as host:
        urls = []
        for index, body in enumerate(bodies):
            host.add(f"/f{index}.safetensors", Resource(body=body))
            urls.append(host.url(f"/f{index}.safetensors"))
        async with open_server(models, settings) as info:
            gc.collect()
            tasks_before = trio_task_count()
            threads_before = working_threads()
            started = trio.current_time()
            deadline = started + SECONDS
            samples: list[int] = []

            async def downloader(index: int) -> None:
                async with open_client(info.port) as client:
                    tally.hellos += 1
                    await download(client, "SD", urls[index], tally)
                    while trio.current_time() < deadline:
                        await ping(client, tally)
                        await trio.sleep(rng.uniform(0.2, 1.0))

            async def joiner(index: int) -> None:
                # Asks for a download that is queued or running, as listed by ``downloads``
                # (segdl's extension): a join, not a second download of a finished file.
                await trio.sleep(rng.uniform(0, SECONDS / 5))
                async with open_client(info.port, codec="json") as client:
                    tally.hellos += 1
                    id = await client.send("downloads")
                    with trio.fail_after(REPLY_TIMEOUT):
                        listing = (await client.expect("downloads", id=id))["data"]["downloads"]
                    # A download still waiting for a slot, of a file not on disk yet: asking
                    # for a finished one again (as the flappers do) is refused with "already
                    # exists" by this server, and a running one may end before the request.
                    active = [
                        d["url"]
                        for d in listing
                        if d["state"] == "queued"
                        and not (models / "SD" / d["url"].rsplit("/", 1)[-1]).exists()
                    ]
                    if not active:
                        tally.late_joiners += 1
                        await ping(client, tally)
                        return
                    tally.joins += 1
                    # Another name of the same folder: the same job.
                    folder = rng.choice(["checkpoint", "sd", "SD"])
                    await download(client, folder, active[-1], tally)

            async def pinger(index: int) -> None:
                async with open_client(info.port, codec="json" if index % 2 else "bson") as c:
                    tally.hellos += 1
                    while trio.current_time() < deadline:
                        await ping(c, tally)
                        if rng.random() < 0.05:
                            id = await c.send("options")
                            with trio.fail_after(REPLY_TIMEOUT):
                                await c.expect("options", id=id)
                            tally.options += 1
                        await trio.sleep(rng.uniform(0.05, 0.3))

            async def flapper(index: int) -> None:
                while trio.current_time() < deadline:
                    async with open_client(info.port) as client:
                        tally.hellos += 1
                        if rng.random() < 0.3:
                            # Ask, then leave before the answer: the download goes on.
                            await client.send("download", {"type": "SD", "url": rng.choice(urls)})
                            tally.abandoned += 1
                        elif rng.random() < 0.5:
                            await ping(client, tally)
                        await trio.sleep(rng.uniform(0.05, 1.0))
                    tally.reconnects += 1

            async def sample_memory() -> None:
                while trio.current_time() < deadline:
                    samples.append(rss_bytes())
                    await trio.sleep(0.5)

            roles = [downloader] * min(DOWNLOADS, CLIENTS)
            spare = CLIENTS - len(roles)
            roles += [joiner] * (spare // 4) + [pinger] * (spare // 3)
            roles += [flapper] * (CLIENTS - len(roles))
            warm_rss = 0
            with trio.fail_after(SECONDS + 180):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sample_memory)
                    for index, role in enumerate(roles):
                        nursery.start_soon(role, index)
                    # Warm-up: every client connected, the queue full, buffers allocated.
                    await trio.sleep(max(5.0, SECONDS / 5))
                    gc.collect()
                    warm_rss = rss_bytes()
                # Every client has gone; the downloads flappers left behind may still run.
                await poll_until(
                    lambda: all(
                        job.state.value not in ("queued", "running") for job in info.queue.jobs()
                    )
                )
            with trio.fail_after(30):
                # The server notices the last disconnections, trio's idle worker threads
                # are not counted (they expire by themselves), the file host's connection
                # threads end as their clients close.
                await poll_until(lambda: trio_task_count() <= tasks_before)
                await poll_until(lambda: working_threads() == threads_before, interval=0.1)
            gc.collect()
            end_rss = rss_bytes()
            tasks_after = trio_task_count()
            threads_after = working_threads()

    figures = {
        "seconds": SECONDS,
        "clients": CLIENTS,
        "roles": {role.__name__: roles.count(role) for role in set(roles)},
        "downloads": DOWNLOADS,
        "file_mib": round(FILE_SIZE / MIB, 2),
        "rate_kib_s_per_connection": rate // 1024,
        "hellos": tally.hellos,
        "reconnects": tally.reconnects,
        "pings": tally.pings,
        "pongs": tally.pongs,
        "slowest_pong_s": round(tally.slowest_pong, 3),
        "options": tally.options,
        "successes": tally.successes,
        "joins": tally.joins,
        "late_joiners": tally.late_joiners,
        "queue_drained_after_s": round(tally.drained_at - started, 1),
        "abandoned_requests": tally.abandoned,
        "rss_warm_mib": round(warm_rss / MIB, 1),
        "rss_end_mib": round(end_rss / MIB, 1),
        "rss_max_mib": round(max(samples, default=0) / MIB, 1),
        "tasks_before_after": (tasks_before, tasks_after),
        "threads_before_after": (len(threads_before), len(threads_after)),
    }
    record("soak", **figures)
    assert tally.errors == []
    assert tally.successes == roles.count(downloader) + tally.joins, figures
    assert tally.pongs == tally.pings, figures
    for index, body in enumerate(bodies):
        path = models / "SD" / f"f{index}.safetensors"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(body).hexdigest()
    assert sorted(p.name for p in (models / "SD").iterdir()) == sorted(
        f"f{index}.safetensors" for index in range(DOWNLOADS)
    )
    assert end_rss - warm_rss < RSS_GROWTH_LIMIT, figures
    assert tasks_after <= tasks_before, figures
    assert threads_after == threads_before, figures
