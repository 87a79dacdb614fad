"""The library API: ``await download(…)`` for trio programs, ``download_sync`` for scripts,
``open_manager`` for many downloads at once, and the seed system's ``download_model``.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from .core.events import Cancelled, Error, Event, Success
from .core.headers import (
    MAX_PARTIAL_NAME_BYTES,
    Checksum,
    choose_filename,
    parse_content_disposition_filename,
    sanitize_filename,
)
from .engine.native import EventSink, download_to_path
from .engine.options import Options, RetryPolicy
from .engine.throttle import RateLimit
from .errors import BadResponse, DownloadError, HTTPStatusError, InvalidURL, redact_url
from .io.control import open_control_client
from .io.dataplane import RemoteChanged
from .io.files import check_writable_dir, remove_sidecars
from .io.probe import ProbeResult, check_url, probe
from .sources.base import DownloadPlan, SourceConfig
from .sources.resolve import check_source_url, resolve_url

__all__ = [
    "DownloadHandle",
    "DownloadManager",
    "DownloadState",
    "download",
    "download_model",
    "download_sync",
    "open_manager",
]

ENGINES = ("native", "single", "aria2c")
# A file that changes under us twice in a row is being rewritten: stop rather than loop.
MAX_RESTARTS = 2


def _no_events(event: Event) -> None:
    pass


def _client(options: Options) -> httpx.AsyncClient:
    """The control-plane client: resolvers' API calls and the probe (proxies, policy, TLS)."""
    return open_control_client(
        proxies=options.proxies,
        destinations=options.destinations,
        ca_certificate=options.ca_certificate,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
    )


async def _probe_sources(
    client: httpx.AsyncClient,
    candidates: Sequence[tuple[str, Mapping[str, str]]],
    policy: RetryPolicy,
) -> tuple[ProbeResult, list[ProbeResult]]:
    """Probe every URL of the file at once: the first that answers, and usable mirrors.

    Mirrors must agree on the size (two sizes mean two different files: refused, rather
    than mixing them); a mirror that fails its probe or cannot serve ranges is left out.
    """
    results: list[ProbeResult | DownloadError | None] = [None] * len(candidates)

    async def probe_one(index: int, url: str, headers: Mapping[str, str]) -> None:
        for attempt in itertools.count(1):
            try:
                results[index] = await probe(client, url, headers=headers, now=_wall_clock())
                return
            except HTTPStatusError as exc:
                # Busy or failing for a moment (429, 5xx): wait as the data connections do.
                busy = exc.status >= 500 or exc.status == 429
                if not busy or attempt >= policy.max_tries:
                    results[index] = exc
                    return
                await trio.sleep(
                    policy.delay(attempt, retry_after=exc.retry_after, rand=random.random())
                )
            except DownloadError as exc:
                results[index] = exc
                return

    if len(candidates) == 1:
        await probe_one(0, *candidates[0])
    else:
        async with trio.open_nursery() as nursery:
            for index, (url, headers) in enumerate(candidates):
                nursery.start_soon(probe_one, index, url, headers)
    answered = [r for r in results if isinstance(r, ProbeResult)]
    if not answered:
        first_error = results[0]
        assert isinstance(first_error, DownloadError)
        raise first_error
    primary = answered[0]
    for other in answered[1:]:
        if other.size is not None and primary.size is not None and other.size != primary.size:
            raise BadResponse(
                f"the mirrors disagree on the file: {redact_url(primary.url)} has "
                f"{primary.size} bytes, {redact_url(other.url)} has {other.size}",
                url=primary.url,
            )
    if primary.size is None or not primary.accepts_ranges:
        ranged = [r for r in answered if r.size is not None and r.accepts_ranges]
        if ranged:
            # A mirror that can resume and be split beats the first URL that cannot.
            primary = ranged[0]
    mirrors = [
        r
        for r in answered
        if r is not primary and r.size is not None and r.accepts_ranges and primary.accepts_ranges
    ]
    return primary, mirrors


def _wall_clock() -> float:
    return time.time()


