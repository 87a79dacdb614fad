"""Tokens stay secret: each place a CivitAI or Hugging Face token could leak, one test.

A token (``civitai_token``, ``hf_token``, or ``?token=`` pasted in a CivitAI URL) goes to its
own site and nowhere else: not to the storage host or CDN a redirect leads to, not to another
site, not into log output (every logger at DEBUG), error messages, ``on_event`` events, the
``.part.aria2`` control files (segdl's trailer included), the records of published files,
the metadata cache, the server's files or replies, nor aria2c's command line, config file
(mode 0600, and removed) or log.  The sites are the fakes of
``tests/sources``, which record every request's headers.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hostile_support import (
    CivitFile,
    CivitModel,
    CivitVersion,
    FakeCivitAI,
    FakeHub,
    HubRepo,
    interrupted,
    open_client,
    open_server,
    prepare_source_env,
)

import segdl
import segdl.engine.aria2c as aria2c_engine
from segdl.engine.aria2c import aria2c_available
from segdl.io import files, records
from segdl.server import ServeSettings
from segdl.testing.processes import child_processes
from segdl.testing.rangeserver import RangeServer, RequestRecord, Resource

MIB = 1024 * 1024
BODY = os.urandom(3 * MIB + 77)
# The Hub's file is another model: a server finds a copy of the same sha256 and links it.
HUB_BODY = os.urandom(3 * MIB + 78)
CIVITAI_TOKEN = "civ-S3CRET-4b1d9e"
HF_TOKEN = "hf_S3CRET_8c2f7a"
SECRETS = (CIVITAI_TOKEN, HF_TOKEN)
FAST = segdl.Options(save_interval=0.05, progress_interval=0.05)


def leaks(text: str | bytes) -> list[str]:
    """The tokens found in *text*."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    return [token for token in SECRETS if token.encode() in data]


def request_leaks(record: RequestRecord) -> list[str]:
    return leaks(record.path + "\n" + json.dumps(record.headers))


def tree_leaks(root: Path) -> dict[str, list[str]]:
    """Files under *root* (sidecars, caches, the server's files) that hold a token."""
    found: dict[str, list[str]] = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            with_token = leaks(path.read_bytes())
            if with_token:
                found[str(path.relative_to(root))] = with_token
    return found


class Events:
    def __init__(self) -> None:
        self.events: list[segdl.Event] = []

    def __call__(self, event: segdl.Event) -> None:
        self.events.append(event)

    def leaks(self) -> list[str]:
        return leaks(json.dumps([e.to_dict() for e in self.events], default=str))


@pytest.fixture
def source_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return prepare_source_env(monkeypatch, tmp_path)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def logged_leaks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return leaks("\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records))


# ---- the sites


def civitai_model() -> CivitModel:
    model_file = CivitFile(id=501, name="dreamModel.safetensors", body=BODY)
    version = CivitVersion(id=2002, name="v2", files=[model_file], require_auth=True)
    return CivitModel(id=1001, name="Dream", type="Checkpoint", versions=[version])


@pytest.fixture
def civitai(monkeypatch: pytest.MonkeyPatch, source_env: Path) -> Iterator[FakeCivitAI]:
    with FakeCivitAI(tokens={CIVITAI_TOKEN}, rate_limit=4 * MIB) as fake:
        fake.add(civitai_model())
        monkeypatch.setenv("SEGDL_CIVITAI_URL", fake.base_url)
        yield fake


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, source_env: Path) -> Iterator[FakeHub]:
    with FakeHub(tokens={HF_TOKEN, "hf_not_approved"}, rate_limit=4 * MIB) as fake:
        fake.add(
            "acme/gated",
            HubRepo(files={"unet/model.safetensors": HUB_BODY}, gated=True, approved={HF_TOKEN}),
        )
        fake.renamed["acme/old-name"] = "acme/gated"
        monkeypatch.setenv("HF_ENDPOINT", fake.base_url)
        yield fake


def civitai_url(fake: FakeCivitAI, *, pasted_token: str | None = None) -> str:
    url = fake.site.url("/api/download/models/2002")
    return f"{url}?token={pasted_token}" if pasted_token else url


def assert_own_site_only_civitai(fake: FakeCivitAI) -> None:
    downloads = [r for r in fake.site.requests if r.path.startswith("/api/download/")]
    assert downloads, "CivitAI's download endpoint was never asked"
    for record in downloads:
        assert record.headers.get("authorization") == f"Bearer {CIVITAI_TOKEN}"
        assert "token=" not in record.path
    assert fake.storage.requests
    for record in fake.storage.requests:
        assert request_leaks(record) == [], record
        assert "authorization" not in record.headers


