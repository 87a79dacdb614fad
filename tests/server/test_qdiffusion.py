"""qDiffusion's message sequences against ``segdl serve`` (issue 16).

The client is :mod:`qdiffusion`: what qDiffusion sends and reads, from its source.  Every test
has an absolute deadline so a hang fails instead of blocking.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from qdiffusion import (
    FRAGMENT_SIZE,
    Client,
    Entry,
    get_id,
    open_qdiffusion,
    options_as_qdiffusion_reads_them,
)
from wsclient import MIB, open_client, open_server

from segdl.core.clientids import MAX_CLIENT_ID
from segdl.engine.options import Options
from segdl.server import ServeSettings
from segdl.server.downloads import JobState
from segdl.testing.rangeserver import RangeServer, Resource

KIB = 1024


def slow_settings(**changes: Any) -> ServeSettings:
    """Two connections a download, so a rate-limited fake server makes it last."""
    options = Options(connections=2, split=2, progress_interval=0.05)
    return ServeSettings(options=options, **changes)


def since_last_hello(client: Client) -> list[dict[str, Any]]:
    """The messages received on the client's current connection."""
    starts = [i for i, m in enumerate(client.received) if m["type"] == "hello"]
    return client.received[starts[-1] :]


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ---- reconnect


async def test_a_cut_mid_download_then_reconnect_continues_under_the_old_id(
    tmp_path: Path, range_server: RangeServer
) -> None:
    body = os.urandom(2 * MIB)
    range_server.rate_limit = 256 * KIB
    range_server.add("/model.safetensors", Resource(body=body))
    with trio.fail_after(60):
        async with (
            open_server(tmp_path, slow_settings()) as info,
            open_qdiffusion(info.port) as q,
        ):
            id = await q.download("SD", range_server.url("/model.safetensors"))
            await q.pump_until(lambda: q.entries[id].progress > 0)
            before = q.entries[id].progress
            first_id = q.first_hello
            await q.cut()
            await q.connect()  # a new hello, answered by reconnect {first id}
            assert q.hellos[1] != first_id
            await q.pump_until(lambda: q.entries[id].finished)
            (job,) = info.queue.jobs()
            assert job.state is JobState.DONE
            await q.pump_until(lambda: bool(q.options and q.options["UNET"]))
    entry = q.entries[id]
    assert entry.error is None
    assert entry.label == "model.safetensors"
    # Progress and success went on, on the new connection, under the first request's id.
    replies = [m for m in since_last_hello(q) if m["type"] == "download"]
    assert {m["id"] for m in replies} == {id}
    progress = [m["data"]["progress"] for m in replies if m["data"]["status"] == "progress"]
    assert progress
    assert max(progress) > before
    assert replies[-1]["data"]["status"] == "success"
    assert q.errors == []
    assert q.options_requests == 1  # qDiffusion asks for options again after a success
    assert q.options is not None
    assert q.options["UNET"] == ["SD/model.safetensors"]
    assert (tmp_path / "SD" / "model.safetensors").read_bytes() == body


async def test_replies_queued_while_the_client_was_away_arrive_after_reconnect(
    tmp_path: Path, range_server: RangeServer
) -> None:
    body = os.urandom(MIB)
    range_server.add("/lora.safetensors", Resource(body=body))
    with trio.fail_after(60):
        async with open_server(tmp_path) as info, open_qdiffusion(info.port) as q:
            range_server.rate_limit = 64 * KIB  # slow until the client is away
            id = await q.download("LoRA", range_server.url("/lora.safetensors"))
            await q.pump_until(lambda: q.entries[id].label == "lora.safetensors")
            await q.cut()
            range_server.rate_limit = None
            (job,) = info.queue.jobs()
            await job.handle.wait()  # done while nobody was connected
            assert job.state is JobState.DONE
            await q.connect()
            await q.pump_until(lambda: q.entries[id].finished)
    assert q.entries[id].error is None
    statuses = [m["data"]["status"] for m in since_last_hello(q) if m["type"] == "download"]
    assert statuses[-1] == "success"
    assert (tmp_path / "LoRA" / "lora.safetensors").read_bytes() == body


