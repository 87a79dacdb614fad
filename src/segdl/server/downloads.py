"""The server's download queue: ids, states, a concurrency limit, shared downloads, fan-out.

Each download (a :class:`Job`) runs :func:`segdl.download` in the server's nursery under a
cancel scope of its own run, at most ``max_concurrent`` at a time.  Every request for it is a
:class:`Subscriber` (a client's outbox and the request's id); events go to every subscriber
without waiting, so a client never slows a download.  The same URL into the same folder asked
again while the first is unfinished joins it.  A client going away only drops its
subscriptions: the download goes on.

States::

      queued ───▶ running ───▶ done | failed
       │  ▲          │
 pause │  │ resume   │ pause
       ▼  │          │
      paused ◀───────┘         (queued, running or paused) ── cancel ──▶ cancelled

Pausing cancels the run for real (no connection, no slot; the partial file and its control
file stay) and every subscriber is told ``paused`` once it has stopped; resuming queues a new
run, which continues from the control file.  Every connection of a download passes through
two rate limits (:class:`~segdl.engine.throttle.RateLimit`): the server's overall one and the
job's own.

Unfinished jobs are kept in the queue file (:mod:`.queuefile`), rewritten in a worker thread
after every change, so a restarted server takes them up again.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import trio

from ..core.events import Event, Metadata, Progress, Started, Success
from ..engine.options import Options
from ..engine.throttle import RateLimit
from ..errors import DownloadError, FileExists, redact_url
from . import messages
from .outbox import Message, Outbox
from .queuefile import SavedJob, SavedQueue, SavedState, strip_secrets, write_queue_file

__all__ = [
    "DownloadFunction",
    "DownloadQueue",
    "Job",
    "JobError",
    "JobState",
    "Subscriber",
]

log = logging.getLogger("segdl.server")

# At most about two progress messages a second per download (as sd-inference-server).
PROGRESS_INTERVAL = 0.5
# Finished downloads kept for the ``downloads`` listing.
HISTORY = 100
# Seconds a run that is being stopped may take to save its control file, and the queue file
# may take to be written when the server stops.
CLEANUP_TIMEOUT = 10.0


class DownloadFunction(Protocol):
    """:func:`segdl.download`'s shape, as the queue calls it."""

    def __call__(
        self,
        url: str,
        directory: str | os.PathLike[str],
        *,
        options: Options | None = ...,
        engine: str = ...,
        on_event: Callable[[Event], None] | None = ...,
        civitai_token: str | None = ...,
        hf_token: str | None = ...,
        limits: Sequence[RateLimit] = ...,
    ) -> Awaitable[Success]: ...


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (JobState.QUEUED, JobState.RUNNING)
UNFINISHED = (JobState.QUEUED, JobState.RUNNING, JobState.PAUSED)
ENDED = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
_SAVED: dict[JobState, SavedState] = {
    JobState.QUEUED: "queued",
    JobState.RUNNING: "running",
    JobState.PAUSED: "paused",
}


class JobError(Exception):
    """A command that does not apply to the job in its state (the message says why)."""


@dataclass(frozen=True, eq=False)
class Subscriber:
    outbox: Outbox
    request_id: int


