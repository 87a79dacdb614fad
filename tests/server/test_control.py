"""Pause, resume and bandwidth limits over the protocol, against the real download function.

Rates are measured on the client's side: the ``downloaded`` count of the job's progress
events (every 50 ms here).  The fake server's count of bytes sent is no measure of a client
that limits itself (on loopback the kernel buffers megabytes per connection); its request
records show which ranges a resumed download asked for, and its live connections that a
paused one holds none.  Bounds are loose: the machine is shared.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
from wsclient import MIB, ProtocolClient, open_client, open_server

from segdl.core.controlfile import ControlFile
from segdl.core.events import Event, Started, Success
from segdl.core.resume import pieces_from_control
from segdl.engine.options import Options
from segdl.errors import FileExists
from segdl.jobs.request import DownloadRequest
from segdl.server import ServeSettings
from segdl.server.app import MAX_RATE, parse_rate
from segdl.server.cli import add_serve_arguments, run_serve
from segdl.server.downloads import Job, _client_message
from segdl.testing.rangeserver import RangeServer, Resource

KIB = 1024


def options(connections: int = 4) -> Options:
    return Options(connections=connections, split=connections, progress_interval=0.05)


def claimed(part: Path) -> list[tuple[int, int]]:
    """The byte ranges ``[start, end)`` the control file beside *part* says are written."""
    control = ControlFile.decode(part.with_name(part.name + ".aria2").read_bytes())
    pieces = pieces_from_control(control)
    ranges = [
        (i * control.piece_length, min((i + 1) * control.piece_length, control.total_length))
        for i in pieces.done_indices()
    ]
    ranges += [
        (i * control.piece_length, i * control.piece_length + n)
        for i, n in pieces.partial_pieces().items()
    ]
    return ranges


def downloaded(jobs: Sequence[Job]) -> int:
    return sum(job.progress.downloaded if job.progress else 0 for job in jobs)


async def measure(jobs: Sequence[Job], seconds: float) -> float:
    """Bytes a second *jobs* received together over the next *seconds*."""
    before, start = downloaded(jobs), trio.current_time()
    await trio.sleep(seconds)
    return (downloaded(jobs) - before) / (trio.current_time() - start)


async def wait_for(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 (the queue has no hook for it)
        await trio.sleep(0.02)


async def request(client: ProtocolClient, type: str, data: dict[str, Any]) -> int:
    """Send a request and wait for its ack: then the server has handled it."""
    id = await client.send(type, data)
    while (await client.expect("ack"))["data"]["id"] != id:
        pass
    return id


def live_connections(server: RangeServer) -> int:
    return len(server._live)


async def outcomes(client: ProtocolClient, *ids: int) -> list[dict[str, Any]]:
    """The outcomes (success or error) of download requests *ids*, whatever their order."""
    found: dict[int, dict[str, Any]] = {}
    while len(found) < len(ids):
        message = await client.receive()
        finished = message["type"] == "download" and message["id"] in ids
        if finished and message["data"]["status"] in ("success", "error"):
            found[message["id"]] = message["data"]
    return [found[id] for id in ids]


async def final_reply(client: ProtocolClient, id: int) -> dict[str, Any]:
    (outcome,) = await outcomes(client, id)
    return outcome


async def listing(client: ProtocolClient) -> dict[int, dict[str, Any]]:
    id = await client.send("downloads")
    reply = await client.expect("downloads", id=id)
    return {entry["id"]: entry for entry in reply["data"]["downloads"]}


async def test_limit_changes_a_running_download_rate(
    tmp_path: Path, range_server: RangeServer
) -> None:
    body = os.urandom(16 * MIB)
    range_server.add("/limited.bin", Resource(body=body))
    settings = ServeSettings(options=options(), max_overall_download_limit=MIB)
    with trio.fail_after(60):
        async with open_server(tmp_path, settings) as info, open_client(info.port) as client:
            id = await request(
                client, "download", {"type": "SD", "url": range_server.url("/limited.bin")}
            )
            (job,) = info.queue.jobs()
            await wait_for(lambda: downloaded([job]) > 0)
            await trio.sleep(0.5)
            overall = await measure([job], 2.0)

            limit_id = await client.send("limit", {"id": id, "rate": 256 * KIB})
            reply = await client.expect("limit", id=limit_id)
            assert reply["data"] == {"rate": 256 * KIB, "job": job.id}
            await trio.sleep(0.5)
            own = await measure([job], 2.0)

            # Lift the overall limit, raise the job's: the job's is the only one left.
            await client.send("limit", {"rate": None})
            limit_id = await client.send("limit", {"job": job.id, "rate": 3 * MIB})
            assert (await client.expect("limit", id=limit_id))["data"]["rate"] == 3 * MIB
            await trio.sleep(0.5)
            raised = await measure([job], 2.0)

            await client.send("limit", {"id": id, "rate": 0})
            assert (await final_reply(client, id))["status"] == "success"
    assert 0.5 * MIB < overall < 1.4 * MIB
    assert 100 * KIB < own < 400 * KIB
    assert 1.5 * MIB < raised < 4.2 * MIB
    assert hashlib.sha256((tmp_path / "SD" / "limited.bin").read_bytes()).digest() == (
        hashlib.sha256(body).digest()
    )


async def test_overall_limit_applies_to_two_downloads_together(
    tmp_path: Path, range_server: RangeServer
) -> None:
    bodies = {name: os.urandom(8 * MIB) for name in ("/one.bin", "/two.bin")}
    for name, body in bodies.items():
        range_server.add(name, Resource(body=body))
    settings = ServeSettings(options=options())
    with trio.fail_after(60):
        async with open_server(tmp_path, settings) as info, open_client(info.port) as client:
            limit_id = await client.send("limit", {"rate": MIB})
            assert (await client.expect("limit", id=limit_id))["data"] == {
                "rate": MIB,
                "job": None,
            }
            ids = [
                await request(client, "download", {"type": "LoRA", "url": range_server.url(name)})
                for name in bodies
            ]
            await wait_for(lambda: len(info.queue.jobs()) == 2)
            jobs = info.queue.jobs()
            await wait_for(lambda: all(downloaded([job]) > 0 for job in jobs))
            await trio.sleep(0.5)
            starts = [downloaded([job]) for job in jobs]
            together = await measure(jobs, 3.0)
            each = [downloaded([job]) - start for job, start in zip(jobs, starts, strict=True)]
            assert (await listing(client))[jobs[0].id]["state"] == "running"

            id = await client.send("downloads")
            assert (await client.expect("downloads", id=id))["data"]["limit"] == MIB
            await client.send("limit", {"rate": 0})
            for outcome in await outcomes(client, *ids):
                assert outcome["status"] == "success"
    assert 0.5 * MIB < together < 1.4 * MIB
    assert all(count > 256 * KIB for count in each)  # both moved, sharing the limit
    for name, body in bodies.items():
        assert (tmp_path / "LoRA" / name.lstrip("/")).read_bytes() == body


async def test_pause_stops_for_real_and_resume_fetches_only_the_rest(
    tmp_path: Path, range_server: RangeServer
) -> None:
    body = os.urandom(6 * MIB + 4321)
    range_server.rate_limit = 256 * KIB  # per connection: about 1 MiB/s over 4
    range_server.add("/paused.bin", Resource(body=body))
    final = tmp_path / "SD" / "paused.bin"
    part = tmp_path / "SD" / "paused.bin.part"
    settings = ServeSettings(options=options())
    with trio.fail_after(60):
        async with open_server(tmp_path, settings) as info, open_client(info.port) as client:
            id = await request(
                client, "download", {"type": "SD", "url": range_server.url("/paused.bin")}
            )
            (job,) = info.queue.jobs()
            await wait_for(lambda: downloaded([job]) > 1536 * KIB)
            await client.send("pause", {"id": id})
            assert (await client.expect("paused", id=id))["data"] == {}
            assert (await listing(client))[job.id]["state"] == "paused"
            assert info.queue.waiting() == 0

            # No connection left: the fake server's threads saw theirs closed.
            with trio.fail_after(5):
                await wait_for(lambda: live_connections(range_server) == 0)
            at_pause = downloaded([job])
            requests = len(range_server.requests)
            saved = claimed(part)
            content = hashlib.sha256(part.read_bytes()).digest()
            assert part.with_name("paused.bin.part.aria2").exists()
            assert not final.exists()
            await trio.sleep(1.0)
            assert len(range_server.requests) == requests
            assert live_connections(range_server) == 0
            assert downloaded([job]) == at_pause
            assert hashlib.sha256(part.read_bytes()).digest() == content  # nothing written

            # Pausing again is harmless, and says so.
            await client.send("pause", {"id": id})
            await client.expect("paused", id=id)

            range_server.rate_limit = None
            await client.send("resume", {"id": id})
            started = await client.expect("download", id=id)
            assert started["data"]["status"] in ("queued", "started")
            success = await final_reply(client, id)
            assert success["status"] == "success", success
            assert success["size"] == len(body)
    assert hashlib.sha256(final.read_bytes()).digest() == hashlib.sha256(body).digest()
    assert sorted(p.name for p in final.parent.iterdir()) == ["paused.bin"]
    # What was saved at the pause is not asked for again: no range the resumed run requested
    # overlaps it.  (Counting bytes served would not do: a range stolen from a connection
    # keeps streaming into the socket buffers until the connection closes.)
    assert 1536 * KIB < at_pause < len(body)
    assert sum(last - first for first, last in saved) >= at_pause - 4 * 16 * KIB
    for record in range_server.requests[requests:]:
        if record.range in (None, "bytes=0-0"):
            continue
        first, _, last = record.range.removeprefix("bytes=").partition("-")
        for start, end in saved:
            assert int(last) < start or int(first) >= end, (record.range, saved)


async def test_pause_and_resume_of_a_queued_download(
    tmp_path: Path, range_server: RangeServer
) -> None:
    first, second = os.urandom(2 * MIB), os.urandom(MIB)
    range_server.rate_limit = 512 * KIB
    range_server.add("/first.bin", Resource(body=first))
    range_server.add("/second.bin", Resource(body=second))
    settings = ServeSettings(options=options(2), max_concurrent=1)
    with trio.fail_after(60):
        async with open_server(tmp_path, settings) as info, open_client(info.port) as client:
            id1 = await request(
                client, "download", {"type": "VAE", "url": range_server.url("/first.bin")}
            )
            await client.expect("download", id=id1)
            id2 = await request(
                client, "download", {"type": "VAE", "url": range_server.url("/second.bin")}
            )
            assert (await client.expect("download", id=id2))["data"]["status"] == "queued"
            job2 = info.queue.jobs()[1]
            # By job id, as a client that reconnected would.
            pause_id = await client.send("pause", {"job": job2.id})
            await client.expect("paused", id=id2)
            await client.expect("paused", id=pause_id)  # it now follows the download too
            assert info.queue.waiting() == 0

            assert (await final_reply(client, id1))["status"] == "success"
            await trio.sleep(0.3)
            assert job2.state.value == "paused"  # the free slot did not start it
            assert not any(
                r.path == "/second.bin" and r.method == "GET" for r in range_server.requests
            )

            range_server.rate_limit = None
            await client.send("resume", {"id": id2})
            for outcome in await outcomes(client, id2, pause_id):
                assert outcome["status"] == "success"
    assert (tmp_path / "VAE" / "second.bin").read_bytes() == second


async def test_asking_again_for_a_paused_download_resumes_it(
    tmp_path: Path, range_server: RangeServer
) -> None:
    body = os.urandom(2 * MIB)
    range_server.rate_limit = 256 * KIB
    range_server.add("/again.bin", Resource(body=body))
    url = range_server.url("/again.bin")
    settings = ServeSettings(options=options(2))
    with trio.fail_after(60):
        async with open_server(tmp_path, settings) as info, open_client(info.port) as client:
            id = await request(client, "download", {"type": "TI", "url": url})
            (job,) = info.queue.jobs()
            await wait_for(lambda: downloaded([job]) > 0)
            await client.send("pause", {"id": id})
            await client.expect("paused", id=id)
            range_server.rate_limit = None
            again = await request(client, "download", {"type": "embedding", "url": url})
            assert (await final_reply(client, again))["status"] == "success"
            assert info.queue.jobs() == [job]
    assert (tmp_path / "TI" / "again.bin").read_bytes() == body


async def test_cancel_of_a_paused_download(tmp_path: Path, range_server: RangeServer) -> None:
    range_server.rate_limit = 256 * KIB
    range_server.add("/c.bin", Resource(body=os.urandom(2 * MIB)))
    with trio.fail_after(30):
        async with open_server(tmp_path) as info, open_client(info.port) as client:
            id = await request(
                client, "download", {"type": "SD", "url": range_server.url("/c.bin")}
            )
            await client.expect("download", id=id)
            await client.send("pause", {"id": id})
            await client.expect("paused", id=id)
            await client.send("cancel", {"id": id})
            await client.expect("aborted", id=id)
            (job,) = info.queue.jobs()
            assert job.state.value == "cancelled"
            resume_id = await client.send("resume", {"id": id})
            error = await client.expect("error", id=resume_id)
            assert "ended" in error["data"]["message"]


@pytest.mark.parametrize(
    ("type", "data", "fragment"),
    [
        ("pause", {"id": 999}, "no such download"),
        ("resume", {"job": 999}, "no such download"),
        ("pause", {}, "which download"),
        ("resume", {"id": "1"}, "which download"),
        ("limit", {"id": 999, "rate": 5}, "no such download"),
        ("limit", {"rate": -1}, "negative"),
        ("limit", {"rate": "fast"}, "number"),
        ("limit", {"rate": "1M"}, "number"),
        ("limit", {"rate": True}, "number"),
        ("limit", {"rate": [1]}, "number"),
        ("limit", {"rate": 2**70}, "too large"),
        ("limit", {"rate": MAX_RATE + 1}, "too large"),
        ("limit", {"rate": 0.25}, "at least 1"),
        ("limit", {"rate": 1e300}, "too large"),
    ],
)
async def test_bad_control_requests_get_an_error_and_the_server_stays(
    tmp_path: Path, type: str, data: dict[str, Any], fragment: str
) -> None:
    with trio.fail_after(20):
        async with open_server(tmp_path) as info, open_client(info.port, codec="json") as client:
            id = await client.send(type, data)
            error = await client.expect("error", id=id)
            assert fragment in error["data"]["message"]
            assert error["data"]["trace"] == ""
            assert info.queue.overall_limit.rate is None
            query = await client.send("limit", {})
            assert (await client.expect("limit", id=query))["data"] == {"rate": None, "job": None}


def test_parse_rate() -> None:
    assert parse_rate(None) is None
    assert parse_rate(0) is None
    assert parse_rate(0.0) is None
    assert parse_rate(1) == 1
    assert parse_rate(1536.7) == 1536
    assert parse_rate(MAX_RATE) == MAX_RATE
    bad_values: tuple[object, ...] = (-1, -0.5, float("nan"), float("inf"), False, "5", b"5", {})
    for bad in bad_values:
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)


async def test_a_second_request_for_a_finished_file_succeeds_at_once(
    tmp_path: Path, range_server: RangeServer
) -> None:
    """A second request for a finished direct download: segdl's record shows the file is
    the one the server still serves, so it succeeds without a data request (issue 16.5:
    sd-inference-server would download it again; a refusal showed as an error dialog)."""
    body = os.urandom(64 * KIB)
    range_server.add("/twice.bin", Resource(body=body))
    url = range_server.url("/twice.bin")
    with trio.fail_after(30):
        async with open_server(tmp_path, ServeSettings()) as info, open_client(info.port) as client:
            first = await request(client, "download", {"type": "LoRA", "url": url})
            assert (await final_reply(client, first))["status"] == "success"
            served = len(range_server.requests)
            again = await request(client, "download", {"type": "LoRA", "url": url})
            reply = await final_reply(client, again)
    assert reply["status"] == "success", reply
    assert (reply["label"], reply["path"], reply["size"]) == (
        "twice.bin",
        "LoRA/twice.bin",
        len(body),
    )
    # The probe's one byte, nothing more.
    assert [r.range for r in range_server.requests[served:]] == ["bytes=0-0"]
    assert (tmp_path / "LoRA" / "twice.bin").read_bytes() == body
    assert sorted(p.name for p in (tmp_path / "LoRA").iterdir()) == ["twice.bin"]


async def test_a_changed_file_is_replaced_safely(tmp_path: Path, range_server: RangeServer) -> None:
    """The server's file changed since the first download: asked again, the new one
    downloads beside the old, which stays intact through a cancelled try, and replaces it
    once complete and verified."""
    old, new = os.urandom(2 * MIB + 5), os.urandom(3 * MIB + 7)
    range_server.add("/m.safetensors", Resource(body=old, etag='"v1"'))
    url = range_server.url("/m.safetensors")
    final = tmp_path / "LoRA" / "m.safetensors"
    settings = ServeSettings(options=options())
    with trio.fail_after(60):
        async with open_server(tmp_path, settings) as info, open_client(info.port) as client:
            first = await request(client, "download", {"type": "LoRA", "url": url})
            assert (await final_reply(client, first))["status"] == "success"
            range_server.add("/m.safetensors", Resource(body=new, etag='"v2"'))
            range_server.rate_limit = 128 * KIB
            second = await request(client, "download", {"type": "LoRA", "url": url})
            job = info.queue.jobs()[-1]
            await wait_for(lambda: downloaded([job]) > MIB)
            assert final.read_bytes() == old
            await client.send("cancel", {"id": second})
            await client.expect("aborted", id=second)
            assert final.read_bytes() == old
            assert sorted(p.name for p in final.parent.iterdir()) == [
                "m.safetensors",
                "m.safetensors.part",
                "m.safetensors.part.aria2",
            ]
            range_server.rate_limit = None
            third = await request(client, "download", {"type": "LoRA", "url": url})
            reply = await final_reply(client, third)
    assert reply["status"] == "success", reply
    assert reply["size"] == len(new)
    assert final.read_bytes() == new
    assert sorted(p.name for p in final.parent.iterdir()) == ["m.safetensors"]


def test_a_file_being_written_by_another_download_is_explained_without_cli_advice() -> None:
    """The one FileExists the server can still meet (aria2c's "already being downloaded"):
    one plain sentence for a UI user, no flags and no server paths."""
    job = cast(Job, SimpleNamespace(folder="LoRA"))
    error = FileExists("/srv/models/LoRA/x.bin already exists; use -c or --allow-overwrite")
    message = _client_message(error, job)
    assert "LoRA folder" in message
    assert "-c" not in message
    assert "/srv" not in message


async def test_a_replacement_download_function_is_called(tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    async def fake(request: DownloadRequest, emit: Callable[[Event], None]) -> Success:
        calls.append({"url": request.source.url, "directory": request.directory})
        path = request.directory / "fake.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        emit(Started(filename="fake.bin", size=1))
        await trio.lowlevel.checkpoint()
        return Success(path=str(path), size=1, sha256=None)

    settings = ServeSettings(run=fake)
    with trio.fail_after(20):
        async with open_server(tmp_path, settings) as info, open_client(info.port) as client:
            id = await request(client, "download", {"type": "SD", "url": "http://127.0.0.1:9/f"})
            assert (await final_reply(client, id))["status"] == "success"
    assert calls == [{"url": "http://127.0.0.1:9/f", "directory": tmp_path / "SD"}]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def test_serve_max_overall_download_limit_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert _args().max_overall_download_limit == "0"
    assert _args("--max-overall-download-limit", "10M").max_overall_download_limit == "10M"
    assert run_serve(_args("--max-overall-download-limit", "-1")) == 28
    assert run_serve(_args("--max-overall-download-limit", "fast")) == 28
    err = capsys.readouterr().err
    assert err.count("segdl: error: --max-overall-download-limit") == 2
    assert "Traceback" not in err