async def test_an_unknown_id_is_acked_and_changes_nothing(
    tmp_path: Path, range_server: RangeServer
) -> None:
    range_server.rate_limit = 128 * KIB
    range_server.add("/a.safetensors", Resource(body=os.urandom(MIB)))
    with trio.fail_after(60):
        async with (
            open_server(tmp_path, slow_settings()) as info,
            open_qdiffusion(info.port) as owner,
            open_client(info.port) as other,
        ):
            url = range_server.url("/a.safetensors")
            id = await owner.download("SD", url)
            await owner.pump_until(lambda: owner.entries[id].label != url)  # started
            assert owner.first_hello is not None
            unknown = owner.first_hello % MAX_CLIENT_ID + 1  # no client's (but by chance)
            reconnect = await other.send("reconnect", {"id": unknown})
            ack = await other.receive()
            assert ack == {"type": "ack", "id": -1, "data": {"id": reconnect, "queue": 0}}
            ping = await other.send("ping")
            await other.expect("ack")
            # Nothing of anyone else's arrived in between.
            assert await other.receive() == {"type": "pong", "id": ping}
            (job,) = info.queue.jobs()
            assert len(job.subscribers) == 1
            await owner.pump_until(lambda: owner.entries[id].finished)
            assert owner.entries[id].error is None


async def test_a_live_connection_is_not_taken_over(
    tmp_path: Path, range_server: RangeServer
) -> None:
    range_server.rate_limit = 256 * KIB
    range_server.add("/b.safetensors", Resource(body=os.urandom(MIB)))
    settings = slow_settings(reconnect_probe_timeout=2.0)
    with trio.fail_after(60):
        async with open_server(tmp_path, settings) as info, open_qdiffusion(info.port) as owner:
            id = await owner.download("SD", range_server.url("/b.safetensors"))
            assert owner.first_hello is not None
            async with open_client(info.port) as thief, trio.open_nursery() as nursery:
                # The owner keeps reading, so it answers the server's ping.
                nursery.start_soon(owner.pump_until, lambda: owner.entries[id].finished)
                reconnect = await thief.send("reconnect", {"id": owner.first_hello})
                assert (await thief.receive())["data"]["id"] == reconnect
                ping = await thief.send("ping")
                await thief.expect("ack")
                assert await thief.receive() == {"type": "pong", "id": ping}
        # The refused client got nothing but its acks and pong (above); the owner all.
        assert owner.entries[id].finished
        assert owner.entries[id].error is None


async def test_a_half_open_connection_is_taken_over_when_it_does_not_answer_a_ping(
    tmp_path: Path, range_server: RangeServer
) -> None:
    # The usual case behind a qDiffusion reconnect: its network went away, and the server
    # still thinks the old connection is up.  Here the old connection stays open but is
    # never read again, so the server's ping gets no pong.
    range_server.rate_limit = 256 * KIB
    range_server.add("/d.safetensors", Resource(body=os.urandom(MIB)))
    settings = slow_settings(reconnect_probe_timeout=1.0)
    with trio.fail_after(60):
        async with open_server(tmp_path, settings) as info, open_qdiffusion(info.port) as q:
            id = await q.download("SD", range_server.url("/d.safetensors"))
            await q.pump_until(lambda: q.entries[id].progress > 0)
            frozen, q.connection = q.connection, None
            try:
                start = trio.current_time()
                await q.connect()  # reconnect {first id}: the server pings the old one
                await q.pump_until(lambda: q.entries[id].finished)
                assert trio.current_time() - start >= 1.0  # it waited for the pong
            finally:
                assert frozen is not None
                await frozen.cut()
    assert q.entries[id].error is None
    replies = [m for m in since_last_hello(q) if m["type"] == "download"]
    assert replies[-1]["data"]["status"] == "success"


async def test_a_client_that_does_not_come_back_is_forgotten(
    tmp_path: Path, range_server: RangeServer
) -> None:
    range_server.rate_limit = 128 * KIB
    range_server.add("/c.safetensors", Resource(body=os.urandom(MIB)))
    with trio.fail_after(60):
        async with (
            open_server(tmp_path, slow_settings(reconnect_grace=0.5)) as info,
            open_qdiffusion(info.port) as q,
        ):
            id = await q.download("SD", range_server.url("/c.safetensors"))
            await q.pump_until(lambda: q.entries[id].progress > 0)
            await q.cut()
            (job,) = info.queue.jobs()
            while job.subscribers:  # noqa: ASYNC110 (the queue has no hook for it)
                await trio.sleep(0.05)
            assert job.state is JobState.RUNNING  # the download itself goes on
            await q.connect()
            ping = await q.ws.send("ping")
            await q.ws.expect("pong", id=ping)
            assert not [m for m in since_last_hello(q) if m["type"] == "download"]