async def download(
    url: str | Sequence[str],
    directory: str | os.PathLike[str] = ".",
    *,
    out: str | None = None,
    options: Options | None = None,
    engine: str = "native",
    on_event: EventSink | None = None,
    civitai_token: str | None = None,
    hf_token: str | None = None,
    limits: Sequence[RateLimit] = (),
) -> Success:
    """Download one file into *directory* and return its :class:`Success` event.

    Args:
        url: the file's URL, or several URLs of the same file (mirrors: connections are
            spread over them; one that fails or is far slower is dropped).
        directory: where the file goes (created if missing).
        out: the file name; by default from Content-Disposition, then the URL.
        options: connections, split, resume and checksum settings (:class:`Options`).
        engine: ``"native"`` (segmented), ``"single"`` (one connection).
        on_event: called with every :mod:`segdl.events` event, from the trio thread.
        civitai_token, hf_token: sent to their own site only (default: ``$CIVITAI_TOKEN``,
            ``$HF_TOKEN``).
        limits: bandwidth limits every connection passes (:class:`RateLimit`; share one
            among downloads for an overall limit, change it with ``set`` at any time).

    Raises:
        DownloadError: or one of its subclasses (see :mod:`segdl.errors`); the partial file
            and its control file are kept so a later call resumes.
    """
    emit = on_event or _no_events
    ended = False
    try:
        config = SourceConfig.from_env(civitai_token=civitai_token, hf_token=hf_token)
        result = await _download(
            url, directory, out, options or Options(), engine, emit, config, tuple(limits)
        )
        ended = True
        emit(result)
        return result
    except DownloadError as exc:
        ended = True
        emit(Error(message=str(exc), code=exc.exit_code))
        raise
    except Exception as exc:
        ended = True
        # A bug, not a download failure: still one line for the user, the cause chained.
        error = DownloadError(f"internal error: {type(exc).__name__}: {exc}")
        emit(Error(message=str(error), code=error.exit_code))
        raise error from exc
    finally:
        if not ended:
            # Cancelled (possibly inside an exception group), or interrupted.
            emit(Cancelled())


async def _download(
    url: str | Sequence[str],
    directory: str | os.PathLike[str],
    out: str | None,
    options: Options,
    engine: str,
    emit: EventSink,
    config: SourceConfig,
    limits: tuple[RateLimit, ...],
) -> Success:
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise InvalidURL("no URL given")
    # The first URL may be a site's short form (hf://…); mirrors must be http(s).
    check_source_url(urls[0], config)
    for u in urls[1:]:
        check_url(u)
    if engine not in ENGINES:
        raise DownloadError(f"unknown engine {engine!r}: choose native, single or aria2c")
    if engine == "aria2c":
        # Imported here: the aria2c engine pulls in trio-websocket, which the native
        # engine does not need at start-up.
        from .engine.aria2c import NOT_INSTALLED, aria2c_available, download_with_aria2c

        if not aria2c_available():
            raise DownloadError(NOT_INSTALLED)
    if engine == "single":
        options = replace(options, connections=1, split=1)
    target_dir = Path(directory)
    await trio.to_thread.run_sync(check_writable_dir, target_dir)
    async with _client(options) as client:
        for attempt in itertools.count():
            # Resolved on every attempt: signed storage URLs expire, so a resume needs a
            # fresh one.
            plan = await resolve_url(urls[0], client=client, config=config)
            if attempt == 0 and plan.metadata is not None:
                emit(plan.metadata)
            # The site's headers (its token) go to the site's URLs only; mirrors the user or
            # the site named elsewhere get the user's own headers.
            site_headers = {**plan.headers, **options.headers}
            candidates = [(u, site_headers) for u in plan.urls]
            candidates += [(u, dict(options.headers)) for u in (*plan.mirrors, *urls[1:])]
            probed, mirrors = await _probe_sources(client, candidates, options.retry)
            if plan.size is not None and probed.size is not None and plan.size != probed.size:
                raise BadResponse(
                    f"the server's file is {probed.size} bytes but {plan.source} says {plan.size}",
                    url=probed.url,
                )
            run_options = options
            if options.checksum is None and plan.sha256:
                run_options = replace(options, checksum=Checksum("sha256", plan.sha256.lower()))
            path = target_dir / _filename(out, probed, plan, urls[0])
            try:
                if engine == "aria2c":
                    if plan.transform is not None:
                        raise DownloadError(
                            f"the aria2c engine cannot download {plan.source} files (they are "
                            "decrypted chunk by chunk); use --engine native"
                        )
                    result = await download_with_aria2c(
                        probed, path, run_options, emit, limits=limits, mirrors=mirrors
                    )
                else:
                    result = await download_to_path(
                        probed,
                        path,
                        run_options,
                        emit,
                        transform=plan.transform,
                        limits=limits,
                        mirrors=mirrors,
                    )
            except RemoteChanged:
                if attempt >= MAX_RESTARTS:
                    raise
                # Never mix two versions: drop the partial and start over from a new probe.
                # Data first: a crash in between leaves sidecars without data (discarded),
                # never an old full-size file without its state.
                await trio.to_thread.run_sync(partial(path.unlink, missing_ok=True))
                await trio.to_thread.run_sync(remove_sidecars, path)
                continue
            if plan.verify is not None:
                await plan.verify(path)
            return result
    raise AssertionError("unreachable")


