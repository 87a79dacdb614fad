"""The server's download queue: ids, states, a concurrency limit, shared downloads, fan-out.

Each download (a :class:`Job`) runs :func:`segdl.download` in the server's nursery under its
own cancel scope, at most ``max_concurrent`` at a time.  Every request for it is a
:class:`Subscriber` (a client's outbox and the request's id); events go to every subscriber
without waiting, so a client never slows a download.  The same URL into the same folder asked
again while the first is queued or running joins it.  A client going away only drops its
subscriptions: the download goes on.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from ..core.events import Event, Metadata, Progress, Started, Success
from ..engine.options import Options
from ..errors import DownloadError, redact_url
from . import messages
from .outbox import Message, Outbox

__all__ = ["DownloadQueue", "Job", "JobState", "Subscriber"]

log = logging.getLogger("segdl.server")

# At most about two progress messages a second per download (as sd-inference-server).
PROGRESS_INTERVAL = 0.5
# Finished downloads kept for the ``downloads`` listing.
HISTORY = 100


class DownloadFunction(Protocol):
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
    ) -> Awaitable[Success]: ...


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True, eq=False)
class Subscriber:
    outbox: Outbox
    request_id: int


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
    subscribers: list[Subscriber] = field(default_factory=list)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)
    _last_progress: float = -1e9

    def summary(self) -> dict[str, Any]:
        """The job as the ``downloads`` reply lists it (no tokens, no signed query strings)."""
        progress = self.progress
        fraction = progress.progress if progress else 0.0
        return {
            "id": self.id,
            "url": redact_url(self.url),
            "type": self.folder,
            "state": self.state.value,
            "label": self.started.filename if self.started else None,
            "progress": 1.0 if self.state is JobState.DONE else fraction,
            "rate": progress.rate if progress else 0.0,
            "eta": progress.eta if progress else None,
            "downloaded": progress.downloaded if progress else 0,
            "total": progress.total if progress else (self.started.size if self.started else None),
            "path": self.path,
            "message": self.message,
            "clients": len(self.subscribers),
        }


class DownloadQueue:
    """Downloads into ``models_dir/<folder>``, at most ``max_concurrent`` at once."""

    def __init__(
        self,
        nursery: trio.Nursery,
        models_dir: Path,
        *,
        max_concurrent: int = 3,
        options: Options | None = None,
        engine: str = "native",
        download: DownloadFunction | None = None,
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
        self._ids = itertools.count(1)
        self._jobs: dict[int, Job] = {}

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
        """Start (or queue) a download, or join the active one for the same URL and folder."""
        for job in self._jobs.values():
            if job.state in ACTIVE and job.url == url and job.folder == folder:
                job.subscribers.append(subscriber)
                self._replay(job, subscriber)
                return job
        job = Job(
            id=next(self._ids),
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
        self._nursery.start_soon(self._run, job)
        return job

    def cancel(self, job: Job) -> None:
        """Stop *job* for real; its partial file and sidecar stay, so asking again resumes.
        Every subscriber is told ``aborted`` when it has stopped."""
        job.scope.cancel()

    def unsubscribe(self, outbox: Outbox) -> None:
        """Forget a client that went away; its downloads go on."""
        for job in self._jobs.values():
            job.subscribers = [s for s in job.subscribers if s.outbox is not outbox]

    # -- running

    async def _run(self, job: Job) -> None:
        try:
            with job.scope:
                if self._slots.borrowed_tokens >= self._slots.total_tokens:
                    self._send(job, lambda id: messages.download_queued(id, self.waiting()))
                async with self._slots:
                    job.state = JobState.RUNNING
                    log.info("download %d running", job.id)
                    result = await self._download(
                        job.url,
                        job.directory,
                        options=self._options,
                        engine=self._engine,
                        on_event=lambda event: self._on_event(job, event),
                        civitai_token=job.civitai_token,
                        hf_token=job.hf_token,
                    )
                    self._finish(job, result)
        except DownloadError as exc:
            self._fail(job, str(exc), exc.exit_code)
        except Exception as exc:
            # A bug of ours must not take the server (and every other download) down.
            log.error("download %d: internal error: %s", job.id, type(exc).__name__)
            self._fail(job, f"internal error: {type(exc).__name__}", 1)
        finally:
            if job.state in ACTIVE:
                job.state = JobState.CANCELLED
                log.info("download %d cancelled", job.id)
                self._send(job, lambda id: messages.envelope("aborted", {}, id))
            job.finished.set()

    def _finish(self, job: Job, result: Success) -> None:
        path = Path(result.path).resolve()
        if not path.is_relative_to(job.directory.resolve()):
            # segdl.download sanitises names, so this is a defence in depth.
            self._fail(job, "refused: the file would be outside the models directory", 1)
            return
        job.state = JobState.DONE
        job.path = path.relative_to(self._models_dir.resolve()).as_posix()
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
        log.info("download %d failed: %s", job.id, message)
        self._send(job, lambda id: messages.download_error(id, message, code))

    def _on_event(self, job: Job, event: Event) -> None:
        if isinstance(event, Started):
            job.started = event
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
        finished = [job.id for job in self._jobs.values() if job.state not in ACTIVE]
        for job_id in finished[: max(0, len(finished) - HISTORY)]:
            del self._jobs[job_id]
