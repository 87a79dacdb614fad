"""The native engine: up to 16 range connections into one preallocated file, on trio.

Structure: one nursery per file holds a worker task per connection, a progress task and a
save task.  A worker loops: claim a range from the piece map (:mod:`segdl.core.pieces`, behind
the :class:`~.ledger.Ledger`'s lock), fetch it in a worker thread (:mod:`segdl.io.dataplane`),
release it.  Every response is held to :func:`segdl.core.responses.check_range_response`
before its body is written.  The URLs of the file and their health are :mod:`.mirrors`'.

Cancellation: a thread blocked in ``recv`` cannot see trio's cancel, so every fetch runs
beside a watcher task that aborts the connection (shuts the socket down) when the scope is
cancelled; the thread returns at once and the state is saved under a shielded, bounded scope.
"""

from __future__ import annotations

import os
import random
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol

import trio

from ..core.events import Progress
from ..core.pieces import Assignment
from ..core.progress import MIB, RateMeter
from ..core.proxyrules import ProxySettings
from ..core.responses import ResponseHead, check_range_response, check_stream_response
from ..errors import (
    AuthError,
    BadResponse,
    DownloadError,
    HTTPStatusError,
    NetworkError,
    NotFound,
    RemoteChanged,
)
from ..io import files
from ..io.connect import Connector
from ..io.dataplane import Connection, Endpoint, Transform
from .base import Transfer, TransferResult
from .ledger import Ledger
from .mirrors import Mirror, MirrorSet
from .options import Options
from .throttle import RateLimit, chunk_for_limits, wait_for_limits

__all__ = ["ConnectionFactory", "ConnectionLike", "NativeEngine"]


class ConnectionLike(Protocol):
    """What the engine needs of a data connection (:class:`Connection`, or a test fake)."""

    @property
    def aborted(self) -> bool: ...

    def request(
        self,
        *,
        headers: Mapping[str, str],
        first: int | None = None,
        last: int | None = None,
        method: str = "GET",
    ) -> ResponseHead: ...

    def stream_into_file(
        self,
        fd: int,
        offset: int,
        commit: Callable[[int], int],
        *,
        until_eof: bool = False,
        transform: Transform | None = None,
    ) -> int: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


ConnectionFactory = Callable[[Endpoint, Options, "ssl.SSLContext | None"], ConnectionLike]


def _open_connection(
    endpoint: Endpoint, options: Options, ssl_context: ssl.SSLContext | None
) -> ConnectionLike:
    return Connection(
        endpoint,
        ssl_context=ssl_context,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        buffer_size=options.buffer_size,
        connector=Connector(
            proxies=options.proxies or ProxySettings(), policy=options.destinations
        ),
    )


# How long cleanup (closing, saving the control file) may take once cancelled.
CLEANUP_TIMEOUT = 10.0


class NativeEngine:
    """segdl's own engine; ``single=True`` is the one-connection baseline (``--engine single``).

    *connect* opens data connections (tests pass fakes).
    """

    def __init__(self, *, single: bool = False, connect: ConnectionFactory = _open_connection):
        self.name = "single" if single else "native"
        self._single = single
        self._connect = connect

    def check(self, transfer_needs_transform: bool) -> None:
        pass  # always installed, and rewrites chunks in flight (MEGA)

    async def transfer(self, job: Transfer) -> TransferResult:
        options = job.options
        if self._single:
            options = replace(options, connections=1, split=1)
        await _FileDownload(job, options, self._connect).run()
        return TransferResult()


def _retryable(exc: DownloadError) -> bool:
    if isinstance(exc, (NotFound, AuthError, RemoteChanged)):
        return False
    if isinstance(exc, HTTPStatusError):
        return exc.status >= 500 or exc.status in (408, 429)
    return isinstance(exc, (NetworkError, BadResponse))


