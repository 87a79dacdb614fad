"""The server's download queue: the library's manager, plus what only the server has.

Running, queueing, pausing, resuming, cancelling and limiting downloads is the
:class:`~segdl.jobs.manager.DownloadManager`'s, as for any library user (its states are the
server's ``downloads`` states).  Kept here is what belongs to the server:

* **subscribers**: every request for a download is a :class:`Subscriber` (a client's outbox
  and the request's id); each event goes to every subscriber without waiting, so a client never
  slows a download, and a client that joins late is brought up to date (replay).  The same URL
  into the same folder asked again while the first is unfinished joins it; a client going away
  only drops its subscriptions, the download goes on;
* the **replies** in the protocol's shapes (:mod:`.messages`), progress as the engine emits it
  (about two a second; a slow client's outbox keeps only the latest);
* the **queue file** (:mod:`.queuefile`): unfinished jobs, rewritten in a worker thread after
  every change, so a restarted server takes them up again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from ..core.events import Event, Metadata, Progress, Started
from ..core.folders import AUTO
from ..engine.options import ModelFileOptions, Options
from ..errors import DownloadError, DuplicateModel, FileExists, redact_url
from ..jobs.manager import (
    FINAL_STATES,
    UNFINISHED_STATES,
    Change,
    DownloadHandle,
    DownloadManager,
    DownloadState,
    RunDownload,
)
from ..jobs.request import DownloadRequest, build_request
from . import messages
from .outbox import Message, Outbox
from .queuefile import SavedJob, SavedQueue, SavedState, strip_secrets, write_queue_file

__all__ = [
    "FINAL_STATES",
    "DownloadQueue",
    "Job",
    "JobError",
    "JobState",
    "RunDownload",
    "Subscriber",
]

log = logging.getLogger("segdl.server")

# Finished downloads kept for the ``downloads`` listing.
HISTORY = 100
# Seconds the queue file may take to be written when the server stops.
CLEANUP_TIMEOUT = 10.0

# One state machine: the manager's.
JobState = DownloadState
ACTIVE = (JobState.QUEUED, JobState.RUNNING)
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
class Job:
    """A download as the server shows it: the manager's handle and what clients saw of it."""

    handle: DownloadHandle
    folder: str
    started: Started | None = None
    metadata: Metadata | None = None
    progress: Progress | None = None
    path: str | None = None
    message: str | None = None
    # What the queue file remembered, until this server's run reports anew.
    label: str | None = None
    downloaded: int = 0
    total: int | None = None
    subscribers: list[Subscriber] = field(default_factory=list)

    @property
    def id(self) -> int:
        return self.handle.id

    @property
    def state(self) -> JobState:
        return self.handle.state

    @property
    def url(self) -> str:
        return self.handle.request.source.url

    @property
    def directory(self) -> Path:
        return self.handle.request.directory

    @property
    def limit_rate(self) -> int | None:
        rate = self.handle.limit.rate
        return None if rate is None else int(rate)

    def summary(self) -> dict[str, Any]:
        """The job as the ``downloads`` reply lists it (no tokens, no signed query strings)."""
        progress = self.progress
        downloaded = progress.downloaded if progress else self.downloaded
        total = progress.total if progress else (self.started.size if self.started else None)
        if total is None:
            total = self.total
        fraction = progress.progress if progress else (downloaded / total if total else 0.0)
        running = self.state is JobState.RUNNING
        return {
            "id": self.id,
            "url": redact_url(self.url),
            "type": self.folder,
            "state": self.state.value,
            "label": self.started.filename if self.started else self.label,
            "progress": 1.0 if self.state is JobState.DONE else fraction,
            "rate": progress.rate if progress and running else 0.0,
            "eta": progress.eta if progress and running else None,
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
    :meth:`restore` for the other way).  *run* replaces the download flow (tests).  Every
    download looks for a copy of the model already under *models_dir* (linked into place with
    *link_existing*) and writes the site's metadata files beside the model; the folder
    ``auto`` is chosen from the model's type.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        models_dir: Path,
        *,
        max_concurrent: int = 3,
        options: Options | None = None,
        engine: str = "native",
        run: RunDownload | None = None,
        overall_limit: float | None = None,
        queue_file: Path | None = None,
        link_existing: bool = False,
    ) -> None:
        self._link_existing = link_existing
        extra = {"run": run} if run is not None else {}
        self._manager = DownloadManager(
            nursery,
            max_concurrent=max_concurrent,
            overall_limit=overall_limit,
            listener=self._on_change,
            **extra,
        )
        self._models_dir = models_dir
        self._options = options
        self._engine = engine
        self._jobs: dict[int, Job] = {}
        self._dirty = trio.Event()
        self._save_failing = False
        if queue_file is not None:
            nursery.start_soon(self._save_loop, queue_file)

    @property
    def overall_limit(self) -> Any:
        """Shared by every download: the server's overall bandwidth limit (a RateLimit)."""
        return self._manager.limit

    # -- queries

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def waiting(self) -> int:
        """Downloads waiting for a slot (the ``queue`` field of ``ack``)."""
        return self._manager.waiting()

    def find(self, outbox: Outbox, request_id: int) -> Job | None:
        """The job a client's request subscribed to (the latest, if the id was reused)."""
        for job in reversed(self._jobs.values()):
            if any(s.outbox is outbox and s.request_id == request_id for s in job.subscribers):
                return job
        return None

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    # -- commands

    def request(
        self,
        url: str,
        folder: str,
        *,
        civitai_token: str | None = None,
        hf_token: str | None = None,
    ) -> DownloadRequest:
        """The request for *url* into *folder* with the server's options and engine.

        Asked again for a file it has, the server answers at once when segdl's record shows
        the file is the server's current version, and otherwise downloads it beside the old
        one and replaces that only once the new one is complete and verified (as
        sd-inference-server users expect to get the file, never to lose a good one).

        Raises:
            DownloadError: the URL cannot be downloaded (one line for the client).
        """
        auto = folder == AUTO
        # The server replaces a file it cannot vouch for, safely (issue 15: asked again).
        options = replace(self._options or Options(), allow_overwrite=True)
        return build_request(
            url,
            self._models_dir if auto else self._models_dir / folder,
            options=options,
            engine=self._engine,
            civitai_token=civitai_token,
            hf_token=hf_token,
            model_files=ModelFileOptions(
                auto_folder=auto, models_root=self._models_dir, link_existing=self._link_existing
            ),
        )

    def submit(self, request: DownloadRequest, folder: str, subscriber: Subscriber) -> Job:
        """Start (or queue) a download, or join the unfinished one for the same URL and folder.

        Joining a paused download resumes it.  URLs are compared without their secrets, so a
        request with ``?token=`` finds the job the queue file brought back without it.
        """
        key = _download_key(request.source.url)
        for job in self._jobs.values():
            if (
                job.state in UNFINISHED_STATES
                and job.folder == folder
                and _download_key(job.url) == key
            ):
                if not job.handle.running:
                    # Not started yet: this request's URL and tokens are the freshest.
                    job.handle.replace_request(_fresher(request, job.handle.request))
                job.subscribers.append(subscriber)
                if job.state is JobState.PAUSED:
                    log.info("download %d asked for again: resuming", job.id)
                    self._resume(job)
                else:
                    self._replay(job, subscriber)
                return job
        handle = self._manager.add(request)
        job = Job(handle, folder, subscribers=[subscriber])
        handle.on_event = self._events_of(job)
        self._jobs[job.id] = job
        self._forget_old()
        self._changed()
        log.info("download %d queued: %s into %s", job.id, redact_url(job.url), folder)
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
        job.handle.cancel()

    def pause(self, job: Job) -> None:
        """Stop *job* for real and keep it, paused, until :meth:`resume`; every subscriber is
        told ``paused`` once it has stopped.  Pausing a paused job does nothing.

        Raises:
            JobError: the job has ended.
        """
        if job.state in FINAL_STATES:
            raise JobError(f"download {job.id} has already ended ({job.state.value})")
        if job.state is not JobState.PAUSED:
            log.info("download %d pausing", job.id)
            job.handle.pause()
            self._changed()

    def resume(self, job: Job) -> None:
        """Queue a paused *job* again; it continues from its control file.  Resuming a
        queued or running job does nothing.

        Raises:
            JobError: the job has ended (ask for its URL again to resume its partial file).
        """
        if job.state in FINAL_STATES:
            raise JobError(
                f"download {job.id} has already ended ({job.state.value}); "
                "ask for it again to continue it"
            )
        if job.state is JobState.PAUSED:
            log.info("download %d resumed", job.id)
            self._resume(job)

    def set_limit(self, job: Job, rate: int | None) -> None:
        """Limit *job* to *rate* bytes a second (``None``: no limit of its own); running
        connections follow at once."""
        job.handle.set_limit(rate)
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

    def _resume(self, job: Job) -> None:
        job.message = None
        job.handle.resume()
        self._changed()

    # -- the queue file

    def restore(self, saved: SavedQueue) -> None:
        """Take up the jobs of a queue file: queued and running ones start again (from their
        control files), paused ones wait for :meth:`resume`.  Their ids are kept."""
        for entry in saved.jobs:
            if entry.id in self._jobs:
                continue
            try:
                request = self.request(entry.url, entry.folder)
            except DownloadError as exc:
                log.warning("WARNING: download %d not restored: %s", entry.id, exc)
                continue
            handle = self._manager.add(request, handle_id=entry.id, paused=True)
            handle.set_limit(entry.limit)
            job = Job(
                handle,
                entry.folder,
                label=entry.label,
                downloaded=entry.downloaded,
                total=entry.total,
            )
            handle.on_event = self._events_of(job)
            self._jobs[job.id] = job
            log.info("download %d restored (%s): %s", job.id, entry.state, redact_url(job.url))
            if entry.state != "paused":
                handle.resume()
        self._manager.reserve_ids(saved.next_id)
        self._changed()

    def snapshot(self) -> SavedQueue:
        """The unfinished jobs, as the queue file keeps them."""
        jobs = []
        for job in self._jobs.values():
            if job.state not in UNFINISHED_STATES:
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
        return SavedQueue(next_id=self._manager.next_id, jobs=tuple(jobs))

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

    # -- what the manager and the engine say

    def _on_change(self, handle: DownloadHandle, change: Change) -> None:
        job = self._jobs.get(handle.id)
        if job is None:
            return
        self._changed()
        if change == "waiting":
            self._send(job, lambda id: messages.download_queued(id, self.waiting()))
        elif change == "running":
            log.info("download %d running", job.id)
        elif change == "paused":
            log.info("download %d paused", job.id)
            self._send(job, lambda id: messages.paused(id))
        elif change == "cancelled":
            log.info("download %d cancelled", job.id)
            self._send(job, lambda id: messages.envelope("aborted", {}, id))
        elif change == "failed":
            assert handle.error is not None
            self._fail(job, _client_message(handle.error, job), handle.error.exit_code)
        elif change == "done":
            self._finish(job)

    def _events_of(self, job: Job) -> Callable[[Event], None]:
        def on_event(event: Event) -> None:
            if isinstance(event, Started):
                job.started = event
                if job.folder == AUTO and event.path is not None:
                    # The model's type chose the folder: list it where it went.
                    job.folder = Path(event.path).parent.name
                self._changed()  # the queue file keeps the file name
                self._send(job, lambda id: messages.download_started(id, event))
            elif isinstance(event, Metadata):
                job.metadata = event
                self._send(job, lambda id: messages.download_metadata(id, event))
            elif isinstance(event, Progress):
                job.progress = event
                self._send(job, lambda id: messages.download_progress(id, event), coalesce=True)
            # Success, Failed and Aborted: the manager's changes say it.

        return on_event

    def _finish(self, job: Job) -> None:
        result = job.handle.result
        assert result is not None
        path = Path(result.path).resolve()
        if not path.is_relative_to(job.directory.resolve()):
            # segdl's flow sanitises names, so this is a defence in depth.
            self._fail(job, "refused: the file would be outside the models directory", 1)
            return
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
        job.message = message
        log.info("download %d failed: %s", job.id, message)
        self._send(job, lambda id: messages.download_error(id, message, code))

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
        finished = [job for job in self._jobs.values() if job.state in FINAL_STATES]
        for job in finished[: max(0, len(finished) - HISTORY)]:
            del self._jobs[job.id]
            self._manager.forget(job.handle)


def _fresher(new: DownloadRequest, old: DownloadRequest) -> DownloadRequest:
    """*new*, keeping a token only *old* had (a request without one does not drop it)."""
    sites = replace(
        new.sites,
        civitai_token=new.sites.civitai_token or old.sites.civitai_token,
        hf_token=new.sites.hf_token or old.sites.hf_token,
    )
    return replace(new, sites=sites)


def _client_message(exc: DownloadError, job: Job) -> str:
    """The error as a UI user reads it: no command-line advice, no server paths."""
    if isinstance(exc, FileExists) and not isinstance(exc, DuplicateModel):
        # The server replaces files it cannot vouch for, so this is another download of
        # the same name at the same moment (aria2c's "already being downloaded").
        return (
            f"a file of that name is being written in the {job.folder} folder by another "
            "download; try again once it has finished"
        )
    return str(exc)
