"""MEGA through ``segdl.download`` against the fake API and storage (sources.md §4)."""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Iterator

import httpx
import pytest
from fake_mega import FakeMega, MegaFile, ctr_encrypt, mac_chunks, meta_mac
from helpers import Recorder, files_in, interrupted, prepare_source_env

import segdl
from segdl.sources import megacrypto
from segdl.sources.mega import parse_mega_url

MIB = 1024 * 1024


@pytest.fixture
def source_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    return prepare_source_env(monkeypatch, tmp_path)


@pytest.fixture
def mega(monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path) -> Iterator[FakeMega]:
    with FakeMega() as fake:
        monkeypatch.setenv("SEGDL_MEGA_API_URL", fake.api_url)
        yield fake


def test_reference_vectors() -> None:
    """sources.md Appendix A: the self-made vector and the real-world attribute vector."""
    key = megacrypto.MegaKey.from_link_key(
        megacrypto.b64url_decode("ARMhN0FTYX-jA4PGp7tKUAECAwQFBgcIK5opfWtmpK8")
    )
    assert key.aes_key.hex() == "00112233445566778899aabbccddeeff"
    assert key.nonce.hex() == "0102030405060708"
    plain = b"MEGA fake-server test vector\n"
    cipher = bytes.fromhex("ec3ec17c20a06c3f001a8a36444d26a93010c9a3adbd132819d55514bf")
    data = bytearray(cipher)
    view = memoryview(data)
    megacrypto.decrypt_at(key, view[:5], 0)
    megacrypto.decrypt_at(key, view[5:21], 5)
    megacrypto.decrypt_at(key, view[21:], 21)
    assert bytes(data) == plain
    assert megacrypto.condensed_mac(key, io.BytesIO(plain), len(plain)).hex() == (
        "2b9a297d6b66a4af"
    )
    at = megacrypto.b64url_decode("MZk6q-PNNV9toJYD2WjFtIKoqbbrmMFXODhsq3egKHA")
    assert megacrypto.decrypt_attributes(key, at) == {"n": "test.safetensors"}
    real = megacrypto.MegaKey.from_link_key(
        megacrypto.b64url_decode("jFc2HL6rIoDVU9kECBpMEIAbcv2WQcz6le9kS_bb2gc")
    )
    real_at = megacrypto.b64url_decode(
        "TKoehGVWQMtDWZz2bJxYF608OUaRdsuZ_FUtTWIo3Go4aCyL_5BXAvF7Vp4wge8uFCzGzOB18FN1QCVojMBj2w"
    )
    assert megacrypto.decrypt_attributes(real, real_at)["n"] == "10MB.bin"


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 131071, 131072, 131073, 393215, 393216, 393217])
def test_mac_agrees_with_the_fake_on_chunk_boundaries(size: int) -> None:
    plain = os.urandom(size)
    file = MegaFile("x.bin", plain)
    key = megacrypto.MegaKey(aes_key=file.key, nonce=file.nonce, meta_mac=file.mac)
    assert megacrypto.condensed_mac(key, io.BytesIO(plain), size) == meta_mac(
        file.key, file.nonce, plain
    )
    starts = [start for start, _ in megacrypto.chunk_bounds(size)]
    assert starts == [start for start, _ in mac_chunks(size)]


def test_decryption_at_any_offset() -> None:
    file = MegaFile("x.bin", os.urandom(5000))
    key = megacrypto.MegaKey(aes_key=file.key, nonce=file.nonce, meta_mac=file.mac)
    cipher = ctr_encrypt(file.key, file.nonce, file.plain)
    for start, end in [(0, 5000), (1, 17), (15, 16), (16, 4099), (4097, 5000), (333, 334)]:
        piece = bytearray(cipher[start:end])
        megacrypto.decrypt_at(key, memoryview(piece), start)
        assert bytes(piece) == file.plain[start:end]


