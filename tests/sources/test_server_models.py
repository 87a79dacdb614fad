"""The server's models folder: ``"type": "auto"`` puts a CivitAI model where its type says, with
its metadata files; a model already in another folder is refused saying where, or linked with
``--link-existing``."""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Iterator

import pytest
import trio
from fake_civitai import CivitFile, CivitModel, CivitVersion, FakeCivitAI
from helpers import prepare_source_env

from segdl.server import ServeSettings

_SERVER_TESTS = pathlib.Path(__file__).resolve().parents[1] / "server"
if str(_SERVER_TESTS) not in sys.path:
    sys.path.append(str(_SERVER_TESTS))

from wsclient import open_client, open_server  # noqa: E402

BODY = os.urandom(400_000)
TOKEN = "civ-secret"


@pytest.fixture
def civitai(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> Iterator[FakeCivitAI]:
    prepare_source_env(monkeypatch, tmp_path)
    with FakeCivitAI(tokens={TOKEN}) as fake:
        version = CivitVersion(
            id=2002, name="v1", files=[CivitFile(id=501, name="style.safetensors", body=BODY)]
        )
        fake.add(CivitModel(id=1001, name="Style", type="LoCon", versions=[version]))
        monkeypatch.setenv("SEGDL_CIVITAI_URL", fake.base_url)
        yield fake


async def test_type_auto_and_a_copy_in_another_folder(
    civitai: FakeCivitAI, tmp_path: pathlib.Path
) -> None:
    models = tmp_path / "models"
    url = civitai.site.url("/models/1001")
    with trio.fail_after(60):
        async with open_server(models) as info, open_client(info.port) as client:
            first = await client.send(
                "download", {"type": "auto", "url": url, "civitai_token": TOKEN}
            )
            replies = await client.download_replies(first)
            assert replies[-1]["status"] == "success", replies[-1]
            assert replies[-1]["path"] == "LoRA/style.safetensors"  # LoCon → LoRA
            listing = await client.send("downloads")
            jobs = (await client.expect("downloads", id=listing))["data"]["downloads"]
            assert [job["type"] for job in jobs] == ["LoRA"]

            # The same model asked for into another folder: said where it is, not fetched.
            again = await client.send(
                "download", {"type": "SD", "url": url, "civitai_token": TOKEN}
            )
            refused = (await client.download_replies(again))[-1]
    assert refused["status"] == "error"
    assert "LoRA/style.safetensors" in refused["message"]
    assert sorted(p.name for p in (models / "LoRA").iterdir()) == [
        "style.civitai.info",
        "style.json",
        "style.safetensors",
    ]
    assert not (models / "SD").exists() or list((models / "SD").iterdir()) == []
    assert len(civitai.storage.requests) >= 1
    served = len(civitai.storage.requests)

    # Started with --link-existing: linked into SD, still nothing fetched.
    settings = ServeSettings(link_existing=True)
    async with open_server(models, settings) as info, open_client(info.port) as client:
        linked = await client.send("download", {"type": "SD", "url": url, "civitai_token": TOKEN})
        final = (await client.download_replies(linked))[-1]
    assert final["status"] == "success", final
    assert (models / "SD" / "style.safetensors").stat().st_ino == (
        models / "LoRA" / "style.safetensors"
    ).stat().st_ino
    assert len(civitai.storage.requests) == served
