"""The endgame against a fake server: a connection that stalls (below the idle timeout) or
crawls holds no download at 99%; an idle connection takes the rest of its range over, the
first to deliver wins, and the file is exact.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import threading
from pathlib import Path

import pytest
import trio

import segdl
from segdl.testing.rangeserver import Fault, RangeServer, RequestInfo, RequestRecord, Resource

MIB = 1024 * 1024
BODY = os.urandom(6 * MIB + 777)
SHA = hashlib.sha256(BODY).hexdigest()
STALL = 40.0  # far longer than the download needs: it must not wait for it
OPTIONS = segdl.Options(
    connections=3,
    split=3,
    read_timeout=2 * STALL,  # the stall is not a timeout: only the endgame ends it
    save_interval=0.05,
    retry=segdl.RetryPolicy(base_delay=0.01, max_delay=0.05),
)


def stall_one_range(server: RangeServer, after: int) -> list[RequestInfo]:
    """The first data request after the download's first one sends *after* bytes, then
    nothing for STALL seconds.  Returns the requests that were stalled (one)."""
    stalled: list[RequestInfo] = []
    lock = threading.Lock()

    def hook(info: RequestInfo) -> Fault | None:
        with lock:
            probe = (info.range or "bytes=0-").startswith("bytes=0-")
            if probe or stalled:
                return None
            stalled.append(info)
        return Fault.stall_after(after, seconds=STALL)

    server.on_request(hook)
    return stalled


def requested(record: RequestRecord | RequestInfo) -> tuple[int, int]:
    assert record.range is not None
    match = re.fullmatch(r"bytes=(\d+)-(\d+)", record.range)
    assert match is not None, record.range
    return int(match.group(1)), int(match.group(2)) + 1


@pytest.mark.parametrize("after", [0, 100_000])
async def test_a_stalled_range_is_overtaken_and_the_file_is_exact(
    range_server: RangeServer, tmp_path: Path, after: int, caplog: pytest.LogCaptureFixture
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    stalled = stall_one_range(range_server, after)
    caplog.set_level(logging.INFO, logger="segdl")
    with trio.fail_after(STALL / 2):
        result = await segdl.download(range_server.url("/f.bin"), tmp_path, options=OPTIONS)
    assert hashlib.sha256(Path(result.path).read_bytes()).hexdigest() == SHA
    (slow,) = stalled
    first, end = requested(slow)
    records = list(range_server.requests)
    (slow_record,) = [r for r in records if r.range == slow.range and r.fault is not None]
    # It was left behind: aborted mid-stall, its bytes after the stall never sent.
    assert slow_record.body_bytes < end - first
    # An idle connection asked for the rest of that range, from where the slow one had got.
    takeovers = [
        r
        for r in records
        if r.fault is None and r.range is not None and first <= requested(r)[0] < end
    ]
    assert takeovers, [r.range for r in records]
    # Nothing the slow connection wrote (its first 64 KiB chunk, when it got that far) is
    # asked for again, and everything after it is.
    written = after // (64 * 1024) * (64 * 1024)
    starts = sorted(requested(r)[0] for r in takeovers)
    assert starts[0] == first + written
    assert max(requested(r)[1] for r in takeovers) == end
    # Reported: the slow range cut (then twinned where it was inside a piece), its
    # connection stopped, and few bytes received twice (its chunk in progress at most).
    (line,) = [m for m in caplog.messages if m.startswith("endgame:")]
    cuts, twins, stopped, twice = (int(n) for n in re.findall(r"\d+", line))
    assert cuts + twins >= 1
    assert twins <= 1
    assert stopped == 1
    assert twice <= after


async def test_a_healthy_download_starts_no_twin(
    range_server: RangeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    caplog.set_level(logging.INFO, logger="segdl")
    result = await segdl.download(range_server.url("/f.bin"), tmp_path, options=OPTIONS)
    assert hashlib.sha256(Path(result.path).read_bytes()).hexdigest() == SHA
    assert not [m for m in caplog.messages if m.startswith("endgame:")]
    # No byte was asked for twice.
    spans = sorted(requested(r) for r in range_server.requests if r.range is not None)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, spans
