"""Data connections to one host share a TLS session: a connection opened after the first one
resumes it (no certificate chain to verify again; with TLS 1.2, one round trip fewer)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from segdl.core.urls import HttpURL
from segdl.io.dataplane import Connection, Endpoint, TLSSessions
from segdl.io.tls import client_context
from segdl.testing.rangeserver import RangeServer, Resource
from segdl.testing.tls import CertPair, server_context

BODY = os.urandom(200_000)


@pytest.fixture
def tls_server(tls_pair: CertPair) -> Iterator[RangeServer]:
    with RangeServer(tls=server_context(tls_pair)) as server:
        server.add("/f.bin", Resource(body=BODY))
        yield server


def fetch_head(conn: Connection) -> None:
    head = conn.request(headers={}, first=0, last=99)
    assert head.status == 206
    conn.close()


def connection(server: RangeServer, pair: CertPair, sessions: TLSSessions | None) -> Connection:
    return Connection(
        Endpoint.from_url(HttpURL.parse(server.url("/f.bin"))),
        ssl_context=client_context(str(pair.certfile)),
        connect_timeout=5.0,
        read_timeout=5.0,
        tls_sessions=sessions,
    )


def test_a_later_connection_resumes_the_session(
    tls_server: RangeServer, tls_pair: CertPair
) -> None:
    sessions = TLSSessions()
    first = connection(tls_server, tls_pair, sessions)
    fetch_head(first)
    assert sessions.get() is not None  # kept once its first response was read
    later = connection(tls_server, tls_pair, sessions)
    later.connect()
    assert later.session_reused
    later.close()


def test_without_a_shared_cache_every_handshake_is_full(
    tls_server: RangeServer, tls_pair: CertPair
) -> None:
    fetch_head(connection(tls_server, tls_pair, None))
    alone = connection(tls_server, tls_pair, None)
    alone.connect()
    assert not alone.session_reused
    alone.close()
