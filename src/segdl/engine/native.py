"""The native engine: up to 16 range connections into one preallocated file, on trio.

Structure: one nursery per file holds a worker task per connection, a progress task and a
save task.  A worker loops: claim a range from the piece map (:mod:`segdl.core.pieces`),
fetch it in a worker thread (:mod:`segdl.io.dataplane`), release it.  The piece map is pure
and not thread-safe, so :class:`_Ledger` guards it with one lock; threads touch it once per
written buffer (1 MiB), never per recv.

Cancellation: a thread blocked in ``recv`` cannot see trio's cancel, so every fetch runs
beside a watcher task that aborts the connection (shuts the socket down) when the scope is
cancelled; the thread returns at once and the state is saved under a shielded, bounded scope.
"""

from __future__ import annotations

import hashlib
import os
import random
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from ..core.controlfile import (
    ControlFile,
    ControlFileError,
    InFlightPiece,
    bitfield_indices,
    make_bitfield,
)
from ..core.events import Event, Progress, Started, Success
from ..core.pieces import Assignment, PieceMap
from ..core.progress import MIB, RateMeter
from ..errors import (
    AuthError,
    BadResponse,
    ChecksumMismatch,
    DiskError,
    DownloadError,
    FileExists,
    HTTPStatusError,
    NetworkError,
    NotFound,
    ResumeError,
    redact_url,
)
from ..io import files
from ..io.connect import Connector
from ..io.dataplane import Connection, Endpoint, RemoteChanged, ResponseHead, Transform
from ..io.probe import ProbeResult
from ..io.tls import client_context
from .options import Options
from .throttle import RateLimit, chunk_for_limits, wait_for_limits

__all__ = ["EventSink", "download_to_path"]

EventSink = Callable[[Event], None]


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
        connector=Connector(proxies=options.proxies, policy=options.destinations),
    )


# How long cleanup (closing, saving the control file) may take once cancelled.
CLEANUP_TIMEOUT = 10.0
# A mirror slower per connection than the best one by this factor over a window is dropped.
SLOW_MIRROR_FACTOR = 8
SLOW_MIRROR_WINDOW = 5.0


@dataclass(slots=True)
class _Ledger:
    """The piece map behind one lock, shared by the trio tasks and the worker threads."""

    pieces: PieceMap
    lock: threading.Lock

    def claim(self, min_split: int) -> Assignment | None:
        with self.lock:
            return self.pieces.claim(min_split)

    def release(self, assignment_id: int) -> None:
        with self.lock:
            self.pieces.release(assignment_id)

    def committer(self, assignment_id: int, mirror: _Mirror) -> Callable[[int, int], int]:
        def commit(nbytes: int, chunk: int) -> int:
            with self.lock:
                mirror.received += nbytes
                return self.pieces.commit(assignment_id, nbytes, chunk)

        return commit

    def counters(self) -> tuple[int, int]:
        with self.lock:
            return self.pieces.downloaded, len(self.pieces.active)

    def control(self) -> ControlFile:
        with self.lock:
            return control_from_pieces(self.pieces)


@dataclass(eq=False)
class _Mirror:
    """One URL of the file: its probe, its connections, and whether it was dropped."""

    probe: ProbeResult
    endpoint: Endpoint
    ssl_context: ssl.SSLContext | None
    primary: bool
    dropped: DownloadError | None = None
    received: int = 0  # bytes fetched from it (under the ledger's lock)
    workers: int = 0  # workers currently using it
    connections: set[ConnectionLike] = field(default_factory=set)
    window_bytes: int = 0  # `received` when the slow-mirror window began
    speed: float = 0.0  # bytes per second per busy connection, last window it had one
    slow_windows: int = 0  # consecutive windows it was too slow

    @classmethod
    def create(cls, probe: ProbeResult, options: Options, *, primary: bool) -> _Mirror:
        endpoint = Endpoint.from_url(probe.url)
        context = client_context(options.ca_certificate) if endpoint.scheme == "https" else None
        return cls(probe, endpoint, context, primary)


