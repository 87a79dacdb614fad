"""Many downloads: a queue, a concurrency limit, pause and resume, rate limits.

The one download manager: the library's :func:`segdl.open_manager` and the server's queue
(:mod:`segdl.server.downloads`, which adds subscribers, replies and its queue file) are both
this.  States::

      queued ───▶ running ───▶ done | failed
       │  ▲          │
 pause │  │ resume   │ pause
       ▼  │          │
      paused ◀───────┘         (queued, running or paused) ── cancel ──▶ cancelled

Pausing cancels the run for real (no connection, no slot; the partial file and its control
file stay); resuming queues a new run, which first waits for the paused one to have closed the
file, then continues from the control file.  Every connection of a download passes through the
manager's overall :class:`RateLimit` and the download's own.
"""

from __future__ import annotations

import enum
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Literal, Unpack

import trio

from ..core.events import Aborted, Event, Success
from ..engine.base import EventSink
from ..engine.throttle import RateLimit
from ..errors import DownloadError
from .flow import run_download
from .request import DownloadRequest, RequestArgs, build_request

__all__ = [
    "Change",
    "DownloadHandle",
    "DownloadManager",
    "DownloadState",
    "open_manager",
]


class DownloadState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = (DownloadState.DONE, DownloadState.FAILED, DownloadState.CANCELLED)
UNFINISHED_STATES = (DownloadState.QUEUED, DownloadState.RUNNING, DownloadState.PAUSED)
# Seconds a stopping run may take to close its file before the next run is reported.
CLEANUP_TIMEOUT = 10.0

# What a manager tells its listener: a run waits for a slot, starts, or stops for good or for
# a pause (once it has stopped: file closed, state saved).
Change = Literal["waiting", "running", "paused", "done", "failed", "cancelled"]
Listener = Callable[["DownloadHandle", Change], None]
# What runs one download (the flow; tests put a fake here).
RunDownload = Callable[[DownloadRequest, EventSink], Awaitable[Success]]


class DownloadHandle:
    """One download submitted to a :class:`DownloadManager`.

    ``pause()`` stops it for real (no connection stays open; the partial file and its
    control file stay) and ``resume()`` queues it again, continuing from the control file.
    ``limit`` is this download's own :class:`RateLimit` (unlimited until ``set_limit``).
    """

    def __init__(
        self,
        id: int,
        request: DownloadRequest,
        manager: DownloadManager,
        on_event: EventSink | None,
    ) -> None:
        self.id = id
        self.request = request
        self.state = DownloadState.QUEUED
        self.result: Success | None = None
        self.error: DownloadError | None = None
        self.last_event: Event | None = None
        self.limit = RateLimit()
        self._manager = manager
        #: Where this download's events go (may be set until its first run starts).
        self.on_event = on_event
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()  # the current run has ended (file closed, state saved)
        self._stopped.set()  # no run yet
        self._finished = trio.Event()
        self._end_reported = False

    @property
    def url(self) -> str | tuple[str, ...]:
        """The URL(s) as given: one string, or all of them when there are mirrors."""
        urls = self.request.urls
        return urls[0] if len(urls) == 1 else urls

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
            if self._stopped.is_set():  # else the stopping run reports it
                self._manager._report_end(self)
        self._scope.cancel()

    def replace_request(self, request: DownloadRequest) -> None:
        """Use *request* from the next run on (fresher tokens or URL); not while running."""
        if self.state is DownloadState.RUNNING:
            raise RuntimeError("a running download's request cannot change")
        self.request = request

    @property
    def running(self) -> bool:
        """A run is under way (possibly stopping after a pause or cancel)."""
        return not self._stopped.is_set()

    async def wait(self) -> Success:
        """Wait for the end; return the result or raise its error (cancelled: DownloadError)."""
        await self._finished.wait()
        if self.result is not None:
            return self.result
        if self.error is not None:
            raise self.error
        raise DownloadError("download cancelled")

    def _emit(self, event: Event) -> None:
        if isinstance(event, Aborted) and self.state is DownloadState.PAUSED:
            return  # a pause, not the end
        self.last_event = event
        if self.on_event is not None:
            self.on_event(event)


