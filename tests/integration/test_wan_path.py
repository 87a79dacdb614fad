"""The pieces of the WAN-like benchmark against real nginx: TLS passes through the relay, and
nginx's access log counts what it served in the format the benchmark reads."""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from pathlib import Path

import httpx
import pytest
import trio

from segdl.testing.nginx import NginxFactory
from segdl.testing.tls import CertPair
from segdl.testing.wanrelay import RelayConfig, RelayStats, serve_wan_relay

pytestmark = pytest.mark.integration


def test_access_log_uses_the_given_format(
    nginx_server: NginxFactory, tmp_path: Path, tls_pair: CertPair
) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "f.bin").write_bytes(os.urandom(1000))
    nginx = nginx_server(
        root,
        certfile=tls_pair.certfile,
        keyfile=tls_pair.keyfile,
        log_format='$status $body_bytes_sent "$http_range"',
    )
    with httpx.Client(verify=ssl.create_default_context(cafile=tls_pair.certfile)) as client:
        answer = client.get(nginx.https_url("f.bin"), headers={"Range": "bytes=10-19"})
    assert answer.status_code == 206
    # nginx writes the line when the request ends, which may be just after the answer.
    deadline = time.monotonic() + 5
    while not nginx.access_log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert nginx.access_log_path.read_text().splitlines() == ['206 10 "bytes=10-19"']


async def test_tls_passes_through_the_relay_to_nginx(
    nginx_server: NginxFactory, tmp_path: Path, tls_pair: CertPair
) -> None:
    root = tmp_path / "www"
    root.mkdir()
    body = os.urandom(3 * 1024 * 1024 + 17)
    (root / "f.bin").write_bytes(body)
    nginx = nginx_server(root, certfile=tls_pair.certfile, keyfile=tls_pair.keyfile)
    stats = RelayStats()
    config = RelayConfig("127.0.0.1", nginx.https_port, rtt=0.01, rate=8 * 1024 * 1024)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port: int = await nursery.start(
                lambda task_status: serve_wan_relay(config, stats=stats, task_status=task_status)
            )
            context = ssl.create_default_context(cafile=tls_pair.certfile)
            async with httpx.AsyncClient(verify=context) as client:
                answer = await client.get(f"https://127.0.0.1:{port}/f.bin")
            nursery.cancel_scope.cancel()
    assert hashlib.sha256(answer.content).digest() == hashlib.sha256(body).digest()
    # Everything nginx sent reached the client through the relay: the body and TLS's framing.
    assert stats.bytes_to_client > len(body)