def assert_own_site_only_hub(fake: FakeHub) -> None:
    assert fake.hub.requests
    for record in fake.hub.requests:
        assert record.headers.get("authorization") == f"Bearer {HF_TOKEN}"
        assert CIVITAI_TOKEN not in json.dumps(record.headers)
    assert fake.cdn.requests
    for record in fake.cdn.requests:
        assert request_leaks(record) == [], record
        assert "authorization" not in record.headers


# ---- CivitAI


@pytest.mark.parametrize("how", ["argument", "pasted"])
async def test_civitai_token_reaches_civitai_only_and_is_never_shown(
    civitai: FakeCivitAI,
    source_env: Path,
    tmp_path: Path,
    all_logs: pytest.LogCaptureFixture,
    how: str,
) -> None:
    events = Events()
    if how == "argument":
        url, token = civitai_url(civitai), CIVITAI_TOKEN
    else:
        url, token = civitai_url(civitai, pasted_token=CIVITAI_TOKEN), None
    result = await segdl.download(
        url, source_env, civitai_token=token, options=FAST, on_event=events
    )
    assert Path(result.path).read_bytes() == BODY
    assert_own_site_only_civitai(civitai)
    assert events.leaks() == []
    assert logged_leaks(all_logs) == []
    assert tree_leaks(tmp_path) == {}  # the file, the metadata cache


async def test_civitai_sidecars_hold_no_token(civitai: FakeCivitAI, source_env: Path) -> None:
    url = civitai_url(civitai, pasted_token=CIVITAI_TOKEN)
    await interrupted(url, source_env, after_bytes=MIB)
    names = sorted(p.name for p in source_env.iterdir())
    assert names == ["dreamModel.safetensors.part", "dreamModel.safetensors.part.aria2"]
    assert tree_leaks(source_env) == {}
    sealed = files.read_sealed(source_env / "dreamModel.safetensors.part")
    assert sealed is not None
    assert sealed[1] is not None
    # The storage URL's query is its signature: a credential too, kept as "…" only.
    assert sealed[1].url.partition("?")[2] in ("", "…")
    await segdl.download(url, source_env, options=FAST)
    final = source_env / "dreamModel.safetensors"
    assert final.read_bytes() == BODY
    assert_own_site_only_civitai(civitai)
    # The record of the published file, in segdl's cache: no token, no signed query.
    record = records.read_record(final)
    assert record is not None
    assert record.validators.url.partition("?")[2] in ("", "…")
    assert tree_leaks(source_env.parent) == {}


@pytest.mark.parametrize("how", ["argument", "pasted"])
async def test_a_refused_civitai_token_is_not_in_the_error(
    civitai: FakeCivitAI, source_env: Path, all_logs: pytest.LogCaptureFixture, how: str
) -> None:
    wrong = CIVITAI_TOKEN[::-1]
    events = Events()
    url = civitai_url(civitai, pasted_token=wrong if how == "pasted" else None)
    with pytest.raises(segdl.AuthError) as caught:
        await segdl.download(
            url,
            source_env,
            civitai_token=wrong if how == "argument" else None,
            options=FAST,
            on_event=events,
        )
    message = str(caught.value)
    assert wrong not in message
    assert wrong not in repr(caught.value.url)  # the URL kept on the error: no query either
    assert wrong not in json.dumps([e.to_dict() for e in events.events], default=str)
    assert all(wrong not in r.getMessage() for r in all_logs.records)
    assert civitai.storage.requests == []


# ---- Hugging Face


@pytest.mark.parametrize("path", ["acme/gated", "acme/old-name"], ids=["direct", "renamed"])
async def test_hf_token_reaches_the_hub_only_even_across_redirects(
    hub: FakeHub,
    source_env: Path,
    tmp_path: Path,
    all_logs: pytest.LogCaptureFixture,
    path: str,
) -> None:
    """The Hub answers 302 to its CDN (and a renamed repo 307 first, on the Hub itself)."""
    events = Events()
    url = hub.hub.url(f"/{path}/resolve/main/unet/model.safetensors")
    result = await segdl.download(url, source_env, hf_token=HF_TOKEN, options=FAST, on_event=events)
    assert Path(result.path).read_bytes() == HUB_BODY
    assert_own_site_only_hub(hub)
    assert events.leaks() == []
    assert logged_leaks(all_logs) == []
    assert tree_leaks(tmp_path) == {}


