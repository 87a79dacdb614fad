"""Batches: many files, at most N at a time, failures reported as data.

The library side of ``segdl get -i FILE -j N``::

    result = await segdl.download_batch(
        [segdl.BatchJob(("https://a/x.safetensors",), "models"), "https://b/y.ckpt"],
        max_concurrent=2,
    )
    if not result.ok:
        result = await result.retry()   # only the failed jobs run again

A job that fails never stops the others; its :class:`~segdl.DownloadError` is kept in its
:class:`JobOutcome`.  Cancelling the batch cancels every running download, each of which keeps
its partial file and control file, so the same batch run again resumes them.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Unpack

import trio

from .api import blocking, download
from .core.checksum import Checksum
from .core.events import Event, Success
from .core.inputfile import MAX_CONNECTIONS, InputEntry, parse_input_file
from .engine.options import Options
from .errors import DownloadError
from .jobs.request import CommonArgs

__all__ = [
    "BatchEventSink",
    "BatchJob",
    "BatchResult",
    "JobOutcome",
    "check_targets",
    "download_batch",
    "download_batch_sync",
    "load_input_file",
]

BatchEventSink = Callable[[int, Event], None]
"""``on_event(job_index, event)``: the job's position in the batch (from 0), then the event."""


@dataclass(frozen=True, slots=True)
class BatchJob:
    """One file of a batch: its URLs (mirrors of the same bytes) and where it goes.

    The option fields override the batch's :class:`Options` for this job; ``None`` keeps the
    batch's value.  ``max_download_limit`` is bytes per second, ``0`` meaning "no limit for
    this job" even when the batch has one (as aria2's per-entry option).

    A single URL may be given as a string; it is stored as a one-element tuple.
    """

    urls: tuple[str, ...]
    directory: str | os.PathLike[str] = "."
    out: str | None = None
    checksum: Checksum | None = None
    max_download_limit: int | None = None
    split: int | None = None
    connections: int | None = None

    def __post_init__(self) -> None:
        given: object = self.urls
        urls: tuple[object, ...]
        if isinstance(given, str):
            urls = (given,)
        elif isinstance(given, Iterable):
            urls = tuple(given)
        else:
            raise TypeError("urls must be a URL or a sequence of URLs")
        if not urls or not all(isinstance(url, str) and url for url in urls):
            raise ValueError("a batch job needs at least one URL (non-empty strings)")
        object.__setattr__(self, "urls", urls)
        if self.connections is not None and not 1 <= self.connections <= MAX_CONNECTIONS:
            raise ValueError(f"connections must be between 1 and {MAX_CONNECTIONS}")
        if self.split is not None and self.split < 1:
            raise ValueError("split must be at least 1")
        if self.max_download_limit is not None and self.max_download_limit < 0:
            raise ValueError("a download limit must not be negative (0: no limit)")

    @classmethod
    def from_entry(cls, entry: InputEntry, *, directory: str | os.PathLike[str] = ".") -> BatchJob:
        """The job an input-file entry describes; *directory* when the entry has no ``dir=``."""
        return cls(
            urls=entry.urls,
            directory=entry.directory if entry.directory is not None else directory,
            out=entry.out,
            checksum=entry.checksum,
            max_download_limit=entry.max_download_limit,
            split=entry.split,
            connections=entry.connections,
        )

    def options_for(self, base: Options) -> Options:
        """*base* with this job's overrides applied."""
        options = base
        if self.checksum is not None:
            options = replace(options, checksum=self.checksum)
        if self.split is not None:
            options = replace(options, split=self.split)
        if self.connections is not None:
            options = replace(options, connections=self.connections)
        if self.max_download_limit is not None:
            options = replace(options, max_download_limit=self.max_download_limit or None)
        return options


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How one job ended: ``result`` on success, else ``error``.

    ``elapsed`` is the seconds the download ran; ``order`` numbers the endings (1 is the job
    that ended first), which decides the batch's exit code.
    """

    index: int
    job: BatchJob
    result: Success | None
    error: DownloadError | None
    elapsed: float
    order: int

    @property
    def ok(self) -> bool:
        return self.result is not None

    @property
    def average_speed(self) -> float | None:
        """Bytes per second over the whole download, when it succeeded."""
        if self.result is None or self.elapsed <= 0:
            return None
        return self.result.size / self.elapsed


@dataclass(frozen=True, slots=True)
class _Settings:
    max_concurrent: int
    on_event: BatchEventSink | None
    common: CommonArgs  # for every job's request


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Every job's :class:`JobOutcome`, in the order the jobs were given."""

    outcomes: tuple[JobOutcome, ...]
    _settings: _Settings | None = field(default=None, repr=False, compare=False)

    def __iter__(self) -> Iterator[JobOutcome]:
        return iter(self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)

    @property
    def succeeded(self) -> tuple[JobOutcome, ...]:
        return tuple(outcome for outcome in self.outcomes if outcome.ok)

    @property
    def failed(self) -> tuple[JobOutcome, ...]:
        return tuple(outcome for outcome in self.outcomes if not outcome.ok)

    @property
    def ok(self) -> bool:
        """True when every job succeeded (an empty batch included)."""
        return all(outcome.ok for outcome in self.outcomes)

    @property
    def exit_code(self) -> int:
        """aria2c's rule: 0 when all succeeded, else the code of the failure that ended last."""
        failed = self.failed
        if not failed:
            return 0
        last = max(failed, key=lambda outcome: outcome.order)
        return last.error.exit_code if last.error is not None else DownloadError.exit_code

    def failed_jobs(self) -> tuple[BatchJob, ...]:
        """The jobs to run again, e.g. ``await download_batch(result.failed_jobs(), …)``."""
        return tuple(outcome.job for outcome in self.failed)

    async def retry(self) -> BatchResult:
        """Run the failed jobs again with the same settings; return the updated result.

        Jobs that succeeded keep their outcome; ``on_event`` sees the same job indices as in
        the first run.  Partial files left by the failures are resumed.
        """
        if self._settings is None:
            raise RuntimeError("this BatchResult was not made by download_batch; nothing to retry")
        failed = [(outcome.index, outcome.job) for outcome in self.failed]
        if not failed:
            return self
        last_order = max(outcome.order for outcome in self.outcomes)
        again = await _run_jobs(failed, self._settings, first_order=last_order + 1)
        merged = tuple(again.get(outcome.index, outcome) for outcome in self.outcomes)
        return BatchResult(merged, self._settings)


