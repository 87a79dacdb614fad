"""The flow of one download, the same for every engine and every way in.

    resolve the source ─▶ probe its URLs ─▶ open the target ─▶ Started
        ─▶ the engine fills NAME.part ─▶ verify it (size, checksum, the source's own check)
        ─▶ publish it as NAME ─▶ after-publish steps ─▶ Success

Opening the target may find the file already there and current (segdl's record of it, or a
checksum, says so): then nothing is fetched and the flow goes straight to the after-publish
steps.  A file that fails verification is deleted, never published.

For one URL and the native engine the probe is the download's first request, on a data
connection, while the other connections open (:func:`warm_start`): the engine then writes
that response's body and uses those connections.  Mirrors, aria2c, and URLs the data plane
cannot send as they are, are probed on httpx (:func:`probe_sources`).

A file that changes on the server while it is fetched (:class:`~segdl.errors.RemoteChanged`)
restarts the flow from a fresh resolve, at most :data:`MAX_RESTARTS` times: two versions are
never mixed.  Every run ends with exactly one of ``success``, ``error`` or ``cancelled``
(:func:`run_download`).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

import httpx
import trio

from ..core.checksum import Checksum
from ..core.events import Aborted, Failed, Progress, Started, Success, Warned
from ..core.headers import (
    MAX_PARTIAL_NAME_BYTES,
    choose_filename,
    parse_content_disposition_filename,
    sanitize_filename,
)
from ..core.proxyrules import ProxySettings
from ..core.urls import HttpURL
from ..engine.base import Engine, EventSink, Renew, Transfer, get_engine
from ..engine.early import opening_ranges
from ..engine.native import NativeEngine
from ..engine.options import ModelFileOptions, Options, RetryPolicy
from ..engine.target import open_target, publish_target, reject, restart_target, verify_target
from ..engine.throttle import RateLimit
from ..engine.warm import WarmStart, start_warm
from ..errors import (
    BadResponse,
    ChecksumMismatch,
    DownloadError,
    HTTPStatusError,
    RemoteChanged,
    redact_url,
)
from ..io.control import open_control_client
from ..io.dataplane import Transform
from ..io.files import check_writable_dir
from ..io.firstrequest import NotForTheDataPlane
from ..io.probe import ProbeResult, probe
from ..sources.base import DownloadPlan
from .modelfolder import choose_directory, find_copy, write_metadata
from .request import DownloadRequest

__all__ = ["MAX_RESTARTS", "AfterPublish", "fetch_probed", "run_download"]

# A file that changes under us twice in a row is being rewritten: stop rather than loop.
MAX_RESTARTS = 2

# A step run once the model is under its name, with the Success that says where (issue 15's
# sha256 index and metadata files belong here).  It runs whether this run published the
# file or found it already there, and never after a failure.
AfterPublish = Callable[[Success], Awaitable[None]]


async def run_download(request: DownloadRequest, emit: EventSink) -> Success:
    """Download what *request* asks for; *emit* gets its events, ending with exactly one of
    ``Success``, ``Failed`` or ``Aborted``.

    Raises:
        DownloadError: or a subclass; a bug is reported as one (``internal error: …``), its
            cause chained.  The partial file and its control file are kept for a resume.
    """
    ended = False
    try:
        result = await _download(request, emit)
        ended = True
        emit(result)
        return result
    except DownloadError as exc:
        ended = True
        emit(Failed(message=str(exc), code=exc.exit_code))
        raise
    except Exception as exc:
        ended = True
        # A bug, not a download failure: still one line for the user, the cause chained.
        error = DownloadError(f"internal error: {type(exc).__name__}: {exc}")
        emit(Failed(message=str(error), code=error.exit_code))
        raise error from exc
    finally:
        if not ended:
            # Cancelled (possibly inside an exception group), or interrupted.
            emit(Aborted())


def _control_client(options: Options) -> httpx.AsyncClient:
    """The control-plane client: resolvers' API calls and the probe (proxies, policy, TLS)."""
    return open_control_client(
        proxies=options.proxies or ProxySettings(),
        destinations=options.destinations,
        ca_certificate=options.ca_certificate,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
    )