class _FileDownload:
    """One file's download: the nursery, the workers, progress and saving."""

    def __init__(self, job: Transfer, options: Options, connect: ConnectionFactory) -> None:
        self.connect = connect
        self.limits = job.limits
        if options.max_download_limit is not None:
            self.limits += (RateLimit(options.max_download_limit),)
        self.transform = job.transform
        self.probe = job.probe
        self.start = job.target
        self.path = job.target.path
        self.options = options
        self.emit = job.emit
        self.fd = -1
        self.fatal: DownloadError | None = None
        self.changed = trio.Event()
        self.rng = random.Random()
        pieces = job.target.pieces
        self.ledger: Ledger | None = Ledger(pieces) if pieces is not None else None
        self.mirrors = MirrorSet(
            job.probe,
            job.mirrors,
            options,
            lock=self.ledger.lock if self.ledger is not None else threading.Lock(),
            on_change=self._notify,
            renew=job.renew,
        )
        # aria2: -s connections in all, at most -x to each server.
        self.max_connections = min(options.split, options.connections * len(self.mirrors))
        self.limiter = trio.CapacityLimiter(self.max_connections)
        self.streamed = 0  # bytes of a no-range stream
        self.stream_connections = 0

    # -- the whole file ------------------------------------------------------------------

    async def run(self) -> None:
        self.fd = await trio.to_thread.run_sync(self._open)
        self.mirrors.start_window(trio.current_time())
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._progress_loop)
                if self.ledger is not None:
                    nursery.start_soon(self._save_loop)
                    async with trio.open_nursery() as workers:
                        for index in range(self.max_connections):
                            workers.start_soon(self._worker, index, workers.cancel_scope)
                else:
                    try:
                        await self._stream_whole()
                    except DownloadError as exc:
                        self.fatal = exc
                nursery.cancel_scope.cancel()
            if self.fatal is not None:
                raise self.fatal
            if self.ledger is not None and not self.ledger.pieces.complete:
                raise NetworkError(
                    "download stopped before the file was complete", url=self.probe.url
                )
            await trio.to_thread.run_sync(files.fsync_file, self.fd)
            self._emit_progress_final()
        finally:
            with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                await trio.to_thread.run_sync(self._close_and_save)

    def _open(self) -> int:
        return files.open_data_file(self.path, None, truncate=False)

    def _close_and_save(self) -> None:
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            if self.ledger is not None and not self.ledger.pieces.complete:
                self._save(fd)
        finally:
            os.close(fd)

    def _save(self, fd: int, previous: bytes | None = None) -> bytes:
        # Snapshot first, then make the data durable, then write the state that claims it:
        # every byte the snapshot counts was written before the snapshot was taken.
        assert self.ledger is not None
        control = self.ledger.control()
        encoded = control.encode()
        if encoded != previous:
            files.fsync_file(fd)
            files.write_control(self.path, control)
        return encoded

    async def _save_loop(self) -> None:
        previous: bytes | None = None
        while True:
            await trio.sleep(self.options.save_interval)
            previous = await trio.to_thread.run_sync(self._save, self.fd, previous)

    async def _progress_loop(self) -> None:
        meter = RateMeter(
            total=self.probe.size, start_bytes=self.start.resumed_bytes, now=trio.current_time()
        )
        while True:
            await trio.sleep(self.options.progress_interval)
            if self.ledger is not None:
                self.mirrors.check_slow(trio.current_time())
            downloaded, active = self._counters()
            snap = meter.sample(downloaded, trio.current_time())
            self.emit(
                Progress(
                    progress=snap.fraction,
                    rate=snap.rate / MIB,
                    eta=snap.eta,
                    downloaded=downloaded,
                    total=self.probe.size,
                    connections=active,
                )
            )

    def _counters(self) -> tuple[int, int]:
        if self.ledger is not None:
            return self.ledger.counters()
        return self.streamed, self.stream_connections

    def _emit_progress_final(self) -> None:
        downloaded, _ = self._counters()
        self.emit(
            Progress(
                progress=1.0,
                rate=0.0,
                eta=0.0,
                downloaded=downloaded,
                total=self.probe.size if self.probe.size is not None else downloaded,
                connections=0,
            )
        )

    # -- segmented workers ---------------------------------------------------------------

    async def _worker(self, index: int, workers: trio.CancelScope) -> None:
        assert self.ledger is not None
        ledger = self.ledger
        policy = self.options.retry
        mirror = self.mirrors.pick(index)
        conn = self._new_connection(mirror)
        generation = mirror.generation  # the link this connection was opened for
        expired: DownloadError | None = None
        failures = 0
        try:
            while True:
                if mirror.dropped is not None:
                    # Its pieces went back to the map when its connections were aborted.
                    conn.close()
                    mirror.workers -= 1
                    mirror = self.mirrors.pick(index)
                    conn = self._new_connection(mirror)
                    generation = mirror.generation
                    failures = 0
                if generation != mirror.generation:
                    # The link was renewed: requests go to the fresh one.
                    conn.close()
                    conn = self._new_connection(mirror)
                    generation = mirror.generation
                assignment = ledger.claim(self.options.min_split_size)
                if assignment is None:
                    _, active = ledger.counters()
                    if active == 0:
                        return
                    # Someone is still working: their range comes back here if they fail.
                    await self.changed.wait()
                    continue
                before = assignment.position
                try:
                    if conn.aborted:
                        conn.close()
                        conn = self._new_connection(mirror)
                    mirror.connections.add(conn)
                    await self._in_thread(conn, self._fetch_range, conn, assignment, mirror)
                    failures = 0
                    continue
                except DownloadError as exc:
                    conn.close()
                    if mirror.dropped is not None:
                        continue  # dropped while we fetched: not this connection's failure
                    if self.mirrors.is_expiry(mirror, exc):
                        expired = exc  # renewed below, once the range is released
                    else:
                        if assignment.position > before:
                            failures = 0  # it was making progress: a fresh run of tries
                        failures += 1
                        if not _retryable(exc) or failures >= policy.max_tries:
                            if not self.mirrors.drop(mirror, exc):
                                self._fail(exc, workers)
                                return
                            continue
                        retry_after = exc.retry_after if isinstance(exc, HTTPStatusError) else None
                finally:
                    mirror.connections.discard(conn)
                    ledger.release(assignment.id)
                    self._notify()
                if expired is not None:
                    refused, expired = expired, None
                    if not await self._renewed(mirror, generation, refused, workers):
                        return
                    continue
                await trio.sleep(
                    policy.delay(failures, retry_after=retry_after, rand=self.rng.random())
                )
        finally:
            conn.close()
            mirror.workers -= 1

    async def _renewed(
        self, mirror: Mirror, generation: int, refused: DownloadError, workers: trio.CancelScope
    ) -> bool:
        """Renew *mirror*'s expired link; False when the download cannot go on."""
        try:
            await self.mirrors.renew(mirror, generation, refused)
        except DownloadError as exc:
            if not self.mirrors.drop(mirror, exc):
                self._fail(exc, workers)
                return False
        return True

    def _fail(self, exc: DownloadError, workers: trio.CancelScope) -> None:
        if self.fatal is None:
            self.fatal = exc
        workers.cancel()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _new_connection(self, mirror: Mirror) -> ConnectionLike:
        return self.connect(mirror.endpoint, self.options, mirror.ssl_context)

    async def _in_thread(self, conn: ConnectionLike, fn: Callable[..., int], *args: object) -> int:
        """Run a blocking fetch in a thread; cancellation aborts its connection."""
        finished = False

        async def abort_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                if not finished:
                    conn.abort()

        # The error is carried out of the nursery by hand so it is not wrapped in a group.
        error: DownloadError | None = None
        result = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(abort_when_cancelled)
            try:
                result = await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
            except DownloadError as exc:
                error = exc
            finally:
                finished = True
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        return result

    def _fetch_range(self, conn: ConnectionLike, a: Assignment, mirror: Mirror) -> int:
        """Thread: fetch the assignment's bytes from *mirror* into the file."""
        assert self.ledger is not None
        first, last = a.position, a.end - 1
        if first > last:
            return 0
        head = conn.request(headers=mirror.probe.headers, first=first, last=last)
        check_range_response(mirror.expected, head, first, last)
        commit = self._throttled(conn, self.ledger.committer(a.id, mirror.count))
        return conn.stream_into_file(self.fd, first, commit, transform=self.transform)

    def _throttled(
        self, conn: ConnectionLike, record: Callable[[int, int], int]
    ) -> Callable[[int], int]:
        """The data plane's ``commit``: record the chunk, wait out the rate limits, and
        say how much to read next (smaller chunks under a limit keep connections fair)."""
        limits = self.limits
        buffer_size = self.options.buffer_size
        if not limits:
            return lambda nbytes: record(nbytes, buffer_size)

        def commit(nbytes: int) -> int:
            want = record(nbytes, chunk_for_limits(limits, buffer_size))
            if want > 0:
                wait_for_limits(limits, nbytes, lambda: conn.aborted)
            return want

        return commit

    # -- one stream, no ranges -----------------------------------------------------------

    async def _stream_whole(self) -> None:
        """A server without ranges or length: one GET, start to end, no resume possible."""
        policy = self.options.retry
        failures = 0
        while True:
            conn = self._new_connection(self.mirrors.primary)
            self.stream_connections = 1
            try:
                await self._in_thread(conn, self._fetch_whole, conn)
                return
            except DownloadError as exc:
                failures += 1
                if not _retryable(exc) or failures >= policy.max_tries:
                    raise
                retry_after = exc.retry_after if isinstance(exc, HTTPStatusError) else None
                await trio.sleep(
                    policy.delay(failures, retry_after=retry_after, rand=self.rng.random())
                )
            finally:
                self.stream_connections = 0
                conn.close()

    def _fetch_whole(self, conn: ConnectionLike) -> int:
        self.streamed = 0
        os.ftruncate(self.fd, 0)
        head = conn.request(headers=self.probe.headers)
        check_stream_response(self.mirrors.primary.expected, head)
        size = self.probe.size

        def record(nbytes: int, chunk: int) -> int:
            self.streamed += nbytes
            return chunk

        commit = self._throttled(conn, record)
        written = conn.stream_into_file(
            self.fd, 0, commit, until_eof=head.content_length is None, transform=self.transform
        )
        if size is not None and written != size:
            raise NetworkError(
                f"got {written} bytes of {size} before the connection ended", url=self.probe.url
            )
        return written


