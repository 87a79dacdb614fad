"""What ``segdl serve`` refuses to fetch (issue 14, item 4), seen by a protocol client.

Link-local and cloud metadata destinations are refused always; private and loopback ones when
the server listens beyond loopback, unless ``--allow-private-urls``.  Checked after DNS
resolution (names resolve where a test wants through ``segdl.io.connect.getaddrinfo``) and
on every redirect hop.  The refusal is the ``error`` reply's one-line message.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from wsclient import PASSWORD, open_client

import segdl.io.connect as connect_module
from segdl.core.destinations import AddressClass, DestinationPolicy
from segdl.engine.options import Options
from segdl.server import Scheme, ServerInfo, ServeSettings, serve_segdl
from segdl.server.cli import add_serve_arguments
from segdl.testing.rangeserver import RangeServer, Resource

BODY = b"model bytes " * 10_000
BEYOND = "refused to download from {where}: a {kind} address, and this server listens beyond "
BEYOND += "loopback (start it with --allow-private-urls to allow)"


@asynccontextmanager
async def serve(
    models: Path, *, host: str, settings: ServeSettings | None = None
) -> AsyncIterator[ServerInfo]:
    """The server bound to *host* (0.0.0.0: beyond loopback), on a free port."""
    base = settings or ServeSettings()
    settings = replace(base, host=host, port=0, models_dir=models, persist_queue=False)
    async with trio.open_nursery() as nursery:
        info: ServerInfo = await nursery.start(
            serve_segdl, settings, Scheme.from_password(PASSWORD)
        )
        yield info
        nursery.cancel_scope.cancel()


async def fetch(info: ServerInfo, url: str) -> dict[str, Any]:
    """Ask the server to download *url*; its final reply."""
    async with open_client(info.port) as client:
        id = await client.send("download", {"type": "SD", "url": url})
        replies = await client.download_replies(id)
    return replies[-1]


def resolve_as(monkeypatch: pytest.MonkeyPatch, names: dict[str, str]) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(connect_module, "getaddrinfo", getaddrinfo)


@pytest.fixture
def origin() -> Any:
    with RangeServer() as server:
        server.add("/model.safetensors", Resource(BODY))
        yield server
    assert not server.errors


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
async def test_metadata_is_refused_wherever_the_server_listens(tmp_path: Path, host: str) -> None:
    with trio.fail_after(30):
        async with serve(tmp_path, host=host) as info:
            reply = await fetch(info, "http://169.254.169.254/latest/meta-data/iam/")
    assert reply["status"] == "error"
    assert reply["message"] == (
        "refused to download from 169.254.169.254: a cloud metadata address is never fetched"
    )
    assert reply["code"] == 1
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


async def test_a_name_that_resolves_to_metadata_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve_as(monkeypatch, {"totally-public.example": "169.254.169.254"})
    with trio.fail_after(30):
        async with serve(tmp_path, host="127.0.0.1") as info:
            reply = await fetch(info, "http://totally-public.example/model.safetensors")
    assert reply["message"] == (
        "refused to download from totally-public.example (169.254.169.254): a cloud metadata "
        "address is never fetched"
    )


async def test_link_local_and_metadata_names(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve(tmp_path, host="127.0.0.1") as info:
            reply = await fetch(info, "http://[fe80::1]:8080/x")
            named = await fetch(info, "http://metadata.google.internal/computeMetadata/v1/")
    assert reply["message"] == (
        "refused to download from fe80::1: a link-local address is never fetched"
    )
    assert named["message"] == (
        "refused to download from metadata.google.internal: a cloud metadata address is never "
        "fetched"
    )


async def test_loopback_is_refused_beyond_loopback_and_allowed_when_asked(
    tmp_path: Path, origin: RangeServer
) -> None:
    url = origin.url("/model.safetensors")
    with trio.fail_after(60):
        async with serve(tmp_path / "strict", host="0.0.0.0") as info:
            refused = await fetch(info, url)
        allowing = ServeSettings(allow_private_urls=True)
        async with serve(tmp_path / "allowing", host="0.0.0.0", settings=allowing) as info:
            allowed = await fetch(info, url)
        async with serve(tmp_path / "local", host="127.0.0.1") as info:
            local = await fetch(info, url)
    assert refused["message"] == BEYOND.format(where="127.0.0.1", kind="loopback")
    assert allowed["status"] == "success"
    assert local["status"] == "success"
    # The strict server never connected: the origin saw the two allowed downloads only.
    assert len({r.connection_id for r in origin.requests}) >= 2
    assert (tmp_path / "allowing" / "SD" / "model.safetensors").read_bytes() == BODY


class _LabInternet(DestinationPolicy):
    """The server's policy, except that 127.0.0.2 stands for a public site (a test has no
    public address to offer)."""

    def refusal(self, address: Any) -> AddressClass | None:
        if str(address) == "127.0.0.2":
            return None
        return super().refusal(address)


@pytest.mark.parametrize("allow", [False, True])
async def test_every_redirect_hop_is_checked(
    tmp_path: Path, origin: RangeServer, allow: bool
) -> None:
    with RangeServer(host="127.0.0.2") as public:
        # A "public" link that redirects into the server's own network.
        public.add_redirect("/download", origin.url("/model.safetensors"))
        policy = _LabInternet(allow_internal=allow)
        settings = ServeSettings(options=Options(destinations=policy))
        with trio.fail_after(60):
            async with serve(tmp_path, host="0.0.0.0", settings=settings) as info:
                reply = await fetch(info, public.url("/download"))
        assert public.requests, "the first hop was not allowed"
    if allow:
        assert reply["status"] == "success"
    else:
        assert reply["message"] == BEYOND.format(where="127.0.0.1", kind="loopback")
        assert origin.requests == []


def test_serve_has_the_flags() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--allow-private-urls", "--all-proxy", "socks5h://127.0.0.1:1080"])
    assert args.allow_private_urls is True
    assert args.all_proxy == "socks5h://127.0.0.1:1080"
    assert parser.parse_args([]).allow_private_urls is False


def test_the_server_policy_follows_its_address() -> None:
    strict = ServeSettings(host="0.0.0.0").download_options().destinations
    assert strict == DestinationPolicy(allow_internal=False)
    assert ServeSettings(host="::1").download_options().destinations == DestinationPolicy(
        allow_internal=True
    )
    allowing = ServeSettings(host="192.168.1.5", allow_private_urls=True)
    assert allowing.download_options().destinations == DestinationPolicy(allow_internal=True)