async def _download(request: DownloadRequest, emit: EventSink) -> Success:
    engine = get_engine(request.engine)
    engine.check(False)  # not installed: said before any request
    options = request.options
    await trio.to_thread.run_sync(check_writable_dir, request.directory)
    async with _control_client(options) as client, _closing_warm_starts() as warm_starts:
        for attempt in itertools.count():
            # Resolved on every attempt: signed storage URLs expire, so a restart needs a
            # fresh one.
            plan = await request.source.resolve(client=client, config=request.sites)
            if attempt == 0 and plan.metadata is not None:
                emit(plan.metadata)
            files = request.model_files
            directory = choose_directory(request.directory, plan, files)
            if directory != request.directory:
                await trio.to_thread.run_sync(check_writable_dir, directory)
            copy = await find_copy(
                plan, directory, files, cache_dir=request.sites.cache_dir, emit=emit
            )
            if copy is not None:
                return copy
            # The site's headers (its token) go to the site's URLs only; mirrors the user or
            # the site named elsewhere get the user's own headers.
            site_headers = {**plan.headers, **options.headers}
            candidates = [(u, site_headers) for u in plan.urls]
            candidates += [(u, dict(options.headers)) for u in (*plan.mirrors, *request.mirrors)]
            guess = directory / _filename(request.out, None, plan, request.source.url)
            warm = await warm_start(engine, candidates, options, guess)
            warm_starts.append(warm)
            mirrors: list[ProbeResult] = []
            if warm is not None:
                probed, primary = warm.probe, 0
            else:
                probed, mirrors, primary = await probe_sources(client, candidates, options.retry)
            if plan.size is not None and probed.size is not None and plan.size != probed.size:
                raise BadResponse(
                    f"the server's file is {probed.size} bytes but {plan.source} says {plan.size}",
                    url=probed.url,
                )
            run_options = options
            if options.checksum is None and plan.sha256:
                run_options = replace(options, checksum=Checksum("sha256", plan.sha256.lower()))
            path = directory / _filename(request.out, probed, plan, request.source.url)
            renew = None
            if plan.source != "direct" and primary < len(plan.urls):
                # A link the site gave (signed for a while): asked for again when it expires.
                renew = partial(_fresh_link, request, client, probed, plan, emit)
            # Steps after publishing, in order: the metadata files beside the model.
            after_publish: list[AfterPublish] = [
                partial(_metadata_step, plan, files, client=client, emit=emit)
            ]
            try:
                return await fetch_probed(
                    probed,
                    path,
                    run_options,
                    emit,
                    engine=engine,
                    mirrors=mirrors,
                    limits=request.limits,
                    transform=plan.transform,
                    renew=renew,
                    verify=plan.verify,
                    after_publish=after_publish,
                    warm=warm,
                )
            except RemoteChanged:
                if attempt >= MAX_RESTARTS:
                    raise
                # Never mix two versions: drop the partial and start over from a new probe.
                await trio.to_thread.run_sync(restart_target, path)
                continue
    raise AssertionError("unreachable")


async def fetch_probed(
    probed: ProbeResult,
    path: Path,
    options: Options,
    emit: EventSink,
    *,
    engine: Engine,
    mirrors: Sequence[ProbeResult] = (),
    limits: Sequence[RateLimit] = (),
    transform: Transform | None = None,
    renew: Renew | None = None,
    verify: Callable[[Path], Awaitable[None]] | None = None,
    after_publish: Sequence[AfterPublish] = (),
    warm: WarmStart | None = None,
) -> Success:
    """Open the target, let *engine* fill it, verify it, publish it at *path*: the part of
    the flow after the probe.

    *verify* is the source's own check of the finished partial (MEGA's MAC), run after the
    checksum and before the file gets its name; *after_publish* run once it has it.

    *warm*: the first response and the connections opened ahead, for the engine to take.

    Raises:
        DownloadError: :class:`RemoteChanged` means the server's file is not the one the
            partial came from (the caller restarts after a new probe).
            :class:`ChecksumMismatch`: the file failed a check and was deleted.
    """
    engine.check(transform is not None)  # before anything is written
    target = await trio.to_thread.run_sync(open_target, path, probed, options)
    emit(Started(filename=path.name, size=probed.size, path=str(path)))
    checksum_verified = False
    try:
        if target.complete:
            emit(
                Progress(
                    progress=1.0,
                    rate=0.0,
                    eta=0.0,
                    downloaded=target.resumed_bytes,
                    total=target.resumed_bytes,
                    connections=0,
                )
            )
        else:
            job = Transfer(
                probe=probed,
                target=target,
                options=options,
                emit=emit,
                mirrors=tuple(mirrors),
                limits=tuple(limits),
                transform=transform,
                renew=renew,
                warm=warm,
            )
            checksum_verified = (await engine.transfer(job)).checksum_verified
        verified = await trio.to_thread.run_sync(
            lambda: verify_target(
                target, options, url=probed.url, checksum_verified=checksum_verified
            )
        )
        if verify is not None and not target.published:
            await verify(target.path)
    except ChecksumMismatch as exc:
        # The bytes are wrong: gone, so that the next run downloads them anew.
        rejected = await trio.to_thread.run_sync(reject, target, exc)
        if rejected is exc:
            raise
        raise rejected from exc
    result = await trio.to_thread.run_sync(publish_target, target, verified)
    for step in after_publish:
        await step(result)
    return result