async def test_hf_sidecars_hold_no_token(hub: FakeHub, source_env: Path) -> None:
    url = hub.hub.url("/acme/gated/resolve/main/unet/model.safetensors")
    await interrupted(url, source_env, after_bytes=MIB, hf_token=HF_TOKEN)
    assert (source_env / "model.safetensors.part.aria2").exists()
    assert tree_leaks(source_env) == {}


async def test_a_refused_hf_token_is_not_in_the_error(
    hub: FakeHub, source_env: Path, all_logs: pytest.LogCaptureFixture
) -> None:
    events = Events()
    url = hub.hub.url("/acme/gated/resolve/main/unet/model.safetensors")
    with pytest.raises(segdl.AuthError) as caught:
        await segdl.download(
            url, source_env, hf_token="hf_not_approved", options=FAST, on_event=events
        )
    assert "hf_not_approved" not in str(caught.value)
    assert "hf_not_approved" not in json.dumps([e.to_dict() for e in events.events])
    assert all("hf_not_approved" not in r.getMessage() for r in all_logs.records)
    assert hub.cdn.requests == []


async def test_signed_urls_and_pasted_tokens_are_not_logged(
    civitai: FakeCivitAI,
    source_env: Path,
    range_server: RangeServer,
    all_logs: pytest.LogCaptureFixture,
) -> None:
    """httpx logs each request's URL at INFO: the storage URL's signature and a ``?token=``
    in a plain URL are credentials too."""
    await segdl.download(civitai_url(civitai), source_env, civitai_token=CIVITAI_TOKEN)
    range_server.add("/file.bin", Resource(body=BODY[:1000]))
    await segdl.download(range_server.url(f"/file.bin?token={CIVITAI_TOKEN}"), source_env)
    text = "\n".join(r.getMessage() for r in all_logs.records)
    assert "HTTP Request" in text  # httpx did log its requests
    assert "X-Amz-Signature" not in text
    assert leaks(text) == []


# ---- tokens never go to another site


async def test_tokens_from_the_environment_go_to_no_other_site(
    civitai: FakeCivitAI,
    hub: FakeHub,
    source_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    range_server: RangeServer,
) -> None:
    monkeypatch.setenv("CIVITAI_TOKEN", CIVITAI_TOKEN)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    range_server.add("/plain.safetensors", Resource(body=BODY[:MIB]))
    await segdl.download(range_server.url("/plain.safetensors"), source_env, options=FAST)
    assert range_server.requests
    for record in range_server.requests:
        assert request_leaks(record) == [], record
        assert "authorization" not in record.headers
    await segdl.download(civitai_url(civitai), source_env, options=FAST)
    for record in civitai.site.requests:
        assert HF_TOKEN not in json.dumps(record.headers)
    assert_own_site_only_civitai(civitai)
    await segdl.download(
        hub.hub.url("/acme/gated/resolve/main/unet/model.safetensors"), source_env, options=FAST
    )
    assert_own_site_only_hub(hub)


# ---- aria2c


@pytest.fixture
def need_aria2c() -> None:
    if aria2c_available():
        return
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail("aria2c is not installed, and CI=true forbids skipping", pytrace=False)
    pytest.skip("aria2c is not installed")


