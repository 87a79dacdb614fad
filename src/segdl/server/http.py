"""One listener, two protocols: the download page over plain HTTP, the protocol over WebSocket.

The first request head on a connection is read here with h11.  A WebSocket upgrade is handed
to trio-websocket with the bytes already read put back in front of the stream
(:class:`ReplayStream`); any other request is answered here (the page, or an error) and the
connection closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import h11
import trio

__all__ = ["ReplayStream", "RequestHead", "is_websocket_upgrade", "read_request_head", "respond"]

MAX_HEAD = 16 * 1024
RECEIVE_SIZE = 16 * 1024

# The page has no external resource at all; inline script and style only.
PAGE_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self' ws: wss:; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'",
    ),
]


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    raw: bytes  # every byte received so far, to replay to the WebSocket handshake
    # How much of ``raw`` is the head itself: what follows is WebSocket frames, which the
    # message size guard reads (framelimit.py).
    head_size: int = 0

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def query(self, name: str) -> str | None:
        values = parse_qs(urlsplit(self.target).query).get(name)
        return values[0] if values else None


async def read_request_head(stream: trio.abc.ReceiveStream) -> RequestHead | None:
    """The first request's head, or ``None`` if the peer closed or sent garbage."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    received = bytearray()
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError:
            return None
        if event is h11.NEED_DATA:
            data = bytes(await stream.receive_some(RECEIVE_SIZE))
            if not data:
                return None
            received += data
            parser.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            headers: dict[str, str] = {}
            for name, value in event.headers:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            return RequestHead(
                method=event.method.decode("ascii", "replace"),
                target=event.target.decode("ascii", "replace"),
                headers=headers,
                raw=bytes(received),
                head_size=len(received) - len(parser.trailing_data[0]),
            )
        return None


def is_websocket_upgrade(head: RequestHead) -> bool:
    upgrade = head.headers.get("upgrade", "").lower()
    return head.method == "GET" and "websocket" in upgrade


def page() -> bytes:
    return resources.files(__package__).joinpath("static/index.html").read_bytes()


async def respond(stream: trio.abc.SendStream, head: RequestHead, status: int = 0) -> None:
    """Answer a plain HTTP request: ``GET /`` is the page; the connection then closes.
    A *status* forces that error answer."""
    if status:
        headers, body = [("Content-Type", "text/plain")], f"{_REASONS[status]}\n".encode()
    elif head.method not in ("GET", "HEAD"):
        status, headers, body = 405, [("Allow", "GET, HEAD")], b"method not allowed\n"
    elif head.path in ("/", "/index.html"):
        status, headers, body = 200, list(PAGE_HEADERS), page()
    elif head.path == "/favicon.ico":
        status, headers, body = 204, [], b""
    else:
        status, headers, body = 404, [("Content-Type", "text/plain")], b"not found\n"
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    data = "\r\n".join(lines).encode("latin-1")
    await stream.send_all(data if head.method == "HEAD" else data + body)


_REASONS = {
    200: "OK",
    204: "No Content",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
}


class ReplayStream(trio.abc.Stream):
    """*stream*, with *prefix* received again first."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()