async def test_client_ids_are_random_and_differ_after_a_restart(tmp_path: Path) -> None:
    firsts = []
    with trio.fail_after(30):
        for _ in range(2):
            async with open_server(tmp_path) as info:
                ids = []
                for _ in range(3):
                    async with open_qdiffusion(info.port) as q:
                        assert q.first_hello is not None
                        ids.append(q.first_hello)
                assert len(set(ids)) == 3
                assert all(1 <= i <= MAX_CLIENT_ID for i in ids)
                firsts.append(ids)
    assert firsts[0] != firsts[1]
    assert firsts[0][0] != 1  # not a counter from 1 (chance: 1 in 2**31)


# ---- uploads


async def test_an_upload_in_512_kib_chunks(tmp_path: Path) -> None:
    content = os.urandom(3 * MIB + 12345)
    with trio.fail_after(60):
        async with open_server(tmp_path) as info, open_qdiffusion(info.port) as q:
            id = await q.upload("LoRA", "style.safetensors", content)
            await q.pump_until(lambda: q.entries[id].finished and q.options_requests == 1)
            await q.pump_until(lambda: bool(q.options and q.options["LoRA"]))
    entry = q.entries[id]
    assert entry.error is None
    assert entry.label == "style.safetensors"
    assert entry.progress == 1.0
    replies = [m for m in q.received if m["type"] == "download"]
    assert {m["id"] for m in replies} == {id}
    statuses = [m["data"]["status"] for m in replies]
    assert statuses[0] == "started"
    assert statuses[-1] == "success"
    assert set(statuses[1:-1]) == {"progress"}
    success = replies[-1]["data"]
    assert success["sha256"] == hashlib.sha256(content).hexdigest()
    assert success["path"] == "LoRA/style.safetensors"
    target = tmp_path / "LoRA" / "style.safetensors"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(content).hexdigest()
    assert files_under(tmp_path) == ["LoRA/style.safetensors"]
    assert q.options is not None
    assert q.options["LoRA"] == ["LoRA/style.safetensors"]
    assert q.options["model_types"] == {"LoRA/style.safetensors": "LoRA"}


async def test_an_upload_stopped_by_the_client_leaves_nothing(tmp_path: Path) -> None:
    existing = tmp_path / "SD" / "model.safetensors"
    existing.parent.mkdir()
    existing.write_bytes(b"the old model")
    with trio.fail_after(30):
        async with open_server(tmp_path) as info, open_qdiffusion(info.port) as q:
            id = await q.upload("SD", "model.safetensors", os.urandom(2 * MIB), stop_after=2)
            await q.ws.expect("aborted", id=id)
            assert info.uploads is not None
            assert info.uploads.active() == []
    assert files_under(tmp_path) == ["SD/model.safetensors"]
    assert existing.read_bytes() == b"the old model"


HOSTILE_NAMES = [
    ("../../escape.safetensors", "escape.safetensors"),
    ("/etc/passwd", "passwd"),
    ("..\\..\\windows.safetensors", "windows.safetensors"),
    ("nul\x00byte.safetensors", "nulbyte.safetensors"),
    ("..", "upload"),
    ("sub/dir/deep.safetensors", "deep.safetensors"),
    (".hidden.safetensors", "hidden.safetensors"),
    ("CON.safetensors", "_CON.safetensors"),
]


async def test_hostile_upload_names_stay_inside_their_folder(tmp_path: Path) -> None:
    models = tmp_path / "models"
    long_name = "x" * 5000 + ".safetensors"
    with trio.fail_after(60):
        async with open_server(models) as info, open_qdiffusion(info.port) as q:
            ids = {}
            for name, _ in [*HOSTILE_NAMES, (long_name, "")]:
                ids[name] = await q.upload("SD", name, b"weights of " + name.encode()[:50])
                await q.pump_until(lambda: q.entries[ids[name]].finished)  # noqa: B023
            for name, id in ids.items():
                assert q.entries[id].error is None, (name, q.entries[id].error)
    listed = files_under(tmp_path)
    assert all(path.startswith("models/SD/") for path in listed), listed
    for name, safe in HOSTILE_NAMES:
        assert (models / "SD" / safe).read_bytes() == b"weights of " + name.encode()[:50]
    (long,) = [p for p in (models / "SD").iterdir() if p.name.startswith("xxxx")]
    assert len(long.name.encode()) <= 255 - len(".upload.part")
    assert long.name.endswith(".safetensors")


