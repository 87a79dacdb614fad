"""Mirrors: one file from several servers — spread, checked, and dropped when they fail."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import segdl
from segdl.engine import mirrors
from segdl.testing.rangeserver import Fault, RangeServer, RequestInfo, Resource

MIB = 1024 * 1024
BODY = os.urandom(12 * MIB + 777)
SHA = hashlib.sha256(BODY).hexdigest()

FAST = segdl.Options(
    read_timeout=2.0,
    connect_timeout=2.0,
    retry=segdl.RetryPolicy(max_tries=3, base_delay=0.01, max_delay=0.05),
)


@pytest.fixture
def mirror() -> Iterator[RangeServer]:
    with RangeServer() as server:
        yield server


def data_requests(server: RangeServer) -> int:
    return sum(1 for r in server.requests if r.method == "GET" and r.range != "bytes=0-0")


def served(server: RangeServer) -> int:
    return sum(r.body_bytes for r in server.requests if r.range != "bytes=0-0")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_connections_are_spread_over_the_mirrors(
    range_server: RangeServer, mirror: RangeServer, tmp_path: Path
) -> None:
    for server in (range_server, mirror):
        server.rate_limit = 2 * MIB  # per connection: long enough for all to take part
        server.add("/model.bin", Resource(BODY, etag=None))
    result = await segdl.download(
        [range_server.url("/model.bin"), mirror.url("/model.bin")], tmp_path, options=FAST
    )
    assert sha(Path(result.path)) == SHA
    # Eight connections each; both served a real share of the file.
    for server in (range_server, mirror):
        assert len({r.connection_id for r in server.requests if r.range != "bytes=0-0"}) >= 4
        assert served(server) > len(BODY) // 5


async def test_a_mirror_that_dies_mid_download_leaves_the_file_exact(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.rate_limit = 1 * MIB
    range_server.add("/model.bin", Resource(BODY))
    dying = RangeServer(rate_limit=1 * MIB)
    dying.start()
    try:
        dying.add("/model.bin", Resource(BODY))
        async with trio.open_nursery() as nursery:
            results: list[segdl.Success] = []

            async def run() -> None:
                results.append(
                    await segdl.download(
                        [range_server.url("/model.bin"), dying.url("/model.bin")],
                        tmp_path,
                        options=FAST,
                    )
                )

            nursery.start_soon(run)
            await trio.sleep(0.8)
            assert data_requests(dying) > 0
            await trio.to_thread.run_sync(dying.stop)  # connections cut, new ones refused
    finally:
        dying.stop()
    assert sha(tmp_path / "model.bin") == SHA
    assert [r.size for r in results] == [len(BODY)]
    assert not list(tmp_path.glob("*.aria2"))


async def test_a_mirror_that_answers_404_is_dropped(
    range_server: RangeServer, mirror: RangeServer, tmp_path: Path
) -> None:
    range_server.add("/model.bin", Resource(BODY))
    mirror.add("/model.bin", Resource(BODY))

    def gone_after_probe(info: RequestInfo) -> Fault | None:
        # The mirror's file disappears once the probe has seen it.
        return Fault.status(404) if info.range not in (None, "bytes=0-0") else None

    mirror.on_request(gone_after_probe)
    result = await segdl.download(
        [mirror.url("/model.bin"), range_server.url("/model.bin")], tmp_path, options=FAST
    )
    assert sha(Path(result.path)) == SHA
    assert data_requests(mirror) >= 1
    assert served(mirror) == 0


async def test_a_much_slower_mirror_is_dropped(
    range_server: RangeServer, mirror: RangeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the drop, the slow mirror's last pieces (never split while being read) would
    take half a minute at 32 KiB/s each; with it, the fast mirror finishes them."""
    monkeypatch.setattr(mirrors, "SLOW_MIRROR_WINDOW", 0.5)
    range_server.rate_limit = 1 * MIB
    mirror.rate_limit = 32 * 1024
    for server in (range_server, mirror):
        server.add("/model.bin", Resource(BODY))
    with trio.fail_after(20):
        result = await segdl.download(
            [range_server.url("/model.bin"), mirror.url("/model.bin")], tmp_path, options=FAST
        )
    assert sha(Path(result.path)) == SHA
    requests_to_slow = data_requests(mirror)
    assert 1 <= requests_to_slow <= 8  # its first ranges only: no new ones after the drop
    assert served(mirror) < len(BODY) // 4


async def test_mirrors_that_disagree_on_the_size_are_refused(
    range_server: RangeServer, mirror: RangeServer, tmp_path: Path
) -> None:
    range_server.add("/model.bin", Resource(BODY))
    mirror.add("/model.bin", Resource(BODY[:-1]))
    with pytest.raises(segdl.BadResponse, match="mirrors disagree") as info:
        await segdl.download(
            [range_server.url("/model.bin"), mirror.url("/model.bin")], tmp_path, options=FAST
        )
    assert info.value.exit_code == 22
    assert list(tmp_path.iterdir()) == []


async def test_a_mirror_that_fails_its_probe_is_left_out(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.add("/model.bin", Resource(BODY))
    missing = range_server.url("/nowhere.bin")
    result = await segdl.download(
        [missing, range_server.url("/model.bin")], tmp_path, out="model.bin", options=FAST
    )
    assert sha(Path(result.path)) == SHA


async def test_the_users_headers_go_to_every_mirror_but_site_tokens_do_not(
    range_server: RangeServer, mirror: RangeServer, tmp_path: Path
) -> None:
    for server in (range_server, mirror):
        server.add("/model.bin", Resource(BODY))
    opts = segdl.Options(headers={"X-Mine": "1"}, read_timeout=2.0)
    await segdl.download(
        [range_server.url("/model.bin"), mirror.url("/model.bin")],
        tmp_path,
        options=opts,
        civitai_token="civitai-secret",
        hf_token="hf-secret",
    )
    for server in (range_server, mirror):
        for record in server.requests:
            assert record.headers.get("x-mine") == "1"
            assert "secret" not in repr(record.headers)