def test_link_shapes() -> None:
    handle, key = "Ab-d_fG1", "x" * 43
    assert parse_mega_url(f"https://mega.nz/file/{handle}#{key}") is not None
    assert parse_mega_url(f"https://mega.co.nz/#!{handle}!{key}") is not None
    assert parse_mega_url(f"https://mega.nz/file/{handle}") is None
    assert parse_mega_url(f"https://mega.nz/folder/{handle}#{key[:22]}") is None
    assert parse_mega_url(f"https://example.com/file/{handle}#{key}") is None


@pytest.mark.parametrize("size", [131071, 131072, 131073, 393215, 393216, 393217])
async def test_decrypted_file_is_byte_identical_on_chunk_boundaries(
    mega: FakeMega, source_env: pathlib.Path, size: int
) -> None:
    file = mega.add(MegaFile(f"model-{size}.safetensors", os.urandom(size)))
    events = Recorder()
    result = await segdl.download(file.link(), source_env, on_event=events)
    path = source_env / f"model-{size}.safetensors"
    assert result.path == str(path)
    assert path.read_bytes() == file.plain
    meta = events.metadata
    assert meta.name == file.name
    assert meta.extra["size"] == size
    assert meta.extra["handle"] == file.handle
    # The key never leaves this machine: not in any API call nor storage request.
    assert all(file.link_key not in str(call.body) + call.path for call in mega.calls)
    assert all(file.link_key not in r.path for r in mega.storage.requests)


async def test_segmented_download_and_legacy_link(mega: FakeMega, source_env: pathlib.Path) -> None:
    file = mega.add(MegaFile("big.ckpt", os.urandom(3 * MIB + 7)))
    await segdl.download(file.link(legacy=True), source_env, civitai_token="c", hf_token="h")
    assert (source_env / "big.ckpt").read_bytes() == file.plain
    ranged = [r for r in mega.storage.requests if r.status == 206]
    assert len(ranged) > 2
    # The a:g call as MEGA expects it.
    call = mega.calls[0]
    assert call.body == [{"a": "g", "g": 1, "ssl": 2, "p": file.handle}]
    assert call.headers.get("Content-Type") == "application/json"
    for r in mega.storage.requests:
        assert "authorization" not in r.headers


@pytest.mark.parametrize("legacy", [False, True])
async def test_handles_and_keys_with_dashes_and_underscores(
    mega: FakeMega, source_env: pathlib.Path, legacy: bool
) -> None:
    """base64url handles may hold "-" and "_": links must still parse, in both shapes."""
    file = mega.add(MegaFile("dash.bin", os.urandom(200_000), handle="a-b_c-d_"))
    await segdl.download(file.link(legacy=legacy), source_env)
    assert (source_env / "dash.bin").read_bytes() == file.plain


async def test_tampered_byte_is_a_checksum_mismatch(
    mega: FakeMega, source_env: pathlib.Path
) -> None:
    file = mega.add(MegaFile("t.bin", os.urandom(393217), tamper_at=200_000))
    with pytest.raises(segdl.ChecksumMismatch) as info:
        await segdl.download(file.link(), source_env)
    assert info.value.exit_code == 32
    assert "MAC mismatch" in str(info.value)
    # Checked before the file gets its name: the wrong bytes never had it, and are gone.
    assert "deleted" in str(info.value)
    assert files_in(source_env) == []


async def test_wrong_key_is_refused(mega: FakeMega, source_env: pathlib.Path) -> None:
    file = mega.add(MegaFile("t.bin", os.urandom(1000)))
    other = MegaFile("t.bin", b"")
    with pytest.raises(segdl.InvalidURL, match="does not open"):
        await segdl.download(f"https://mega.nz/file/{file.handle}#{other.link_key}", source_env)
    assert files_in(source_env) == []