def _filename(out: str | None, probed: ProbeResult, plan: DownloadPlan, url: str) -> str:
    """``-o``, else Content-Disposition, else the site's name, else the URL (sanitised)."""
    # Short enough that the sidecars' names (NAME.aria2__temp) fit in a directory entry too.
    limit = MAX_PARTIAL_NAME_BYTES
    if out:
        return sanitize_filename(out, max_bytes=limit)
    if probed.content_disposition:
        named = parse_content_disposition_filename(probed.content_disposition)
        if named:
            return sanitize_filename(named, max_bytes=limit)
    if plan.filename:
        return sanitize_filename(plan.filename, max_bytes=limit)
    return choose_filename(None, url, max_bytes=limit)


def download_sync(
    url: str | Sequence[str],
    directory: str | os.PathLike[str] = ".",
    *,
    out: str | None = None,
    options: Options | None = None,
    engine: str = "native",
    on_event: EventSink | None = None,
    civitai_token: str | None = None,
    hf_token: str | None = None,
) -> Success:
    """:func:`download` for code that is not running trio: blocks until done."""
    return trio.run(
        partial(
            download,
            url,
            directory,
            out=out,
            options=options,
            engine=engine,
            on_event=on_event,
            civitai_token=civitai_token,
            hf_token=hf_token,
        )
    )


# -- many downloads ----------------------------------------------------------------------


