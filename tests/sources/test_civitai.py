"""CivitAI through ``segdl.download`` against the fake site (reference/sources.md §1)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Iterator

import pytest
from fake_civitai import CivitFile, CivitModel, CivitVersion, FakeCivitAI
from helpers import Recorder, files_in, interrupted, prepare_source_env, sha

import segdl
from segdl.sources.base import SourceConfig
from segdl.sources.civitai import CivitAITarget, parse_civitai_url

MIB = 1024 * 1024
BODY = os.urandom(3 * MIB + 123)
SMALL = os.urandom(200_000)
TOKEN = "civ-secret"


@pytest.fixture
def source_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    return prepare_source_env(monkeypatch, tmp_path)


def make_model() -> CivitModel:
    primary = CivitFile(id=501, name="dreamModel_v20.safetensors", body=BODY)
    vae = CivitFile(id=502, name="dream-vae.pt", body=SMALL, type="VAE", primary=False)
    newest = CivitVersion(
        id=2002,
        name="v2.0",
        files=[primary, vae],
        base_model="SDXL 1.0",
        trained_words=["dreamy", "soft light"],
    )
    older = CivitVersion(
        id=2001, name="v1.0", files=[CivitFile(id=401, name="dream_v10.ckpt", body=SMALL)]
    )
    return CivitModel(id=1001, name="Dream Model", type="Checkpoint", versions=[newest, older])


@pytest.fixture
def civitai(monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path) -> Iterator[FakeCivitAI]:
    with FakeCivitAI(tokens={TOKEN}) as fake:
        fake.add(make_model())
        monkeypatch.setenv("SEGDL_CIVITAI_URL", fake.base_url)
        yield fake


def api_requests(fake: FakeCivitAI) -> list[str]:
    return [r.path for r in fake.site.requests if r.path.startswith("/api/v1/")]


async def test_download_with_metadata_and_token_on_its_site_only(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    events = Recorder()
    result = await segdl.download(
        civitai.site.url("/api/download/models/2002"),
        source_env,
        civitai_token=TOKEN,
        on_event=events,
    )
    path = source_env / "dreamModel_v20.safetensors"
    assert result.path == str(path)
    assert path.read_bytes() == BODY
    assert result.sha256 == hashlib.sha256(BODY).hexdigest()
    meta = events.metadata
    assert meta.name == "Dream Model"
    assert meta.model_type == "Checkpoint"
    assert meta.base_model == "SDXL 1.0"
    assert meta.trained_words == ("dreamy", "soft light")
    assert meta.sha256 == hashlib.sha256(BODY).hexdigest()
    assert meta.extra["file_name"] == "dreamModel_v20.safetensors"
    assert meta.extra["file_size"] == len(BODY)
    assert meta.extra["version_id"] == 2002
    assert meta.extra["model_id"] == 1001
    # The metadata comes before the download starts.
    kinds = [e.type for e in events.events]
    assert kinds.index("metadata") < kinds.index("started")
    # The token goes to CivitAI as a Bearer header, never to the storage host.
    downloads = [r for r in civitai.site.requests if r.path.startswith("/api/download/")]
    assert downloads
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in downloads)
    assert all("token=" not in r.path for r in downloads)
    assert civitai.storage.requests
    for r in civitai.storage.requests:
        assert "authorization" not in r.headers
        assert TOKEN not in r.path
    assert files_in(source_env) == ["dreamModel_v20.safetensors"]


def test_url_shapes_are_recognised() -> None:
    config = SourceConfig(civitai_url="http://127.0.0.1:9")
    cases = {
        "https://civitai.com/api/download/models/2002": CivitAITarget(2002),
        "https://civitai.com/api/download/models/2002?type=VAE&format=Other&token=abc": (
            CivitAITarget(2002, None, (("type", "VAE"), ("format", "Other")), "abc")
        ),
        "https://civitai.com/models/1001": CivitAITarget(None, 1001),
        "https://www.civitai.com/models/1001/dream-model?modelVersionId=2001": CivitAITarget(
            2001, 1001
        ),
        "https://civitai.com/model-versions/2001": CivitAITarget(2001),
        "urn:air:sdxl:checkpoint:civitai:1001@2002": CivitAITarget(2002, 1001),
        "http://127.0.0.1:9/models/7": CivitAITarget(None, 7),
    }
    for url, expected in cases.items():
        assert parse_civitai_url(url, config) == expected, url
    for other in (
        "https://image.civitai.com/xG1nkqKTMzGDvpLrqFT7WA/abc/width=450/1.jpeg",
        "https://civitai.com/user/someone",
        "https://example.com/models/1001",
        "http://127.0.0.1:10/models/7",  # another port is another site
    ):
        assert parse_civitai_url(other, config) is None, other


@pytest.mark.parametrize(
    ("path", "name", "body"),
    [
        ("/models/1001", "dreamModel_v20.safetensors", BODY),
        ("/models/1001/dream-model?modelVersionId=2001", "dream_v10.ckpt", SMALL),
        ("/model-versions/2001", "dream_v10.ckpt", SMALL),
        ("/api/download/models/2002?type=VAE&format=SafeTensor", "dream-vae.pt", SMALL),
        ("/api/download/models/2002?fileId=502", "dream-vae.pt", SMALL),
    ],
    ids=["model", "model-with-version", "version-page", "download-query", "download-file-id"],
)
async def test_every_url_shape_downloads_the_right_file(
    civitai: FakeCivitAI, source_env: pathlib.Path, path: str, name: str, body: bytes
) -> None:
    events = Recorder()
    await segdl.download(civitai.site.url(path), source_env, civitai_token=TOKEN, on_event=events)
    assert (source_env / name).read_bytes() == body
    assert events.metadata.sha256 == hashlib.sha256(body).hexdigest()


async def test_air_and_public_host_use_the_configured_site(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    await segdl.download(
        "urn:air:sd1:checkpoint:civitai:1001@2001", source_env, civitai_token=TOKEN
    )
    assert (source_env / "dream_v10.ckpt").read_bytes() == SMALL
    (source_env / "dream_v10.ckpt").unlink()
    await segdl.download("https://civitai.com/model-versions/2001", source_env, civitai_token=TOKEN)
    assert (source_env / "dream_v10.ckpt").read_bytes() == SMALL


async def test_token_pasted_in_the_url_is_sent_as_a_header_only(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    await segdl.download(civitai.site.url(f"/api/download/models/2001?token={TOKEN}"), source_env)
    assert (source_env / "dream_v10.ckpt").read_bytes() == SMALL
    downloads = [r for r in civitai.site.requests if r.path.startswith("/api/download/")]
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in downloads)
    assert all(TOKEN not in r.path for r in downloads + civitai.storage.requests)


async def test_no_token_is_an_auth_error_and_nothing_is_saved(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    events = Recorder()
    with pytest.raises(segdl.AuthError) as info:
        await segdl.download(civitai.site.url("/models/1001"), source_env, on_event=events)
    assert info.value.exit_code == 24
    assert "CIVITAI_TOKEN" in str(info.value)
    assert "logged in" in str(info.value)
    assert files_in(source_env) == []
    assert not civitai.storage.requests
    errors = events.of(segdl.Failed)
    assert len(errors) == 1


async def test_public_file_needs_no_token(civitai: FakeCivitAI, source_env: pathlib.Path) -> None:
    model = CivitModel(
        id=9,
        name="Open",
        type="LORA",
        versions=[
            CivitVersion(
                id=90,
                name="v1",
                files=[CivitFile(9001, "open.safetensors", SMALL)],
                require_auth=False,
            )
        ],
    )
    civitai.add(model)
    await segdl.download(civitai.site.url("/api/download/models/90"), source_env)
    assert (source_env / "open.safetensors").read_bytes() == SMALL
    assert all("authorization" not in r.headers for r in civitai.site.requests)


async def test_wrong_token_is_an_auth_error(civitai: FakeCivitAI, source_env: pathlib.Path) -> None:
    with pytest.raises(segdl.AuthError, match="did not accept the API token"):
        await segdl.download(
            civitai.site.url("/api/download/models/2002"), source_env, civitai_token="nope"
        )
    assert files_in(source_env) == []
    assert "nope" not in str(civitai.site.requests[-1].path)


async def test_login_redirect_is_an_auth_error_not_a_saved_page(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    civitai.treat_all_as_browser = True
    with pytest.raises(segdl.AuthError, match="requires you to be logged in") as info:
        await segdl.download(civitai.site.url("/api/download/models/2002"), source_env)
    assert str(info.value) == (
        "the creator of Dream Model v2.0 (model version 2002) requires you to be logged in to "
        f"download it: create an API key at {civitai.base_url}/user/account, then set "
        "CIVITAI_TOKEN or pass --civitai-token"
    )
    assert files_in(source_env) == []
    assert not any(r.path.startswith("/login") for r in civitai.site.requests)


@pytest.mark.parametrize(
    ("mode", "error", "words"),
    [
        ("early_access", segdl.AuthError, "is in early access until 2026-12-31 00:00 UTC"),
        ("no_grant", segdl.AuthError, "do not have access"),
        ("disabled", segdl.AuthError, "disabled downloads"),
        ("archived", segdl.NotFound, "archived"),
        ("unpublished", segdl.NotFound, "model version 2002"),
    ],
)
async def test_site_errors_are_clear(
    civitai: FakeCivitAI,
    source_env: pathlib.Path,
    mode: str,
    error: type[segdl.DownloadError],
    words: str,
) -> None:
    model = make_model()
    model.versions[0].mode = mode  # type: ignore[assignment]
    civitai.add(model)
    with pytest.raises(error, match=words) as info:
        await segdl.download(
            civitai.site.url("/api/download/models/2002"), source_env, civitai_token=TOKEN
        )
    assert TOKEN not in str(info.value)
    assert files_in(source_env) == []


async def test_browser_style_early_access_redirect_is_an_auth_error(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    model = make_model()
    model.versions[0].mode = "early_access"
    civitai.add(model)
    civitai.treat_all_as_browser = True
    # The browser answer (a redirect to the version page) has no date: the API's is used.
    with pytest.raises(segdl.AuthError, match="early access until 2026-12-31 00:00 UTC"):
        await segdl.download(
            civitai.site.url("/api/download/models/2002"), source_env, civitai_token=TOKEN
        )
    assert files_in(source_env) == []


def page(fake: FakeCivitAI) -> str:
    return f"{fake.base_url}/models/1001?modelVersionId=2002"


@pytest.mark.parametrize(
    ("mode", "require_auth", "token", "expected"),
    [
        (
            "early_access",
            True,
            TOKEN,
            "Dream Model v2.0 (model version 2002) is in early access until 2027-01-15 12:00 "
            "UTC; buy access on civitai.com ({page}) or wait",
        ),
        (
            "early_access",
            False,
            None,
            "Dream Model v2.0 (model version 2002) is in early access until 2027-01-15 12:00 "
            "UTC; buy access on civitai.com ({page}) or wait (if you bought access, set "
            "CIVITAI_TOKEN or pass --civitai-token so CivitAI knows it is you)",
        ),
        (
            "disabled",
            True,
            TOKEN,
            "the creator of Dream Model v2.0 (model version 2002) has disabled downloads of it "
            "on CivitAI: it cannot be downloaded (only used on the site)",
        ),
        (
            "ok",
            True,
            None,
            "the creator of Dream Model v2.0 (model version 2002) requires you to be logged in "
            "to download it: create an API key at {base}/user/account, then set CIVITAI_TOKEN "
            "or pass --civitai-token",
        ),
        (
            "no_grant",
            True,
            TOKEN,
            "CivitAI says you do not have access to download Dream Model v2.0 (model version "
            "2002) (a private or paid file: see {page})",
        ),
    ],
    ids=["early-access", "early-access-no-token", "disabled", "login", "no-grant"],
)
async def test_each_refusal_names_its_cause_in_one_line(
    civitai: FakeCivitAI,
    source_env: pathlib.Path,
    mode: str,
    require_auth: bool,
    token: str | None,
    expected: str,
) -> None:
    model = make_model()
    model.versions[0].mode = mode  # type: ignore[assignment]
    model.versions[0].require_auth = require_auth
    model.versions[0].early_access_ends = "2027-01-15T12:00:00.000Z"
    civitai.add(model)
    with pytest.raises(segdl.AuthError) as info:
        await segdl.download(
            civitai.site.url("/api/download/models/2002"), source_env, civitai_token=token
        )
    assert str(info.value) == expected.format(page=page(civitai), base=civitai.base_url)
    assert info.value.exit_code == 24
    assert "HTTP" not in str(info.value)  # the cause, not the status code
    assert files_in(source_env) == []
    assert not civitai.storage.requests


async def test_rate_limit_is_server_busy(civitai: FakeCivitAI, source_env: pathlib.Path) -> None:
    civitai.rate_limited = True
    with pytest.raises(segdl.ServerBusy, match="limiting downloads") as info:
        await segdl.download(
            civitai.site.url("/api/download/models/2002"), source_env, civitai_token=TOKEN
        )
    assert info.value.exit_code == 29


@pytest.mark.parametrize(
    "path", ["/api/download/models/999", "/models/31337", "/api/download/models/2002?fileId=7"]
)
async def test_missing_things_are_not_found(
    civitai: FakeCivitAI, source_env: pathlib.Path, path: str
) -> None:
    with pytest.raises(segdl.NotFound) as info:
        await segdl.download(civitai.site.url(path), source_env, civitai_token=TOKEN)
    assert info.value.exit_code == 3
    assert files_in(source_env) == []


async def test_published_sha256_is_checked(civitai: FakeCivitAI, source_env: pathlib.Path) -> None:
    """The storage host serves tampered bytes: exit 32, the bad bytes are gone (nothing to
    re-verify, nothing under the model's name), and once the storage serves the right file
    the same request downloads it anew, exact (issue 15: it used to fail the same way
    forever without fetching anything)."""
    good = SMALL
    tampered = bytes(reversed(SMALL))
    claimed = hashlib.sha256(good).hexdigest()

    def model(body: bytes) -> CivitModel:
        f = CivitFile(id=777, name="liar.safetensors", body=body, claimed_sha256=claimed)
        return CivitModel(
            id=77, name="Liar", type="LORA", versions=[CivitVersion(id=770, name="v1", files=[f])]
        )

    civitai.add(model(tampered))
    url = civitai.site.url("/api/download/models/770")
    with pytest.raises(segdl.ChecksumMismatch) as info:
        await segdl.download(url, source_env, civitai_token=TOKEN)
    assert info.value.exit_code == 32
    assert "deleted, so running the download again fetches it anew" in str(info.value)
    assert files_in(source_env) == []
    civitai.add(model(good))
    served = len(civitai.storage.requests)
    result = await segdl.download(url, source_env, civitai_token=TOKEN)
    assert (source_env / "liar.safetensors").read_bytes() == good
    assert result.sha256 == claimed
    assert files_in(source_env) == ["liar.safetensors"]
    assert sum(r.body_bytes for r in civitai.storage.requests[served:]) >= len(good)


async def test_metadata_is_cached_on_disk_with_an_expiry(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    url = civitai.site.url("/models/1001?modelVersionId=2001")
    await segdl.download(url, source_env, civitai_token=TOKEN)
    assert api_requests(civitai) == ["/api/v1/model-versions/2001"]
    cache = source_env.parent / "cache" / "civitai"
    entry = cache / "model-versions-2001.json"
    assert entry.exists()
    assert TOKEN not in entry.read_text()

    (source_env / "dream_v10.ckpt").unlink()
    await segdl.download(url, source_env, civitai_token=TOKEN)
    assert api_requests(civitai) == ["/api/v1/model-versions/2001"]  # served from the cache

    # An entry older than the expiry is asked again.
    stored = json.loads(entry.read_text())
    stored["stored"] -= 24 * 3600
    entry.write_text(json.dumps(stored))
    (source_env / "dream_v10.ckpt").unlink()
    await segdl.download(url, source_env, civitai_token=TOKEN)
    assert api_requests(civitai) == ["/api/v1/model-versions/2001"] * 2


async def test_resume_after_interruption_re_resolves_the_expired_storage_url(
    monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path
) -> None:
    with FakeCivitAI(tokens={TOKEN}, rate_limit=2 * MIB) as fake:
        fake.add(make_model())
        monkeypatch.setenv("SEGDL_CIVITAI_URL", fake.base_url)
        url = fake.site.url("/api/download/models/2002")
        await interrupted(url, source_env, after_bytes=MIB, civitai_token=TOKEN)
        path = source_env / "dreamModel_v20.safetensors"
        assert (source_env / "dreamModel_v20.safetensors.part.aria2").exists()
        first = len(fake.storage.requests)
        first_bytes = sum(r.body_bytes for r in fake.storage.requests)
        fake.expire_storage_urls()
        fake.storage.rate_limit = None
        await segdl.download(url, source_env, civitai_token=TOKEN)
        second = fake.storage.requests[first:]
    assert path.read_bytes() == BODY
    assert sha(path) == hashlib.sha256(BODY).hexdigest()
    assert files_in(source_env) == ["dreamModel_v20.safetensors"]
    # A fresh signed URL was used, and the bytes already there were not fetched again.
    assert all(r.status != 403 for r in second)
    assert sum(r.body_bytes for r in second) < len(BODY)
    assert first_bytes + sum(r.body_bytes for r in second) <= len(BODY) + 16 * MIB