def control_from_pieces(pieces: PieceMap) -> ControlFile:
    """aria2's control file for the current state: done pieces and partial pieces' blocks."""
    in_flight = tuple(
        InFlightPiece.from_prefix(index, pieces.piece_size(index), nbytes)
        for index, nbytes in sorted(pieces.partial_pieces().items())
    )
    return ControlFile(
        piece_length=pieces.piece_length,
        total_length=pieces.total_length,
        bitfield=make_bitfield(pieces.num_pieces, pieces.done_indices()),
        # aria2 rejects in-flight entries with no completed block; they carry nothing.
        in_flight=tuple(p for p in in_flight if p.completed_prefix() > 0),
    )


def pieces_from_control(control: ControlFile) -> PieceMap:
    return PieceMap(
        control.total_length,
        control.piece_length,
        done=bitfield_indices(control.bitfield, control.num_pieces),
        partial={p.index: p.completed_prefix() for p in control.in_flight},
    )


@dataclass(frozen=True, slots=True)
class TargetState:
    """How the file is opened: a piece map to continue, or nothing left to do."""

    pieces: PieceMap | None  # None: stream without ranges
    complete: bool
    resumed_bytes: int
    unverified: bool = False  # an existing file of the right size, nothing else known


def prepare_target(path: Path, probe: ProbeResult, options: Options) -> TargetState:
    """Decide between resume, continue, restart and done, as aria2 does (anchors §1.4).

    Synchronous (file system); run in a thread.
    """
    size = probe.size
    if path.is_dir() or (path.exists() and not path.is_file()):
        raise DiskError(f"{path} is a directory or a special file; choose another name with -o")
    current = _validators_of(probe)
    try:
        control = files.read_control(path)
    except ControlFileError:
        # A corrupt sidecar says nothing trustworthy about the data: start again.
        control = None
        files.remove_sidecars(path)
        if path.exists():
            return _fresh(path, probe, options, current)
    exists = path.exists()
    if control is not None and not exists:
        files.remove_sidecars(path)  # defunct control file (aria2: removeDefunctControlFile)
        control = None
    if control is not None:
        saved = files.read_validators(path)
        usable = (
            size is not None
            and probe.accepts_ranges
            and control.total_length == size
            and (saved is None or saved.matches(current))
        )
        if not usable:
            return _fresh(path, probe, options, current)
        pieces = pieces_from_control(control)
        files.write_validators(path, current)
        fd = files.open_data_file(path, size, truncate=False)
        os.close(fd)
        return TargetState(pieces, complete=pieces.complete, resumed_bytes=pieces.downloaded)
    if exists and files.read_validators(path) is not None:
        # Validators without a control file: our own partial that cannot be resumed (a
        # stream without ranges, or a crash before its first control file): start over.
        return _fresh(path, probe, options, current)
    if exists:
        have = path.stat().st_size
        if size is not None and have == size and (options.checksum or options.continue_partial):
            # A finished file from an earlier run: taken as done only if the checksum will
            # prove it (checked after, see download_to_path) or the user said -c, as aria2c.
            # Otherwise a file of the right size may still be another version.
            return TargetState(None, complete=True, resumed_bytes=have, unverified=True)
        if options.continue_partial and size is not None and probe.accepts_ranges:
            if have > size:
                raise ResumeError(
                    f"{path} is larger ({have} bytes) than the remote file ({size} bytes)"
                )
            # aria2 -c: the existing bytes are taken as a prefix, unverified.
            pieces = PieceMap(
                size,
                options.piece_length,
                done=range(have // options.piece_length),
                partial={have // options.piece_length: have % options.piece_length}
                if have % options.piece_length
                and have // options.piece_length < -(-size // options.piece_length)
                else {},
            )
            files.write_validators(path, current)
            fd = files.open_data_file(path, size, truncate=False)
            os.close(fd)
            files.write_control(path, control_from_pieces(pieces))
            return TargetState(pieces, complete=pieces.complete, resumed_bytes=pieces.downloaded)
        if not options.allow_overwrite and not options.continue_partial:
            raise FileExists(
                f"{path} already exists; use -c to continue it or --allow-overwrite to replace it"
            )
    return _fresh(path, probe, options, current)


def check_existing_file(path: Path, probe: ProbeResult, options: Options) -> TargetState:
    """An existing file of the right size and a checksum to prove it: done if it matches;
    otherwise replaced only with ``allow_overwrite`` (it is someone's other file).

    Synchronous (hashes the file); run in a thread.
    """
    assert options.checksum is not None
    if _hash_file(path, options.checksum.algorithm) == options.checksum.hexdigest:
        return TargetState(None, complete=True, resumed_bytes=path.stat().st_size)
    if not options.allow_overwrite:
        raise FileExists(
            f"{path} already exists with other content (its {options.checksum.algorithm} "
            "differs); use --allow-overwrite to replace it"
        )
    return _fresh(path, probe, options, _validators_of(probe))


def _validators_of(probe: ProbeResult) -> files.Validators:
    return files.Validators(
        url=redact_url(probe.url),
        size=probe.size,
        etag=probe.etag,
        last_modified=probe.last_modified,
    )


def _fresh(
    path: Path, probe: ProbeResult, options: Options, current: files.Validators
) -> TargetState:
    size = probe.size
    files.remove_sidecars(path)
    if size is not None:
        files.check_free_space(path.parent, size - _existing_size(path))
    if size is None or not probe.accepts_ranges:
        # aria2 writes no control file when the server cannot resume.  Not preallocated
        # either: a full-size file without a control file reads as a finished download, so
        # an interrupted stream must leave a shorter one, marked as ours by its validators
        # file so that the next run restarts it instead of refusing to touch it.
        files.write_validators(path, current)
        fd = files.open_data_file(path, None, truncate=True)
        os.close(fd)
        return TargetState(None, complete=False, resumed_bytes=0)
    # The state comes first: a crash before the data file is allocated leaves a control
    # file without data (discarded as defunct), never a full-size file without state.
    pieces = PieceMap(size, options.piece_length)
    files.write_validators(path, current)
    files.write_control(path, control_from_pieces(pieces))
    fd = files.open_data_file(path, size, truncate=True)
    os.close(fd)
    return TargetState(pieces, complete=pieces.complete, resumed_bytes=0)


def _existing_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _retryable(exc: DownloadError) -> bool:
    if isinstance(exc, (NotFound, AuthError, RemoteChanged)):
        return False
    if isinstance(exc, HTTPStatusError):
        return exc.status >= 500 or exc.status in (408, 429)
    return isinstance(exc, (NetworkError, BadResponse))


class _FileDownload:
    """One file's download: the nursery, the workers, progress and saving."""

    def __init__(
        self,
        probe: ProbeResult,
        path: Path,
        options: Options,
        emit: EventSink,
        start: TargetState,
        connect: ConnectionFactory,
        transform: Transform | None,
        limits: Sequence[RateLimit],
        mirrors: Sequence[ProbeResult],
    ) -> None:
        self.connect = connect
        self.limits = tuple(limits)
        if options.max_download_limit is not None:
            self.limits += (RateLimit(options.max_download_limit),)
        self.transform = transform
        self.probe = probe
        self.path = path
        self.options = options
        self.emit = emit
        self.mirrors = [_Mirror.create(probe, options, primary=True)]
        self.mirrors += [_Mirror.create(m, options, primary=False) for m in mirrors]
        # aria2: -s connections in all, at most -x to each server.
        self.max_connections = min(options.split, options.connections * len(self.mirrors))
        self.slow_window_start = 0.0
        self.start = start
        self.fd = -1
        self.fatal: DownloadError | None = None
        self.changed = trio.Event()
        self.limiter = trio.CapacityLimiter(self.max_connections)
        self.rng = random.Random()
        self.ledger: _Ledger | None = (
            _Ledger(start.pieces, threading.Lock()) if start.pieces is not None else None
        )
        self.streamed = 0  # bytes of a no-range stream
        self.stream_connections = 0

    # -- the whole file ------------------------------------------------------------------

    async def run(self) -> None:
        self.fd = await trio.to_thread.run_sync(self._open)
        self.slow_window_start = trio.current_time()
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
                self._check_slow_mirrors(trio.current_time())
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
        mirror = self._pick_mirror(index)
        conn = self._new_connection(mirror)
        failures = 0
        try:
            while True:
                if mirror.dropped is not None:
                    # Its pieces went back to the map when its connections were aborted.
                    conn.close()
                    mirror.workers -= 1
                    mirror = self._pick_mirror(index)
                    conn = self._new_connection(mirror)
                    failures = 0
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
                    if assignment.position > before:
                        failures = 0  # it was making progress: a fresh run of tries
                    failures += 1
                    if not _retryable(exc) or failures >= policy.max_tries:
                        if not self._drop_mirror(mirror, exc):
                            self._fail(exc, workers)
                            return
                        continue
                    retry_after = exc.retry_after if isinstance(exc, HTTPStatusError) else None
                finally:
                    mirror.connections.discard(conn)
                    ledger.release(assignment.id)
                    self._notify()
                await trio.sleep(
                    policy.delay(failures, retry_after=retry_after, rand=self.rng.random())
                )
        finally:
            conn.close()
            mirror.workers -= 1

    def _pick_mirror(self, index: int) -> _Mirror:
        """Spread workers over the mirrors still in use (worker *index* → one of them)."""
        live = [m for m in self.mirrors if m.dropped is None]
        assert live, "a worker runs only while a mirror is left"
        mirror = live[index % len(live)]
        mirror.workers += 1
        return mirror

    def _drop_mirror(self, mirror: _Mirror, exc: DownloadError) -> bool:
        """Stop using *mirror* after *exc*; False when the download cannot go on without it."""
        if mirror.primary and isinstance(exc, RemoteChanged):
            return False  # the file itself changed: the caller restarts from a new probe
        if not any(m.dropped is None for m in self.mirrors if m is not mirror):
            return False
        mirror.dropped = exc
        for conn in list(mirror.connections):
            conn.abort()  # their ranges are released and claimed by the others
        self._notify()
        return True

    def _check_slow_mirrors(self, now: float) -> None:
        """Drop a mirror much slower per connection than the best one (checked per window).

        Speeds count connections that are fetching: at the tail, idle workers say nothing
        about a mirror, and a mirror with none busy keeps the speed it last showed.
        """
        elapsed = now - self.slow_window_start
        if elapsed < SLOW_MIRROR_WINDOW:
            return
        live = [m for m in self.mirrors if m.dropped is None]
        assert self.ledger is not None
        with self.ledger.lock:
            for m in live:
                if m.connections:
                    m.speed = (m.received - m.window_bytes) / len(m.connections) / elapsed
        self._reset_slow_window(now)
        if len(live) < 2:
            return
        best = max(m.speed for m in live)
        for m in live:
            slow = bool(m.connections) and m.speed * SLOW_MIRROR_FACTOR < best
            m.slow_windows = m.slow_windows + 1 if slow else 0
            # Two windows in a row: one slow start (a far server's first bytes) is forgiven.
            if m.slow_windows >= 2:
                self._drop_mirror(
                    m,
                    NetworkError(
                        f"{m.endpoint.host_header} was more than {SLOW_MIRROR_FACTOR}× slower "
                        "than another mirror",
                        url=m.probe.url,
                    ),
                )

    def _reset_slow_window(self, now: float) -> None:
        self.slow_window_start = now
        for m in self.mirrors:
            m.window_bytes = m.received

    def _fail(self, exc: DownloadError, workers: trio.CancelScope) -> None:
        if self.fatal is None:
            self.fatal = exc
        workers.cancel()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _new_connection(self, mirror: _Mirror) -> ConnectionLike:
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

    def _fetch_range(self, conn: ConnectionLike, a: Assignment, mirror: _Mirror) -> int:
        """Thread: fetch the assignment's bytes from *mirror* into the file."""
        assert self.ledger is not None
        first, last = a.position, a.end - 1
        if first > last:
            return 0
        head = conn.request(headers=mirror.probe.headers, first=first, last=last)
        self._check_range_response(mirror, head, first, last)
        commit = self._throttled(conn, self.ledger.committer(a.id, mirror))
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

    def _check_range_response(
        self, mirror: _Mirror, head: ResponseHead, first: int, last: int
    ) -> None:
        probe = mirror.probe
        url = probe.url
        host = mirror.endpoint.host_header
        etag = head.etag
        if probe.etag and etag and etag.removeprefix("W/") != probe.etag.removeprefix("W/"):
            raise RemoteChanged(
                f"the file on {host} changed during the download (new ETag)", url=url
            )
        modified = head.last_modified
        # Without ETags on both sides, Last-Modified names the version (RFC 9110 §8.8.2).
        if (
            not (probe.etag and etag)
            and probe.last_modified
            and modified
            and modified != probe.last_modified
        ):
            raise RemoteChanged(
                f"the file on {host} changed during the download (new Last-Modified)", url=url
            )
        if head.status != 206:
            raise BadResponse(
                f"{host} answered a range request with HTTP {head.status} instead of 206", url=url
            )
        rng = head.content_range
        if rng is None:
            raise BadResponse(f"{host} sent 206 without Content-Range", url=url)
        if rng.complete_length is not None and rng.complete_length != probe.size:
            raise RemoteChanged(
                f"the file on {host} changed size "
                f"({rng.complete_length} bytes, expected {probe.size})",
                url=url,
            )
        if (rng.first, rng.last) != (first, last):
            raise BadResponse(
                f"{host} sent bytes {rng.first}-{rng.last} for a request of {first}-{last}", url=url
            )
        if head.content_length is None:
            # A body that ends when the server closes cannot show where the range's bytes
            # are in it: refuse it rather than trust the first bytes that come.
            raise BadResponse(f"{host} sent 206 without Content-Length", url=url)
        if head.content_length != last - first + 1:
            raise BadResponse(
                f"{host} sent Content-Length {head.content_length} for {last - first + 1} bytes",
                url=url,
            )

    # -- one stream, no ranges -----------------------------------------------------------

    async def _stream_whole(self) -> None:
        """A server without ranges or length: one GET, start to end, no resume possible."""
        policy = self.options.retry
        failures = 0
        while True:
            conn = self._new_connection(self.mirrors[0])
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
        if head.status != 200:
            raise BadResponse(f"expected HTTP 200, got {head.status}", url=self.probe.url)
        size = self.probe.size
        if size is not None and head.content_length is not None and head.content_length != size:
            raise RemoteChanged("the file changed size since it was probed", url=self.probe.url)

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


async def download_to_path(
    probe: ProbeResult,
    path: Path,
    options: Options,
    emit: EventSink,
    *,
    connect: ConnectionFactory = _open_connection,
    transform: Transform | None = None,
    limits: Sequence[RateLimit] = (),
    mirrors: Sequence[ProbeResult] = (),
) -> Success:
    """Download what *probe* describes into *path*, resuming what can be resumed.

    *transform* rewrites each chunk in place before it is written (MEGA decryption).
    Every connection passes through each of *limits* (and ``options.max_download_limit``).
    *mirrors* are probes of the same file elsewhere (same size): connections are spread over
    *probe* and them; a mirror that fails or is far slower than the others is dropped and its
    ranges are taken by the rest.
    Raises a :class:`~segdl.errors.DownloadError`; :class:`RemoteChanged` means the server's
    file is not the one the partial came from (the caller restarts after a new probe).
    """
    start = await trio.to_thread.run_sync(prepare_target, path, probe, options)
    if start.unverified and options.checksum is not None:
        start = await trio.to_thread.run_sync(check_existing_file, path, probe, options)
    emit(Started(filename=path.name, size=probe.size, path=str(path)))
    if not start.complete:
        download = _FileDownload(
            probe, path, options, emit, start, connect, transform, limits, mirrors
        )
        await download.run()
    else:
        emit(
            Progress(
                progress=1.0,
                rate=0.0,
                eta=0.0,
                downloaded=start.resumed_bytes,
                total=start.resumed_bytes,
                connections=0,
            )
        )
    digest = None
    if options.checksum is not None or options.compute_sha256:
        algorithm = options.checksum.algorithm if options.checksum else "sha256"
        digest = await trio.to_thread.run_sync(_hash_file, path, algorithm)
        if options.checksum is not None and digest != options.checksum.hexdigest:
            raise ChecksumMismatch(
                f"checksum mismatch for {path.name}: expected {options.checksum.algorithm} "
                f"{options.checksum.hexdigest}, got {digest}",
                url=probe.url,
            )
        if algorithm != "sha256":
            digest = None
    await trio.to_thread.run_sync(files.remove_sidecars, path)
    size = await trio.to_thread.run_sync(lambda: path.stat().st_size)
    return Success(path=str(path), size=size, sha256=digest)


def _hash_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    buf = bytearray(4 * MIB)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()