async def _metadata_step(
    plan: DownloadPlan,
    files: ModelFileOptions | None,
    result: Success,
    *,
    client: httpx.AsyncClient,
    emit: EventSink,
) -> None:
    await write_metadata(Path(result.path), plan, files, client=client, emit=emit)


async def _fresh_link(
    request: DownloadRequest,
    client: httpx.AsyncClient,
    probed: ProbeResult,
    plan: DownloadPlan,
    emit: EventSink,
) -> ProbeResult:
    """Ask the site again for the file (its signed link expired) and check that the fresh
    link serves the same file: size, and ETag and sha256 where both sides know them.

    Raises:
        RemoteChanged: the fresh link serves another file (the flow restarts).
        DownloadError: the site could not give one.
    """
    fresh = await request.source.resolve(client=client, config=request.sites)
    headers = {**fresh.headers, **request.options.headers}
    candidates = [(u, headers) for u in fresh.urls]
    renewed, _, _ = await probe_sources(client, candidates, request.options.retry)
    same = renewed.size == probed.size
    if same and renewed.etag and probed.etag:
        same = renewed.etag.removeprefix("W/") == probed.etag.removeprefix("W/")
    if same and fresh.sha256 and plan.sha256:
        same = fresh.sha256.lower() == plan.sha256.lower()
    if not same:
        raise RemoteChanged(
            f"{plan.source}'s fresh link serves another file than the one being downloaded",
            url=renewed.url,
        )
    emit(
        Warned(
            message=f"renewed the expiring download link from {plan.source}; the download goes on"
        )
    )
    return renewed


@asynccontextmanager
async def _closing_warm_starts() -> AsyncIterator[list[WarmStart | None]]:
    """Warm starts to close when the download ends, whatever the engine took of them."""
    started: list[WarmStart | None] = []
    try:
        yield started
    finally:
        for warm in started:
            if warm is not None:
                warm.close()


async def warm_start(
    engine: Engine,
    candidates: Sequence[tuple[HttpURL, Mapping[str, str]]],
    options: Options,
    guess: Path,
) -> WarmStart | None:
    """Begin the download on data connections when it has one URL and the native engine:
    the first request is the probe, the other connections open meanwhile
    (:func:`~segdl.engine.warm.start_warm`).  None: probe on the control plane instead.

    *guess* is where the file will probably go (the name may still come from the answer):
    when a partial of it is there, the first request asks for its first missing piece.

    Raises:
        DownloadError: as :func:`probe_sources` raises it.
    """
    if not isinstance(engine, NativeEngine) or len(candidates) != 1:
        return None
    url, headers = candidates[0]
    ahead = engine.connections_for(options) - 1
    ranges = await trio.to_thread.run_sync(opening_ranges, guess, options.piece_length, ahead)
    try:
        return await start_warm(
            url, headers, options, connect=engine.connect, ranges=ranges, ahead=ahead
        )
    except NotForTheDataPlane:
        return None


async def probe_sources(
    client: httpx.AsyncClient,
    candidates: Sequence[tuple[HttpURL, Mapping[str, str]]],
    policy: RetryPolicy,
) -> tuple[ProbeResult, list[ProbeResult], int]:
    """Probe every URL of the file at once: the first that answers, usable mirrors, and which
    candidate the first is.

    Mirrors must agree on the size (two sizes mean two different files: refused, rather
    than mixing them); a mirror that fails its probe or cannot serve ranges is left out.
    """
    results: list[ProbeResult | DownloadError | None] = [None] * len(candidates)

    async def probe_one(index: int, url: HttpURL, headers: Mapping[str, str]) -> None:
        for attempt in itertools.count(1):
            try:
                results[index] = await probe(client, url, headers=headers, now=time.time())
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
    return primary, mirrors, results.index(primary)


def _filename(out: str | None, probed: ProbeResult | None, plan: DownloadPlan, url: str) -> str:
    """``-o``, else Content-Disposition, else the site's name, else the URL (sanitised);
    without *probed*, the name it will most likely be, before the server has answered."""
    # Short enough that the partial's names (NAME.part.aria2__temp) fit in a directory entry.
    limit = MAX_PARTIAL_NAME_BYTES
    if out:
        return sanitize_filename(out, max_bytes=limit)
    if probed is not None and probed.content_disposition:
        named = parse_content_disposition_filename(probed.content_disposition)
        if named:
            return sanitize_filename(named, max_bytes=limit)
    if plan.filename:
        return sanitize_filename(plan.filename, max_bytes=limit)
    return choose_filename(None, url, max_bytes=limit)
