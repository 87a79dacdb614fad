"""Google Drive through ``segdl.download`` against the fake Drive (reference/sources.md §3)."""

from __future__ import annotations

import os
import pathlib

import pytest
from fake_gdrive import DriveFile, FakeDrive
from helpers import Recorder, files_in, interrupted, prepare_source_env

import segdl
from segdl.sources.base import SourceConfig
from segdl.sources.gdrive import parse_drive_page, parse_gdrive_url

MIB = 1024 * 1024
BODY = os.urandom(3 * MIB + 11)
FILE_ID = "1AbCdEfGhIjKlMnOpQrStUvWxYz-_0123"


@pytest.fixture
def source_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    return prepare_source_env(monkeypatch, tmp_path)


def drive(monkeypatch: pytest.MonkeyPatch, file: DriveFile, **kwargs: int) -> FakeDrive:
    fake = FakeDrive(file, **kwargs)
    fake.__enter__()
    monkeypatch.setenv("SEGDL_GDRIVE_URL", fake.base_url)
    return fake


def test_link_shapes() -> None:
    config = SourceConfig(gdrive_url="http://127.0.0.1:9")
    for url in (
        f"https://drive.google.com/file/d/{FILE_ID}/view?usp=sharing",
        f"https://drive.google.com/file/u/1/d/{FILE_ID}/view",
        f"https://drive.google.com/open?id={FILE_ID}",
        f"https://drive.google.com/uc?id={FILE_ID}&export=download",
        f"https://docs.google.com/uc?export=download&id={FILE_ID}",
        f"https://drive.usercontent.google.com/download?id={FILE_ID}&export=download&confirm=t",
        f"http://127.0.0.1:9/file/d/{FILE_ID}/view",
    ):
        assert parse_gdrive_url(url, config) == FILE_ID, url
    for other in (
        "https://drive.google.com/drive/folders/abc",
        "https://example.com/uc?id=" + FILE_ID,
        "https://drive.google.com/uc?id=../../x",
    ):
        assert parse_gdrive_url(other, config) is None, other


def test_warning_page_parsing_keeps_every_hidden_input() -> None:
    page = parse_drive_page(
        """<html><head><title>Google Drive - Virus scan warning</title></head><body>
        <span class="uc-name-size"><a href="/open?id=x">big &amp; model.ckpt</a> (2G)</span>
        <form id="download-form" action="https://u.example/download" method="get">
        <input type="submit" value="Download anyway"/>
        <input type="hidden" name="id" value="x"><input type="hidden" name="confirm" value="t">
        <input type="hidden" name="uuid" value="u-1"><input type="hidden" name="at" value="a:1">
        </form></body></html>"""
    )
    form = page.download_form()
    assert form is not None
    assert form.action == "https://u.example/download"
    assert form.hidden == [("id", "x"), ("confirm", "t"), ("uuid", "u-1"), ("at", "a:1")]
    assert page.file_name == "big & model.ckpt"
    assert page.title == "Google Drive - Virus scan warning"


@pytest.mark.parametrize(
    "shape",
    ["/file/d/{id}/view?usp=sharing", "/open?id={id}", "/uc?id={id}&export=download"],
)
async def test_large_file_through_the_virus_scan_warning(
    monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path, shape: str
) -> None:
    fake = drive(monkeypatch, DriveFile(FILE_ID, "big model.safetensors", BODY))
    try:
        events = Recorder()
        await segdl.download(
            fake.drive.url(shape.format(id=FILE_ID)),
            source_env,
            civitai_token="civ-secret",
            hf_token="hf-secret",
            on_event=events,
        )
    finally:
        fake.__exit__(None, None, None)
    assert (source_env / "big model.safetensors").read_bytes() == BODY
    meta = events.metadata
    assert meta.name == "big model.safetensors"
    assert meta.extra["id"] == FILE_ID
    confirmed = [r for r in fake.usercontent.requests if "uuid=" in r.path]
    assert confirmed
    # Every hidden input went along, and the uuid is one the page handed out.
    for r in confirmed:
        for part in ("confirm=t", "authuser=0", "at=APZUnTV-fake", f"id={FILE_ID}"):
            assert part in r.path
    # Segmented: several range requests on the confirmed URL.
    assert len([r for r in confirmed if r.status == 206]) > 2
    # No site's token ever reaches Drive.
    for r in fake.drive.requests + fake.usercontent.requests:
        assert "authorization" not in r.headers


async def test_small_file_and_usercontent_link(
    monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path
) -> None:
    fake = drive(monkeypatch, DriveFile(FILE_ID, "vae.pt", BODY[:50_000], large=False))
    try:
        await segdl.download(
            f"https://drive.usercontent.google.com/download?id={FILE_ID}&export=download",
            source_env,
        )
    finally:
        fake.__exit__(None, None, None)
    assert (source_env / "vae.pt").read_bytes() == BODY[:50_000]
    assert not any("uuid=" in r.path for r in fake.usercontent.requests)


async def test_without_ranges_a_single_stream(
    monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path
) -> None:
    fake = drive(monkeypatch, DriveFile(FILE_ID, "m.ckpt", BODY, accept_ranges=False))
    try:
        await segdl.download(fake.drive.url(f"/uc?id={FILE_ID}"), source_env)
    finally:
        fake.__exit__(None, None, None)
    assert (source_env / "m.ckpt").read_bytes() == BODY


async def test_sign_in_page_is_an_auth_error(
    monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path
) -> None:
    fake = drive(monkeypatch, DriveFile(FILE_ID, "m.ckpt", BODY, shared=False))
    try:
        with pytest.raises(segdl.AuthError, match="Anyone with the link") as info:
            await segdl.download(fake.drive.url(f"/file/d/{FILE_ID}/view"), source_env)
    finally:
        fake.__exit__(None, None, None)
    assert info.value.exit_code == 24
    assert files_in(source_env) == []


async def test_quota_page_is_server_busy(
    monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path
) -> None:
    fake = drive(monkeypatch, DriveFile(FILE_ID, "m.ckpt", BODY))
    fake.quota_exceeded = True
    try:
        with pytest.raises(segdl.ServerBusy, match="Too many users") as info:
            await segdl.download(fake.drive.url(f"/uc?id={FILE_ID}"), source_env)
    finally:
        fake.__exit__(None, None, None)
    assert info.value.exit_code == 29
    assert files_in(source_env) == []


async def test_missing_file_is_not_found(
    monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path
) -> None:
    fake = drive(monkeypatch, DriveFile(FILE_ID, "m.ckpt", BODY))
    try:
        with pytest.raises(segdl.NotFound):
            await segdl.download(fake.drive.url("/uc?id=0000000000000000000000"), source_env)
    finally:
        fake.__exit__(None, None, None)
    assert files_in(source_env) == []


async def test_resume_after_interruption_confirms_again(
    monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path
) -> None:
    fake = drive(monkeypatch, DriveFile(FILE_ID, "m.safetensors", BODY), rate_limit=2 * MIB)
    try:
        url = fake.drive.url(f"/file/d/{FILE_ID}/view")
        await interrupted(url, source_env, after_bytes=MIB)
        assert (source_env / "m.safetensors.part.aria2").exists()
        first = len(fake.usercontent.requests)
        fake.usercontent.rate_limit = None
        await segdl.download(url, source_env)
        second = fake.usercontent.requests[first:]
    finally:
        fake.__exit__(None, None, None)
    assert (source_env / "m.safetensors").read_bytes() == BODY
    assert files_in(source_env) == ["m.safetensors"]
    assert sum(r.body_bytes for r in second if r.status == 206) < len(BODY)
