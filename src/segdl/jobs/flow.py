"""The flow of one download, the same for every engine and every way in.

    resolve the source ─▶ probe its URLs ─▶ open the target ─▶ Started
        ─▶ the engine fills the target ─▶ finish the target (verify, clean) ─▶ Success

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
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import trio

from ..core.checksum import Checksum
from ..core.events import Aborted, Failed, Progress, Started, Success
from ..core.headers import (
    MAX_PARTIAL_NAME_BYTES,
    choose_filename,
    parse_content_disposition_filename,
    sanitize_filename,
)
from ..core.urls import HttpURL
from ..engine.base import Engine, EventSink, Transfer, get_engine
from ..engine.early import opening_ranges
from ..engine.native import NativeEngine
from ..engine.options import Options, RetryPolicy
from ..engine.target import finish_target, open_target, restart_target
from ..engine.throttle import RateLimit
from ..engine.warm import WarmStart, start_warm
from ..errors import BadResponse, DownloadError, HTTPStatusError, RemoteChanged, redact_url
from ..io.dataplane import Transform
from ..io.files import check_writable_dir
from ..io.firstrequest import NotForTheDataPlane
from ..io.probe import ProbeResult, probe
from ..io.tls import client_context
from ..sources.base import DownloadPlan
from .request import DownloadRequest

__all__ = ["MAX_RESTARTS", "fetch_probed", "run_download"]

# A file that changes under us twice in a row is being rewritten: stop rather than loop.
MAX_RESTARTS = 2


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
    """The control-plane client: resolvers' API calls and the probe."""
    timeout = httpx.Timeout(options.read_timeout, connect=options.connect_timeout)
    verify = client_context(options.ca_certificate)
    return httpx.AsyncClient(verify=verify, timeout=timeout, trust_env=False)


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
            # The site's headers (its token) go to the site's URLs only; mirrors the user or
            # the site named elsewhere get the user's own headers.
            site_headers = {**plan.headers, **options.headers}
            candidates = [(u, site_headers) for u in plan.urls]
            candidates += [(u, dict(options.headers)) for u in (*plan.mirrors, *request.mirrors)]
            guess = request.directory / _filename(request.out, None, plan, request.source.url)
            warm = await warm_start(engine, candidates, options, guess)
            warm_starts.append(warm)
            mirrors: list[ProbeResult] = []
            if warm is not None:
                probed = warm.probe
            else:
                probed, mirrors = await probe_sources(client, candidates, options.retry)
            if plan.size is not None and probed.size is not None and plan.size != probed.size:
                raise BadResponse(
                    f"the server's file is {probed.size} bytes but {plan.source} says {plan.size}",
                    url=probed.url,
                )
            run_options = options
            if options.checksum is None and plan.sha256:
                run_options = replace(options, checksum=Checksum("sha256", plan.sha256.lower()))
            path = request.directory / _filename(request.out, probed, plan, request.source.url)
            try:
                result = await fetch_probed(
                    probed,
                    path,
                    run_options,
                    emit,
                    engine=engine,
                    mirrors=mirrors,
                    limits=request.limits,
                    transform=plan.transform,
                    warm=warm,
                )
            except RemoteChanged:
                if attempt >= MAX_RESTARTS:
                    raise
                # Never mix two versions: drop the partial and start over from a new probe.
                await trio.to_thread.run_sync(restart_target, path)
                continue
            if plan.verify is not None:
                await plan.verify(path)
            return result
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
    warm: WarmStart | None = None,
) -> Success:
    """Open the target, let *engine* fill it, finish it: the part of the flow after the probe.

    *warm*: the first response and the connections opened ahead, for the engine to take.

    Raises:
        DownloadError: :class:`RemoteChanged` means the server's file is not the one the
            partial came from (the caller restarts after a new probe).
    """
    engine.check(transform is not None)  # before anything is written
    target = await trio.to_thread.run_sync(open_target, path, probed, options)
    emit(Started(filename=path.name, size=probed.size, path=str(path)))
    checksum_verified = False
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
            warm=warm,
        )
        checksum_verified = (await engine.transfer(job)).checksum_verified
    return await trio.to_thread.run_sync(
        lambda: finish_target(target, options, url=probed.url, checksum_verified=checksum_verified)
    )


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
) -> tuple[ProbeResult, list[ProbeResult]]:
    """Probe every URL of the file at once: the first that answers, and usable mirrors.

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
    return primary, mirrors


def _filename(out: str | None, probed: ProbeResult | None, plan: DownloadPlan, url: str) -> str:
    """``-o``, else Content-Disposition, else the site's name, else the URL (sanitised);
    without *probed*, the name it will most likely be, before the server has answered."""
    # Short enough that the sidecars' names (NAME.aria2__temp) fit in a directory entry too.
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
