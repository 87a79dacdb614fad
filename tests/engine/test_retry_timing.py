"""Retry and backoff timing of the engine, on trio's virtual clock.

The data plane is replaced by an in-memory connection that follows a script of failures, so
only the engine's own sleeps take (virtual) time.  The autojump threshold is above zero so the
clock never jumps while a worker thread is briefly running.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import threading
from collections.abc import Callable, Mapping

import pytest
import trio
import trio.testing

from segdl.core.events import Event, Progress
from segdl.core.headers import ContentRange
from segdl.core.responses import ResponseHead
from segdl.core.urls import HttpURL
from segdl.engine.native import ConnectionLike, NativeEngine
from segdl.engine.options import Options, RetryPolicy
from segdl.errors import DownloadError, NetworkError, NotFound, ServerBusy
from segdl.io.dataplane import Endpoint, Transform
from segdl.io.probe import ProbeResult
from segdl.jobs.flow import fetch_probed

MIB = 1024 * 1024
BODY = os.urandom(3 * MIB + 12345)


class Script:
    """Failures handed out to requests in order, shared by every connection."""

    def __init__(self, failures: list[DownloadError]) -> None:
        self._failures = failures
        self._lock = threading.Lock()
        self.requests = 0

    def next(self) -> DownloadError | None:
        with self._lock:
            self.requests += 1
            return self._failures.pop(0) if self._failures else None


class FakeConnection:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.aborted = False

    def request(
        self,
        *,
        headers: Mapping[str, str],
        first: int | None = None,
        last: int | None = None,
        method: str = "GET",
        any_status: bool = False,
    ) -> ResponseHead:
        failure = self.script.next()
        if failure is not None:
            raise failure
        assert first is not None
        assert last is not None
        return ResponseHead(
            status=206,
            reason="Partial Content",
            headers={},
            content_length=last - first + 1,
            content_range=ContentRange(first, last, len(BODY)),
            chunked=False,
            keep_alive=True,
        )

    def stream_into_file(
        self,
        fd: int,
        offset: int,
        commit: Callable[[int], int],
        *,
        admit: Callable[[int], int] | None = None,
        until_eof: bool = False,
        transform: Transform | None = None,
    ) -> int:
        written = 0
        want = commit(0)
        while want:
            if admit is not None:
                want = admit(want)
            os.pwrite(fd, BODY[offset : offset + want], offset)
            offset += want
            written += want
            want = commit(want)
        return written

    def connect(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        pass


def factory(script: Script) -> Callable[..., ConnectionLike]:
    def connect(
        endpoint: Endpoint, options: Options, ssl_context: object, sessions: object = None
    ) -> ConnectionLike:
        return FakeConnection(script)

    return connect


PROBE = ProbeResult(
    url=HttpURL.parse("http://fake.test/x.bin"), size=len(BODY), accepts_ranges=True
)


async def fetch(
    tmp_path: pathlib.Path, script: Script, *, connections: int = 1, max_tries: int = 5
) -> tuple[float, list[Event]]:
    events: list[Event] = []
    options = Options(
        connections=connections, split=connections, retry=RetryPolicy(max_tries=max_tries)
    )
    start = trio.current_time()
    engine = NativeEngine(connect=factory(script))
    result = await fetch_probed(PROBE, tmp_path / "x.bin", options, events.append, engine=engine)
    assert (
        hashlib.sha256((tmp_path / "x.bin").read_bytes()).hexdigest()
        == hashlib.sha256(BODY).hexdigest()
    )
    assert result.size == len(BODY)
    return trio.current_time() - start, events


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


async def test_retry_after_is_honoured_exactly(
    tmp_path: pathlib.Path, clock: trio.testing.MockClock
) -> None:
    busy: list[DownloadError] = [ServerBusy("503", status=503, retry_after=7.0) for _ in range(2)]
    elapsed, events = await fetch(tmp_path, Script(busy))
    # Two waits of exactly Retry-After; the first progress tick may land after the data.
    assert 14.0 <= elapsed < 14.5
    assert any(isinstance(e, Progress) and e.progress == 1.0 for e in events)


async def test_backoff_is_exponential_with_jitter(
    tmp_path: pathlib.Path, clock: trio.testing.MockClock
) -> None:
    failures: list[DownloadError] = [NetworkError("reset"), NetworkError("reset")]
    elapsed, _ = await fetch(tmp_path, Script(failures))
    # 0.5 s then 1 s, each shortened by up to half its length by the jitter.
    assert 0.75 <= elapsed <= 1.5 + 0.5


async def test_not_found_fails_at_once(
    tmp_path: pathlib.Path, clock: trio.testing.MockClock
) -> None:
    script = Script([NotFound("HTTP 404", status=404)])
    start = trio.current_time()
    with pytest.raises(NotFound):
        await fetch(tmp_path, script, connections=4)
    assert trio.current_time() - start < 0.5
    # The partial file and its control file stay for a later resume.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin.part", "x.bin.part.aria2"]


async def test_gives_up_after_max_tries(
    tmp_path: pathlib.Path, clock: trio.testing.MockClock
) -> None:
    failures: list[DownloadError] = [
        ServerBusy("503", status=503, retry_after=2.0) for _ in range(10)
    ]
    script = Script(failures)
    start = trio.current_time()
    with pytest.raises(ServerBusy):
        await fetch(tmp_path, script, max_tries=3)
    assert 4.0 <= trio.current_time() - start < 4.5
    assert script.requests == 3
