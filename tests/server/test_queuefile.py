"""The persisted queue: unfinished downloads survive a restart; the file holds no secret and a
bad file never stops the server."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from wsclient import MIB, ProtocolClient, open_client, open_server

from segdl.core.folders import FOLDERS
from segdl.engine.options import Options
from segdl.server import ServeSettings
from segdl.server.downloads import JobState
from segdl.server.queuefile import (
    QUEUE_FILE,
    CorruptQueueFile,
    SavedJob,
    SavedQueue,
    from_document,
    read_queue_file,
    strip_secrets,
    to_document,
    write_queue_file,
)
from segdl.testing.rangeserver import RangeServer, Resource

KIB = 1024
SETTINGS = ServeSettings(options=Options(connections=2, split=2, progress_interval=0.05))


async def wait_for(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 (nothing to wait on but the disk)
        await trio.sleep(0.02)


async def request(client: ProtocolClient, type: str, data: dict[str, Any]) -> int:
    id = await client.send(type, data)
    while (await client.expect("ack"))["data"]["id"] != id:
        pass
    return id


async def outcome(client: ProtocolClient, id: int) -> dict[str, Any]:
    while True:
        message = await client.expect("download", id=id)
        data: dict[str, Any] = message["data"]
        if data["status"] in ("success", "error"):
            return data


def saved_states(path: Path) -> dict[int, str]:
    try:
        document = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {job["id"]: job["state"] for job in document["jobs"]}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_the_queue_survives_a_restart(tmp_path: Path, range_server: RangeServer) -> None:
    bodies = {"/paused.bin": os.urandom(3 * MIB + 7), "/running.bin": os.urandom(3 * MIB + 11)}
    for name, body in bodies.items():
        range_server.add(name, Resource(body=body))
    range_server.rate_limit = 256 * KIB
    queue_file = tmp_path / QUEUE_FILE
    with trio.fail_after(90):
        async with open_server(tmp_path, SETTINGS) as info, open_client(info.port) as client:
            url = range_server.url("/paused.bin")
            to_pause = await request(client, "download", {"type": "LoRA", "url": url})
            url = range_server.url("/running.bin")
            to_run = await request(client, "download", {"type": "SD", "url": url})
            paused, running = info.queue.jobs()
            await wait_for(
                lambda: all(j.progress and j.progress.downloaded for j in info.queue.jobs())
            )
            await request(client, "limit", {"id": to_run, "rate": 64 * MIB})
            await client.send("pause", {"id": to_pause})
            await client.expect("paused", id=to_pause)
            at_pause = paused.progress.downloaded if paused.progress else 0
            await wait_for(
                lambda: saved_states(queue_file) == {paused.id: "paused", running.id: "running"}
            )
        # The server stopped mid-download: the file still says what to take up.
        saved = json.loads(queue_file.read_text())
        assert {job["id"]: job["state"] for job in saved["jobs"]} == {
            paused.id: "paused",
            running.id: "running",
        }
        assert stat.S_IMODE(queue_file.stat().st_mode) == 0o600
        before = len(range_server.requests)
        range_server.rate_limit = None

        async with open_server(tmp_path, SETTINGS) as info, open_client(info.port) as client:
            listing = await request(client, "downloads", {})
            reply = await client.expect("downloads", id=listing)
            entries = {entry["id"]: entry for entry in reply["data"]["downloads"]}
            assert entries[paused.id]["state"] == "paused"
            assert entries[paused.id]["label"] == "paused.bin"
            assert entries[paused.id]["type"] == "LoRA"
            assert entries[paused.id]["downloaded"] >= at_pause > 0
            assert entries[running.id]["state"] in ("queued", "running")
            assert entries[running.id]["limit"] == 64 * MIB

            # The running one goes on by itself; the paused one waits.
            restored = info.queue.get(running.id)
            assert restored is not None
            await wait_for(lambda: restored.state is JobState.DONE)
            assert not any(r.path == "/paused.bin" for r in range_server.requests[before:])

            # A client that reconnected after the restart resumes it by its job id.
            resume = await request(client, "resume", {"job": paused.id})
            done = await outcome(client, resume)
            assert done["status"] == "success", done
            assert done["path"] == "LoRA/paused.bin"

            # New ids follow the restored ones.
            url = range_server.url("/running.bin")
            again = await request(client, "download", {"type": "VAE", "url": url})
            assert (await outcome(client, again))["status"] == "success"
            assert max(job.id for job in info.queue.jobs()) == running.id + 1
            await wait_for(lambda: saved_states(queue_file) == {})
    for name, body in bodies.items():
        folder = "LoRA" if name == "/paused.bin" else "SD"
        assert sha((tmp_path / folder / name.lstrip("/")).read_bytes()) == sha(body)
    # The resumed download asked only for what it did not have.
    fetched = sum(r.body_bytes for r in range_server.requests[before:] if r.path == "/paused.bin")
    assert fetched <= len(bodies["/paused.bin"]) - at_pause + 256 * KIB


async def test_the_queue_file_holds_no_token(tmp_path: Path, range_server: RangeServer) -> None:
    range_server.rate_limit = 64 * KIB
    range_server.add("/secret.bin", Resource(body=os.urandom(2 * MIB)))
    range_server.add("/legacy.bin", Resource(body=os.urandom(2 * MIB)))
    base = range_server.url("/secret.bin")
    url = f"{base}?token=URL-SECRET&fmt=SafeTensor&X-Amz-Signature=SIG-SECRET&api_key=KEY-SECRET"
    authority = base.split("/")[2]
    legacy = range_server.url("/legacy.bin").replace(authority, f"me:PASS-SECRET@{authority}")
    queue_file = tmp_path / QUEUE_FILE
    with trio.fail_after(30):
        async with open_server(tmp_path, SETTINGS) as info, open_client(info.port) as client:
            data = {"url": url, "civitai_token": "CIVITAI-SECRET", "hf_token": "HF-SECRET"}
            await request(client, "download", {"type": "SD", **data})
            await request(client, "download", {"type": "SD", "url": legacy, "token": "HF-OLD"})
            await wait_for(lambda: len(saved_states(queue_file)) == 2)
            # The running download itself still has its query string.
            await wait_for(lambda: any("token=URL-SECRET" in r.path for r in range_server.requests))
            text = queue_file.read_text()
            assert stat.S_IMODE(queue_file.stat().st_mode) == 0o600
    # No temporary file is left behind once the last write is over.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(QUEUE_FILE)] == [QUEUE_FILE]
    # Nor in what was written last, as the server stopped.
    for written in (text, queue_file.read_text()):
        for secret in ("SECRET", "HF-OLD", "token", "civitai_token", "hf_token", "me:"):
            assert secret not in written
        urls = [job["url"] for job in json.loads(written)["jobs"]]
        assert urls == [f"{base}?fmt=SafeTensor", range_server.url("/legacy.bin")]


def _document(**job: Any) -> bytes:
    entry = {"id": 1, "url": "http://127.0.0.1:9/a.bin", "type": "SD", "state": "paused", **job}
    return json.dumps({"version": 1, "next_id": 2, "jobs": [entry]}).encode()


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff not json {",
        b"",
        b"[]",
        b'{"version": 2, "jobs": []}',
        b'{"version": 1, "jobs": {}}',
        _document(type="../../etc"),
        _document(type="lora"),  # an alias: this server writes folder names
        _document(url="file:///etc/passwd"),
        _document(url=5),
        _document(state="done"),
        _document(id=True),
        _document(id=0),
        _document(limit=-5),
        json.dumps({"version": 1, "jobs": [json.loads(_document())["jobs"][0]] * 2}).encode(),
        "directory",
    ],
)
async def test_a_bad_queue_file_is_set_aside_and_the_server_starts(
    tmp_path: Path, content: bytes | str, caplog: pytest.LogCaptureFixture
) -> None:
    queue_file = tmp_path / QUEUE_FILE
    if isinstance(content, bytes):
        queue_file.write_bytes(content)
    else:
        queue_file.mkdir()  # unreadable as a file
    with trio.fail_after(20):
        async with open_server(tmp_path) as info, open_client(info.port) as client:
            assert info.queue.jobs() == []
            id = await client.send("ping")
            assert (await client.expect("pong"))["id"] == id
    aside = tmp_path / f"{QUEUE_FILE}.corrupt"
    if isinstance(content, bytes):
        assert aside.read_bytes() == content
    else:
        assert aside.is_dir()
    assert [p.name for p in tmp_path.iterdir()] == [aside.name]
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "segdl.server" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1, warnings
    assert "\n" not in warnings[0]
    assert "renamed it to .segdl-queue.json.corrupt" in warnings[0]


async def test_a_hand_written_queue_file_is_taken_up(
    tmp_path: Path, range_server: RangeServer
) -> None:
    body = os.urandom(MIB)
    range_server.add("/hand.bin", Resource(body=body))
    entry = {"id": 41, "url": range_server.url("/hand.bin"), "type": "CN", "state": "queued"}
    (tmp_path / QUEUE_FILE).write_text(json.dumps({"version": 1, "next_id": 3, "jobs": [entry]}))
    with trio.fail_after(20):
        async with open_server(tmp_path) as info, open_client(info.port) as client:
            job = info.queue.get(41)
            assert job is not None
            await wait_for(lambda: job.state is JobState.DONE)
            url = range_server.url("/hand.bin")
            id = await request(client, "download", {"type": "SD", "url": url})
            assert (await outcome(client, id))["status"] == "success"
            assert [j.id for j in info.queue.jobs()] == [41, 42]
    assert (tmp_path / "CN" / "hand.bin").read_bytes() == body


def test_no_queue_file_without_a_download(tmp_path: Path) -> None:
    assert read_queue_file(tmp_path / QUEUE_FILE) is None
    assert list(tmp_path.iterdir()) == []


# ---- units


@pytest.mark.parametrize(
    ("url", "stripped"),
    [
        (
            "https://civitai.com/api/download/models/1?token=abc",
            "https://civitai.com/api/download/models/1",
        ),
        (
            "https://civitai.com/api/download/models/1?type=Model&token=abc&format=SafeTensor",
            "https://civitai.com/api/download/models/1?type=Model&format=SafeTensor",
        ),
        ("https://u:p@example.com:8443/f.bin?a=%20b", "https://example.com:8443/f.bin?a=%20b"),
        (
            "https://b.s3.amazonaws.com/f?X-Amz-Credential=c&X-Amz-Signature=s&X-Amz-Date=d",
            "https://b.s3.amazonaws.com/f?X-Amz-Date=d",
        ),
        ("https://x.blob.core.windows.net/f?sv=1&sig=s", "https://x.blob.core.windows.net/f?sv=1"),
        ("https://e.com/f?access_token=a&API_KEY=b&Key=c&hf_token=d", "https://e.com/f"),
        ("https://mega.nz/file/H#KEY", "https://mega.nz/file/H#KEY"),
        (
            "https://drive.google.com/uc?id=X&resourcekey=R&export=download",
            "https://drive.google.com/uc?id=X&resourcekey=R&export=download",
        ),
        ("hf://owner/repo/file.safetensors", "hf://owner/repo/file.safetensors"),
    ],
)
def test_strip_secrets(url: str, stripped: str) -> None:
    assert strip_secrets(url) == stripped


saved_jobs = st.builds(
    SavedJob,
    id=st.integers(1, 2**40),
    url=st.sampled_from(["http://127.0.0.1:9/a.bin", "https://e.com/m?type=Model#f"]),
    folder=st.sampled_from(FOLDERS),
    state=st.sampled_from(["queued", "running", "paused"]),
    label=st.none() | st.text(max_size=20),
    limit=st.none() | st.integers(1, 2**40),
    downloaded=st.integers(0, 2**40),
    total=st.none() | st.integers(0, 2**40),
)


@given(st.lists(saved_jobs, max_size=5, unique_by=lambda job: job.id), st.integers(1, 2**40))
def test_documents_round_trip(jobs: list[SavedJob], next_id: int) -> None:
    queue = SavedQueue(next_id=next_id, jobs=tuple(jobs))
    loaded = from_document(json.loads(json.dumps(to_document(queue))))
    assert loaded.jobs == queue.jobs
    assert loaded.next_id == max([next_id, *(job.id + 1 for job in jobs)])


def test_from_document_refuses_what_we_would_not_write() -> None:
    for bad in (None, 1, "x", {"version": 1}, {"version": 1, "jobs": [1]}):
        with pytest.raises(CorruptQueueFile):
            from_document(bad)


def test_write_queue_file_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "models" / QUEUE_FILE
    queue = SavedQueue(next_id=3, jobs=(SavedJob(2, "http://e.com/a?token=t", "SD", "paused"),))
    write_queue_file(path, queue)
    write_queue_file(path, queue)
    assert os.listdir(path.parent) == [QUEUE_FILE]  # no temporary file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = read_queue_file(path)
    assert loaded is not None
    assert loaded.jobs[0].url == "http://e.com/a"
    (tmp_path / "a-file").write_text("")
    with pytest.raises((FileExistsError, NotADirectoryError)):
        write_queue_file(tmp_path / "a-file" / QUEUE_FILE, queue)