class DownloadState(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = (DownloadState.DONE, DownloadState.FAILED, DownloadState.CANCELLED)


class DownloadHandle:
    """One download submitted to a :class:`DownloadManager`.

    ``pause()`` stops it for real (no connection stays open; the partial file and its
    control file stay) and ``resume()`` queues it again, continuing from the control file.
    ``limit`` is this download's own :class:`RateLimit` (unlimited until ``set_limit``).
    """

    def __init__(
        self, id: int, url: str | Sequence[str], manager: DownloadManager, job: _Job
    ) -> None:
        self.id = id
        self.url = url
        self.state = DownloadState.QUEUED
        self.result: Success | None = None
        self.error: DownloadError | None = None
        self.last_event: Event | None = None
        self.limit = RateLimit()
        self._manager = manager
        self._job = job
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()  # the current run has ended (file closed, state saved)
        self._stopped.set()  # no run yet
        self._finished = trio.Event()

    def pause(self) -> None:
        """Stop downloading now; ``resume()`` continues where it stopped."""
        if self.state in (DownloadState.QUEUED, DownloadState.RUNNING):
            self.state = DownloadState.PAUSED
            self._scope.cancel()

    def resume(self) -> None:
        """Queue a paused download again."""
        if self.state is DownloadState.PAUSED:
            self.state = DownloadState.QUEUED
            self._manager._start(self)

    def set_limit(self, bytes_per_second: float | None) -> None:
        """Limit this download (``None``: no limit of its own); applies while it runs."""
        self.limit.set(bytes_per_second)

    def cancel(self) -> None:
        """Stop the download; its partial file and control file stay for a later resume."""
        if self.state is DownloadState.PAUSED:
            self.state = DownloadState.CANCELLED
            self._finished.set()
        self._scope.cancel()

    async def wait(self) -> Success:
        """Wait for the end; return the result or raise its error (Cancelled → DownloadError)."""
        await self._finished.wait()
        if self.result is not None:
            return self.result
        if self.error is not None:
            raise self.error
        raise DownloadError("download cancelled")


# A submitted download, waiting for the limits to pass to ``download``.
_Job = Callable[[tuple[RateLimit, ...]], Awaitable[Success]]


class DownloadManager:
    """Runs submitted downloads, at most ``max_concurrent`` at a time, in one nursery.

    ``limit`` is an overall :class:`RateLimit` shared by every download of the manager.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        max_concurrent: int = 5,
        overall_limit: float | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._nursery = nursery
        self._slots = trio.CapacityLimiter(max_concurrent)
        self._ids = itertools.count(1)
        self.limit = RateLimit(overall_limit)
        self.downloads: dict[int, DownloadHandle] = {}

    def submit(
        self,
        url: str | Sequence[str],
        directory: str | os.PathLike[str] = ".",
        *,
        out: str | None = None,
        options: Options | None = None,
        engine: str = "native",
        on_event: EventSink | None = None,
        civitai_token: str | None = None,
        hf_token: str | None = None,
    ) -> DownloadHandle:
        """Queue a download; it starts when a slot is free.  Arguments as :func:`download`."""
        handle_id = next(self._ids)

        def emit(event: Event) -> None:
            handle = self.downloads[handle_id]
            if isinstance(event, Cancelled) and handle.state is DownloadState.PAUSED:
                return  # a pause, not the end
            handle.last_event = event
            if on_event is not None:
                on_event(event)

        job = partial(
            _download_with_limits,
            url,
            directory,
            out=out,
            options=options,
            engine=engine,
            on_event=emit,
            civitai_token=civitai_token,
            hf_token=hf_token,
        )
        handle = DownloadHandle(handle_id, url, self, job)
        self.downloads[handle.id] = handle
        self._start(handle)
        return handle

    def set_overall_limit(self, bytes_per_second: float | None) -> None:
        """Change the limit shared by all downloads (``None``: unlimited), while they run."""
        self.limit.set(bytes_per_second)

    def _start(self, handle: DownloadHandle) -> None:
        previous = handle._stopped
        handle._scope = trio.CancelScope()
        handle._stopped = trio.Event()
        self._nursery.start_soon(self._run, handle, previous)

    async def _run(self, handle: DownloadHandle, previous: trio.Event) -> None:
        try:
            with handle._scope:
                # A resumed download waits until its paused run has closed the file.
                await previous.wait()
                async with self._slots:
                    handle.state = DownloadState.RUNNING
                    handle.result = await handle._job((self.limit, handle.limit))
                    handle.state = DownloadState.DONE
        except DownloadError as exc:
            handle.error = exc
            handle.state = DownloadState.FAILED
        finally:
            handle._stopped.set()
            if handle.state is not DownloadState.PAUSED:
                if handle.state not in FINAL_STATES:
                    handle.state = DownloadState.CANCELLED
                handle._finished.set()

    async def wait_all(self) -> list[DownloadHandle]:
        """Wait until every download has ended (paused ones count once resumed and ended)."""
        for handle in list(self.downloads.values()):
            await handle._finished.wait()
        return list(self.downloads.values())


async def _download_with_limits(
    url: str | Sequence[str],
    directory: str | os.PathLike[str],
    limits: tuple[RateLimit, ...],
    **kwargs: Any,
) -> Success:
    return await download(url, directory, limits=limits, **kwargs)


@asynccontextmanager
async def open_manager(
    *, max_concurrent: int = 5, overall_limit: float | None = None
) -> AsyncIterator[DownloadManager]:
    """A :class:`DownloadManager` whose downloads end (or are waited for) with the block.

    Paused downloads keep the block open until resumed or cancelled.
    """
    async with trio.open_nursery() as nursery:
        yield DownloadManager(nursery, max_concurrent=max_concurrent, overall_limit=overall_limit)


# -- the seed system's call --------------------------------------------------------------


def download_model(
    url: str,
    model_type: str,
    folder: str | os.PathLike[str],
    progress_callback: Callable[[dict[str, object]], None] | None = None,
    civitai_token: str | None = None,
    hf_token: str | None = None,
) -> str:
    """The seed system's ``download_model``: download *url* into *folder*, return the path.

    *progress_callback* receives each event as a dict with a ``status`` key
    (``started``, ``progress``, ``success``, ``error``, …) besides the event's fields.
    *model_type* is recorded in the events; the folder is the caller's choice.
    """

    def emit(event: Event) -> None:
        if progress_callback is not None:
            data = event.to_dict()
            data["status"] = data["type"]
            data["model_type"] = model_type
            progress_callback(data)

    result = download_sync(
        url, folder, on_event=emit, civitai_token=civitai_token, hf_token=hf_token
    )
    return result.path