class DownloadManager:
    """Runs submitted downloads, at most ``max_concurrent`` at a time, in one nursery.

    ``limit`` is an overall :class:`RateLimit` shared by every download of the manager.
    *listener*, if given, hears of every run's changes (see :data:`Change`); *run* runs one
    download (the download flow).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        max_concurrent: int = 5,
        overall_limit: float | None = None,
        listener: Listener | None = None,
        run: RunDownload = run_download,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._nursery = nursery
        self._slots = trio.CapacityLimiter(max_concurrent)
        self._next_id = 1
        self._listener = listener
        self._run_download = run
        self.limit = RateLimit(overall_limit)
        self.downloads: dict[int, DownloadHandle] = {}

    def submit(
        self,
        url: str | Sequence[str],
        directory: str | os.PathLike[str] = ".",
        *,
        on_event: EventSink | None = None,
        **kwargs: Unpack[RequestArgs],
    ) -> DownloadHandle:
        """Queue a download; it starts when a slot is free.  Arguments as :func:`download`.

        Raises:
            DownloadError: the arguments cannot make a download (a bad URL, an unknown
                engine); nothing was queued.
        """
        return self.add(build_request(url, directory, **kwargs), on_event=on_event)

    def add(
        self,
        request: DownloadRequest,
        *,
        on_event: EventSink | None = None,
        handle_id: int | None = None,
        paused: bool = False,
    ) -> DownloadHandle:
        """Queue a built *request* (or keep it *paused* until resumed).

        *handle_id* keeps an id given earlier (a queue restored after a restart); new ids are
        always above every id seen.
        """
        if handle_id is None:
            handle_id = self._next_id
        if handle_id in self.downloads:
            raise ValueError(f"download {handle_id} exists already")
        self._next_id = max(self._next_id, handle_id + 1)
        handle = DownloadHandle(handle_id, request, self, on_event)
        self.downloads[handle.id] = handle
        if paused:
            handle.state = DownloadState.PAUSED
        else:
            self._start(handle)
        return handle

    def forget(self, handle: DownloadHandle) -> None:
        """Drop an ended download from ``downloads`` (a long-lived manager's history)."""
        if handle.state not in FINAL_STATES:
            raise ValueError(f"download {handle.id} has not ended")
        self.downloads.pop(handle.id, None)

    @property
    def next_id(self) -> int:
        """The id the next new download gets."""
        return self._next_id

    def reserve_ids(self, next_id: int) -> None:
        """Never hand out an id below *next_id* (ids a previous manager gave out)."""
        self._next_id = max(self._next_id, next_id)

    def waiting(self) -> int:
        """Downloads waiting for a slot."""
        return sum(1 for h in self.downloads.values() if h.state is DownloadState.QUEUED)

    def set_overall_limit(self, bytes_per_second: float | None) -> None:
        """Change the limit shared by all downloads (``None``: unlimited), while they run."""
        self.limit.set(bytes_per_second)

    def statistics(self) -> dict[str, int]:
        """Counts by state, and the slots in use."""
        counts = {state.value: 0 for state in DownloadState}
        for handle in self.downloads.values():
            counts[handle.state.value] += 1
        return {**counts, "slots_in_use": int(self._slots.borrowed_tokens)}

    def _start(self, handle: DownloadHandle) -> None:
        previous = handle._stopped
        handle._scope = trio.CancelScope()
        handle._stopped = trio.Event()
        self._nursery.start_soon(self._run, handle, previous)

    def _changed(self, handle: DownloadHandle, change: Change) -> None:
        if self._listener is not None:
            self._listener(handle, change)

    def _report_end(self, handle: DownloadHandle) -> None:
        if not handle._end_reported:
            handle._end_reported = True
            self._changed(handle, _final_change(handle.state))

    async def _run(self, handle: DownloadHandle, previous: trio.Event) -> None:
        try:
            with handle._scope:
                # A resumed download waits until its paused run has closed the file.
                await previous.wait()
                if self._slots.borrowed_tokens >= self._slots.total_tokens:
                    self._changed(handle, "waiting")
                async with self._slots:
                    if handle._scope.cancel_called:
                        return  # paused or cancelled while the slot was handed over
                    handle.state = DownloadState.RUNNING
                    self._changed(handle, "running")
                    limits = (self.limit, handle.limit, *handle.request.limits)
                    handle.result = await self._run_download(
                        _with_limits(handle.request, limits), handle._emit
                    )
                    handle.state = DownloadState.DONE
        except DownloadError as exc:
            handle.error = exc
            handle.state = DownloadState.FAILED
        finally:
            if not previous.is_set():
                # Stopped while the previous run was still closing the file: report in order,
                # that run's end first.
                with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                    await previous.wait()
            handle._stopped.set()
            if handle.state is DownloadState.PAUSED:
                self._changed(handle, "paused")
            else:
                if handle.state not in FINAL_STATES:
                    handle.state = DownloadState.CANCELLED
                handle._finished.set()
                self._report_end(handle)

    async def wait_all(self) -> list[DownloadHandle]:
        """Wait until every download has ended (paused ones count once resumed and ended)."""
        for handle in list(self.downloads.values()):
            await handle._finished.wait()
        return list(self.downloads.values())


def _final_change(state: DownloadState) -> Change:
    if state is DownloadState.DONE:
        return "done"
    if state is DownloadState.FAILED:
        return "failed"
    return "cancelled"


def _with_limits(request: DownloadRequest, limits: tuple[RateLimit, ...]) -> DownloadRequest:
    return replace(request, limits=limits)


@asynccontextmanager
async def open_manager(
    *, max_concurrent: int = 5, overall_limit: float | None = None
) -> AsyncIterator[DownloadManager]:
    """A :class:`DownloadManager` whose downloads end (or are waited for) with the block.

    Paused downloads keep the block open until resumed or cancelled.
    """
    async with trio.open_nursery() as nursery:
        yield DownloadManager(nursery, max_concurrent=max_concurrent, overall_limit=overall_limit)
