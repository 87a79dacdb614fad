"""Metadata beside the model and ``--type auto``, against the fake CivitAI and Hub."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from fake_civitai import CivitFile, CivitImage, CivitModel, CivitVersion, FakeCivitAI
from fake_huggingface import FakeHub, HubRepo
from helpers import files_in, prepare_source_env

import segdl
from segdl.cli.main import main
from segdl.engine.options import ModelFileOptions
from segdl.jobs.hashindex import ModelIndex, place_model_copy
from segdl.jobs.modelfolder import find_existing_model
from segdl.sources.base import DownloadPlan, SourceConfig
from segdl.sources.modelfiles import (
    folder_for_record,
    published_digest,
    write_model_metadata,
)
from segdl.sources.resolve import parse_source

TOKEN = "civ-secret-0123456789"
HF_TOKEN = "hf-secret-0123456789"
BODY = os.urandom(300_000)
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF" + os.urandom(3000)
MP4 = b"\x00\x00\x00\x18ftypmp42" + os.urandom(1000)


async def resolve_url(url: str, *, client: httpx.AsyncClient, config: SourceConfig) -> DownloadPlan:
    return await parse_source(url, config).resolve(client=client, config=config)


@pytest.fixture
def source_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    return prepare_source_env(monkeypatch, tmp_path)


def lora() -> CivitModel:
    images = [
        CivitImage(id=11, body=MP4, nsfw_level=1, type="video", extension="mp4"),
        CivitImage(id=12, body=JPEG, nsfw_level=8),  # X: never the preview unless asked
        CivitImage(id=13, body=PNG, nsfw_level=2, extension="jpeg"),  # named .jpeg, is a PNG
        CivitImage(id=14, body=JPEG, nsfw_level=1),
    ]
    version = CivitVersion(
        id=2002,
        name="v2.0",
        files=[CivitFile(id=501, name="dreamLora_v20.safetensors", body=BODY)],
        base_model="SDXL 1.0",
        trained_words=["dreamy", "soft light"],
        description="<p>Second version: <b>sharper</b>.</p>",
        images=images,
    )
    return CivitModel(
        id=1001,
        name="Dream LoRA",
        type="LORA",
        versions=[version],
        description="<p>Dreams &amp; soft light.</p>",
        tags=["style"],
    )


def workflow() -> CivitModel:
    files = [CivitFile(id=601, name="flow.zip", body=b"PK\x03\x04" + BODY[:1000], type="Archive")]
    return CivitModel(
        id=3003,
        name="Flow",
        type="Workflows",
        versions=[CivitVersion(id=3004, name="v1", files=files)],
    )


@pytest.fixture
def civitai(monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path) -> Iterator[FakeCivitAI]:
    with FakeCivitAI(tokens={TOKEN}) as fake:
        fake.add(lora())
        fake.add(workflow())
        monkeypatch.setenv("SEGDL_CIVITAI_URL", fake.base_url)
        yield fake


def config() -> SourceConfig:
    return SourceConfig.from_env(civitai_token=TOKEN, hf_token=HF_TOKEN)


def assert_no_secret_in(directory: pathlib.Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert TOKEN.encode() not in data, path
            assert HF_TOKEN.encode() not in data, path
            assert b"X-Amz-Signature" not in data, path
            assert b"Bearer" not in data, path


async def download_with_metadata(
    url: str, directory: pathlib.Path, *, nsfw: bool = False
) -> tuple[pathlib.Path, list[pathlib.Path]]:
    async with httpx.AsyncClient() as client:
        plan = await resolve_url(url, client=client, config=config())
        result = await segdl.download(url, directory, civitai_token=TOKEN, hf_token=HF_TOKEN)
        path = pathlib.Path(result.path)
        written = await write_model_metadata(path, plan, client=client, include_nsfw_preview=nsfw)
    return path, written


async def test_civitai_metadata_files_as_the_tools_read_them(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    url = civitai.site.url("/api/download/models/2002")
    path, written = await download_with_metadata(url, source_env)
    assert path.read_bytes() == BODY
    assert files_in(source_env) == [
        "dreamLora_v20.civitai.info",
        "dreamLora_v20.json",
        "dreamLora_v20.preview.png",
        "dreamLora_v20.safetensors",
    ]
    assert sorted(p.name for p in written) == files_in(source_env)[:3]

    # Civitai Helper: the model-version JSON as the API sent it.
    async with httpx.AsyncClient() as client:
        api = await client.get(civitai.site.url("/api/v1/model-versions/2002"))
    info = json.loads((source_env / "dreamLora_v20.civitai.info").read_bytes())
    assert info == api.json()
    assert info["id"] == 2002
    assert info["modelId"] == 1001
    assert (source_env / "dreamLora_v20.civitai.info").read_text("ascii").startswith('{\n    "')

    # A1111/Forge: the Lora page's keys.
    user = json.loads((source_env / "dreamLora_v20.json").read_bytes())
    assert user["activation text"] == "dreamy, soft light"
    assert user["sd version"] == "SDXL"
    assert user["preferred weight"] == 0
    assert user["description"] == "Second version: sharper."  # no model JSON for a version URL
    assert "models/1001?modelVersionId=2002" in user["notes"]

    # The first SFW still image (the video and the X-rated one are skipped), named for its
    # real format although its URL says .jpeg.
    assert (source_env / "dreamLora_v20.preview.png").read_bytes() == PNG
    assert_no_secret_in(source_env)
    # Images are public: no credential was sent to the image host.
    assert civitai.images.requests
    for request in civitai.images.requests:
        assert "authorization" not in request.headers
        assert TOKEN not in request.path


async def test_a_token_the_api_echoes_never_reaches_a_file(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    civitai.echo_token = True
    await download_with_metadata(civitai.site.url("/api/download/models/2002"), source_env)
    info = json.loads((source_env / "dreamLora_v20.civitai.info").read_bytes())
    assert info["downloadUrl"] == civitai.site.url("/api/download/models/2002")
    assert info["note"] == "requested with "
    assert_no_secret_in(source_env)
    # Nor the metadata cache.
    assert_no_secret_in(source_env.parent / "cache")


async def test_a_model_url_adds_the_models_description(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    await download_with_metadata(civitai.site.url("/models/1001"), source_env)
    user = json.loads((source_env / "dreamLora_v20.json").read_bytes())
    assert user["description"] == "Dreams & soft light."
    assert "Second version: sharper." in user["notes"]


async def test_an_nsfw_preview_only_when_asked(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    await download_with_metadata(
        civitai.site.url("/api/download/models/2002"), source_env, nsfw=True
    )
    assert (source_env / "dreamLora_v20.preview.jpg").read_bytes() == JPEG
    assert not (source_env / "dreamLora_v20.preview.png").exists()


async def test_a_users_files_are_never_replaced(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    (source_env / "dreamLora_v20.json").write_text('{"activation text": "mine"}')
    (source_env / "dreamLora_v20.preview.webp").write_bytes(b"mine")
    (source_env / "dreamLora_v20.civitai.info").write_text("{}")
    _path, written = await download_with_metadata(
        civitai.site.url("/api/download/models/2002"), source_env
    )
    assert [p.name for p in written] == ["dreamLora_v20.civitai.info"]
    assert json.loads((source_env / "dreamLora_v20.json").read_text()) == {
        "activation text": "mine"
    }
    assert (source_env / "dreamLora_v20.preview.webp").read_bytes() == b"mine"
    assert not civitai.images.requests  # a preview is there: none fetched
    # The site's record is refreshed.
    assert json.loads((source_env / "dreamLora_v20.civitai.info").read_text())["id"] == 2002


async def test_no_preview_from_videos_or_a_failing_image_host(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    model = lora()
    model.versions[0].images = [model.versions[0].images[0]]  # a video only
    civitai.add(model)
    _path, written = await download_with_metadata(
        civitai.site.url("/api/download/models/2002"), source_env
    )
    assert sorted(p.name for p in written) == ["dreamLora_v20.civitai.info", "dreamLora_v20.json"]
    assert not civitai.images.requests

    # An image host that fails: a warning, no preview, the rest written.
    other = source_env / "other"
    other.mkdir()
    (other / "dreamLora_v20.safetensors").write_bytes(BODY)
    civitai.add(lora())
    for image in lora().versions[0].images:
        civitai.images.remove(civitai._image_path(image))
    warnings: list[str] = []
    uncached = SourceConfig(civitai_url=civitai.base_url, civitai_token=TOKEN)
    async with httpx.AsyncClient() as client:
        plan = await resolve_url(
            civitai.site.url("/api/download/models/2002"), client=client, config=uncached
        )
        record = plan.record
        written = await write_model_metadata(
            other / "dreamLora_v20.safetensors", record, client=client, on_warning=warnings.append
        )
    assert sorted(p.name for p in written) == ["dreamLora_v20.civitai.info", "dreamLora_v20.json"]
    assert len(warnings) == 1
    assert warnings[0] == (
        "no preview for dreamLora_v20.safetensors: the image host answered HTTP 404"
    )
    assert "\n" not in warnings[0]


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path) -> Iterator[FakeHub]:
    with FakeHub(tokens={HF_TOKEN}) as fake:
        fake.add(
            "acme/diffusion",
            HubRepo(
                files={"unet/model.safetensors": BODY, "config.json": b'{"a": 1}'},
                revisions={"main": "c0ffee" + "0" * 34},
            ),
        )
        monkeypatch.setenv("HF_ENDPOINT", fake.base_url)
        yield fake


async def test_hugging_face_metadata_names_repo_commit_and_sha256(
    hub: FakeHub, source_env: pathlib.Path
) -> None:
    url = hub.hub.url("/acme/diffusion/resolve/main/unet/model.safetensors")
    _path, written = await download_with_metadata(url, source_env)
    assert [p.name for p in written] == ["model.json"]
    assert files_in(source_env) == ["model.json", "model.safetensors"]
    info = json.loads((source_env / "model.json").read_bytes())
    assert info["huggingface"] == {
        "repo": "acme/diffusion",
        "revision": "main",
        "commit": "c0ffee" + "0" * 34,
        "path": "unet/model.safetensors",
        "sha256": hashlib.sha256(BODY).hexdigest(),
        "sha256_from": "X-Linked-Etag",
        "size": len(BODY),
        "url": hub.hub.url("/acme/diffusion/resolve/c0ffee" + "0" * 34 + "/unet/model.safetensors"),
    }
    assert "acme/diffusion" in info["description"]
    assert_no_secret_in(source_env)


async def test_a_file_that_is_no_model_gets_no_metadata(
    hub: FakeHub, source_env: pathlib.Path
) -> None:
    url = hub.hub.url("/acme/diffusion/resolve/main/config.json")
    path, written = await download_with_metadata(url, source_env)
    assert written == []
    assert files_in(source_env) == ["config.json"]
    assert path.read_bytes() == b'{"a": 1}'


async def test_auto_folder_from_the_civitai_type(
    civitai: FakeCivitAI, hub: FakeHub, source_env: pathlib.Path
) -> None:
    async def folder(url: str) -> str:
        async with httpx.AsyncClient() as client:
            plan = await resolve_url(url, client=client, config=config())
        return folder_for_record(plan.record)

    assert await folder(civitai.site.url("/models/1001")) == "LoRA"
    with pytest.raises(ValueError, match="'Workflows' has no models folder"):
        await folder(civitai.site.url("/models/3003"))
    with pytest.raises(ValueError, match="needs a CivitAI model"):
        await folder(hub.hub.url("/acme/diffusion/resolve/main/unet/model.safetensors"))


async def test_have_it_already_in_this_folder_or_elsewhere(
    civitai: FakeCivitAI, hub: FakeHub, source_env: pathlib.Path
) -> None:
    models = source_env / "models"
    (models / "LoRA").mkdir(parents=True)
    (models / "SD").mkdir()
    (models / "SD" / "renamed.safetensors").write_bytes(BODY)  # the LoRA, misfiled
    (models / "SD" / "other.safetensors").write_bytes(os.urandom(len(BODY)))  # same size
    index = ModelIndex(source_env.parent / "cache")
    async with httpx.AsyncClient() as client:
        plan = await resolve_url(
            civitai.site.url("/api/download/models/2002"), client=client, config=config()
        )
        digest, size, tolerance = published_digest(plan)
        assert digest == hashlib.sha256(BODY).hexdigest()
        assert size is not None
        assert abs(size - len(BODY)) <= tolerance

        found = await find_existing_model(
            plan, models_dir=models, target_dir=models / "LoRA", index=index
        )
        assert found is not None
        assert (found.path, found.in_target_folder) == (
            models / "SD" / "renamed.safetensors",
            False,
        )
        assert found.message(models) == (
            "the same file is already at SD/renamed.safetensors (same sha256); link or copy "
            "it instead of downloading it again"
        )
        # Asked to: linked into the target folder; the next look finds it there.
        target = models / "LoRA" / "dreamLora_v20.safetensors"
        assert await place_model_copy(found.path, target) == "linked"
        again = await find_existing_model(
            plan, models_dir=models, target_dir=models / "LoRA", index=index
        )
        assert again is not None
        assert (again.path, again.in_target_folder) == (target, True)
        assert again.message(models).startswith("already there: LoRA/dreamLora_v20.safetensors")

        # A Hub file with its sha256 is found the same way; nothing else was downloaded.
        hf_plan = await resolve_url(
            hub.hub.url("/acme/diffusion/resolve/main/unet/model.safetensors"),
            client=client,
            config=config(),
        )
        hf_found = await find_existing_model(
            hf_plan, models_dir=models, target_dir=models / "SD", index=index
        )
        assert hf_found is not None
        assert hf_found.in_target_folder
        # A small git file publishes no sha256: nothing to look for.
        no_digest = await resolve_url(
            hub.hub.url("/acme/diffusion/resolve/main/config.json"), client=client, config=config()
        )
        assert published_digest(no_digest)[0] == ""
        assert (
            await find_existing_model(
                no_digest, models_dir=models, target_dir=models / "SD", index=index
            )
            is None
        )
    # Each of the three model files was hashed once over all these searches.
    assert index.statistics().files_hashed == 3
    assert not civitai.storage.requests
    assert not hub.cdn.requests


# -- the command line ----------------------------------------------------------------------


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert isinstance(info.value.code, int)
    return info.value.code, out, err


def listing(root: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_cli_type_auto_puts_the_model_and_its_metadata_in_its_folder(
    civitai: FakeCivitAI, source_env: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = source_env / "models"
    url = civitai.site.url("/models/1001")
    code, _out, err = run(
        ["get", url, "-d", str(models), "--type", "auto", "--civitai-token", TOKEN, "-q"], capsys
    )
    assert (code, err) == (0, "")
    assert listing(models) == [
        "LoRA",
        "LoRA/dreamLora_v20.civitai.info",
        "LoRA/dreamLora_v20.json",
        "LoRA/dreamLora_v20.preview.png",
        "LoRA/dreamLora_v20.safetensors",
    ]
    assert_no_secret_in(models)
    # The model and version JSON were asked once (the download's resolve used the cache).
    api = [r.path for r in civitai.site.requests if r.path.startswith("/api/v1/")]
    assert api == ["/api/v1/models/1001", "/api/v1/model-versions/2002"]
    downloads = [r.path for r in civitai.site.requests if r.path.startswith("/api/download/")]
    assert downloads == ["/api/download/models/2002"]


def test_cli_no_metadata_writes_the_model_only(
    civitai: FakeCivitAI, source_env: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = civitai.site.url("/api/download/models/2002")
    code, _out, err = run(
        ["get", url, "-d", str(source_env), "--no-metadata", "--civitai-token", TOKEN, "-q"],
        capsys,
    )
    assert (code, err) == (0, "")
    assert files_in(source_env) == ["dreamLora_v20.safetensors"]
    assert not civitai.images.requests


def test_cli_type_auto_refuses_a_type_without_folder_in_one_line(
    civitai: FakeCivitAI, source_env: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = source_env / "models"
    url = civitai.site.url("/models/3003")
    code, _out, err = run(
        ["get", url, "-d", str(models), "--type", "auto", "--civitai-token", TOKEN], capsys
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("segdl: error: CivitAI model type 'Workflows' has no models folder")
    assert not models.exists() or listing(models) == []
    # Refused once the site said what the model is: the storage host was never asked.
    assert civitai.storage.requests == []


# -- in the download flow ------------------------------------------------------------------------


async def test_the_flow_finds_a_copy_before_downloading(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    """The library call with models-folder options: a copy in another folder stops the
    download saying where; asked to, it is linked into place; nothing reaches the storage."""
    models = source_env / "models"
    (models / "SD").mkdir(parents=True)
    misfiled = models / "SD" / "renamed.safetensors"
    misfiled.write_bytes(BODY)
    url = civitai.site.url("/models/1001")
    files = ModelFileOptions(metadata=False, auto_folder=True, models_root=models)

    with pytest.raises(segdl.DuplicateModel) as info:
        await segdl.download(url, models, civitai_token=TOKEN, model_files=files)
    assert "SD/renamed.safetensors" in str(info.value)
    assert info.value.exit_code == 13
    assert not (models / "LoRA").exists() or listing(models / "LoRA") == []

    events: list[segdl.Event] = []
    linked = replace(files, link_existing=True)
    result = await segdl.download(
        url, models, civitai_token=TOKEN, model_files=linked, on_event=events.append
    )
    target = models / "LoRA" / "dreamLora_v20.safetensors"
    assert pathlib.Path(result.path) == target
    assert target.stat().st_ino == misfiled.stat().st_ino  # a hard link: no space used
    assert result.sha256 == hashlib.sha256(BODY).hexdigest()
    assert any(isinstance(e, segdl.Warned) and "linked" in e.message for e in events)

    # Now it is in its own folder: success at once.
    again = await segdl.download(url, models, civitai_token=TOKEN, model_files=files)
    assert pathlib.Path(again.path) == target
    assert civitai.storage.requests == []


async def test_the_flow_writes_metadata_into_the_folder_of_the_type(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    models = source_env / "models"
    files = ModelFileOptions(auto_folder=True, models_root=models)
    result = await segdl.download(
        civitai.site.url("/models/1001"), models, civitai_token=TOKEN, model_files=files
    )
    assert pathlib.Path(result.path) == models / "LoRA" / "dreamLora_v20.safetensors"
    assert listing(models / "LoRA") == [
        "dreamLora_v20.civitai.info",
        "dreamLora_v20.json",
        "dreamLora_v20.preview.png",
        "dreamLora_v20.safetensors",
    ]
    assert_no_secret_in(models)
