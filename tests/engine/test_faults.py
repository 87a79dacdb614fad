"""The engine against a fake server that implements RFC 9110 ranges itself and misbehaves
on demand: every download ends with the exact file or a clear error and a resumable partial.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
import trio

import segdl
from segdl.core.controlfile import ControlFile
from segdl.core.events import Event, Progress, Started
from segdl.io import records
from segdl.testing.rangeserver import Fault, RangeServer, RequestInfo, Resource
from segdl.testing.tls import CertPair, server_context

MIB = 1024 * 1024
BODY = os.urandom(6 * MIB + 4321)
SHA = hashlib.sha256(BODY).hexdigest()

FAST = segdl.Options(
    read_timeout=1.0,
    connect_timeout=2.0,
    save_interval=0.05,
    retry=segdl.RetryPolicy(base_delay=0.01, max_delay=0.05),
)


def is_probe(info: RequestInfo) -> bool:
    """The download's first request (its probe, on a data connection: the only one asking
    from byte 0), or an httpx probe."""
    return info.range is None or info.range.startswith("bytes=0-")


def on_data_requests(server: RangeServer, *faults: Fault) -> None:
    """Hand *faults* out, in order, to data requests only (not to the probe)."""
    queue = list(faults)
    lock = threading.Lock()

    def hook(info: RequestInfo) -> Fault | None:
        if is_probe(info):
            return None
        with lock:
            return queue.pop(0) if queue else None

    server.on_request(hook)


def sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_requests(server: RangeServer) -> list[str | None]:
    return [r.range for r in server.requests if r.method == "GET" and r.range != "bytes=0-0"]


def sidecars(directory: pathlib.Path) -> list[str]:
    """Anything but finished files: partials and control files."""
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".aria2", ".part"))


async def get(
    server: RangeServer,
    directory: pathlib.Path,
    path: str = "/f.bin",
    options: segdl.Options = FAST,
    **kwargs: object,
) -> segdl.Success:
    return await segdl.download(server.url(path), directory, options=options, **kwargs)  # type: ignore[arg-type]


async def test_happy_path_uses_many_connections(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    events: list[Event] = []
    result = await get(range_server, tmp_path, on_event=events.append)
    assert sha(tmp_path / "f.bin") == SHA
    assert result.size == len(BODY)
    assert sidecars(tmp_path) == []
    ranges = data_requests(range_server)
    assert len(ranges) >= 7  # 6 MiB+ split among connections, pieces of 1 MiB
    assert all(r is not None and r.startswith("bytes=") for r in ranges)
    assert len({r.connection_id for r in range_server.requests}) > 1
    assert events[0].type == "started"
    assert events[-1].type == "success"


async def test_server_ignoring_ranges_falls_back_to_one_stream(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY, accept_ranges=False))
    await get(range_server, tmp_path)
    assert sha(tmp_path / "f.bin") == SHA
    gets = [r for r in range_server.requests if r.method == "GET"]
    # The first request asked for a range and got the whole file (200): that is the stream.
    # (The connections opened meanwhile asked for ranges too, and were closed at their 200.)
    first = f"bytes=0-{MIB - 1}"
    (stream,) = [r for r in gets if r.range == first]
    assert stream.status == 200
    assert stream.body_bytes == len(BODY)
    assert all(r.status == 200 for r in gets)


@pytest.mark.parametrize("chunked", [False, True])
async def test_server_without_length_streams_to_the_end(
    range_server: RangeServer, tmp_path: pathlib.Path, chunked: bool
) -> None:
    range_server.add(
        "/f.bin", Resource(body=BODY, accept_ranges=False, send_length=False, chunked=chunked)
    )
    result = await get(range_server, tmp_path)
    assert sha(tmp_path / "f.bin") == SHA
    assert result.size == len(BODY)


async def test_wrong_content_range_is_rejected_and_retried(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    on_data_requests(range_server, Fault.wrong_content_range(shift=512))
    await get(range_server, tmp_path)
    assert sha(tmp_path / "f.bin") == SHA


async def test_persistently_wrong_content_range_fails_without_a_wrong_file(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    range_server.on_request(
        lambda info: None if is_probe(info) else Fault.wrong_content_range(shift=1)
    )
    with pytest.raises(segdl.BadResponse) as info:
        await get(range_server, tmp_path)
    assert info.value.exit_code == 22
    assert "bytes" in str(info.value)
    # The partial stays with its control file; nothing has the file's name.
    assert (tmp_path / "f.bin.part.aria2").exists()
    assert not (tmp_path / "f.bin").exists()


async def test_connection_dropped_mid_piece_is_resumed(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    on_data_requests(range_server, *[Fault.drop_after(100_000 + 7919 * i) for i in range(6)])
    await get(range_server, tmp_path)
    assert sha(tmp_path / "f.bin") == SHA


async def test_503_then_success(range_server: RangeServer, tmp_path: pathlib.Path) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    on_data_requests(
        range_server, Fault.status(503, headers={"Retry-After": "0"}), Fault.status(503)
    )
    await get(range_server, tmp_path)
    assert sha(tmp_path / "f.bin") == SHA
    assert [r.status for r in range_server.requests].count(503) == 2


async def test_stalled_connection_times_out_and_is_retried(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    on_data_requests(range_server, Fault.stall_after(50_000, seconds=5.0))
    options = segdl.Options(
        read_timeout=0.5, save_interval=0.05, retry=segdl.RetryPolicy(base_delay=0.01)
    )
    with trio.fail_after(4):
        await get(range_server, tmp_path, options=options)
    assert sha(tmp_path / "f.bin") == SHA


async def test_404_and_401_are_clear_errors(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    with pytest.raises(segdl.NotFound) as not_found:
        await get(range_server, tmp_path, "/missing.bin")
    assert not_found.value.exit_code == 3
    range_server.add("/secret.bin", Resource(body=BODY))
    range_server.on_request(lambda info: Fault.status(401))
    with pytest.raises(segdl.AuthError) as denied:
        await get(range_server, tmp_path, "/secret.bin")
    assert denied.value.exit_code == 24
    assert list(tmp_path.iterdir()) == []


async def test_checksum_is_verified(range_server: RangeServer, tmp_path: pathlib.Path) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    good = segdl.Options(checksum=segdl.parse_checksum(f"sha-256={SHA}"))
    result = await get(range_server, tmp_path, options=good)
    assert result.sha256 == SHA
    bad = segdl.Options(checksum=segdl.parse_checksum("sha-256=" + "0" * 64))
    with pytest.raises(segdl.ChecksumMismatch) as info:
        await get(range_server, tmp_path / "other", options=bad)
    assert info.value.exit_code == 32


async def test_a_finished_file_is_not_downloaded_again_when_it_can_be_trusted(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    """segdl's record of the file it published shows the server still serves that version:
    done at once.  A file of the right size it cannot vouch for (no record) is taken as
    finished with -c (as aria2c) or when the checksum proves it; without either it may be
    another version of the same size: refused (13)."""
    range_server.add("/f.bin", Resource(body=BODY))
    await get(range_server, tmp_path)
    before = len(data_requests(range_server))
    again = await get(range_server, tmp_path)
    assert again == segdl.Success(path=str(tmp_path / "f.bin"), size=len(BODY))
    records.forget_record(tmp_path / "f.bin")
    with pytest.raises(segdl.FileExists, match="already exists"):
        await get(range_server, tmp_path)
    for trusted in (
        replace(FAST, continue_partial=True),
        replace(FAST, checksum=segdl.parse_checksum(f"sha-256={SHA}")),
    ):
        result = await get(range_server, tmp_path, options=trusted)
        assert result.size == len(BODY)
    assert len(data_requests(range_server)) == before
    assert sha(tmp_path / "f.bin") == SHA


async def test_a_same_size_file_with_other_content_is_not_reported_as_done(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    other = bytes(len(BODY))
    (tmp_path / "f.bin").write_bytes(other)
    checksum = segdl.parse_checksum(f"sha-256={SHA}")
    with pytest.raises(segdl.FileExists, match="other content"):
        await get(range_server, tmp_path, options=replace(FAST, checksum=checksum))
    assert (tmp_path / "f.bin").read_bytes() == other  # never replaced without consent
    result = await get(
        range_server, tmp_path, options=replace(FAST, checksum=checksum, allow_overwrite=True)
    )
    assert sha(pathlib.Path(result.path)) == SHA


async def test_existing_different_file_is_never_overwritten(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    (tmp_path / "f.bin").write_bytes(b"precious")
    with pytest.raises(segdl.FileExists) as info:
        await get(range_server, tmp_path)
    assert info.value.exit_code == 13
    assert (tmp_path / "f.bin").read_bytes() == b"precious"


async def test_continue_adopts_an_existing_prefix(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    prefix = 3 * MIB + 1000
    (tmp_path / "f.bin").write_bytes(BODY[:prefix])
    options = segdl.Options(continue_partial=True)
    await get(range_server, tmp_path, options=options)
    assert sha(tmp_path / "f.bin") == SHA
    starts = [int(r.split("=")[1].split("-")[0]) for r in data_requests(range_server) if r]
    # Only whole 16 KiB blocks of the prefix are trusted, as aria2 does.
    assert min(starts) >= 3 * MIB


async def interrupted(server: RangeServer, directory: pathlib.Path, after_bytes: int) -> None:
    """Start a download and cancel it once *after_bytes* are written."""
    with trio.CancelScope() as scope:

        def on_event(event: Event) -> None:
            if isinstance(event, Progress) and event.downloaded >= after_bytes:
                scope.cancel()

        options = segdl.Options(save_interval=0.05, progress_interval=0.05)
        await segdl.download(server.url("/f.bin"), directory, options=options, on_event=on_event)
    assert scope.cancelled_caught


async def test_cancelled_download_resumes_without_refetching(tmp_path: pathlib.Path) -> None:
    with RangeServer(rate_limit=2 * MIB) as server:
        server.add("/f.bin", Resource(body=BODY))
        await interrupted(server, tmp_path, after_bytes=2 * MIB)
        control = ControlFile.decode((tmp_path / "f.bin.part.aria2").read_bytes())
        assert control.total_length == len(BODY)
        saved = server.requests[:]
        first_run = sum(r.body_bytes for r in saved)
        await get(server, tmp_path)
        second_run = sum(r.body_bytes for r in server.requests[len(saved) :])
    assert sha(tmp_path / "f.bin") == SHA
    assert sidecars(tmp_path) == []
    # Bytes sent twice are at most what was in flight (one buffer per connection).
    assert first_run + second_run <= len(BODY) + 16 * MIB
    assert second_run < len(BODY)


async def test_remote_change_between_runs_restarts(tmp_path: pathlib.Path) -> None:
    new_body = os.urandom(len(BODY))
    with RangeServer(rate_limit=2 * MIB) as server:
        server.add("/f.bin", Resource(body=BODY, etag='"v1"'))
        await interrupted(server, tmp_path, after_bytes=2 * MIB)
        server.add("/f.bin", Resource(body=new_body, etag='"v2"'))
    with RangeServer() as server:
        server.add("/f.bin", Resource(body=new_body, etag='"v2"'))
        await get(server, tmp_path)
    assert sha(tmp_path / "f.bin") == hashlib.sha256(new_body).hexdigest()


async def test_remote_change_during_download_restarts(tmp_path: pathlib.Path) -> None:
    """A range answered with a new ETag means the file changed: start over, never mix."""
    new_body = os.urandom(len(BODY))
    with RangeServer(rate_limit=4 * MIB) as server:
        server.add("/f.bin", Resource(body=BODY, etag='"v1"'))
        swapped_at = -1

        def on_event(event: Event) -> None:
            nonlocal swapped_at
            if isinstance(event, Started) and swapped_at < 0:
                # The first response (v1) is in; every other range is asked for after this.
                server.add("/f.bin", Resource(body=new_body, etag='"v2"'))
                swapped_at = len(server.requests)

        # Two connections: the second asks for its range after the swap.
        options = segdl.Options(connections=2, split=2, progress_interval=0.05)
        await segdl.download(server.url("/f.bin"), tmp_path, options=options, on_event=on_event)
        after = server.requests[swapped_at:]
    assert swapped_at > 0
    assert sha(tmp_path / "f.bin") == hashlib.sha256(new_body).hexdigest()
    # The restart fetched the new version from its first byte.
    assert any(r.range is not None and r.range.startswith("bytes=0-") for r in after)


async def test_a_file_that_shrank_mid_download_restarts(tmp_path: pathlib.Path) -> None:
    """A server that swaps in a shorter file without a new ETag answers the ranges beyond its
    new end with 416 (RFC 9110 §15.5.17): another version, so the download starts over
    instead of failing or keeping bytes of the old one."""
    shorter = os.urandom(2 * MIB + 77)
    with RangeServer(rate_limit=4 * MIB) as server:
        server.add("/f.bin", Resource(body=BODY, etag='"same"'))
        swapped = False

        def on_event(event: Event) -> None:
            nonlocal swapped
            if isinstance(event, Started) and not swapped:
                server.add("/f.bin", Resource(body=shorter, etag='"same"'))
                swapped = True

        options = segdl.Options(connections=4, split=4, progress_interval=0.05)
        await segdl.download(server.url("/f.bin"), tmp_path, options=options, on_event=on_event)
        statuses = {r.status for r in server.requests}
    assert swapped
    assert 416 in statuses
    assert sha(tmp_path / "f.bin") == hashlib.sha256(shorter).hexdigest()


async def test_credentials_are_not_forwarded_to_another_origin(tmp_path: pathlib.Path) -> None:
    with RangeServer() as storage, RangeServer() as site:
        storage.add("/blob/f.bin", Resource(body=BODY))
        site.add_redirect("/dl/f.bin", storage.url("/blob/f.bin"))
        options = segdl.Options(headers={"Authorization": "Bearer sekrit"})
        await segdl.download(site.url("/dl/f.bin"), tmp_path, options=options)
    assert sha(tmp_path / "f.bin") == SHA
    assert site.requests[0].headers.get("authorization") == "Bearer sekrit"
    assert storage.requests
    assert all("authorization" not in r.headers for r in storage.requests)


async def test_mirrors_are_tried_in_order(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    urls = [range_server.url("/gone.bin"), range_server.url("/f.bin")]
    await segdl.download(urls, tmp_path, out="f.bin", options=FAST)
    assert sha(tmp_path / "f.bin") == SHA


async def test_not_enough_disk_space_is_refused_before_fetching(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    huge = 1 << 50
    range_server.add("/f.bin", Resource(body=BODY))
    huge_head = Fault.status(206, headers={"Content-Range": f"bytes 0-0/{huge}"}, body=b"x")
    range_server.on_request(lambda info: huge_head if is_probe(info) else None)
    with pytest.raises(segdl.DiskFull) as info:
        await get(range_server, tmp_path)
    assert info.value.exit_code == 9
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tls_server(tls_pair: CertPair) -> Iterator[RangeServer]:
    with RangeServer(tls=server_context(tls_pair)) as server:
        yield server


def tls_options(pair: CertPair, **changes: object) -> segdl.Options:
    return replace(FAST, ca_certificate=str(pair.certfile), **changes)  # type: ignore[arg-type]


async def test_tls_happy_path_drop_and_stall(
    tls_server: RangeServer, tls_pair: CertPair, tmp_path: pathlib.Path
) -> None:
    """Over TLS the idle timeout surfaces differently (SSL want-read): it must still retry."""
    tls_server.add("/f.bin", Resource(body=BODY))
    on_data_requests(tls_server, Fault.drop_after(300_000), Fault.stall_after(70_000, seconds=5.0))
    with trio.fail_after(5):
        await get(tls_server, tmp_path, options=tls_options(tls_pair, read_timeout=0.5))
    assert sha(tmp_path / "f.bin") == SHA
    assert tls_server.url("/f.bin").startswith("https://")


async def test_tls_untrusted_certificate_is_refused(
    tls_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    tls_server.add("/f.bin", Resource(body=BODY))
    out = tmp_path / "out"
    with pytest.raises(segdl.NetworkError, match="certificate not trusted"):
        await get(tls_server, out)
    assert list(out.iterdir()) == []