async def test_aria2c_never_sees_a_token_in_argv_config_or_log(
    need_aria2c: None,
    hub: FakeHub,
    source_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    all_logs: pytest.LogCaptureFixture,
) -> None:
    configs: list[tuple[Path, int, int]] = []
    write_private = aria2c_engine._write_private

    def spy(path: Path, text: str) -> None:
        write_private(path, text)
        configs.append((path, stat.S_IMODE(path.stat().st_mode), path.parent.stat().st_mode))

    monkeypatch.setattr(aria2c_engine, "_write_private", spy)
    argvs: list[list[str]] = []
    workdir_leaks: list[dict[str, list[str]]] = []
    sidecars_seen: list[str] = []

    def on_event(event: segdl.Event) -> None:
        if isinstance(event, segdl.Progress):
            for pid in child_processes("aria2c"):
                raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
                argvs.append([part.decode() for part in raw.split(b"\0") if part])
            for conf, _mode, _dir_mode in configs:
                if conf.parent.exists():  # aria2c's log, and any file beside it
                    workdir_leaks.append(tree_leaks(conf.parent))
            for sidecar in source_env.glob("*.aria2"):
                sidecars_seen.append(sidecar.name)  # the control file aria2c and segdl share
                if leaks(sidecar.read_bytes()):
                    workdir_leaks.append({sidecar.name: leaks(sidecar.read_bytes())})

    url = hub.hub.url("/acme/gated/resolve/main/unet/model.safetensors")
    result = await segdl.download(
        url, source_env, hf_token=HF_TOKEN, engine="aria2c", options=FAST, on_event=on_event
    )
    assert Path(result.path).read_bytes() == HUB_BODY
    assert argvs, "aria2c's command line was never seen"
    for argv in argvs:
        assert leaks(" ".join(argv)) == [], argv
        assert not any("authorization" in part.lower() for part in argv), argv
        assert not any("rpc-secret" in part for part in argv), argv
    assert configs
    for conf, mode, dir_mode in configs:
        assert mode == 0o600, oct(mode)
        assert stat.S_IMODE(dir_mode) == 0o700, oct(dir_mode)
        assert not conf.exists()  # read by aria2c, then removed
    assert workdir_leaks
    assert all(found == {} for found in workdir_leaks), workdir_leaks
    assert "model.safetensors.part.aria2" in sidecars_seen
    assert_own_site_only_hub(hub)
    assert logged_leaks(all_logs) == []
    assert child_processes("aria2c") == []


# ---- the server


async def test_the_server_keeps_tokens_out_of_replies_logs_and_files(
    civitai: FakeCivitAI,
    hub: FakeHub,
    tmp_path: Path,
    all_logs: pytest.LogCaptureFixture,
) -> None:
    models = tmp_path / "models"
    replies: list[dict[str, Any]] = []
    with trio.fail_after(60):
        async with (
            open_server(models, ServeSettings(options=FAST, link_existing=True)) as info,
            open_client(info.port, codec="json") as client,
        ):
            # One download with both token fields, one with ``?token=`` pasted, one from the
            # Hub; the Hub's is cancelled midway so its sidecars stay to be looked at.
            first = await client.send(
                "download",
                {
                    "type": "SD",
                    "url": civitai_url(civitai),
                    "civitai_token": CIVITAI_TOKEN,
                    "hf_token": HF_TOKEN,
                },
            )
            replies += await client.download_replies(first)
            second = await client.send(
                "download",
                {"type": "LoRA", "url": civitai_url(civitai, pasted_token=CIVITAI_TOKEN)},
            )
            listing = await client.send("downloads")
            done = {listing: False, second: False}
            while not all(done.values()):
                message = await client.receive()
                replies.append(message)
                if message["id"] == listing:
                    done[listing] = True
                elif message["id"] == second and message["type"] == "download":
                    done[second] = message["data"]["status"] in ("success", "error")
            hub.cdn.rate_limit = 256 * 1024  # slow enough to cancel midway
            third = await client.send(
                "download",
                {
                    "type": "TI",
                    "url": hub.hub.url("/acme/gated/resolve/main/unet/model.safetensors"),
                    "hf_token": HF_TOKEN,
                    "token": HF_TOKEN,
                },
            )
            while True:
                message = await client.expect("download", id=third)
                replies.append(message)
                if message["data"]["status"] == "progress":
                    break
            await client.send("cancel", {"id": third})
            replies.append(await client.expect("aborted", id=third))
            assert tree_leaks(tmp_path) == {}  # sidecars of the partial, the server's state
            # A wrong token: the error reply must not quote it either.
            fourth = await client.send(
                "download",
                {"type": "VAE", "url": civitai_url(civitai), "civitai_token": "civ-wrong-S3CRET"},
            )
            replies += await client.download_replies(fourth)
    assert replies[-1]["status"] == "error"
    assert "civ-wrong-S3CRET" not in json.dumps(replies)
    assert leaks(json.dumps(replies)) == []
    assert logged_leaks(all_logs) == []
    assert all("civ-wrong-S3CRET" not in r.getMessage() for r in all_logs.records)
    assert tree_leaks(tmp_path) == {}
    assert (models / "LoRA" / "dreamModel.safetensors").read_bytes() == BODY
    for record in civitai.storage.requests + hub.cdn.requests:
        assert request_leaks(record) == [], record
        assert "authorization" not in record.headers
    for record in hub.hub.requests:
        assert CIVITAI_TOKEN not in json.dumps(record.headers)
    for record in civitai.site.requests:
        assert HF_TOKEN not in json.dumps(record.headers)