@dataclass(eq=False)
class _Run:
    """One attempt at a job: from queued to stopped, under its own cancel scope."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    # Why the scope was cancelled; None when it was not us (the server is stopping).
    stop: Literal["pause", "cancel"] | None = None


@dataclass(eq=False)
class Job:
    id: int
    url: str
    folder: str
    directory: Path
    civitai_token: str | None = field(default=None, repr=False)
    hf_token: str | None = field(default=None, repr=False)
    state: JobState = JobState.QUEUED
    started: Started | None = None
    metadata: Metadata | None = None
    progress: Progress | None = None
    path: str | None = None
    message: str | None = None
    # What the queue file remembered, until this server's run reports anew.
    label: str | None = None
    downloaded: int = 0
    total: int | None = None
    limit: RateLimit = field(default_factory=RateLimit)
    subscribers: list[Subscriber] = field(default_factory=list)
    finished: trio.Event = field(default_factory=trio.Event)
    run: _Run | None = None
    _last_progress: float = -1e9

    @property
    def limit_rate(self) -> int | None:
        rate = self.limit.rate
        return None if rate is None else int(rate)

    def summary(self) -> dict[str, Any]:
        """The job as the ``downloads`` reply lists it (no tokens, no signed query strings)."""
        progress = self.progress
        downloaded = progress.downloaded if progress else self.downloaded
        total = progress.total if progress else (self.started.size if self.started else None)
        if total is None:
            total = self.total
        fraction = progress.progress if progress else (downloaded / total if total else 0.0)
        return {
            "id": self.id,
            "url": redact_url(self.url),
            "type": self.folder,
            "state": self.state.value,
            "label": self.started.filename if self.started else self.label,
            "progress": 1.0 if self.state is JobState.DONE else fraction,
            "rate": progress.rate if progress and self.state is JobState.RUNNING else 0.0,
            "eta": progress.eta if progress and self.state is JobState.RUNNING else None,
            "downloaded": downloaded,
            "total": total,
            "limit": self.limit_rate,
            "path": self.path,
            "message": self.message,
            "clients": len(self.subscribers),
        }


def _download_key(url: str) -> str:
    """What two requests for the same download have in common: the URL without secrets."""
    return strip_secrets(url) or url


class DownloadQueue:
    """Downloads into ``models_dir/<folder>``, at most ``max_concurrent`` at once.

    With *queue_file*, unfinished jobs are saved there after every change (see
    :meth:`restore` for the other way).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        models_dir: Path,
        *,
        max_concurrent: int = 3,
        options: Options | None = None,
        engine: str = "native",
        download: DownloadFunction | None = None,
        overall_limit: RateLimit | None = None,
        queue_file: Path | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if download is None:
            from ..api import download as library_download

            download = library_download
        self._nursery = nursery
        self._models_dir = models_dir
        self._slots = trio.CapacityLimiter(max_concurrent)
        self._options = options
        self._engine = engine
        self._download = download
        #: Shared by every download: the server's overall bandwidth limit.
        self.overall_limit = overall_limit if overall_limit is not None else RateLimit()
        self._next_id = 1
        self._jobs: dict[int, Job] = {}
        self._dirty = trio.Event()
        self._save_failing = False
        if queue_file is not None:
            nursery.start_soon(self._save_loop, queue_file)

    # -- queries

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def waiting(self) -> int:
        """Downloads waiting for a slot (the ``queue`` field of ``ack``)."""
        return sum(1 for job in self._jobs.values() if job.state is JobState.QUEUED)

    def find(self, outbox: Outbox, request_id: int) -> Job | None:
        """The job a client's request subscribed to (the latest, if the id was reused)."""
        for job in reversed(self._jobs.values()):
            if any(s.outbox is outbox and s.request_id == request_id for s in job.subscribers):
                return job
        return None

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    # -- commands

    def submit(
        self,
        url: str,
        folder: str,
        subscriber: Subscriber,
        *,
        civitai_token: str | None = None,
        hf_token: str | None = None,
    ) -> Job:
        """Start (or queue) a download, or join the unfinished one for the same URL and folder.

        Joining a paused download resumes it.  URLs are compared without their secrets, so a
        request with ``?token=`` finds the job the queue file brought back without it.
        """
        key = _download_key(url)
        for job in self._jobs.values():
            if job.state in UNFINISHED and job.folder == folder and _download_key(job.url) == key:
                if job.state is not JobState.RUNNING:
                    # Not started yet: this request's URL and tokens are the freshest.
                    job.url = url
                    job.civitai_token = civitai_token or job.civitai_token
                    job.hf_token = hf_token or job.hf_token
                job.subscribers.append(subscriber)
                if job.state is JobState.PAUSED:
                    log.info("download %d asked for again: resuming", job.id)
                    self._start(job)
                else:
                    self._replay(job, subscriber)
                return job
        job = Job(
            id=self._new_id(),
            url=url,
            folder=folder,
            directory=self._models_dir / folder,
            civitai_token=civitai_token,
            hf_token=hf_token,
            subscribers=[subscriber],
        )
        self._jobs[job.id] = job
        self._forget_old()
        log.info("download %d queued: %s into %s", job.id, redact_url(url), folder)
        self._start(job)
        return job

    def subscribe(self, job: Job, subscriber: Subscriber) -> None:
        """Send *job*'s events to *subscriber* too (a client that addressed it by job id)."""
        if any(
            s.outbox is subscriber.outbox and s.request_id == subscriber.request_id
            for s in job.subscribers
        ):
            return
        job.subscribers.append(subscriber)
        if job.state in ACTIVE:
            self._replay(job, subscriber)

    def cancel(self, job: Job) -> None:
        """Stop *job* for real; its partial file and sidecar stay, so asking again resumes.
        Every subscriber is told ``aborted`` when it has stopped."""
        if job.state in ENDED:
            return
        run = job.run
        if run is not None and not run.done.is_set():
            run.stop = "cancel"
            run.scope.cancel()  # its end reports it
            return
        self._cancelled(job)

    def pause(self, job: Job) -> None:
        """Stop *job* for real and keep it, paused, until :meth:`resume`; every subscriber is
        told ``paused`` once it has stopped.  Pausing a paused job does nothing.

        Raises:
            JobError: the job has ended.
        """
        if job.state in ENDED:
            raise JobError(f"download {job.id} has already ended ({job.state.value})")
        if job.state is JobState.PAUSED:
            return
        job.state = JobState.PAUSED
        log.info("download %d pausing", job.id)
        run = job.run
        if run is not None:
            run.stop = "pause"
            run.scope.cancel()
        self._changed()

    def resume(self, job: Job) -> None:
        """Queue a paused *job* again; it continues from its control file.  Resuming a
        queued or running job does nothing.

        Raises:
            JobError: the job has ended (ask for its URL again to resume its partial file).
        """
        if job.state in ENDED:
            raise JobError(
                f"download {job.id} has already ended ({job.state.value}); "
                "ask for it again to continue it"
            )
        if job.state is JobState.PAUSED:
            log.info("download %d resumed", job.id)
            self._start(job)

    def set_limit(self, job: Job, rate: int | None) -> None:
        """Limit *job* to *rate* bytes a second (``None``: no limit of its own); running
        connections follow at once."""
        job.limit.set(rate)
        self._changed()

    def transfer(self, old: Outbox, new: Outbox) -> int:
        """Send what was *old*'s to *new*, under the same request ids (a client reconnected);
        returns how many subscriptions moved."""
        moved = 0
        for job in self._jobs.values():
            kept = [s for s in job.subscribers if s.outbox is not old]
            for subscriber in job.subscribers:
                if subscriber.outbox is old and not any(
                    s.outbox is new and s.request_id == subscriber.request_id for s in kept
                ):
                    kept.append(Subscriber(new, subscriber.request_id))
                    moved += 1
            job.subscribers = kept
        return moved

    def unsubscribe(self, outbox: Outbox) -> None:
        """Forget a client that went away; its downloads go on."""
        for job in self._jobs.values():
            job.subscribers = [s for s in job.subscribers if s.outbox is not outbox]

    # -- the queue file

    def restore(self, saved: SavedQueue) -> None:
        """Take up the jobs of a queue file: queued and running ones start again (from their
        control files), paused ones wait for :meth:`resume`.  Their ids are kept."""
        self._next_id = max(self._next_id, saved.next_id)
        for entry in saved.jobs:
            if entry.id in self._jobs:
                continue
            job = Job(
                id=entry.id,
                url=entry.url,
                folder=entry.folder,
                directory=self._models_dir / entry.folder,
                state=JobState.PAUSED,
                label=entry.label,
                downloaded=entry.downloaded,
                total=entry.total,
                limit=RateLimit(entry.limit),
            )
            self._jobs[job.id] = job
            self._next_id = max(self._next_id, job.id + 1)
            log.info("download %d restored (%s): %s", job.id, entry.state, redact_url(job.url))
            if entry.state != "paused":
                self._start(job)
        self._changed()

    def snapshot(self) -> SavedQueue:
        """The unfinished jobs, as the queue file keeps them."""
        jobs = []
        for job in self._jobs.values():
            if job.state not in UNFINISHED:
                continue
            progress = job.progress
            jobs.append(
                SavedJob(
                    id=job.id,
                    url=job.url,  # its secrets are stripped when written
                    folder=job.folder,
                    state=_SAVED[job.state],
                    label=job.started.filename if job.started else job.label,
                    limit=job.limit_rate,
                    downloaded=progress.downloaded if progress else job.downloaded,
                    total=progress.total if progress and progress.total else job.total,
                )
            )
        return SavedQueue(next_id=self._next_id, jobs=tuple(jobs))

    def _changed(self) -> None:
        self._dirty.set()

    async def _save_loop(self, path: Path) -> None:
        try:
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                await self._save(path)
        finally:
            # The server is stopping: what changed last must still reach the disk.
            if self._dirty.is_set():
                with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                    await self._save(path)

    async def _save(self, path: Path) -> None:
        snapshot = self.snapshot()
        try:
            # A thread: an fsync may wait behind gigabytes of model data being written.
            await trio.to_thread.run_sync(write_queue_file, path, snapshot)
        except Exception as exc:  # OSError, or a bug: neither may stop the server
            if not self._save_failing:
                reason = exc if isinstance(exc, OSError) else f"internal error: {exc!r}"
                log.warning("WARNING: cannot write the queue file %s: %s", path, reason)
            self._save_failing = True
        else:
            self._save_failing = False

    # -- running

    def _new_id(self) -> int:
        job_id = self._next_id
        self._next_id += 1
        return job_id

    def _start(self, job: Job) -> None:
        previous = job.run
        run = _Run()
        job.run = run
        job.state = JobState.QUEUED
        job.message = None
        self._changed()
        after = previous.done if previous is not None else None
        self._nursery.start_soon(self._run, job, run, after)

    async def _run(self, job: Job, run: _Run, after: trio.Event | None) -> None:
        ended = False
        try:
            with run.scope:
                if after is not None:
                    # The previous run of this job is still saving its control file.
                    await after.wait()
                if self._slots.borrowed_tokens >= self._slots.total_tokens:
                    self._send(job, lambda id: messages.download_queued(id, self.waiting()))
                async with self._slots:
                    if not run.scope.cancel_called:  # paused while the slot was handed over
                        job.state = JobState.RUNNING
                        self._changed()
                        log.info("download %d running", job.id)
                    result = await self._call(job)
                ended = True
                self._finish(job, result)
        except DownloadError as exc:
            if run.stop is None:
                ended = True
                self._fail(job, _client_message(exc, job), exc.exit_code)
        except Exception as exc:
            if run.stop is None:
                ended = True
                # A bug of ours must not take the server (and every other download) down.
                log.error("download %d: internal error: %s", job.id, type(exc).__name__)
                self._fail(job, f"internal error: {type(exc).__name__}", 1)
        finally:
            if not ended:
                if after is not None and not after.is_set():
                    # Report in order: the previous run's end first.
                    with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                        await after.wait()
                self._stopped(job, run)
            run.done.set()

    def _call(self, job: Job) -> Awaitable[Success]:
        def on_event(event: Event) -> None:
            self._on_event(job, event)

        return self._download(
            job.url,
            job.directory,
            options=self._options,
            engine=self._engine,
            on_event=on_event,
            civitai_token=job.civitai_token,
            hf_token=job.hf_token,
            limits=(self.overall_limit, job.limit),
        )

    def _stopped(self, job: Job, run: _Run) -> None:
        """A run ended without an outcome: paused, cancelled, or the server is stopping."""
        if run.stop == "pause":
            log.info("download %d paused", job.id)
            self._send(job, lambda id: messages.paused(id))
        elif run.stop == "cancel":
            self._cancelled(job)
        # Otherwise the server is stopping: the queue file keeps the job as it was, so the
        # next server takes it up again.

    def _cancelled(self, job: Job) -> None:
        job.state = JobState.CANCELLED
        log.info("download %d cancelled", job.id)
        self._send(job, lambda id: messages.envelope("aborted", {}, id))
        job.finished.set()
        self._changed()

    def _finish(self, job: Job, result: Success) -> None:
        path = Path(result.path).resolve()
        if not path.is_relative_to(job.directory.resolve()):
            # segdl.download sanitises names, so this is a defence in depth.
            self._fail(job, "refused: the file would be outside the models directory", 1)
            return
        job.state = JobState.DONE
        job.path = path.relative_to(self._models_dir.resolve()).as_posix()
        job.finished.set()
        self._changed()
        log.info("download %d done: %s", job.id, job.path)
        self._send(
            job,
            lambda id: messages.download_success(
                id,
                label=path.name,
                path=job.path or "",
                size=result.size,
                sha256=result.sha256,
            ),
        )

    def _fail(self, job: Job, message: str, code: int) -> None:
        job.state = JobState.FAILED
        job.message = message
        job.finished.set()
        self._changed()
        log.info("download %d failed: %s", job.id, message)
        self._send(job, lambda id: messages.download_error(id, message, code))

    def _on_event(self, job: Job, event: Event) -> None:
        if isinstance(event, Started):
            job.started = event
            self._changed()  # the queue file keeps the file name
            self._send(job, lambda id: messages.download_started(id, event))
        elif isinstance(event, Metadata):
            job.metadata = event
            self._send(job, lambda id: messages.download_metadata(id, event))
        elif isinstance(event, Progress):
            job.progress = event
            now = trio.current_time()
            if now - job._last_progress >= PROGRESS_INTERVAL or event.progress >= 1.0:
                job._last_progress = now
                self._send(job, lambda id: messages.download_progress(id, event), coalesce=True)
        # Success, Error and Cancelled: the outcome of the call says it, in _run.

    def _replay(self, job: Job, subscriber: Subscriber) -> None:
        """Bring a client that joined a running download up to date."""
        id = subscriber.request_id
        if job.state is JobState.QUEUED:
            subscriber.outbox.put(messages.download_queued(id, self.waiting()))
        if job.started is not None:
            subscriber.outbox.put(messages.download_started(id, job.started))
        if job.metadata is not None:
            subscriber.outbox.put(messages.download_metadata(id, job.metadata))
        if job.progress is not None:
            subscriber.outbox.put(
                messages.download_progress(id, job.progress), coalesce=("progress", id)
            )

    def _send(self, job: Job, build: Callable[[int], Message], *, coalesce: bool = False) -> None:
        for subscriber in job.subscribers:
            key = ("progress", subscriber.request_id) if coalesce else None
            subscriber.outbox.put(build(subscriber.request_id), coalesce=key)

    def _forget_old(self) -> None:
        finished = [job.id for job in self._jobs.values() if job.state in ENDED]
        for job_id in finished[: max(0, len(finished) - HISTORY)]:
            del self._jobs[job_id]


def _client_message(exc: DownloadError, job: Job) -> str:
    """The error as a UI user reads it: no command-line advice, no server paths."""
    if isinstance(exc, FileExists):
        return (
            f"a file of that name is already in the {job.folder} folder and segdl cannot "
            "tell it is this one; delete or rename it to download again"
        )
    return str(exc)
