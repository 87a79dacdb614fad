"""``segdl serve`` over a real loopback socket, driven by a client of the protocol document.

Every test has an absolute deadline (``fail_after``) so a hang fails instead of blocking.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.exceptions import InvalidTag
from wsclient import MIB, Closed, CodecName, ProtocolClient, client_key, open_client, open_server

from segdl.engine.options import Options
from segdl.server import ServeSettings
from segdl.testing.rangeserver import RangeServer, Resource
from segdl.testing.tls import CertPair

BODY = os.urandom(3 * MIB + 123)
SHA = hashlib.sha256(BODY).hexdigest()
CODECS: list[CodecName] = ["bson", "json"]


def statuses(replies: list[dict[str, Any]]) -> list[str]:
    """The reply statuses, with runs of ``progress`` folded into one."""
    out: list[str] = []
    for reply in replies:
        if not (out and out[-1] == "progress" == reply["status"]):
            out.append(reply["status"])
    return out


@pytest.mark.parametrize("codec", CODECS)
async def test_successful_download_full_sequence(
    tmp_path: Path, range_server: RangeServer, codec: CodecName
) -> None:
    range_server.add("/model.safetensors", Resource(body=BODY))
    with trio.fail_after(30):
        async with open_server(tmp_path) as info, open_client(info.port, codec=codec) as client:
            url = range_server.url("/model.safetensors")
            id = await client.send("download", {"type": "checkpoint", "url": url})
            ack = await client.receive()
            assert ack == {"type": "ack", "id": -1, "data": {"id": id, "queue": 0}}
            replies = await client.download_replies(id)
            assert statuses(replies)[0] == "started"
            assert statuses(replies)[-1] == "success"
            assert set(statuses(replies)) <= {"started", "metadata", "progress", "success"}
            assert replies[0]["label"] == "model.safetensors"
            success = replies[-1]
            assert success["label"] == "model.safetensors"
            assert success["path"] == "SD/model.safetensors"
            assert success["size"] == len(BODY)
            for progress in (r for r in replies if r["status"] == "progress"):
                assert 0.0 <= progress["progress"] <= 1.0
                assert progress["rate"] >= 0.0
                assert progress["eta"] is None or progress["eta"] >= 0.0
            assert (tmp_path / "SD" / "model.safetensors").read_bytes() == BODY
            assert client.codecs_seen == {codec} | {"bson"}  # hello comes before any request

            # qDiffusion refreshes its model lists after a success.
            id = await client.send("options")
            options = (await client.expect("options", id=id))["data"]
            # A checkpoint is a UNET, a CLIP and a VAE: qDiffusion offers as models the names
            # in all three (sd-inference-server's storage.py find_all does the same).
            assert options["UNET"] == ["SD/model.safetensors"]
            assert options["CLIP"] == ["SD/model.safetensors"]
            assert options["VAE"] == ["SD/model.safetensors"]
            assert options["model_types"] == {}
            assert options["device"] == ["segdl (downloads only)"]
            for folder in ("LoRA", "TI", "SR", "CN", "HN", "Detailer"):
                assert options[folder] == []


async def test_progress_is_at_most_about_twice_a_second(
    tmp_path: Path, range_server: RangeServer
) -> None:
    range_server.rate_limit = 512 * 1024
    range_server.add("/slow.bin", Resource(body=BODY[: 2 * MIB]))
    settings = ServeSettings(options=Options(connections=1, split=1))
    with trio.fail_after(30):
        async with open_server(tmp_path, settings) as info, open_client(info.port) as client:
            id = await client.send(
                "download", {"type": "LoRA", "url": range_server.url("/slow.bin")}
            )
            start = trio.current_time()
            replies = await client.download_replies(id)
            elapsed = trio.current_time() - start
    progress = [r for r in replies if r["status"] == "progress"]
    assert len(progress) >= 3
    assert len(progress) <= elapsed * 2 + 2
    assert replies[-1]["status"] == "success"


async def test_failed_download_replies_error_with_message_and_trace(
    tmp_path: Path, range_server: RangeServer
) -> None:
    with trio.fail_after(30):
        async with open_server(tmp_path) as info, open_client(info.port) as client:
            id = await client.send("download", {"type": "SD", "url": range_server.url("/nope")})
            replies = await client.download_replies(id)
            assert statuses(replies) == ["error"]
            error = replies[-1]
            assert "404" in error["message"] or "not found" in error["message"].lower()
            assert error["trace"] == ""
            assert error["code"] == 3
            # The server is still there.
            id = await client.send("ping")
            assert (await client.expect("pong"))["id"] == id


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"type": "../../etc", "url": "http://127.0.0.1/x"}, "unknown model type"),
        ({"type": "Checkpoint", "url": "file:///etc/passwd"}, "only http and https"),
        ({"type": "Checkpoint", "url": "ftp://example.com/x"}, "only http and https"),
        ({"type": "Checkpoint"}, "no URL"),
        ({"type": 5, "url": "http://127.0.0.1/x"}, "unknown model type"),
    ],
)
async def test_bad_download_requests_are_refused(
    tmp_path: Path, data: dict[str, Any], fragment: str
) -> None:
    with trio.fail_after(20):
        async with open_server(tmp_path) as info, open_client(info.port) as client:
            id = await client.send("download", data)
            replies = await client.download_replies(id)
            assert replies[-1]["status"] == "error"
            assert fragment in replies[-1]["message"]
    assert list(tmp_path.iterdir()) == []


async def test_cancel_stops_for_real_and_the_same_request_resumes(
    tmp_path: Path, range_server: RangeServer
) -> None:
    body = os.urandom(4 * MIB)
    range_server.rate_limit = 256 * 1024
    range_server.add("/big.bin", Resource(body=body))
    url = range_server.url("/big.bin")
    final = tmp_path / "LoRA" / "big.bin"
    part = tmp_path / "LoRA" / "big.bin.part"
    with trio.fail_after(60):
        async with open_server(tmp_path) as info, open_client(info.port, codec="json") as client:
            id = await client.send("download", {"type": "lora", "url": url})
            while (await client.expect("download", id=id))["data"]["status"] != "progress":
                pass
            await client.send("cancel", {"id": id})
            assert (await client.expect("aborted", id=id))["data"] == {}
            (job,) = info.queue.jobs()
            assert job.state.value == "cancelled"
            # Really stopped: no request is still streaming, and the file stops growing.
            await trio.sleep(0.3)
            served = len(range_server.requests)
            size = part.stat().st_size
            control = part.with_name("big.bin.part.aria2")
            assert control.exists()
            assert not final.exists()
            await trio.sleep(0.7)
            assert len(range_server.requests) == served
            assert part.stat().st_size == size

            range_server.rate_limit = None
            id = await client.send("download", {"type": "LoRA", "url": url})
            replies = await client.download_replies(id)
            assert replies[-1]["status"] == "success", replies[-1]
    assert final.read_bytes() == body
    assert sorted(p.name for p in final.parent.iterdir()) == ["big.bin"]
    # The second run fetched only what was missing.
    resumed = range_server.requests[served:]
    assert sum(r.body_bytes for r in resumed) < len(body)


async def test_cancel_of_a_queued_download(tmp_path: Path, range_server: RangeServer) -> None:
    range_server.rate_limit = 256 * 1024
    range_server.add("/a.bin", Resource(body=BODY))
    range_server.add("/b.bin", Resource(body=BODY))
    settings = ServeSettings(max_concurrent=1)
    with trio.fail_after(30):
        async with open_server(tmp_path, settings) as info, open_client(info.port) as client:
            first = await client.send("download", {"type": "SD", "url": range_server.url("/a.bin")})
            await client.expect("download", id=first)
            second = await client.send(
                "download", {"type": "SD", "url": range_server.url("/b.bin")}
            )
            # ``queue`` counts the downloads waiting before this request, as the real server.
            ack = await client.expect("ack")
            assert ack["data"] == {"id": second, "queue": 0}
            queued = await client.expect("download", id=second)
            assert queued["data"]["status"] == "queued"

            id = await client.send("downloads")
            listing = (await client.expect("downloads", id=id))["data"]["downloads"]
            assert [(d["id"], d["state"], d["type"]) for d in listing] == [
                (1, "running", "SD"),
                (2, "queued", "SD"),
            ]
            assert listing[0]["url"] == range_server.url("/a.bin")

            await client.send("cancel", {"id": second})
            await client.expect("aborted", id=second)
            await client.send("cancel", {"download": 1})  # extension: by download id
            await client.expect("aborted", id=first)
    assert not (tmp_path / "SD" / "b.bin").exists()


async def test_wrong_password_gets_error_and_the_connection_stays(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_server(tmp_path) as info, open_client(info.port) as client:
            wrong = client.seal(client.encode({"type": "ping", "id": 1}), client_key("nope"))
            await client.send_bytes(wrong)
            assert await client.receive() == {
                "type": "error",
                "id": -1,
                "data": {"message": "Incorrect password"},
            }
            id = await client.send("ping")
            assert await client.receive() == {
                "type": "ack",
                "id": -1,
                "data": {"id": id, "queue": 0},
            }
            assert await client.receive() == {"type": "pong", "id": id}


async def test_a_client_with_another_password_cannot_read_the_answers(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with (
            open_server(tmp_path) as info,
            open_client(info.port, password="other", expect_hello=False) as client,
        ):
            await client.send("ping")
            with pytest.raises(InvalidTag):
                await client.receive()


@pytest.mark.parametrize(
    ("send", "message"),
    [
        ("text", "Invalid request"),
        ("short", "Incorrect password"),
        ("garbage", "Malformed request"),
        ("list", "Malformed request"),
        ("no-type", "Malformed request"),
        ("bad-bson", "Malformed request"),
    ],
)
async def test_malformed_frames_get_error_and_the_connection_stays(
    tmp_path: Path, send: str, message: str
) -> None:
    with trio.fail_after(20):
        async with open_server(tmp_path) as info, open_client(info.port) as client:
            if send == "text":
                await client.send_text('{"type": "ping"}')
            elif send == "short":
                await client.send_bytes(b"\x01\x02\x03")
            elif send == "garbage":
                await client.send_bytes(client.seal(b"\xff\xfe not a document"))
            elif send == "list":
                await client.send_bytes(client.seal(b"[1, 2, 3]"))
            elif send == "no-type":
                await client.send_bytes(client.seal(b'{"data": {}}'))
            else:
                document = bytearray(client.encode({"type": "ping"}))
                document[4] = 0x7F  # an unknown BSON element type
                await client.send_bytes(client.seal(bytes(document)))
            assert await client.receive() == {
                "type": "error",
                "id": -1,
                "data": {"message": message},
            }
            id = await client.send("ping")
            assert (await client.expect("pong"))["id"] == id


@pytest.mark.parametrize("codec", CODECS)
async def test_a_message_in_1_mib_fragments(tmp_path: Path, codec: CodecName) -> None:
    padding: Any = "x" * (2 * MIB + 5000)
    with trio.fail_after(20):
        async with open_server(tmp_path) as info, open_client(info.port, codec=codec) as client:
            id = await client.send("ping", {"padding": padding}, fragment=MIB)
            assert await client.receive() == {
                "type": "ack",
                "id": -1,
                "data": {"id": id, "queue": 0},
            }
            assert await client.receive() == {"type": "pong", "id": id}


async def test_a_text_message_over_the_size_limit_closes_only_that_connection(
    tmp_path: Path,
) -> None:
    # Binary messages over the limit get an error reply (test_qdiffusion.py); a text message
    # cannot be cut safely, so trio-websocket's 1009 stays for it.
    settings = ServeSettings(max_message_size=MIB)
    with trio.fail_after(20):
        async with open_server(tmp_path, settings) as info:
            async with open_client(info.port) as client:
                await client.send_text("x" * (MIB + 1))
                with pytest.raises(Closed) as closed:
                    await client.receive()
                assert closed.value.code == 1009  # RFC 6455 §7.4.1: message too big
            async with open_client(info.port) as client:
                id = await client.send("ping")
                assert (await client.expect("pong"))["id"] == id


async def test_requests_without_id_and_unknown_types(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_server(tmp_path) as info, open_client(info.port) as client:
            # qDiffusion sends its first ``options`` without an id: the server makes one up.
            await client.send_bytes(client.seal(client.encode({"type": "options"})))
            ack = await client.receive()
            options = await client.receive()
            assert options["type"] == "options"
            assert options["id"] == ack["data"]["id"] > 0
            id = await client.send("txt2img", {"prompt": "a cat"})
            await client.expect("ack")
            error = await client.receive()
            assert error["type"] == "error"
            assert error["id"] == id
            assert "only downloads" in error["data"]["message"]


async def test_two_clients_join_one_download_and_a_leaving_client_cancels_nothing(
    tmp_path: Path, range_server: RangeServer
) -> None:
    range_server.rate_limit = 512 * 1024
    range_server.add("/shared.bin", Resource(body=BODY))
    url = range_server.url("/shared.bin")
    with trio.fail_after(60):
        async with open_server(tmp_path) as info, open_client(info.port) as second:
            async with open_client(info.port, codec="json") as first:
                id1 = await first.send("download", {"type": "TI", "url": url})
                await first.expect("download", id=id1)
                id2 = await second.send("download", {"type": "embedding", "url": url})
                # The joining client is brought up to date: started (and progress) at once.
                assert (await second.expect("download", id=id2))["data"]["status"] == "started"
                (job,) = info.queue.jobs()
                assert len(job.subscribers) == 2
            # The first client left mid-download.
            replies = await second.download_replies(id2)
            assert replies[-1]["status"] == "success"
            assert replies[-1]["label"] == "shared.bin"
            (job,) = info.queue.jobs()
            assert len(job.subscribers) == 1
    assert (tmp_path / "TI" / "shared.bin").read_bytes() == BODY
    # One download, not two: every byte fetched once (and the 1-byte probe).
    assert sum(r.body_bytes for r in range_server.requests if r.method == "GET") <= len(BODY) + 1


async def test_a_client_that_never_reads_slows_nothing_and_is_dropped(
    tmp_path: Path, range_server: RangeServer
) -> None:
    range_server.rate_limit = 1 * MIB
    range_server.add("/m.bin", Resource(body=BODY))
    url = range_server.url("/m.bin")
    lora = tmp_path / "LoRA"
    lora.mkdir()
    for i in range(3000):  # makes each ``options`` reply about 300 kB
        (lora / f"{i:05d}-{'n' * 40}.safetensors").touch()
    # A dropped client's replies are normally kept a minute for it to reconnect: not here.
    settings = ServeSettings(outbox_limit=32, reconnect_grace=0)
    with trio.fail_after(60):
        async with open_server(tmp_path, settings) as info, open_client(info.port) as reader:
            async with open_client(info.port) as stalled:
                await stalled.send("download", {"type": "SD", "url": url})
                # Fill the socket buffers, then the outbox, and never read.
                for _ in range(150):
                    await stalled.send("options")
                id = await reader.send("download", {"type": "SD", "url": url})
                start = trio.current_time()
                replies = await reader.download_replies(id)
                elapsed = trio.current_time() - start
                assert replies[-1]["status"] == "success"
                (job,) = info.queue.jobs()
                # The stalled client is dropped; then only the reader is still subscribed.
                while len(job.subscribers) > 1:  # noqa: ASYNC110 (the queue has no hook for it)
                    await trio.sleep(0.05)
                dropped = trio.current_time() - start
            id = await reader.send("ping")
            assert (await reader.expect("pong"))["id"] == id
    # ~3 MiB at 1 MiB/s per connection over a few connections: well under the 60 s deadline;
    # a download paced by the stalled client would never end.
    assert elapsed < 10
    assert dropped < 30


async def test_wss_with_certfile(tmp_path: Path, tls_pair: CertPair) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tls_pair.certfile, tls_pair.keyfile)
    client_context = ssl.create_default_context(cafile=str(tls_pair.certfile))
    settings = ServeSettings(ssl_context=server_context)
    with trio.fail_after(20):
        async with open_server(tmp_path, settings) as info:
            assert info.url.startswith("https://")
            async with open_client(info.port, ssl_context=client_context) as client:
                id = await client.send("ping")
                assert (await client.expect("pong"))["id"] == id


async def test_a_foreign_web_origin_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_server(tmp_path) as info:
            stream = await trio.open_tcp_stream("127.0.0.1", info.port)
            client = ProtocolClient(stream, host=f"127.0.0.1:{info.port}")
            with pytest.raises(Closed) as refused:
                await client.handshake(origin="https://evil.example")
            assert refused.value.code == 403
            await client.aclose()
            stream = await trio.open_tcp_stream("127.0.0.1", info.port)
            client = ProtocolClient(stream, host=f"127.0.0.1:{info.port}")
            await client.handshake(origin=f"http://127.0.0.1:{info.port}")
            assert (await client.receive())["type"] == "hello"
            await client.aclose()
