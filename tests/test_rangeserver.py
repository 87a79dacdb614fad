"""The fake server checked with the standard library only, so that it can be trusted as the
reference segdl's client is tested against: ranges are asserted against plain slicing of the
body, and every fault is observed from the outside (http.client or a raw socket).
"""

from __future__ import annotations

import http.client
import random
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segdl.testing.nginx import NginxFactory
from segdl.testing.rangeserver import Fault, RangeServer, RequestInfo, Resource
from segdl.testing.tls import CertPair, client_context, server_context

BODY = random.Random(9110).randbytes(10_000)
N = len(BODY)


def fetch(
    server: RangeServer,
    path: str = "/f",
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on a fresh connection; the response and its whole body."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def raw(server: RangeServer, request: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes; everything received until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        return drain(sock)


def drain(sock: socket.socket) -> bytes:
    received = bytearray()
    while data := sock.recv(65536):
        received += data
    return bytes(received)


def split_response(message: bytes) -> tuple[str, dict[str, str], bytes]:
    """Status line, header fields (lower-case names) and the bytes after the head."""
    head, _sep, rest = message.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines:
        name, _colon, value = line.partition(":")
        fields[name.lower()] = value.strip()
    return status_line, fields, rest


def get_request(path: str = "/f", *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *extra, "", ""]
    return "\r\n".join(lines).encode()


@pytest.fixture
def server(range_server: RangeServer) -> RangeServer:
    range_server.add("/f", Resource(BODY))
    return range_server


# ---- RFC 9110 ranges


@pytest.mark.parametrize(
    ("first", "last"),
    [(0, 0), (0, 99), (10, 20), (N - 1, N - 1), (N - 10, N - 1), (N - 10, N + 500), (0, N - 1)],
)
def test_int_range_is_inclusive(server: RangeServer, first: int, last: int) -> None:
    response, body = fetch(server, headers={"Range": f"bytes={first}-{last}"})
    end = min(last, N - 1)
    assert response.status == 206
    assert body == BODY[first : last + 1]
    assert len(body) == end - first + 1
    assert response.getheader("Content-Range") == f"bytes {first}-{end}/{N}"
    assert response.getheader("Content-Length") == str(end - first + 1)
    assert response.getheader("Accept-Ranges") == "bytes"
    assert response.getheader("ETag") == '"v1"'


@pytest.mark.parametrize("first", [0, 1, 5000, N - 1])
def test_open_ended_range(server: RangeServer, first: int) -> None:
    response, body = fetch(server, headers={"Range": f"bytes={first}-"})
    assert response.status == 206
    assert body == BODY[first:]
    assert response.getheader("Content-Range") == f"bytes {first}-{N - 1}/{N}"


@pytest.mark.parametrize("suffix", [1, 500, N - 1, N, N + 1000])
def test_suffix_range(server: RangeServer, suffix: int) -> None:
    response, body = fetch(server, headers={"Range": f"bytes=-{suffix}"})
    start = max(0, N - suffix)
    assert response.status == 206
    assert body == BODY[-suffix:]
    assert response.getheader("Content-Range") == f"bytes {start}-{N - 1}/{N}"


@pytest.mark.parametrize(
    "value", [f"bytes={N}-", f"bytes={N}-{N + 5}", "bytes=99999999-", "bytes=-0"]
)
def test_unsatisfiable_range_is_416(server: RangeServer, value: str) -> None:
    response, body = fetch(server, headers={"Range": value})
    assert response.status == 416
    assert response.getheader("Content-Range") == f"bytes */{N}"
    assert body == b""


@pytest.mark.parametrize(
    "value",
    [
        "bytes=5-3",  # last < first: invalid, ignored
        "bytes=abc",
        "bytes=",
        "bytes=1-2-3",
        "bytes=--5",
        "items=0-5",  # unknown unit
        "bytes 0-5",
        "bytes=0-4,10-14",  # several ranges: answered with everything
        "bytes=-5,0-1",
        "bytes=+1-5",
    ],
)
def test_range_that_is_ignored_gives_200(server: RangeServer, value: str) -> None:
    response, body = fetch(server, headers={"Range": value})
    assert response.status == 200
    assert body == BODY
    assert response.getheader("Content-Range") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("BYTES=0-4", (0, 4)),
        ("bytes=0-4,", (0, 4)),
        ("bytes= 3-7 ", (3, 7)),
        ("bytes=, -3", (N - 3, N - 1)),
    ],
)
def test_range_syntax_leniency(server: RangeServer, value: str, expected: tuple[int, int]) -> None:
    response, body = fetch(server, headers={"Range": value})
    first, last = expected
    assert response.status == 206
    assert body == BODY[first : last + 1]


