"""Hugging Face through ``segdl.download`` against the fake Hub and CDN (sources.md §2)."""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Iterator

import pytest
from fake_huggingface import FakeHub, HubRepo
from helpers import Recorder, files_in, interrupted, prepare_source_env

import segdl
from segdl.sources.base import SourceConfig
from segdl.sources.huggingface import HFFile, parse_hf_url

MIB = 1024 * 1024
BODY = os.urandom(3 * MIB + 5)
CONFIG = b'{"model_type": "unet"}\n'
TOKEN = "hf-secret"
COMMIT = "c0ffee" + "0" * 34


@pytest.fixture
def source_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    return prepare_source_env(monkeypatch, tmp_path)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path) -> Iterator[FakeHub]:
    with FakeHub(tokens={TOKEN, "hf-other", "hf-fine"}) as fake:
        fake.add(
            "acme/diffusion",
            HubRepo(
                files={"unet/model.safetensors": BODY, "config.json": CONFIG},
                revisions={"main": COMMIT, "v1.0": "b" * 40},
            ),
        )
        fake.add(
            "acme/gated",
            HubRepo(
                files={"m.safetensors": BODY},
                gated=True,
                approved={TOKEN},
                fine_grained={"hf-fine"},
            ),
        )
        fake.add(
            "acme/quiet-gate",
            HubRepo(files={"m.safetensors": BODY}, gated=True, gated_without_code=True),
        )
        fake.add(
            "acme/private", HubRepo(files={"m.safetensors": BODY}, private=True, approved={TOKEN})
        )
        fake.add("datasets/acme/data", HubRepo(files={"d/train.bin": BODY}))
        monkeypatch.setenv("HF_ENDPOINT", fake.base_url)
        yield fake


async def test_lfs_file_with_size_and_sha256_from_the_redirect(
    hub: FakeHub, source_env: pathlib.Path
) -> None:
    events = Recorder()
    result = await segdl.download(
        hub.hub.url("/acme/diffusion/resolve/main/unet/model.safetensors"),
        source_env,
        hf_token=TOKEN,
        on_event=events,
    )
    path = source_env / "model.safetensors"
    assert result.path == str(path)
    assert path.read_bytes() == BODY
    digest = hashlib.sha256(BODY).hexdigest()
    assert result.sha256 == digest
    meta = events.metadata
    assert meta.name == "model.safetensors"
    assert meta.sha256 == digest
    assert meta.extra["repo"] == "acme/diffusion"
    assert meta.extra["revision"] == "main"
    assert meta.extra["path"] == "unet/model.safetensors"
    assert meta.extra["commit"] == COMMIT
    assert meta.extra["size"] == len(BODY)
    # The token goes to the Hub only; the CDN (another origin) never sees it.
    assert hub.hub.requests
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.hub.requests)
    assert hub.cdn.requests
    assert all("authorization" not in r.headers for r in hub.cdn.requests)
    # The CDN's ETag (a Xet hash) was not mistaken for the sha256: the check passed.


async def test_blob_url_is_rewritten_to_resolve(hub: FakeHub, source_env: pathlib.Path) -> None:
    await segdl.download(
        hub.hub.url("/acme/diffusion/blob/main/unet/model.safetensors"), source_env
    )
    assert (source_env / "model.safetensors").read_bytes() == BODY
    assert [r.path for r in hub.hub.requests] == [
        "/acme/diffusion/resolve/main/unet/model.safetensors"
    ]


@pytest.mark.parametrize(
    ("url", "name", "body"),
    [
        ("hf://acme/diffusion/unet/model.safetensors", "model.safetensors", BODY),
        ("hf://acme/diffusion/config.json@v1.0", "config.json", CONFIG),
        ("hf://acme/diffusion@v1.0/config.json", "config.json", CONFIG),
        ("hf://datasets/acme/data/d/train.bin", "train.bin", BODY),
    ],
    ids=["default-revision", "path-at-revision", "repo-at-revision", "dataset"],
)
async def test_short_form(
    hub: FakeHub, source_env: pathlib.Path, url: str, name: str, body: bytes
) -> None:
    await segdl.download(url, source_env)
    assert (source_env / name).read_bytes() == body


