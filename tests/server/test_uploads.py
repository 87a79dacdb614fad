"""The upload state machine (server/uploads.py) on a real directory, without a connection."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from segdl.server.outbox import Outbox
from segdl.server.uploads import PARTIAL_SUFFIX, Uploads

CHUNK = 64 * 1024


@dataclass(eq=False)
class Sender:
    outbox: Outbox = field(default_factory=lambda: Outbox(limit=10_000))

    async def replies(self) -> list[dict[str, Any]]:
        out = []
        while len(self.outbox):
            message = await self.outbox.get()
            assert message is not None
            out.append(message)
        return out


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def pieces(content: bytes, size: int = CHUNK) -> list[bytes]:
    return [content[i : i + size] for i in range(0, len(content), size)]


async def upload(
    uploads: Uploads, sender: Sender, type: str, name: str, content: bytes, id: int = 7
) -> list[dict[str, Any]]:
    parts = pieces(content)
    for index, chunk in enumerate(parts):
        data = {"type": type, "name": name, "chunk": chunk, "index": index, "total": len(parts)}
        await uploads.handle(sender, id, data)
    await uploads.handle(sender, 99, {"type": type, "name": name})
    return await sender.replies()


def statuses(replies: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for reply in replies:
        status = reply["data"].get("status", reply["type"]) if "data" in reply else reply["type"]
        if not (out and out[-1] == status == "progress"):
            out.append(status)
    return out


async def test_an_upload_is_published_whole_with_its_checksum(tmp_path: Path) -> None:
    uploads, sender = Uploads(tmp_path), Sender()
    content = os.urandom(5 * CHUNK + 17)
    replies = await upload(uploads, sender, "lora", "x.safetensors", content)
    assert statuses(replies) == ["started", "progress", "success"]
    assert {r["id"] for r in replies} == {7}
    success = replies[-1]["data"]
    assert success == {
        "status": "success",
        "label": "x.safetensors",
        "path": "LoRA/x.safetensors",
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    progress = [r["data"] for r in replies if r["data"]["status"] == "progress"]
    assert progress[-1]["progress"] == 1.0
    assert progress[-1]["downloaded"] == progress[-1]["total"] == len(content)
    assert progress[-1]["eta"] == 0.0
    assert (tmp_path / "LoRA" / "x.safetensors").read_bytes() == content
    assert files_under(tmp_path) == ["LoRA/x.safetensors"]
    assert uploads.active() == []


async def test_the_partial_file_is_not_a_model_name_until_the_end(tmp_path: Path) -> None:
    uploads, sender = Uploads(tmp_path), Sender()
    chunk = os.urandom(CHUNK)
    await uploads.handle(
        sender, 1, {"type": "SD", "name": "m.safetensors", "chunk": chunk, "index": 0, "total": 2}
    )
    assert files_under(tmp_path) == ["SD/m.safetensors" + PARTIAL_SUFFIX]
    assert (tmp_path / "SD" / ("m.safetensors" + PARTIAL_SUFFIX)).read_bytes() == chunk


async def test_an_existing_file_survives_a_failed_upload_and_is_replaced_by_a_good_one(
    tmp_path: Path,
) -> None:
    target = tmp_path / "SD" / "m.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"old")
    uploads, sender = Uploads(tmp_path), Sender()
    parts = pieces(os.urandom(3 * CHUNK))
    data = {"type": "SD", "name": "m.safetensors", "total": 3}
    await uploads.handle(sender, 1, {**data, "chunk": parts[0], "index": 0})
    await uploads.handle(sender, 1, {**data, "chunk": parts[1], "index": 1})
    await uploads.handle(sender, 2, {"type": "SD", "name": "m.safetensors"})  # too early
    replies = await sender.replies()
    assert replies[-1]["data"]["status"] == "error"
    assert "only 2 of 3 chunks arrived" in replies[-1]["data"]["message"]
    assert target.read_bytes() == b"old"
    assert files_under(tmp_path) == ["SD/m.safetensors"]
    new = os.urandom(2 * CHUNK)
    replies = await upload(uploads, sender, "SD", "m.safetensors", new)
    assert statuses(replies)[-1] == "success"
    assert target.read_bytes() == new


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"index": 2}, "chunk 2 arrived where chunk 1 was expected"),
        ({"index": 0.5}, "arrived where chunk 1 was expected"),
        ({"total": 9}, "says 9 chunks, chunk 0 said 3"),
        ({"chunk": b""}, "empty or larger than chunk 0"),
        ({"chunk": b"x" * (CHUNK + 1)}, "empty or larger than chunk 0"),
        ({"chunk": "text, not bytes"}, "empty or larger than chunk 0"),
    ],
)
async def test_a_wrong_chunk_stops_the_upload_and_nothing_is_left(
    tmp_path: Path, bad: dict[str, Any], message: str
) -> None:
    uploads, sender = Uploads(tmp_path), Sender()
    data = {"type": "TI", "name": "e.pt", "total": 3}
    await uploads.handle(sender, 5, {**data, "chunk": os.urandom(CHUNK), "index": 0})
    await uploads.handle(sender, 5, {**data, "chunk": os.urandom(CHUNK), "index": 1, **bad})
    replies = await sender.replies()
    assert statuses(replies) == ["started", "progress", "error"]
    assert message in replies[-1]["data"]["message"]
    assert replies[-1]["data"]["trace"] == ""
    assert files_under(tmp_path) == []
    assert uploads.active() == []
    # What follows for it is dropped without another error, its end included.
    await uploads.handle(sender, 5, {**data, "chunk": os.urandom(CHUNK), "index": 2})
    await uploads.handle(sender, 6, {"type": "TI", "name": "e.pt"})
    assert await sender.replies() == []
    assert files_under(tmp_path) == []


async def test_a_chunk_of_an_upload_never_started_is_refused(tmp_path: Path) -> None:
    uploads, sender = Uploads(tmp_path), Sender()
    data = {"type": "SD", "name": "m.ckpt", "chunk": b"abc", "index": 3, "total": 5}
    await uploads.handle(sender, 8, data)
    (reply,) = await sender.replies()
    assert reply["id"] == 8
    assert reply["data"]["status"] == "error"
    assert "chunk 0 first" in reply["data"]["message"]
    await uploads.handle(sender, 9, {"type": "SD", "name": "m.ckpt"})  # its end: quiet
    assert await sender.replies() == []
    # An end with nothing before it at all is an error (a connection-level one).
    await uploads.handle(sender, 10, {"type": "SD", "name": "other.ckpt"})
    (reply,) = await sender.replies()
    assert (reply["type"], reply["id"]) == ("error", 10)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("type", "name"),
    [
        ("../..", "x.safetensors"),
        ("SD/..", "x.safetensors"),
        ("/etc", "x.safetensors"),
        ("", "x.safetensors"),
        (None, "x.safetensors"),
        ("SD", None),
        ("SD", 5),
    ],
)
async def test_bad_types_and_names_are_refused(tmp_path: Path, type: Any, name: Any) -> None:
    models = tmp_path / "models"
    uploads, sender = Uploads(models), Sender()
    await uploads.handle(
        sender, 3, {"type": type, "name": name, "chunk": b"x", "index": 0, "total": 1}
    )
    await uploads.handle(sender, 4, {"type": type, "name": name})
    replies = await sender.replies()
    assert replies
    assert all(r["type"] == "error" or r["data"]["status"] == "error" for r in replies)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    "name",
    ["m.safetensors.aria2", "m.safetensors.SEGDL", "x.upload.part", "a.part", "c.aria2__temp"],
)
async def test_names_of_unfinished_files_are_refused(tmp_path: Path, name: str) -> None:
    uploads, sender = Uploads(tmp_path), Sender()
    replies = await upload(uploads, sender, "SD", name, b"not a control file")
    assert replies[0]["data"]["status"] == "error"
    assert "kept for unfinished files" in replies[0]["data"]["message"]
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("../../../outside.pt", "outside.pt"),
        ("/abs/path/model.pt", "model.pt"),
        ("C:\\Users\\me\\model.pt", "model.pt"),
        ("a\x00b\x1f.pt", "ab.pt"),
        ("\u202eevil.pt", "evil.pt"),
        ("...", "upload"),
    ],
)
async def test_names_are_sanitised_as_downloads_are(tmp_path: Path, name: str, stored: str) -> None:
    models = tmp_path / "models"
    uploads, sender = Uploads(models), Sender()
    replies = await upload(uploads, sender, "Detailer", name, b"data")
    assert statuses(replies)[-1] == "success"
    assert files_under(tmp_path) == [f"models/Detailer/{stored}"]


async def test_a_huge_name_is_cut_to_leave_room_for_the_partial_suffix(tmp_path: Path) -> None:
    uploads, sender = Uploads(tmp_path), Sender()
    replies = await upload(uploads, sender, "SD", "é" * 400 + ".safetensors", b"data")
    assert statuses(replies)[-1] == "success"
    (path,) = (tmp_path / "SD").iterdir()
    assert path.name.endswith(".safetensors")
    assert len((path.name + PARTIAL_SUFFIX).encode()) <= 255


async def test_the_size_cap_is_checked_first_and_then_on_every_chunk(tmp_path: Path) -> None:
    uploads, sender = Uploads(tmp_path, max_size=3 * CHUNK), Sender()
    chunk = os.urandom(CHUNK)
    # 5 chunks of 64 KiB cannot make less than 4 × 64 KiB + 1 bytes: refused at once.
    await uploads.handle(
        sender, 1, {"type": "SD", "name": "a.pt", "chunk": chunk, "index": 0, "total": 5}
    )
    (reply,) = await sender.replies()
    assert "too large" in reply["data"]["message"]
    assert files_under(tmp_path) == []
    # A client that says 3 chunks and sends 4 is stopped at the fourth.
    data = {"type": "SD", "name": "b.pt", "total": 3}
    for index in range(3):
        await uploads.handle(sender, 2, {**data, "chunk": chunk, "index": index})
    await uploads.handle(sender, 2, {**data, "chunk": chunk, "index": 3, "total": 3})
    replies = await sender.replies()
    assert replies[-1]["data"]["status"] == "error"
    assert files_under(tmp_path) == []


async def test_no_room_on_disk_is_refused_before_writing(tmp_path: Path) -> None:
    uploads, sender = Uploads(tmp_path), Sender()
    data = {"type": "SD", "name": "huge.ckpt", "chunk": os.urandom(CHUNK), "index": 0}
    await uploads.handle(sender, 1, {**data, "total": 2**40})  # 64 PiB
    (reply,) = await sender.replies()
    assert reply["data"]["status"] == "error"
    assert "not enough disk space" in reply["data"]["message"]
    assert files_under(tmp_path) == []


async def test_an_unfinished_download_of_that_name_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "SD").mkdir()
    (tmp_path / "SD" / "m.ckpt").write_bytes(b"half")
    (tmp_path / "SD" / "m.ckpt.aria2").write_bytes(b"control")
    uploads, sender = Uploads(tmp_path), Sender()
    replies = await upload(uploads, sender, "SD", "m.ckpt", b"new")
    assert "download of m.ckpt" in replies[0]["data"]["message"]
    assert (tmp_path / "SD" / "m.ckpt").read_bytes() == b"half"


async def test_another_clients_upload_of_the_same_name_is_refused(tmp_path: Path) -> None:
    uploads, first, second = Uploads(tmp_path), Sender(), Sender()
    data = {"type": "SD", "name": "m.ckpt", "total": 2}
    await uploads.handle(first, 1, {**data, "chunk": b"a" * 10, "index": 0})
    await uploads.handle(second, 2, {**data, "chunk": b"b" * 10, "index": 0})
    await uploads.handle(second, 2, {**data, "chunk": b"b" * 10, "index": 1})
    await uploads.handle(second, 3, {"type": "SD", "name": "m.ckpt", "index": -1})
    (reply,) = await second.replies()
    assert "by another client" in reply["data"]["message"]
    # The first client's upload is untouched, and ends well.
    await uploads.handle(first, 1, {**data, "chunk": b"a" * 5, "index": 1})
    await uploads.handle(first, 4, {"type": "SD", "name": "m.ckpt"})
    assert statuses(await first.replies())[-1] == "success"
    assert (tmp_path / "SD" / "m.ckpt").read_bytes() == b"a" * 15


async def test_transfer_hands_an_upload_to_the_reconnected_client(tmp_path: Path) -> None:
    uploads, old, new = Uploads(tmp_path), Sender(), Sender()
    data = {"type": "SD", "name": "m.ckpt", "total": 2}
    await uploads.handle(old, 1, {**data, "chunk": b"a" * 10, "index": 0})
    assert uploads.transfer(old, new) == 1
    await uploads.handle(new, 1, {**data, "chunk": b"b" * 10, "index": 1})
    await uploads.handle(new, 5, {"type": "SD", "name": "m.ckpt"})
    assert statuses(await new.replies()) == ["progress", "success"]
    assert (tmp_path / "SD" / "m.ckpt").read_bytes() == b"a" * 10 + b"b" * 10


async def test_stop_cancel_and_a_lost_client_remove_the_partial(tmp_path: Path) -> None:
    uploads, sender = Uploads(tmp_path), Sender()

    async def start(name: str, id: int) -> None:
        await uploads.handle(
            sender, id, {"type": "SR", "name": name, "chunk": b"x", "index": 0, "total": 3}
        )

    await start("a.pth", 1)
    await start("b.pth", 2)
    await start("c.pth", 3)
    await start("d.pth", 4)
    assert len(files_under(tmp_path)) == 4
    await uploads.handle(sender, 50, {"type": "SR", "name": "a.pth", "index": -1})
    assert await uploads.cancel(sender, 2)
    assert not await uploads.cancel(sender, 2)
    await uploads.abort_owned_by(sender)
    await sender.replies()
    assert files_under(tmp_path) == []
    await start("e.pth", 5)
    await uploads.abort_all()
    assert files_under(tmp_path) == []
    assert uploads.active() == []


async def test_chunk_zero_again_starts_over(tmp_path: Path) -> None:
    uploads, sender = Uploads(tmp_path), Sender()
    data = {"type": "SD", "name": "m.ckpt", "total": 2}
    await uploads.handle(sender, 1, {**data, "chunk": b"first", "index": 0})
    await uploads.handle(sender, 2, {**data, "chunk": b"again", "index": 0})
    await uploads.handle(sender, 2, {**data, "chunk": b"!", "index": 1})
    await uploads.handle(sender, 3, {"type": "SD", "name": "m.ckpt"})
    replies = await sender.replies()
    assert replies[-1]["id"] == 2
    assert replies[-1]["data"]["status"] == "success"
    assert (tmp_path / "SD" / "m.ckpt").read_bytes() == b"again!"
