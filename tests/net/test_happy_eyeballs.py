"""A whole download from a host whose first address swallows SYNs (RFC 8305).

``dual.test`` resolves to ``::1`` first (IPv6 is preferred) and then ``127.0.0.1``.  On
``[::1]:PORT`` a listener with a full accept queue drops every SYN, as a filtered or broken
IPv6 path does; the file is served on ``127.0.0.1:PORT``.  The probe and every data connection
must get through; before happy eyeballs each connection waited out its connect timeout on the
first address.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import segdl
import segdl.io.connect as connect_module
from segdl.core.proxyrules import ProxySettings
from segdl.core.useragent import USER_AGENT
from segdl.testing.rangeserver import RangeServer, Resource

MIB = 1024 * 1024
BODY = bytes(range(256)) * (4 * MIB // 256)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def swallowing_syns(family: int, host: str, port: int) -> Iterator[None]:
    """A listener at host:port whose accept queue is full: further SYNs are dropped."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    fillers = []
    try:
        listener.bind((host, port))
        listener.listen(0)
        for _ in range(3):
            filler = socket.socket(family, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect((host, port))
        time.sleep(0.1)
        yield
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.fixture
def dual_stack_name(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RangeServer, str]]:
    """A name whose IPv6 address (first) is a black hole and whose IPv4 address serves."""
    first: tuple[int, str] = (
        (socket.AF_INET6, "::1") if ipv6_loopback() else (socket.AF_INET, "127.0.0.2")
    )
    with RangeServer() as server:
        server.add("/model.bin", Resource(BODY))

        def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
            if host != "dual.test":
                return socket.getaddrinfo(host, port, *args, **kwargs)
            v6: tuple[Any, ...] = (
                (first[1], port, 0, 0)
                if first[0] == socket.AF_INET6
                else (
                    first[1],
                    port,
                )
            )
            return [
                (first[0], socket.SOCK_STREAM, 6, "", v6),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            ]

        monkeypatch.setattr(connect_module, "getaddrinfo", getaddrinfo)
        with swallowing_syns(first[0], first[1], server.port):
            yield server, f"http://dual.test:{server.port}/model.bin"
    assert not server.errors


async def test_a_broken_first_address_does_not_hang_the_download(
    dual_stack_name: tuple[RangeServer, str], tmp_path: Path
) -> None:
    server, url = dual_stack_name
    options = segdl.Options(
        connections=8,
        split=8,
        connect_timeout=60,
        progress_interval=0.05,
        proxies=ProxySettings(),
    )
    # Not a speed target: without the race, each of the ~9 connections would wait 60 s.
    with trio.fail_after(45):
        result = await segdl.download(url, tmp_path, options=options)
    assert Path(result.path).read_bytes() == BODY
    assert len({r.connection_id for r in server.requests}) >= 3
    # Every request, the probe's too, names segdl and its version.
    assert {r.headers.get("user-agent") for r in server.requests} == {USER_AGENT}