@pytest.mark.parametrize(
    "type", ["../../etc", "/tmp", "SD/../..", "LoRA\x00", "", "Stable-diffusion/.."]
)
async def test_a_hostile_upload_type_is_refused_and_nothing_is_written(
    tmp_path: Path, type: str
) -> None:
    models = tmp_path / "models"
    with trio.fail_after(30):
        async with open_server(models) as info, open_qdiffusion(info.port) as q:
            id = await q.upload(type, "m.safetensors", os.urandom(3 * FRAGMENT_SIZE))
            await q.pump_until(lambda: q.entries[id].finished)
            # One error for the whole upload: the later chunks are dropped quietly.
            ping = await q.request({"type": "ping"})
            await q.pump_until(lambda: q.received[-1]["type"] == "pong")
            assert q.received[-1]["id"] == ping
    assert "unknown model type" in (q.entries[id].error or "")
    assert [m["data"]["status"] for m in q.received if m["type"] == "download"] == ["error"]
    assert q.errors == []
    assert files_under(tmp_path) == []


async def test_chunks_out_of_order_or_never_started_are_refused(tmp_path: Path) -> None:
    chunk = os.urandom(FRAGMENT_SIZE)
    with trio.fail_after(30):
        async with open_server(tmp_path) as info, open_client(info.port) as client:
            # Chunk 1 of an upload that never started.
            data: dict[str, Any] = {"type": "SD", "name": "m.safetensors", "total": 4}
            id = await client.send("chunk", {**data, "chunk": chunk, "index": 1})
            error = await client.expect("download", id=id)
            assert error["data"]["status"] == "error"
            assert "chunk 0 first" in error["data"]["message"]
            assert files_under(tmp_path) == []
            # Chunks 0 then 2: the upload stops, its partial file is removed.
            id = await client.send("chunk", {**data, "chunk": chunk, "index": 0})
            assert (await client.expect("download", id=id))["data"]["status"] == "started"
            await client.send("chunk", {**data, "chunk": chunk, "index": 2}, id=id)
            reply = await client.expect("download", id=id)
            while reply["data"]["status"] == "progress":
                reply = await client.expect("download", id=id)
            assert reply["data"]["status"] == "error"
            assert "chunk 2 arrived where chunk 1 was expected" in reply["data"]["message"]
            assert files_under(tmp_path) == []
            # The rest of it is dropped without an error each, and the end too.
            await client.send("chunk", {**data, "chunk": chunk, "index": 3}, id=id)
            await client.send("chunk", {"type": "SD", "name": "m.safetensors"})
            ping = await client.send("ping")
            while (message := await client.receive())["type"] != "pong":
                assert message["type"] == "ack", message
            assert message["id"] == ping
    assert files_under(tmp_path) == []


async def test_an_upload_whose_client_never_comes_back_is_removed(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            open_server(tmp_path, ServeSettings(reconnect_grace=0.3)) as info,
            open_qdiffusion(info.port) as q,
        ):
            content = os.urandom(4 * FRAGMENT_SIZE)
            await start_upload(q, "TI", "emb.pt", content, chunks=2)
            assert files_under(tmp_path) == ["TI/emb.pt.upload.part"]
            await q.cut()
            assert info.uploads is not None
            while info.uploads.active():  # noqa: ASYNC110 (no hook for it)
                await trio.sleep(0.05)
    assert files_under(tmp_path) == []


async def test_an_upload_goes_on_after_a_reconnect(tmp_path: Path) -> None:
    content = os.urandom(4 * FRAGMENT_SIZE + 1)
    with trio.fail_after(30):
        async with open_server(tmp_path) as info, open_qdiffusion(info.port) as q:
            id = await start_upload(q, "Detailer", "face.pt", content, chunks=2)
            await q.cut()
            await q.connect()  # reconnect {first id}: the upload is this client's again
            await q.pump_until(lambda: any(m["type"] == "ack" for m in since_last_hello(q)))
            for index in range(2, 5):
                chunk = content[index * FRAGMENT_SIZE : (index + 1) * FRAGMENT_SIZE]
                data = {"type": "Detailer", "name": "face.pt", "chunk": chunk}
                await q.send(
                    {"type": "chunk", "data": {**data, "index": index, "total": 5}, "id": id}
                )
            await q.send({"type": "chunk", "data": {"type": "Detailer", "name": "face.pt"}})
            await q.pump_until(lambda: q.entries[id].finished)
    assert q.entries[id].error is None
    assert (tmp_path / "Detailer" / "face.pt").read_bytes() == content


