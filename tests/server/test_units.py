"""The server's small parts: the folder allow-list, the wire format, the outbox, the CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import bson
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from wsclient import client_key

from segdl.core.folders import FOLDERS, model_folder
from segdl.server.cli import add_serve_arguments, run_serve, startup_warning
from segdl.server.library import list_models
from segdl.server.outbox import Outbox
from segdl.server.wire import (
    Codec,
    DecryptError,
    MalformedMessage,
    Scheme,
    decode,
    derive_key,
    encode,
)

# ---- folders


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("SD", "SD"),
        ("Checkpoint", "SD"),
        ("checkpoint", "SD"),
        ("LoRA", "LoRA"),
        ("lora", "LoRA"),
        ("LyCORIS", "LoRA"),
        ("TI", "TI"),
        ("Embedding", "TI"),
        ("textual_inversion", "TI"),
        ("Upscaler", "SR"),
        ("ESRGAN", "SR"),
        ("controlnet", "CN"),
        ("ControlNet", "CN"),
        ("hypernetwork", "HN"),
        ("vae", "VAE"),
        ("Detailer", "Detailer"),
        (" lora ", "LoRA"),
    ],
)
def test_model_folder_accepts_the_allow_list(name: str, folder: str) -> None:
    assert model_folder(name) == folder


@pytest.mark.parametrize(
    "name", ["", "..", "../SD", "SD/../..", "/etc", "C:\\x", "sd\x00", "UNKNOWN"]
)
def test_model_folder_refuses_anything_else(name: str) -> None:
    with pytest.raises(ValueError, match="unknown model type") as refused:
        model_folder(name)
    assert "SD, LoRA, TI" in str(refused.value)


@given(st.text(max_size=30))
def test_model_folder_only_ever_returns_a_plain_known_folder(name: str) -> None:
    try:
        folder = model_folder(name)
    except ValueError:
        return
    assert folder in FOLDERS


# ---- wire


def test_key_matches_an_independent_derivation() -> None:
    assert derive_key("qDiffusion") == client_key("qDiffusion")
    salt = hashlib.sha256(b"qDiffusion").digest()[:16]
    assert derive_key("qDiffusion") == hashlib.pbkdf2_hmac(
        "sha256", b"qDiffusion", salt, 480_000, 32
    )


def test_seal_layout_and_wrong_keys() -> None:
    scheme = Scheme.from_password("qDiffusion")
    sealed = scheme.seal(b"hello")
    assert len(sealed) == 16 + 5 + 16  # nonce, ciphertext, tag
    assert scheme.open(sealed) == b"hello"
    with pytest.raises(DecryptError):
        Scheme(client_key("other")).open(sealed)
    with pytest.raises(DecryptError):
        scheme.open(sealed[:20])
    with pytest.raises(DecryptError):
        scheme.open(sealed[:-1] + bytes([sealed[-1] ^ 1]))


documents = st.dictionaries(
    st.text(min_size=1, max_size=10).filter(lambda k: "\x00" not in k and not k.startswith("$")),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.lists(st.integers(0, 10), max_size=3),
    ),
    max_size=6,
)


@given(documents, st.sampled_from(list(Codec)))
def test_codecs_round_trip_and_are_told_apart(document: dict[str, Any], codec: Codec) -> None:
    decoded, detected = decode(encode(document, codec))
    assert detected is codec
    assert decoded == document


def test_decode_reads_what_the_other_side_writes() -> None:
    assert decode(bson.encode({"type": "ping", "id": 7})) == ({"type": "ping", "id": 7}, Codec.BSON)
    assert decode(json.dumps({"type": "ping"}).encode()) == ({"type": "ping"}, Codec.JSON)
    for bad in (b"", b"[]", b"NaN", b"\x05\x00\x00\x00\x01", b"\xff", b'{"a": NaN}'):
        with pytest.raises(MalformedMessage):
            decode(bad)


def test_json_has_no_nan() -> None:
    assert json.loads(encode({"eta": float("inf"), "b": b"x"}, Codec.JSON)) == {
        "eta": None,
        "b": None,
    }


# ---- outbox


async def test_outbox_coalesces_progress_in_place() -> None:
    outbox = Outbox(limit=3)
    outbox.put({"n": "started"})
    for i in range(1000):
        outbox.put({"n": i}, coalesce="progress")
    outbox.put({"n": "success"})
    assert len(outbox) == 3
    assert [await outbox.get() for _ in range(3)] == [
        {"n": "started"},
        {"n": 999},
        {"n": "success"},
    ]
    outbox.close()
    assert await outbox.get() is None


async def test_outbox_overflow_closes_it_without_blocking() -> None:
    outbox = Outbox(limit=2)
    outbox.put({"n": 1})
    outbox.put({"n": 2})
    assert not outbox.overflowed
    outbox.put({"n": 3})
    assert outbox.overflowed
    assert outbox.closed
    with trio.fail_after(1):
        await outbox.wait_overflow()
        assert await outbox.get() is None
    outbox.put({"n": 4})  # dropped, never raises
    assert len(outbox) == 0


async def test_outbox_get_waits_for_a_message() -> None:
    outbox = Outbox()
    got: list[Any] = []

    async def consume() -> None:
        got.append(await outbox.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        outbox.put({"n": 1})
    assert got == [{"n": 1}]


# ---- library


def test_options_lists_finished_model_files(tmp_path: Path) -> None:
    for name in (
        "SD/a.safetensors",
        "SD/b.vae.pt",
        "SD/partial.safetensors",
        "SD/partial.safetensors.aria2",
        "SD/readme.txt",
        "LoRA/sub/c.safetensors",
        "VAE/d.pt",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    options = list_models(tmp_path)
    assert options["UNET"] == options["CLIP"] == ["SD/a.safetensors"]
    assert options["VAE"] == ["SD/a.safetensors", "SD/b.vae.pt", "VAE/d.pt"]
    assert options["LoRA"] == ["LoRA/sub/c.safetensors"]
    assert options["model_types"] == {"LoRA/sub/c.safetensors": "LoRA"}
    assert options["TI"] == options["Detailer"] == []


# ---- command line


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def test_serve_defaults() -> None:
    args = _args()
    assert (args.host, args.port, args.models_dir) == ("127.0.0.1", 28888, Path("models"))
    assert args.password == "qDiffusion"
    assert args.certfile is None
    assert args.keyfile is None
    assert args.max_concurrent_downloads == 3


def test_serve_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_serve(_args("--keyfile", "k.pem")) == 28
    assert run_serve(_args("-j", "0")) == 28
    assert "error" in capsys.readouterr().err
    assert run_serve(_args("--max-message-size", "lots")) == 28
    assert "--max-message-size" in capsys.readouterr().err
    assert run_serve(_args("--max-message-size", "100")) == 28
    assert run_serve(_args("--max-upload-size", "-1")) == 28
    assert "--max-upload-size" in capsys.readouterr().err
    assert run_serve(_args("--reconnect-grace", "-5")) == 28
    assert "--reconnect-grace" in capsys.readouterr().err


def test_serve_message_upload_and_reconnect_options_reach_the_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[Any] = []

    async def fake_main(settings: Any, scheme: Any) -> None:
        seen.append(settings)

    monkeypatch.setattr("segdl.server.cli._main", fake_main)
    monkeypatch.setattr("segdl.server.wire.derive_key", lambda password: b"k" * 32)
    models = str(tmp_path)
    assert run_serve(_args("--models-dir", models)) == 0
    assert (
        run_serve(
            _args(
                "--models-dir",
                models,
                "--max-message-size",
                "128M",
                "--max-upload-size",
                "0",
                "--reconnect-grace",
                "5",
            )
        )
        == 0
    )
    default, custom = seen
    assert default.max_message_size == 64 * 1024 * 1024
    assert default.max_upload_size == 64 * 1024**3
    assert default.reconnect_grace == 60.0
    assert custom.max_message_size == 128 * 1024 * 1024
    assert custom.max_upload_size is None
    assert custom.reconnect_grace == 5.0


def test_serve_fails_cleanly_on_a_missing_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args("--certfile", str(tmp_path / "none.pem"), "--models-dir", str(tmp_path / "m"))
    assert run_serve(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("segdl: error:")
    assert "Traceback" not in err


def test_warning_when_exposed_with_the_default_password() -> None:
    assert startup_warning("127.0.0.1", "qDiffusion") is None
    assert startup_warning("::1", "qDiffusion") is None
    assert startup_warning("localhost", "qDiffusion") is None
    assert startup_warning("0.0.0.0", "a-long-secret") is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.lan"):
        warning = startup_warning(host, "qDiffusion")
        assert warning is not None
        assert "default password" in warning
        assert "--password" in warning


def test_serve_reports_a_taken_port_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert run_serve(_args("--port", port, "--models-dir", str(tmp_path))) == 1
    err = capsys.readouterr().err
    assert "segdl: error: [Errno 98] Address already in use" in err
    assert "Traceback" not in err