@pytest.mark.parametrize(
    ("code", "error"),
    [(-9, segdl.NotFound), (-16, segdl.NotFound), (-11, segdl.AuthError), (-17, segdl.ServerBusy)],
)
async def test_api_errors(
    mega: FakeMega, source_env: pathlib.Path, code: int, error: type[segdl.DownloadError]
) -> None:
    file = mega.add(MegaFile("t.bin", os.urandom(1000)))
    mega.errors[file.handle] = code
    with pytest.raises(error, match="MEGA"):
        await segdl.download(file.link(), source_env)
    assert files_in(source_env) == []


async def test_eagain_is_retried(mega: FakeMega, source_env: pathlib.Path) -> None:
    file = mega.add(MegaFile("t.bin", os.urandom(1000)))
    mega.eagain_first = 2
    await segdl.download(file.link(), source_env)
    assert (source_env / "t.bin").read_bytes() == file.plain
    ids = [call.path for call in mega.calls]
    assert len(ids) == 3
    assert len(set(ids)) == 3  # a new sequence number each time


async def test_bandwidth_limit_names_the_wait(mega: FakeMega, source_env: pathlib.Path) -> None:
    file = mega.add(MegaFile("t.bin", os.urandom(1000)))
    mega.over_quota_seconds = 3725
    with pytest.raises(segdl.ServerBusy, match=r"3725 s \(1 h 02 min\)") as info:
        await segdl.download(file.link(), source_env)
    assert info.value.exit_code == 29
    assert info.value.retry_after == 3725
    assert files_in(source_env) == []


async def test_bandwidth_limit_on_the_data_connections_is_server_busy(
    monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path
) -> None:
    """A 509 from the storage host once resolving has succeeded: exit 29, partial kept."""
    with FakeMega() as fake:
        monkeypatch.setenv("SEGDL_MEGA_API_URL", fake.api_url)
        file = fake.add(MegaFile("m.bin", os.urandom(3 * MIB)))

        def on_event(event: segdl.Event) -> None:
            if isinstance(event, segdl.Started):
                fake.over_quota_seconds = 60

        # Two connections: no piece is asked for ahead of the probe, so the data requests
        # come after Started (and after the quota ran out).
        options = segdl.Options(
            connections=2, split=2, retry=segdl.RetryPolicy(max_tries=2, base_delay=0.01)
        )
        with pytest.raises(segdl.ServerBusy) as info:
            await segdl.download(file.link(), source_env, options=options, on_event=on_event)
    assert info.value.exit_code == 29
    assert "509" in str(info.value)
    assert (source_env / "m.bin.part.aria2").exists()


async def test_storage_path_ranges_of_the_fake() -> None:
    """The fake also honours MEGA's ``{g}/{start}-{end}`` form, as the web client uses it."""
    with FakeMega() as fake:
        file = fake.add(MegaFile("t.bin", os.urandom(1000)))
        status, answer = fake._api(
            "/cs?id=1", {}, b'[{"a":"g","g":1,"p":"%s"}]' % file.handle.encode()
        )
        assert status == 200
        assert isinstance(answer, list)
        g = answer[0]["g"]
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{g}/16-31")
        assert response.content == file.ciphertext()[16:32]


async def test_resume_after_interruption(
    monkeypatch: pytest.MonkeyPatch, source_env: pathlib.Path
) -> None:
    with FakeMega(rate_limit=2 * MIB) as fake:
        monkeypatch.setenv("SEGDL_MEGA_API_URL", fake.api_url)
        file = fake.add(MegaFile("resumed.safetensors", os.urandom(3 * MIB + 12345)))
        await interrupted(file.link(), source_env, after_bytes=MIB)
        assert (source_env / "resumed.safetensors.part.aria2").exists()
        first = len(fake.storage.requests)
        fake.storage.rate_limit = None
        await segdl.download(file.link(), source_env)
        second = fake.storage.requests[first:]
    assert (source_env / "resumed.safetensors").read_bytes() == file.plain
    assert files_in(source_env) == ["resumed.safetensors"]
    assert sum(r.body_bytes for r in second if r.status == 206) < len(file.plain)
