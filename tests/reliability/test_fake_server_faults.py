"""The fake server's faults the reliability suite added, observed with http.client only (the
reference must not be checked with the client it tests)."""

from __future__ import annotations

import http.client
import socket
import struct
import time

from segdl.testing.rangeserver import Fault, FaultSchedule, RangeServer, RequestInfo, Resource


def get(server: RangeServer, path: str, rng: str | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", path, headers={"Range": rng} if rng else {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_replace_serves_the_new_version_from_that_request_on(range_server: RangeServer) -> None:
    range_server.add("/f", Resource(body=b"old body", etag='"1"'))
    range_server.inject(Fault.replace(Resource(body=b"NEW BODY!", etag='"2"'), ranged_only=True))
    first = get(range_server, "/f")
    assert first.getheader("ETag") == '"1"'
    changed = get(range_server, "/f", "bytes=0-2")
    assert changed.status == 206
    assert changed.getheader("ETag") == '"2"'
    assert changed.getheader("Content-Range") == "bytes 0-2/9"
    assert get(range_server, "/f").getheader("Content-Length") == "9"


def test_redirect_fault_points_where_it_is_told(range_server: RangeServer) -> None:
    range_server.add("/f", Resource(body=b"x"))
    range_server.inject(Fault.redirect(range_server.url("/f"), status=307))
    looped = get(range_server, "/f")
    assert looped.status == 307
    assert looped.getheader("Location") == range_server.url("/f")
    assert get(range_server, "/f").status == 200


def test_schedule_hands_faults_out_in_order_to_chosen_requests(range_server: RangeServer) -> None:
    range_server.add("/f", Resource(body=b"0123456789"))

    def ranged(info: RequestInfo) -> bool:
        return info.range is not None

    schedule = FaultSchedule([Fault.status(503), Fault.status(429)], applies_to=ranged)
    range_server.on_request(schedule)
    assert get(range_server, "/f").status == 200
    assert get(range_server, "/f", "bytes=1-2").status == 503
    assert get(range_server, "/f").status == 200
    assert get(range_server, "/f", "bytes=1-2").status == 429
    assert get(range_server, "/f", "bytes=1-2").status == 206
    assert [index for index, _ in schedule.applied] == [1, 3]
    assert schedule.remaining == ()
    stats = range_server.statistics()
    assert stats.requests == 5
    assert stats.faults == 2
    assert stats.body_bytes == 10 + 10 + 2


def test_a_client_that_leaves_mid_response_is_counted_what_was_sent() -> None:
    """Bytes sent to a client killed mid-piece count (the kill tests bound re-downloads)."""
    with RangeServer(rate_limit=512 * 1024) as server:
        server.add("/f", Resource(body=bytes(4 * 1024 * 1024)))
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
            received = 0
            while received < 200_000:
                received += len(sock.recv(65536))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        deadline = time.monotonic() + 5
        while server.requests[0].body_bytes < received - 1024 and time.monotonic() < deadline:
            time.sleep(0.02)
        counted = server.requests[0].body_bytes
    # Head bytes aside, the count covers what the client read, and not the whole body.
    assert received - 1024 <= counted < 4 * 1024 * 1024