def test_url_shapes() -> None:
    config = SourceConfig(hf_endpoint="http://127.0.0.1:9")
    cases = {
        "https://huggingface.co/acme/m/resolve/main/a/b.safetensors?download=true": HFFile(
            "acme/m", "main", "a/b.safetensors"
        ),
        "https://huggingface.co/acme/m/blob/refs%2Fpr%2F1/b.bin": HFFile(
            "acme/m", "refs%2Fpr%2F1", "b.bin"
        ),
        "https://hf.co/gpt2/resolve/main/config.json": HFFile("gpt2", "main", "config.json"),
        "https://huggingface.co/datasets/acme/d/resolve/main/x.bin": HFFile(
            "acme/d", "main", "x.bin", "datasets"
        ),
        "http://127.0.0.1:9/acme/m/resolve/v2/x.bin": HFFile("acme/m", "v2", "x.bin"),
        "hf://acme/m/dir/x.bin@refs/pr/3": HFFile("acme/m", "refs%2Fpr%2F3", "dir/x.bin"),
    }
    for url, expected in cases.items():
        assert parse_hf_url(url, config) == expected, url
    for other in (
        "https://huggingface.co/acme/m",
        "https://huggingface.co/acme/m/tree/main",
        "https://cdn-lfs.hf.co/repos/ab/cd/0123",
        "hf://acme/m",
    ):
        assert parse_hf_url(other, config) is None, other


async def test_file_kept_in_git_is_served_by_the_hub_with_the_token(
    hub: FakeHub, source_env: pathlib.Path
) -> None:
    events = Recorder()
    await segdl.download(
        hub.hub.url("/acme/diffusion/resolve/main/config.json"),
        source_env,
        hf_token=TOKEN,
        on_event=events,
    )
    assert (source_env / "config.json").read_bytes() == CONFIG
    # A git blob's ETag is a sha1: no sha256 is claimed.
    assert events.metadata.sha256 is None
    assert not hub.cdn.requests
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.hub.requests)


async def test_renamed_repo_follows_the_relative_redirect(
    hub: FakeHub, source_env: pathlib.Path
) -> None:
    hub.renamed["acme/old-name"] = "acme/diffusion"
    await segdl.download(
        hub.hub.url("/acme/old-name/resolve/main/unet/model.safetensors"),
        source_env,
        hf_token=TOKEN,
    )
    assert (source_env / "model.safetensors").read_bytes() == BODY
    assert all("authorization" not in r.headers for r in hub.cdn.requests)


@pytest.mark.parametrize(
    ("path", "token", "error", "words"),
    [
        ("/acme/gated/resolve/main/m.safetensors", None, segdl.AuthError, "is gated: accept"),
        ("/acme/gated/resolve/main/m.safetensors", "hf-other", segdl.AuthError, "no access yet"),
        ("/acme/private/resolve/main/m.safetensors", None, segdl.NotFound, "if it is private"),
        ("/acme/nothing/resolve/main/m.safetensors", TOKEN, segdl.NotFound, "token cannot see"),
        ("/acme/diffusion/resolve/v9/config.json", None, segdl.NotFound, "revision v9"),
        ("/acme/diffusion/resolve/main/nope.bin", None, segdl.NotFound, "nope.bin at revision"),
        ("/acme/diffusion/resolve/main/config.json", "hf-bad", segdl.AuthError, "rejected"),
    ],
)
async def test_errors_from_x_error_code(
    hub: FakeHub,
    source_env: pathlib.Path,
    path: str,
    token: str | None,
    error: type[segdl.DownloadError],
    words: str,
) -> None:
    with pytest.raises(error, match=words) as info:
        await segdl.download(hub.hub.url(path), source_env, hf_token=token)
    if token:
        assert token not in str(info.value)
    assert files_in(source_env) == []
    assert not hub.cdn.requests