async def start_upload(q: Client, type: str, name: str, content: bytes, *, chunks: int) -> int:
    """The first *chunks* chunks of an upload, and its replies; returns its id."""
    id = get_id()
    q.entries[id] = Entry(label=name)
    total = -(-len(content) // FRAGMENT_SIZE)
    for index in range(chunks):
        chunk = content[index * FRAGMENT_SIZE : (index + 1) * FRAGMENT_SIZE]
        data = {"type": type, "name": name, "chunk": chunk, "index": index, "total": total}
        await q.send({"type": "chunk", "data": data, "id": id})
    await q.pump_until(lambda: q.entries[id].progress >= chunks / total)
    return id


# ---- messages


async def test_an_oversized_message_gets_an_error_and_the_connection_stays(
    tmp_path: Path,
) -> None:
    settings = ServeSettings(max_message_size=MIB)
    with trio.fail_after(30):
        async with open_server(tmp_path, settings) as info, open_qdiffusion(info.port) as q:
            await q.pump_until(lambda: q.options is not None)
            # A 2 MiB chunk, sent as qDiffusion sends everything: 512 KiB fragments.
            data = {"type": "SD", "name": "m.ckpt", "chunk": os.urandom(2 * MIB), "index": 0}
            await q.send({"type": "chunk", "data": {**data, "total": 1}, "id": 77})
            await q.pump_until(lambda: bool(q.errors))
            (error,) = q.errors
            assert error["id"] == -1
            assert error["data"]["message"] == "Message too large"
            assert error["data"]["limit"] == MIB
            assert error["data"]["size"] > 2 * MIB  # the chunk, sealed in BSON
            ping = await q.request({"type": "ping"})
            await q.pump_until(lambda: q.received[-1]["type"] == "pong")
            assert q.received[-1]["id"] == ping
    assert files_under(tmp_path) == []


# ---- options


async def test_options_in_the_shapes_qdiffusion_reads(tmp_path: Path) -> None:
    for name in (
        "SD/checkpoint.safetensors",
        "SD/sub/other.ckpt",
        "SD/vae-ft.vae.pt",
        "SD/text.clip.safetensors",
        "SD/notes.txt",
        "SD/_archive/old.safetensors",
        "SD/big.safetensors.part",
        "SD/big.safetensors.upload.part",
        "SD/inplace.safetensors",
        "SD/inplace.safetensors.aria2",
        "SD/streamed.safetensors",
        "SD/streamed.safetensors.segdl",
        "Stable-diffusion/a1111.safetensors",
        "VAE/plain.safetensors",
        "LoRA/style.safetensors",
        "LoRA/style.bin",
        "LyCORIS/loha.safetensors",
        "TI/emb.bin",
        "TI/emb.pt",
        "TI/emb.ckpt",
        "SR/4x.pth",
        "SR/4x.onnx",
        "CN/canny.pth",
        "CN/annotators/hed.pth",
        "Detailer/face.pt",
        "Detailer/face.pth",
        "HN/net.pt",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    with trio.fail_after(30):
        async with open_server(tmp_path) as info, open_qdiffusion(info.port) as q:
            await q.pump_until(lambda: q.options is not None)
    options = q.options
    assert options is not None
    checkpoints = [
        "SD/checkpoint.safetensors",
        "SD/sub/other.ckpt",
        "Stable-diffusion/a1111.safetensors",
    ]
    assert options["UNET"] == checkpoints
    assert options["CLIP"] == sorted([*checkpoints, "SD/text.clip.safetensors"], key=str.lower)
    assert options["VAE"] == sorted(
        [*checkpoints, "SD/vae-ft.vae.pt", "VAE/plain.safetensors"], key=str.lower
    )
    assert options["LoRA"] == ["LoRA/style.safetensors", "LyCORIS/loha.safetensors"]
    assert options["TI"] == ["TI/emb.bin", "TI/emb.pt"]
    assert options["SR"] == ["SR/4x.pth"]
    assert options["CN"] == ["CN/canny.pth"]
    assert options["Detailer"] == ["Detailer/face.pt"]
    assert options["HN"] == ["HN/net.pt"]
    assert options["device"] == ["segdl (downloads only)"]
    for key in ("sampler", "AN", "hr_upscaler", "img2img_upscaler", "attention"):
        assert options[key] == []
    assert options["model_types"] == dict.fromkeys(options["LoRA"], "LoRA")

    settings = options_as_qdiffusion_reads_them(options)
    assert settings["devices"] == ["segdl (downloads only)"]
    assert settings["device"] == "segdl (downloads only)"
    assert settings["models"] == checkpoints
    assert settings["model"] == "SD/checkpoint.safetensors"
    assert settings["LoRAs"] == options["LoRA"]
