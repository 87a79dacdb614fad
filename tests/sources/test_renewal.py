"""Links that expire mid-download (issue 14 item 1), against a fake CivitAI whose storage links
work for a second after they are handed out and whose responses are cut every MiB.

The flow asks the site for a fresh link when the storage refuses an expired one, checks it is
the same file, and goes on: no finished byte is fetched again, the other connections keep
running.  A URL the user gave that answers 403 stays an authentication error.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Iterator

import pytest
import trio
from fake_civitai import CivitFile, CivitModel, CivitVersion, FakeCivitAI
from helpers import prepare_source_env

import segdl
from segdl.engine.aria2c import aria2c_available
from segdl.testing.rangeserver import Fault, RangeServer, RequestInfo, Resource

MIB = 1024 * 1024
BODY = os.urandom(12 * MIB + 4321)
SHA = hashlib.sha256(BODY).hexdigest()
TOKEN = "civ-secret"
FAST = segdl.Options(
    connections=4,
    split=4,
    save_interval=0.2,
    progress_interval=0.1,
    read_timeout=5.0,
    retry=segdl.RetryPolicy(max_tries=4, base_delay=0.05, max_delay=0.2),
)


@pytest.fixture
def source_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    return prepare_source_env(monkeypatch, tmp_path)


@pytest.fixture
def civitai(monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path) -> Iterator[FakeCivitAI]:
    # 1 MiB/s per connection: 12 MiB over 4 connections takes about 3 s, three lifetimes.
    with FakeCivitAI(tokens={TOKEN}, rate_limit=MIB) as fake:
        version = CivitVersion(
            id=2002, name="v1", files=[CivitFile(id=501, name="long.safetensors", body=BODY)]
        )
        fake.add(CivitModel(id=1001, name="Long", type="Checkpoint", versions=[version]))
        fake.link_lifetime = 1.0
        fake.cut_after = MIB
        monkeypatch.setenv("SEGDL_CIVITAI_URL", fake.base_url)
        yield fake


def storage_bytes(fake: FakeCivitAI) -> int:
    return fake.storage.statistics().body_bytes


async def test_an_expiring_link_is_renewed_mid_download(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    events: list[segdl.Event] = []
    result = await segdl.download(
        civitai.site.url("/models/1001"),
        source_env,
        civitai_token=TOKEN,
        options=FAST,
        on_event=events.append,
    )
    assert hashlib.sha256(pathlib.Path(result.path).read_bytes()).hexdigest() == SHA
    refused = [r for r in civitai.storage.requests if r.status == 403]
    assert refused, "the links never expired: the test proves nothing"
    # The user is told, once per fresh link, and no signed URL is shown.
    told = [e.message for e in events if isinstance(e, segdl.Warned)]
    assert told, "no renewal was reported"
    # At most one per link the site handed out after the first (a fresh link whose own
    # probe fails is asked for again, unreported).
    assert len(told) <= civitai.links_issued - 1, told
    assert told[0] == "renewed the expiring download link from civitai; the download goes on"
    # One fresh link per expiry, shared by the connections (4 of them), not one each.
    assert civitai.links_issued - 1 <= len(refused)
    assert civitai.links_issued <= 12
    # Cut responses keep what arrived: what was served twice is only what was in flight.
    assert storage_bytes(civitai) <= len(BODY) + 2 * MIB


async def test_a_link_that_cannot_be_renewed_keeps_the_partial_then_resumes(
    civitai: FakeCivitAI, source_env: pathlib.Path
) -> None:
    url = civitai.site.url("/models/1001")

    async def stop_renewals() -> None:
        while storage_bytes(civitai) < 3 * MIB:  # noqa: ASYNC110 (the fake has no hook)
            await trio.sleep(0.05)
        civitai.refuse_links = True

    error: segdl.DownloadError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_renewals)
        try:
            await segdl.download(url, source_env, civitai_token=TOKEN, options=FAST)
        except segdl.DownloadError as exc:
            error = exc
    assert isinstance(error, segdl.LinkExpired), error
    message = str(error)
    assert message.startswith("the download link expired and could not be renewed")
    assert "token" not in message  # not the old wrong diagnosis
    assert error.exit_code == 24
    assert "X-Amz-Signature" not in message
    kept = storage_bytes(civitai)
    assert [p for p in source_env.iterdir() if p.stat().st_size > 0], "the partial is kept"

    # Later the site hands out links again: the partial is resumed, not fetched again.
    civitai.refuse_links = False
    result = await segdl.download(url, source_env, civitai_token=TOKEN, options=FAST)
    assert hashlib.sha256(pathlib.Path(result.path).read_bytes()).hexdigest() == SHA
    assert storage_bytes(civitai) - kept <= len(BODY) - 2 * MIB


async def test_aria2c_gets_a_fresh_link_too(civitai: FakeCivitAI, source_env: pathlib.Path) -> None:
    if not aria2c_available():
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail("aria2c is not installed, and CI=true forbids skipping", pytrace=False)
        pytest.skip("aria2c is not installed")
    result = await segdl.download(
        civitai.site.url("/models/1001"),
        source_env,
        civitai_token=TOKEN,
        options=FAST,
        engine="aria2c",
    )
    assert hashlib.sha256(pathlib.Path(result.path).read_bytes()).hexdigest() == SHA
    assert civitai.links_issued >= 2


async def test_a_stream_from_a_server_without_ranges_gets_a_fresh_link_when_it_is_cut(
    monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path
) -> None:
    """No ranges: a cut stream starts again from the first byte, by then with an expired link."""
    body = BODY[: 2 * MIB]
    with FakeCivitAI(tokens={TOKEN}, rate_limit=MIB) as fake:
        whole = CivitFile(id=501, name="whole.safetensors", body=body, accept_ranges=False)
        fake.add(
            CivitModel(
                id=1001,
                name="Whole",
                type="Checkpoint",
                versions=[CivitVersion(id=2002, name="v1", files=[whole])],
            )
        )
        fake.cut_after, fake.cuts_left, fake.expire_on_cut = MIB // 2, 1, True
        # The stream's first answer is cut, not one of the requests sent ahead at the same
        # time (those ask for later bytes; their answers are not used without ranges).
        fake.cut_if = lambda info: (info.range or "bytes=0-").startswith("bytes=0-")
        monkeypatch.setenv("SEGDL_CIVITAI_URL", fake.base_url)
        result = await segdl.download(
            fake.site.url("/models/1001"), source_env, civitai_token=TOKEN, options=FAST
        )
        assert pathlib.Path(result.path).read_bytes() == body
        assert fake.cuts_left == 0, "the stream was never cut: the test proves nothing"
        assert [r for r in fake.storage.requests if r.status == 403], "the link never expired"
        assert fake.links_issued >= 2


async def test_a_direct_url_that_answers_403_stays_an_auth_error(
    range_server: RangeServer, source_env: pathlib.Path
) -> None:
    """No site handed this link out: nothing to renew, and the message says what it says."""
    range_server.add("/m.bin", Resource(body=BODY[: 4 * MIB]))

    def refuse_data(info: RequestInfo) -> Fault | None:
        # The probe (bytes=0-0) passes; every data request is refused as if expired.
        return Fault.status(403, body=b"Request has expired") if info.range != "bytes=0-0" else None

    range_server.on_request(refuse_data)
    with pytest.raises(segdl.AuthError) as info:
        await segdl.download(range_server.url("/m.bin"), source_env, options=FAST)
    assert not isinstance(info.value, segdl.LinkExpired)
    assert "authentication failed" in str(info.value)