def _target(job: BatchJob) -> Path | None:
    if job.out is None:
        return None
    return Path(os.path.normpath(Path(job.directory) / job.out))


def check_targets(jobs: Sequence[BatchJob]) -> None:
    """Two downloads into one file would corrupt it: refuse the same explicit name twice.

    Raises:
        ValueError: naming the two jobs (positions from 0) and the file.
    """
    seen: dict[Path, int] = {}
    for index, job in enumerate(jobs):
        target = _target(job)
        if target is None:
            continue
        if target in seen:
            raise ValueError(f"jobs {seen[target]} and {index} both write {target}")
        seen[target] = index


async def download_batch(
    jobs: Iterable[BatchJob | str],
    *,
    max_concurrent: int = 5,
    on_event: BatchEventSink | None = None,
    **common: Unpack[CommonArgs],
) -> BatchResult:
    """Download every job, at most *max_concurrent* at a time, in the order given.

    Args:
        jobs: :class:`BatchJob` values, or plain URLs (saved into the current directory).
        max_concurrent: files downloaded at once (aria2c ``-j``, default 5).
        options: settings for every job; a job's own fields override them.
        engine, civitai_token, hf_token: as for :func:`segdl.download`.
        on_event: ``on_event(job_index, event)`` for every event of every job (from the trio
            thread); the index is the job's position in *jobs*, from 0.
        limits: rate limits every connection of every job passes; one :class:`RateLimit`
            here is an overall limit for the batch.

    Returns:
        A :class:`BatchResult`; failures are in it, never raised.

    Raises:
        ValueError: *max_concurrent* below 1, or two jobs naming the same output file.
    """
    batch = tuple(job if isinstance(job, BatchJob) else BatchJob((job,)) for job in jobs)
    if max_concurrent < 1:
        raise ValueError("max_concurrent must be at least 1")
    check_targets(batch)
    settings = _Settings(max_concurrent=max_concurrent, on_event=on_event, common=common)
    outcomes = await _run_jobs(list(enumerate(batch)), settings, first_order=1)
    return BatchResult(tuple(outcomes[index] for index in range(len(batch))), settings)


async def _run_jobs(
    jobs: list[tuple[int, BatchJob]], settings: _Settings, *, first_order: int
) -> dict[int, JobOutcome]:
    """Run *jobs* (index, job) with a fixed pool of workers: they start in the given order."""
    queue = iter(jobs)
    orders = itertools.count(first_order)
    outcomes: dict[int, JobOutcome] = {}

    async def worker() -> None:
        # One iterator shared by every worker: trio runs one task at a time, and next() does
        # not await, so each job is taken exactly once, in order.
        for index, job in queue:
            outcomes[index] = await _run_job(index, job, settings, orders)

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(min(settings.max_concurrent, len(jobs))):
                nursery.start_soon(worker)
    except BaseExceptionGroup as group:
        raise _ungrouped(group) from None
    return outcomes


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _ungrouped(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What to raise instead of *group*: no ExceptionGroup leaves the public API.

    Failures are data, so what reaches here is cancellation or an interrupt (Ctrl-C arrives
    in whichever task trio was running, inside the engines' nurseries): the interrupt itself
    is raised.  Cancellation alone is left as trio's group, for its cancel scope to catch.
    """
    others = [exc for exc in _leaves(group) if not isinstance(exc, trio.Cancelled)]
    if not others:
        return group
    return others[0]


async def _run_job(
    index: int, job: BatchJob, settings: _Settings, orders: Iterator[int]
) -> JobOutcome:
    emit = partial(settings.on_event, index) if settings.on_event is not None else None
    started = trio.current_time()
    result: Success | None = None
    error: DownloadError | None = None
    args = settings.common.copy()
    args["options"] = job.options_for(args.get("options") or Options())
    try:
        result = await download(job.urls, job.directory, out=job.out, on_event=emit, **args)
    except DownloadError as exc:
        error = exc
    elapsed = trio.current_time() - started
    return JobOutcome(index, job, result, error, elapsed, next(orders))


download_batch_sync = blocking(download_batch)
download_batch_sync.__doc__ = """:func:`download_batch` for code that is not running trio: blocks
until done.  Retry the failures with ``download_batch_sync(result.failed_jobs(), …)``."""


def load_input_file(
    path: str | os.PathLike[str], *, directory: str | os.PathLike[str] = "."
) -> list[BatchJob]:
    """Read an aria2c input file (see :mod:`segdl.core.inputfile`) into jobs.

    Entries without ``dir=`` go into *directory*.

    Raises:
        DownloadError: the file cannot be read or is not UTF-8 text.
        InputFileError: a line is malformed (the message names ``FILE:LINE``).
    """
    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise DownloadError(f"cannot read input file {name}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DownloadError(f"input file {name} is not UTF-8 text") from exc
    entries = parse_input_file(text, filename=name)
    return [BatchJob.from_entry(entry, directory=directory) for entry in entries]