@pytest.mark.parametrize(
    ("repo", "token", "expected"),
    [
        (
            "acme/gated",
            None,
            "acme/gated is gated: accept its conditions at {base}/acme/gated while logged in, "
            "then use a token of that account (HF_TOKEN or --hf-token)",
        ),
        (
            "acme/gated",
            "hf-other",
            "acme/gated is gated and your token's account has no access yet: accept its "
            "conditions at {base}/acme/gated (some authors approve each request; wait for it)",
        ),
        (
            "acme/gated",
            "hf-fine",
            "acme/gated is gated and your fine-grained token may not read gated repositories: "
            "allow access to public gated repositories in the token's settings on "
            "huggingface.co, or use a read token (--hf-token)",
        ),
        (
            # No X-Error-Code: the Hub's message alone says it is gated.
            "acme/quiet-gate",
            None,
            "acme/quiet-gate is gated: accept its conditions at {base}/acme/quiet-gate while "
            "logged in, then use a token of that account (HF_TOKEN or --hf-token)",
        ),
    ],
    ids=["no-token", "not-approved", "fine-grained", "message-only"],
)
async def test_a_gated_repo_says_what_to_do(
    hub: FakeHub, source_env: pathlib.Path, repo: str, token: str | None, expected: str
) -> None:
    with pytest.raises(segdl.AuthError) as info:
        await segdl.download(
            hub.hub.url(f"/{repo}/resolve/main/m.safetensors"), source_env, hf_token=token
        )
    assert str(info.value) == expected.format(base=hub.base_url)
    assert info.value.exit_code == 24
    assert files_in(source_env) == []
    assert not hub.cdn.requests


async def test_gated_and_private_with_an_approved_token(
    hub: FakeHub, source_env: pathlib.Path
) -> None:
    await segdl.download(
        hub.hub.url("/acme/gated/resolve/main/m.safetensors"), source_env, hf_token=TOKEN
    )
    assert (source_env / "m.safetensors").read_bytes() == BODY


async def test_sha256_from_x_linked_etag_is_verified(
    hub: FakeHub, source_env: pathlib.Path
) -> None:
    hub.add("acme/broken", HubRepo(files={"m.bin": BODY}, lie_about={"m.bin"}))
    with pytest.raises(segdl.ChecksumMismatch) as info:
        await segdl.download(hub.hub.url("/acme/broken/resolve/main/m.bin"), source_env)
    assert info.value.exit_code == 32


async def test_resume_after_interruption_re_resolves(
    monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path
) -> None:
    with FakeHub(rate_limit=2 * MIB) as fake:
        fake.add("acme/diffusion", HubRepo(files={"unet/model.safetensors": BODY}))
        monkeypatch.setenv("HF_ENDPOINT", fake.base_url)
        url = fake.hub.url("/acme/diffusion/resolve/main/unet/model.safetensors")
        await interrupted(url, source_env, after_bytes=MIB)
        assert (source_env / "model.safetensors.part.aria2").exists()
        first = len(fake.cdn.requests)
        fake.expire_cdn_urls()
        fake.cdn.rate_limit = None
        await segdl.download(url, source_env)
        second = fake.cdn.requests[first:]
    assert (source_env / "model.safetensors").read_bytes() == BODY
    assert files_in(source_env) == ["model.safetensors"]
    assert all(r.status != 403 for r in second)
    assert sum(r.body_bytes for r in second) < len(BODY)


async def test_a_hub_mirror_shares_the_download_without_the_token(
    monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path
) -> None:
    """SEGDL_HF_MIRRORS names Hub mirrors serving the same paths: connections are spread
    over the Hub's CDN and the mirror's, and the token never leaves the Hub."""
    body = os.urandom(12 * MIB)  # twelve pieces: enough for every connection to take one
    repo = HubRepo(files={"unet/model.safetensors": body}, revisions={"main": COMMIT})
    with FakeHub(tokens={TOKEN}, rate_limit=MIB) as hub, FakeHub(rate_limit=MIB) as mirror:
        hub.add("acme/diffusion", repo)
        mirror.add("acme/diffusion", repo)
        monkeypatch.setenv("HF_ENDPOINT", hub.base_url)
        monkeypatch.setenv("SEGDL_HF_MIRRORS", mirror.base_url)
        result = await segdl.download(
            "hf://acme/diffusion/unet/model.safetensors", source_env, hf_token=TOKEN
        )
        assert pathlib.Path(result.path).read_bytes() == body
        for fake in (hub, mirror):
            served = sum(r.body_bytes for r in fake.cdn.requests if r.range != "bytes=0-0")
            assert served > 0
        for server in (mirror.hub, mirror.cdn, hub.cdn):
            assert server.requests
            assert all("authorization" not in r.headers for r in server.requests)
