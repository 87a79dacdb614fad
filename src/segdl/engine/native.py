"""The native engine: up to 16 range connections into one preallocated file, on trio.

Structure: one nursery per file holds a worker task per connection, a progress task and a
save task.  A worker loops: claim a range from the piece map (:mod:`segdl.core.pieces`, behind
the :class:`~.ledger.Ledger`'s lock), fetch it in a worker thread (:mod:`segdl.io.dataplane`)
as a series of closed requests sized to about :data:`REQUEST_SECONDS` of the connection's
rate, release it.  Every response is held to :func:`segdl.core.responses.check_range_response`
before its body is written.  The URLs of the file and their health are :mod:`.mirrors`'.

A download begun by :mod:`.warm` hands the engine its first response (whose body is still in
the socket: it becomes the first worker's range) and connections already open to the host.

The endgame: a worker that finds nothing to claim while others still fetch polls every
:data:`ENDGAME_POLL` seconds, and may get a twin of a range that is far slower than it would
be (:class:`~segdl.core.pieces.Endgame`); the first of the pair to deliver wins and the
ledger aborts the other.

Cancellation: a thread blocked in ``recv`` cannot see trio's cancel, so every fetch runs
beside a watcher task that aborts the connection (shuts the socket down) when the scope is
cancelled; the thread returns at once and the state is saved under a shielded, bounded scope.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import trio

from ..core.events import Progress
from ..core.pieces import Assignment, Endgame
from ..core.progress import MIB, RateMeter
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
from ..io.dataplane import MIN_CHUNK
from .base import Transfer, TransferResult
from .connections import ConnectionFactory, ConnectionLike, open_connection
from .early import Slot
from .ledger import Ledger
from .mirrors import Mirror, MirrorSet
from .options import Options
from .throttle import RateLimit, chunk_for_limits, wait_for_limits
from .warm import WarmStart

__all__ = ["ConnectionFactory", "ConnectionLike", "NativeEngine"]

log = logging.getLogger("segdl")

# How long cleanup (closing, saving the control file) may take once cancelled.
CLEANUP_TIMEOUT = 10.0
# A request asks for about this many seconds of its connection's recent rate: long enough
# that the round trip between two requests costs a few percent, short enough that an abort,
# a steal or a crash leaves little sent for nothing.  A connection's first request, its rate
# unknown, asks for FIRST_REQUEST (a range of 16 of a 64 MiB file: one request each); none
# is larger than MAX_REQUEST.
REQUEST_SECONDS = 3.0
FIRST_REQUEST = 4 * MIB
MAX_REQUEST = 64 * MIB
# An idle worker looks for endgame work this often while others still fetch.
ENDGAME_POLL = 0.25
# The state is saved every save_interval, or once this much arrived unsaved (looked at every
# SAVE_CHECK seconds): what a crash loses is bounded in time and in bytes.
SAVE_VOLUME = 4 * MIB
SAVE_CHECK = 0.05


class NativeEngine:
    """segdl's own engine; ``single=True`` is the one-connection baseline (``--engine single``).

    *connect* opens data connections (tests pass fakes).
    """

    def __init__(self, *, single: bool = False, connect: ConnectionFactory = open_connection):
        self.name = "single" if single else "native"
        self._single = single
        self._connect = connect

    @property
    def connect(self) -> ConnectionFactory:
        """How this engine opens data connections (a warm start opens them the same way)."""
        return self._connect

    def connections_for(self, options: Options) -> int:
        """Data connections this engine opens for one URL with *options*."""
        return 1 if self._single else options.max_connections

    def check(self, transfer_needs_transform: bool) -> None:
        pass  # always installed, and rewrites chunks in flight (MEGA)

    async def transfer(self, job: Transfer) -> TransferResult:
        options = job.options
        if self._single:
            options = replace(options, connections=1, split=1)
        download = _FileDownload(job, options, self._connect)
        await download.run()
        return TransferResult(duplicate_bytes=download.duplicate_bytes)


def _retryable(exc: DownloadError) -> bool:
    if isinstance(exc, (NotFound, AuthError, RemoteChanged)):
        return False
    if isinstance(exc, HTTPStatusError):
        return exc.status >= 500 or exc.status in (408, 429)
    return isinstance(exc, (NetworkError, BadResponse))


class _Pace:
    """One connection's recent speed: sizes its requests, and tells the endgame how fast an
    idle connection would be.  Used by one worker at a time."""

    def __init__(self) -> None:
        self.rate = 0.0  # bytes per second while a body flows
        self.latency = 0.0  # seconds from sending a request to its head (about one RTT)

    def request_size(self, piece_length: int) -> int:
        if self.rate <= 0:
            return max(piece_length, FIRST_REQUEST)
        return int(min(MAX_REQUEST, max(piece_length, self.rate * REQUEST_SECONDS)))

    def heard(self, seconds: float) -> None:
        self.latency = seconds if self.latency == 0 else 0.7 * self.latency + 0.3 * seconds

    def moved(self, nbytes: int, seconds: float) -> None:
        if nbytes <= 0 or seconds <= 0:
            return
        rate = nbytes / seconds
        self.rate = rate if self.rate == 0 else 0.5 * self.rate + 0.5 * rate

    def endgame(self, *, reconnect: bool) -> Endgame:
        # Before its first byte an idle connection pays a request (and perhaps a handshake).
        setup = max(0.1, (4 if reconnect else 2) * self.latency)
        # A range that wrote nothing for this long has stalled: a few of its smallest chunks
        # at our speed (chunks shrink to MIN_CHUNK on a slow connection).
        stall = max(1.0, 4 * MIN_CHUNK / self.rate) if self.rate > 0 else 2.0
        return Endgame(now=time.monotonic(), rate=self.rate, setup=setup, stall=stall)


@dataclass(frozen=True, slots=True)
class _Asked:
    """A connection the warm start opened ahead, which asked for a range before the size was
    known, and the assignment kept for its answer (None: those bytes are not wanted)."""

    slot: Slot
    assignment: Assignment | None


# A worker's start: its first range, with the connection whose response to it is already in
# (the warm start's first request), or a connection that asked ahead, or just the range, or
# nothing yet.
_Start = tuple[Assignment, ConnectionLike] | _Asked | Assignment | None


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
        self.warm: WarmStart | None = job.warm
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
            primary_sessions=self.warm.sessions if self.warm is not None else None,
        )
        # aria2: -s connections in all, at most -x to each server.
        self.max_connections = min(options.split, options.connections * len(self.mirrors))
        self.limiter = trio.CapacityLimiter(self.max_connections)
        self.streamed = 0  # bytes of a no-range stream
        self.stream_connections = 0
        self.duplicate_bytes = 0

    # -- the whole file ------------------------------------------------------------------

    async def run(self) -> None:
        self.fd = await trio.to_thread.run_sync(self._open)
        self.mirrors.start_window(trio.current_time())
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._progress_loop)
                if self.ledger is not None:
                    nursery.start_soon(self._save_loop)
                    # Every worker's first range is claimed before any starts (16 halvings of
                    # the file), not when its connection happens to be ready; the ranges
                    # asked for ahead are kept for their answers first.
                    asked = self._asked_ahead()
                    first = self._adopt_first(exact=bool(asked))
                    heads: list[_Start] = [first] if first is not None else []
                    heads += asked[: self.max_connections - len(heads)]
                    # Then what is left, split between all of them: a worker with a response
                    # in already goes on with its share when that one is done.
                    shares = [
                        self.ledger.claim(self.options.min_split_size)
                        for _ in range(self.max_connections)
                    ]
                    async with trio.open_nursery() as workers:
                        for index, share in enumerate(shares):
                            start, then = (
                                (heads[index], share) if index < len(heads) else (share, None)
                            )
                            workers.start_soon(
                                self._worker, index, workers.cancel_scope, start, then
                            )
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
            if self.warm is not None:
                self.warm.close()  # what no worker took
            self._report_endgame()
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
        """Save every ``save_interval``, and sooner once SAVE_VOLUME bytes arrived unsaved
        (a server's burst at the start of its responses brings megabytes in a blink)."""
        assert self.ledger is not None
        previous: bytes | None = None
        saved_at, saved_bytes = trio.current_time(), self.ledger.counters()[0]
        step = min(SAVE_CHECK, self.options.save_interval)
        while True:
            await trio.sleep(step)
            downloaded, _ = self.ledger.counters()
            due = trio.current_time() - saved_at >= self.options.save_interval
            if due or downloaded - saved_bytes >= SAVE_VOLUME:
                saved_at, saved_bytes = trio.current_time(), downloaded
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

    def _report_endgame(self) -> None:
        if self.ledger is None:
            return
        stats = self.ledger.statistics()
        self.duplicate_bytes = stats.duplicate_bytes
        if stats.cuts or stats.twins:
            log.info(
                "endgame: %d slow range(s) cut short, %d twin(s), %d connection(s) stopped, "
                "%d bytes received twice",
                stats.cuts,
                stats.twins,
                stats.stopped,
                stats.duplicate_bytes,
            )

    # -- segmented workers ---------------------------------------------------------------

    def _adopt_first(self, *, exact: bool) -> tuple[Assignment, ConnectionLike] | None:
        """The warm start's first response, as the first worker's range: its body is the
        bytes the download would fetch first, unless the target already has them.  *exact*:
        the range ends with the response (requests sent ahead own what follows)."""
        assert self.ledger is not None
        taken = self.warm.take_first() if self.warm is not None else None
        if taken is None:
            return None
        response, conn = taken
        answer = response.answer
        adopted = None
        if answer.body_usable and answer.body_end is not None:
            adopted = self.ledger.claim_at(answer.body_first, answer.body_end, exact=exact)
        if adopted is None:
            conn.close()
            return None
        return adopted, conn

    def _asked_ahead(self) -> list[_Asked]:
        """The connections opened ahead that asked for a range, each with the assignment
        its answer will fill (if the file has those bytes and the target lacks them)."""
        assert self.ledger is not None
        warm = self.warm
        preconnects = warm.preconnects if warm is not None else None
        if preconnects is None or preconnects.endpoint != self.mirrors.primary.endpoint:
            return []
        asked = []
        for slot in preconnects.pop_asking():
            assert slot.ask is not None
            first, last, _ = slot.ask
            asked.append(_Asked(slot, self.ledger.claim_at(first, last + 1, exact=True)))
        return asked

    async def _take_asked(
        self, asked: _Asked, mirror: Mirror
    ) -> tuple[Assignment | None, ConnectionLike, bool]:
        """A connection that asked ahead: its assignment and connection, with its answer
        adopted (True) when it is exactly those bytes of this version; otherwise its range
        goes back to the map and a fresh connection is opened."""
        assert self.ledger is not None
        slot, a = asked.slot, asked.assignment
        try:
            await trio.to_thread.run_sync(slot.ready.wait, abandon_on_cancel=True)
        except BaseException:
            slot.cancel()
            raise
        conn, answer = slot.conn, slot.speculation
        if conn is not None and answer is not None and a is not None:
            try:
                check_range_response(mirror.expected, answer.head, answer.first, a.reserved - 1)
                return a, conn, True
            except DownloadError:
                pass  # past the end (416), a 200, another version: the answer is not used
        if conn is not None:
            conn.close()
        if a is not None:
            self.ledger.release(a.id)
            self._notify()
        return None, self._new_connection(mirror), False

    async def _first_connection(self, mirror: Mirror) -> ConnectionLike:
        """A connection opened ahead by the warm start when there is one for *mirror*."""
        warm = self.warm
        preconnects = warm.preconnects if warm is not None else None
        if mirror.primary and preconnects is not None and preconnects.endpoint == mirror.endpoint:
            assert warm is not None
            conn = await warm.take_connection()
            if conn is not None:
                return conn
        return self._new_connection(mirror)

    async def _worker(
        self,
        index: int,
        workers: trio.CancelScope,
        start: _Start,
        then: Assignment | None = None,
    ) -> None:
        """One connection's loop: claim, fetch, release; *start* is its first range (with
        its response already in, for the warm start's first connections), *then* the range
        it goes on with before it claims."""
        assert self.ledger is not None
        ledger = self.ledger
        policy = self.options.retry
        mirror = self.mirrors.pick(index)
        pace = _Pace()
        assignment: Assignment | None
        adopted = False  # the assignment's first response is already in (the warm start's)
        if isinstance(start, tuple):
            assignment, conn = start
            adopted = True
        elif isinstance(start, _Asked):
            assignment, conn, adopted = await self._take_asked(start, mirror)
        else:
            assignment = start
            conn = await self._first_connection(mirror)
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
                if assignment is None and then is not None:
                    assignment, then = then, None
                    if ledger.finished(assignment.id):  # taken by others meanwhile
                        ledger.release(assignment.id)
                        assignment = None
                if assignment is None:
                    assignment = ledger.claim(
                        self.options.min_split_size, pace.endgame(reconnect=conn.aborted)
                    )
                    if assignment is not None:
                        self._notify()  # idle peers may split what was just taken
                if assignment is None:
                    _, active = ledger.counters()
                    if active == 0:
                        return
                    # Someone is still working: their range comes back here if they fail,
                    # and a range that turns out slow is worth a twin.
                    with trio.move_on_after(ENDGAME_POLL):
                        await self.changed.wait()
                    continue
                a, assignment = assignment, None
                before = a.position
                try:
                    if conn.aborted:
                        conn.close()
                        conn = self._new_connection(mirror)
                    mirror.connections.add(conn)
                    ledger.attach(a.id, conn)
                    await self._in_thread(conn, self._fetch_range, conn, a, mirror, pace, adopted)
                    failures = 0
                    continue
                except DownloadError as exc:
                    conn.close()
                    if mirror.dropped is not None or ledger.finished(a.id):
                        # Dropped while we fetched, or the range's twin delivered first: not
                        # this connection's failure.
                        continue
                    if self.mirrors.is_expiry(mirror, exc):
                        expired = exc  # renewed below, once the range is released
                    else:
                        if a.position > before:
                            failures = 0  # it was making progress: a fresh run of tries
                        failures += 1
                        if not _retryable(exc) or failures >= policy.max_tries:
                            if not self.mirrors.drop(mirror, exc):
                                self._fail(exc, workers)
                                return
                            continue
                        retry_after = exc.retry_after if isinstance(exc, HTTPStatusError) else None
                finally:
                    adopted = False
                    mirror.connections.discard(conn)
                    ledger.release(a.id)
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
            if then is not None:
                ledger.release(then.id)
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
        return self.connect(mirror.endpoint, self.options, mirror.ssl_context, mirror.sessions)

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

    def _fetch_range(
        self, conn: ConnectionLike, a: Assignment, mirror: Mirror, pace: _Pace, adopted: bool
    ) -> int:
        """Thread: fetch the assignment's bytes from *mirror* into the file, one closed
        request after another on the connection (kept alive between them).

        *adopted*: the first request's head is already in (the warm start's first response).
        """
        ledger = self.ledger
        assert ledger is not None
        sink = ledger.sink(a.id, mirror.count)
        commit = self._throttled(conn, sink.commit)
        piece = ledger.pieces.piece_length
        written = 0
        while True:
            if adopted:
                first = a.start
                adopted = False
            else:
                first, end = ledger.reserve(a.id, pace.request_size(piece), self.max_connections)
                if first >= end:
                    return written
                sent = time.monotonic()
                try:
                    head = conn.request(headers=mirror.probe.headers, first=first, last=end - 1)
                except HTTPStatusError as exc:
                    if exc.status == 416:
                        # Bytes inside the file as probed are not there any more: the file
                        # is now shorter (RFC 9110 §15.5.17), another version.
                        raise RemoteChanged(
                            f"the file on {mirror.endpoint.host_header} is now shorter than "
                            f"{mirror.probe.size} bytes (HTTP 416 for bytes {first}-{end - 1})",
                            url=mirror.probe.url,
                        ) from exc
                    raise
                pace.heard(time.monotonic() - sent)
                check_range_response(mirror.expected, head, first, end - 1)
            started = time.monotonic()
            moved = conn.stream_into_file(
                self.fd, first, commit, admit=sink.admit, transform=self.transform
            )
            pace.moved(moved, time.monotonic() - started)
            written += moved
            if ledger.finished(a.id):
                return written

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
            # Charged even for a request's last chunk: the next request waits out the debt
            # (a request ends every few seconds, so its last chunk is not a rounding error).
            wait_for_limits(limits, nbytes, lambda: conn.aborted)
            return want

        return commit

    # -- one stream, no ranges -----------------------------------------------------------

    async def _stream_whole(self) -> None:
        """A server without ranges or length: one GET, start to end, no resume possible.
        A site's link that expires before a stream is tried again is renewed, as for ranges."""
        policy = self.options.retry
        primary = self.mirrors.primary
        failures = 0
        first = self._adopt_stream()
        if self.warm is not None:
            self.warm.close()  # one stream: the connections opened ahead are of no use
        while True:
            conn = first[1] if first is not None else self._new_connection(primary)
            head = first[0] if first is not None else None
            first = None
            generation = primary.generation
            self.stream_connections = 1
            try:
                await self._in_thread(conn, self._fetch_whole, conn, head)
                return
            except DownloadError as exc:
                if self.mirrors.is_expiry(primary, exc):
                    # Bounded by renew itself: a fresh link refused again with no byte in
                    # between is a real refusal.
                    await self.mirrors.renew(primary, generation, exc)
                    continue
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

    def _adopt_stream(self) -> tuple[ResponseHead, ConnectionLike] | None:
        """The warm start's first response when it is the whole file from its first byte
        (a ``200``: the server ignored the range)."""
        taken = self.warm.take_first() if self.warm is not None else None
        if taken is None:
            return None
        response, conn = taken
        answer = response.answer
        if answer.body_usable and answer.body_first == 0 and not answer.accepts_ranges:
            return response.head, conn
        conn.close()
        return None

    def _fetch_whole(self, conn: ConnectionLike, head: ResponseHead | None) -> int:
        self.streamed = 0
        os.ftruncate(self.fd, 0)
        if head is None:
            head = conn.request(headers=self.probe.headers)
        check_stream_response(self.mirrors.primary.expected, head)
        size = self.probe.size

        def record(nbytes: int, chunk: int) -> int:
            self.streamed += nbytes
            if nbytes:
                self.mirrors.primary.renewals_without_progress = 0
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