def test_empty_file(range_server: RangeServer) -> None:
    range_server.add("/empty", Resource(b""))
    response, body = fetch(range_server, "/empty", {"Range": "bytes=0-"})
    assert (response.status, response.getheader("Content-Range")) == (416, "bytes */0")
    response, body = fetch(range_server, "/empty", {"Range": "bytes=-5"})
    assert (response.status, body) == (200, b"")


def test_any_range_matches_slicing(server: RangeServer) -> None:
    """Every int-range and suffix-range, on one keep-alive connection, against the RFC's rule
    stated as slicing."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)

    @settings(max_examples=300, deadline=None)
    @given(
        first=st.one_of(st.none(), st.integers(0, N + 3)),
        last=st.one_of(st.none(), st.integers(0, N + 3)),
    )
    def check(first: int | None, last: int | None) -> None:
        if first is None and last is None:
            return
        if first is not None and last is not None and last < first:
            return
        spec = f"{'' if first is None else first}-{'' if last is None else last}"
        connection.request("GET", "/f", headers={"Range": f"bytes={spec}"})
        response = connection.getresponse()
        body = response.read()
        if first is None:
            assert last is not None
            start = max(0, N - last)
            expected = BODY[start:] if last > 0 else None
        else:
            expected = BODY[first : None if last is None else last + 1] if first < N else None
            start = first
        if expected is None:
            assert response.status == 416
        else:
            assert response.status == 206
            assert body == expected
            assert response.getheader("Content-Range") == (
                f"bytes {start}-{start + len(expected) - 1}/{N}"
            )

    try:
        check()
    finally:
        connection.close()
    assert len({r.connection_id for r in server.requests}) == 1


# ---- If-Range (RFC 9110 §13.1.5)


@pytest.mark.parametrize(
    ("if_range", "status"),
    [
        ('"v1"', 206),
        ('"v2"', 200),
        ('W/"v1"', 200),  # weak tags never match
        ("Wed, 21 Oct 2026 07:28:00 GMT", 206),
        ("Thu, 22 Oct 2026 07:28:00 GMT", 200),
    ],
)
def test_if_range(server: RangeServer, if_range: str, status: int) -> None:
    response, body = fetch(server, headers={"Range": "bytes=0-9", "If-Range": if_range})
    assert response.status == status
    assert body == (BODY[:10] if status == 206 else BODY)


def test_if_range_after_the_file_changed(server: RangeServer) -> None:
    changed = BODY[::-1]
    server.add("/f", Resource(changed, etag='"v2"'))
    response, body = fetch(server, headers={"Range": "bytes=0-9", "If-Range": '"v1"'})
    assert (response.status, body, response.getheader("ETag")) == (200, changed, '"v2"')
    response, body = fetch(server, headers={"Range": "bytes=0-9", "If-Range": '"v2"'})
    assert (response.status, body) == (206, changed[:10])


# ---- methods, paths, headers


def test_head(server: RangeServer) -> None:
    response, body = fetch(server, method="HEAD")
    assert response.status == 200
    assert body == b""
    assert response.getheader("Content-Length") == str(N)
    assert response.getheader("Accept-Ranges") == "bytes"
    assert response.getheader("Last-Modified") == "Wed, 21 Oct 2026 07:28:00 GMT"
    # RFC 9110 §14.2: range handling is defined for GET only.
    response, body = fetch(server, method="HEAD", headers={"Range": "bytes=0-9"})
    assert (response.status, body) == (200, b"")
    assert server.requests[-1].method == "HEAD"


def test_unknown_path_is_404_and_query_strings_match(server: RangeServer) -> None:
    assert fetch(server, "/nope")[0].status == 404
    assert fetch(server, "/f?token=abc")[1] == BODY
    server.remove("/f")
    assert fetch(server, "/f")[0].status == 404


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect(server: RangeServer, status: int) -> None:
    server.add_redirect("/old", server.url("/f"), status=status)
    response, body = fetch(server, "/old")
    assert response.status == status
    assert response.getheader("Location") == server.url("/f")
    assert body == b""


def test_other_methods_are_405(server: RangeServer) -> None:
    response, _body = fetch(server, method="POST")
    assert (response.status, response.getheader("Allow")) == (405, "GET, HEAD")


def test_resource_options(range_server: RangeServer) -> None:
    range_server.add(
        "/r",
        Resource(
            BODY,
            etag=None,
            last_modified=None,
            content_disposition='attachment; filename="model.safetensors"',
            headers={"X-Extra": "1", "content-type": "text/plain"},
        ),
    )
    response, body = fetch(range_server, "/r", {"Range": "bytes=1-2"})
    assert (response.status, body) == (206, BODY[1:3])
    assert response.getheader("Content-Disposition") == 'attachment; filename="model.safetensors"'
    assert response.getheader("X-Extra") == "1"
    assert response.msg.get_all("Content-Type") == ["text/plain"]
    assert response.getheader("ETag") is None
    assert response.getheader("Last-Modified") is None


def test_server_without_ranges_always_sends_200(range_server: RangeServer) -> None:
    range_server.add("/r", Resource(BODY, accept_ranges=False))
    response, body = fetch(range_server, "/r", {"Range": "bytes=0-9"})
    assert (response.status, body) == (200, BODY)
    assert response.getheader("Accept-Ranges") is None


def test_body_delimited_by_close(range_server: RangeServer) -> None:
    range_server.add("/r", Resource(BODY, send_length=False))
    message = raw(range_server, get_request("/r", "Range: bytes=100-199"))
    status, fields, rest = split_response(message)
    assert status == "HTTP/1.1 206 Partial Content"
    assert "content-length" not in fields
    assert fields["connection"] == "close"
    assert rest == BODY[100:200]


def test_chunked_body(range_server: RangeServer) -> None:
    range_server.add("/r", Resource(BODY, chunked=True))
    response, body = fetch(range_server, "/r", {"Range": "bytes=10-"})
    assert (response.status, body) == (206, BODY[10:])
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Length") is None
    status, _fields, rest = split_response(
        raw(range_server, get_request("/r", "Connection: close"))
    )
    assert status.startswith("HTTP/1.1 200")
    assert rest.startswith(b"%X\r\n" % N)
    assert rest.endswith(b"\r\n0\r\n\r\n")


def test_request_records(server: RangeServer) -> None:
    fetch(server, "/f?x=1", {"Range": "bytes=0-9", "X-Token": "t"})
    fetch(server, "/missing")
    first, second = server.requests
    assert (first.method, first.path, first.range, first.status, first.body_bytes) == (
        "GET",
        "/f?x=1",
        "bytes=0-9",
        206,
        10,
    )
    assert first.headers["x-token"] == "t"
    assert (second.status, second.range) == (404, None)
    assert first.connection_id != second.connection_id


# ---- connections


def test_keep_alive_reuses_one_connection(server: RangeServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for first in (0, 100, 200):
            connection.request("GET", "/f", headers={"Range": f"bytes={first}-{first + 9}"})
            response = connection.getresponse()
            assert response.read() == BODY[first : first + 10]
    finally:
        connection.close()
    fetch(server)
    ids = [r.connection_id for r in server.requests]
    assert ids[0] == ids[1] == ids[2] != ids[3]


def test_pipelined_requests_are_answered_in_order(server: RangeServer) -> None:
    request = get_request("/f", "Range: bytes=0-4") + get_request(
        "/f", "Range: bytes=5-9", "Connection: close"
    )
    message = raw(server, request)
    _status, _fields, rest = split_response(message)
    assert rest[:5] == BODY[:5]
    _status, fields, rest = split_response(rest[5:])
    assert (rest, fields["connection"]) == (BODY[5:10], "close")


def test_connection_close_is_honoured(server: RangeServer) -> None:
    message = raw(server, get_request("/f", "Connection: close"))  # returns only on close
    _status, fields, rest = split_response(message)
    assert (fields["connection"], rest) == ("close", BODY)


def test_http10_closes_after_the_response(server: RangeServer) -> None:
    message = raw(server, b"GET /f HTTP/1.0\r\n\r\n")
    assert message.startswith(b"HTTP/1.1 200 OK\r\n")
    assert split_response(message)[2] == BODY


def test_malformed_request_is_400(server: RangeServer) -> None:
    assert raw(server, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(server, b"GET /f HTTP/1.1\r\nBad Name: x\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_stop_closes_idle_connections_and_joins_threads() -> None:
    server = RangeServer()
    server.start()
    server.add("/f", Resource(BODY))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
        idle.sendall(get_request("/f", "Range: bytes=0-0"))
        server.wait_for_requests(1)
        server.inject(Fault.stall_after(0, 30.0))
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as stalled:
            stalled.sendall(get_request("/f"))
            server.wait_for_requests(2)
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 5
            drain(idle)  # the response, then end of stream
    assert not [t for t in threading.enumerate() if t.name.startswith("segdl-rangeserver")]
    assert server.errors == []
    server.stop()  # idempotent


def test_rate_limit_paces_each_connection() -> None:
    body = bytes(256 * 1024)
    with RangeServer(rate_limit=512 * 1024) as server:
        server.add("/f", Resource(body))
        started = time.monotonic()
        _response, received = fetch(server)
        elapsed = time.monotonic() - started
    assert received == body
    assert 0.4 < elapsed < 1.5  # 0.5 s expected


def test_wait_for_requests_times_out(range_server: RangeServer) -> None:
    with pytest.raises(TimeoutError):
        range_server.wait_for_requests(1, timeout=0.05)


# ---- faults


def test_status_fault_applies_once(server: RangeServer) -> None:
    server.inject(Fault.status(503, headers={"Retry-After": "2"}, body=b"busy"))
    response, body = fetch(server)
    assert (response.status, response.getheader("Retry-After"), body) == (503, "2", b"busy")
    assert server.pending_faults == ()
    assert fetch(server)[0].status == 200
    assert server.requests[0].fault is not None


def test_faults_are_consumed_in_order(server: RangeServer) -> None:
    server.inject(*(Fault.status(code) for code in (429, 500, 401, 403, 404)))
    statuses = [fetch(server)[0].status for _ in range(6)]
    assert statuses == [429, 500, 401, 403, 404, 200]


def test_fault_filters(server: RangeServer) -> None:
    server.add("/g", Resource(BODY))
    server.inject(Fault.status(500, path="/g"), Fault.status(502, ranged_only=True))
    assert fetch(server)[0].status == 200  # neither matches
    assert fetch(server, "/f", {"Range": "bytes=0-0"})[0].status == 502
    assert fetch(server, "/g?q=1")[0].status == 500
    # Body faults leave a HEAD probe alone by default.
    server.inject(Fault.drop_after(5))
    assert fetch(server, method="HEAD")[0].status == 200
    assert len(server.pending_faults) == 1


def test_drop_after(server: RangeServer) -> None:
    server.inject(Fault.drop_after(1234))
    with pytest.raises(http.client.IncompleteRead) as info:
        fetch(server, headers={"Range": "bytes=100-"})
    assert info.value.partial == BODY[100:1334]
    assert server.requests[-1].body_bytes == 1234
    server.inject(Fault.drop_after(10))
    _status, fields, rest = split_response(raw(server, get_request()))
    assert (fields["content-length"], rest) == (str(N), BODY[:10])


def test_drop_after_with_reset(server: RangeServer) -> None:
    server.inject(Fault.drop_after(10, reset=True))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(get_request())
        with pytest.raises(ConnectionResetError):
            drain(sock)


@pytest.mark.parametrize("close", [False, True])
def test_stall_after(server: RangeServer, close: bool) -> None:
    server.inject(Fault.stall_after(1000, 0.5, close=close))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(get_request("/f", "Connection: close"))
        received = bytearray()
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < 1000:
            received += sock.recv(65536)
        started = time.monotonic()
        while data := sock.recv(65536):
            received += data
        elapsed = time.monotonic() - started
    assert elapsed >= 0.45
    assert split_response(bytes(received))[2] == (BODY[:1000] if close else BODY)


def test_ignore_range(server: RangeServer) -> None:
    server.inject(Fault.ignore_range())
    assert fetch(server)[0].status == 200  # no Range: not consumed
    response, body = fetch(server, headers={"Range": "bytes=0-9"})
    assert (response.status, body) == (200, BODY)
    assert fetch(server, headers={"Range": "bytes=0-9"})[0].status == 206


@pytest.mark.parametrize(
    ("asked", "shift", "claimed"),
    [
        ((0, 99), 100, (100, 199)),
        ((500, 599), -7, (493, 592)),
        ((N - 10, N - 1), 5, (N - 5, N - 1)),
    ],
)
def test_wrong_content_range(
    server: RangeServer, asked: tuple[int, int], shift: int, claimed: tuple[int, int]
) -> None:
    server.inject(Fault.wrong_content_range(shift))
    response, body = fetch(server, headers={"Range": f"bytes={asked[0]}-{asked[1]}"})
    first, last = claimed
    assert response.status == 206
    assert response.getheader("Content-Range") == f"bytes {first}-{last}/{N}"
    # The body is what the header claims, not what was asked.
    assert body == BODY[first : last + 1]


def test_short_body(server: RangeServer) -> None:
    server.inject(Fault.short_body(10))
    with pytest.raises(http.client.IncompleteRead) as info:
        fetch(server)
    assert info.value.partial == BODY[:-10]
    assert info.value.expected == 10


def test_long_body(server: RangeServer) -> None:
    server.inject(Fault.long_body(7))
    _status, fields, rest = split_response(raw(server, get_request("/f", "Range: bytes=0-99")))
    assert fields["content-length"] == "100"
    assert rest[:100] == BODY[:100]
    assert len(rest) == 107
    assert rest[100:] != BODY[100:107]


def test_delay(server: RangeServer) -> None:
    server.inject(Fault.delay(0.3))
    started = time.monotonic()
    assert fetch(server)[1] == BODY
    assert time.monotonic() - started >= 0.28


def test_close_connection(server: RangeServer) -> None:
    server.inject(Fault.close_connection())
    _status, fields, rest = split_response(raw(server, get_request()))  # ends on close
    assert "connection" not in fields
    assert rest == BODY


def test_on_request_hook(server: RangeServer) -> None:
    seen: list[RequestInfo] = []

    def hook(info: RequestInfo) -> Fault | None:
        seen.append(info)
        return Fault.status(429) if info.range == "bytes=0-0" else None

    server.on_request(hook)
    assert fetch(server, headers={"Range": "bytes=0-0"})[0].status == 429
    assert fetch(server, headers={"Range": "bytes=1-1"})[0].status == 206
    assert [(i.index, i.range, i.headers["range"]) for i in seen] == [
        (0, "bytes=0-0", "bytes=0-0"),
        (1, "bytes=1-1", "bytes=1-1"),
    ]
    server.inject(Fault.status(418))
    assert fetch(server, headers={"Range": "bytes=0-0"})[0].status == 418  # queue first
    server.on_request(None)
    assert fetch(server, headers={"Range": "bytes=0-0"})[0].status == 206


def test_hook_errors_are_collected(server: RangeServer) -> None:
    def hook(info: RequestInfo) -> Fault | None:
        raise LookupError("bug in a test hook")

    server.on_request(hook)
    assert fetch(server)[0].status == 500
    assert [type(e) for e in server.errors] == [LookupError]
    server.errors.clear()


# ---- TLS


def test_https(tls_pair: CertPair) -> None:
    with RangeServer(tls=server_context(tls_pair)) as server:
        server.add("/f", Resource(BODY))
        server.add("/close", Resource(BODY, send_length=False))
        assert server.url("/f").startswith("https://127.0.0.1:")
        connection = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=client_context(tls_pair), timeout=10
        )
        try:
            for first, last in ((0, 9), (N - 5, N - 1)):
                connection.request("GET", "/f", headers={"Range": f"bytes={first}-{last}"})
                response = connection.getresponse()
                assert (response.status, response.read()) == (206, BODY[first : last + 1])
            connection.request("GET", "/close")
            assert connection.getresponse().read() == BODY
        finally:
            connection.close()
        untrusted = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=ssl.create_default_context(), timeout=10
        )
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusted.request("GET", "/f")
        untrusted.close()
    assert server.errors == []


@pytest.mark.integration
def test_nginx_serves_ranges_over_https(
    nginx_server: NginxFactory, tls_pair: CertPair, tmp_path: Path
) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "model.bin").write_bytes(BODY)
    nginx = nginx_server(root, certfile=tls_pair.certfile, keyfile=tls_pair.keyfile)
    assert nginx.https_url("model.bin") == f"https://127.0.0.1:{nginx.https_port}/model.bin"
    # Both SANs: the IP address and the DNS name.
    for host in ("127.0.0.1", "localhost"):
        connection = http.client.HTTPSConnection(
            host, nginx.https_port, context=client_context(tls_pair), timeout=10
        )
        try:
            connection.request("GET", "/model.bin", headers={"Range": "bytes=100-199"})
            response = connection.getresponse()
            assert (response.status, response.read()) == (206, BODY[100:200])
            assert response.getheader("Content-Range") == f"bytes 100-199/{N}"
            connection.request("GET", "/model.bin", headers={"Range": "bytes=-10"})
            response = connection.getresponse()
            assert (response.status, response.read()) == (206, BODY[-10:])
            connection.request("GET", "/model.bin", headers={"Range": f"bytes={N}-"})
            response = connection.getresponse()
            response.read()
            assert response.status == 416
        finally:
            connection.close()
    plain = http.client.HTTPConnection("127.0.0.1", nginx.http_port, timeout=10)
    try:
        plain.request("GET", "/model.bin")
        assert plain.getresponse().read() == BODY
    finally:
        plain.close()
