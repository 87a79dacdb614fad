"""A client of the sd-inference-server protocol, written from reference/sd-protocol.md alone.

It shares no code with ``segdl.server``: the key is derived with ``cryptography``'s PBKDF2
(the server uses hashlib), frames are built with wsproto directly (so a test can fragment a
message, send a text frame, or stop reading), and BSON/JSON are encoded here.  Plus
:func:`open_server`, which runs ``segdl serve`` in the test's trio run.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import bson
import trio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from segdl.server import Scheme, ServerInfo, ServeSettings, serve_segdl

PASSWORD = "qDiffusion"
MIB = 1024 * 1024

CodecName = Literal["bson", "json"]


@lru_cache(maxsize=4)
def client_key(password: str) -> bytes:
    """sd-protocol.md §1: PBKDF2-HMAC-SHA256, salt = SHA-256(password)[:16], 480 000 rounds."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(password.encode())
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=32, salt=digest.finalize()[:16], iterations=480000
    )
    return kdf.derive(password.encode())


class Closed(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


class ProtocolClient:
    """One connection.  ``send`` seals and sends a request; ``receive`` returns the next
    server message, decoded (in whichever codec the server chose)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        host: str = "127.0.0.1",
        password: str = PASSWORD,
        codec: CodecName = "bson",
    ) -> None:
        self.stream = stream
        self.host = host
        self.aead = AESGCM(client_key(password))
        self.codec: CodecName = codec
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._events: list[Any] = []
        self._parts: list[bytes] = []
        self.closed_code: int | None = None
        self.codecs_seen: set[str] = set()

    # -- the connection

    async def handshake(self, target: str = "/", origin: str | None = None) -> None:
        headers = [(b"Origin", origin.encode())] if origin else []
        await self._send(
            self.ws.send(Request(host=self.host, target=target, extra_headers=headers))
        )
        while True:
            event = await self._next_event()
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                raise Closed(event.status_code)

    async def _send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _next_event(self) -> Any:
        while not self._events:
            data = bytes(await self.stream.receive_some(65536))
            if not data:
                raise Closed(self.closed_code)
            self.ws.receive_data(data)
            self._events.extend(self.ws.events())
        return self._events.pop(0)

    async def aclose(self) -> None:
        """Say goodbye (a closing handshake, RFC 6455 §7), then close the socket."""
        try:
            with trio.move_on_after(2):
                if self.closed_code is None:
                    with contextlib.suppress(Exception):  # already broken: just close
                        await self._send(self.ws.send(CloseConnection(code=1000)))
                        while not isinstance(await self._next_event(), CloseConnection):
                            pass
        finally:
            await self.cut()

    async def cut(self) -> None:
        """Close the socket without a closing handshake: a lost connection, as the server
        sees one when the network goes away."""
        with trio.move_on_after(2):
            await self.stream.aclose()

    # -- messages

    def seal(self, plaintext: bytes, key: bytes | None = None) -> bytes:
        aead = AESGCM(key) if key else self.aead
        nonce = secrets.token_bytes(16)
        return nonce + aead.encrypt(nonce, plaintext, b"")

    def encode(self, document: dict[str, Any]) -> bytes:
        if self.codec == "bson":
            return bson.encode(document)
        return json.dumps(document).encode()

    async def send_bytes(self, data: bytes, *, fragment: int | None = None) -> None:
        """One binary message, in frames of *fragment* bytes ending with an empty final frame,
        as the ``websockets`` library sends a list (sd-protocol.md §1)."""
        if fragment is None:
            await self._send(self.ws.send(BytesMessage(data=data)))
            return
        for start in range(0, len(data), fragment):
            frame = BytesMessage(data=data[start : start + fragment], message_finished=False)
            await self._send(self.ws.send(frame))
        await self._send(self.ws.send(BytesMessage(data=b"", message_finished=True)))

    async def send_text(self, text: str) -> None:
        await self._send(self.ws.send(TextMessage(data=text)))

    async def send(
        self, type: str, data: dict[str, Any] | None = None, id: int | None = None, **kw: Any
    ) -> int:
        request: dict[str, Any] = {"type": type}
        if data is not None:
            request["data"] = data
        if id is None:
            id = secrets.randbelow(2**31 - 2) + 1
        request["id"] = id
        await self.send_bytes(self.seal(self.encode(request)), **kw)
        return id

    async def receive(self) -> dict[str, Any]:
        while True:
            event = await self._next_event()
            if isinstance(event, Ping):
                await self._send(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.closed_code = event.code
                raise Closed(event.code)
            elif isinstance(event, BytesMessage):
                self._parts.append(bytes(event.data))
                if event.message_finished:
                    sealed = b"".join(self._parts)
                    self._parts.clear()
                    plain = self.aead.decrypt(sealed[:16], sealed[16:], b"")
                    # A BSON document starts with its own length (little-endian int32).
                    if len(plain) >= 5 and int.from_bytes(plain[:4], "little") == len(plain):
                        self.codecs_seen.add("bson")
                        return dict(bson.decode(plain))
                    self.codecs_seen.add("json")
                    return dict(json.loads(plain))
            elif isinstance(event, TextMessage):
                raise AssertionError(f"the server sent a text frame: {event.data!r}")

    async def expect(self, type: str, *, id: int | None = None) -> dict[str, Any]:
        """Skip ack/progress noise until a message of *type* (and *id*) arrives."""
        while True:
            message = await self.receive()
            if message["type"] == type and (id is None or message["id"] == id):
                return message

    async def download_replies(self, id: int) -> list[dict[str, Any]]:
        """The ``download`` replies to request *id*, up to and including the final one."""
        replies = []
        while True:
            message = await self.receive()
            if message["id"] != id:
                continue
            if message["type"] == "aborted":
                replies.append({"status": "aborted"})
                return replies
            assert message["type"] == "download", message
            replies.append(message["data"])
            if message["data"]["status"] in ("success", "error"):
                return replies


@asynccontextmanager
async def open_client(
    port: int,
    *,
    password: str = PASSWORD,
    codec: CodecName = "bson",
    target: str = "/",
    ssl_context: ssl.SSLContext | None = None,
    expect_hello: bool = True,
) -> AsyncIterator[ProtocolClient]:
    stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    if ssl_context is not None:
        stream = trio.SSLStream(stream, ssl_context, server_hostname="127.0.0.1")
    client = ProtocolClient(stream, host=f"127.0.0.1:{port}", password=password, codec=codec)
    try:
        await client.handshake(target)
        if expect_hello:
            hello = await client.receive()
            assert hello["type"] == "hello", hello
            assert hello["id"] == -1, hello
            assert isinstance(hello["data"]["id"], int)
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def open_server(
    models_dir: Path, settings: ServeSettings | None = None, password: str = PASSWORD
) -> AsyncIterator[ServerInfo]:
    """``segdl serve`` on 127.0.0.1, a free port, inside the caller's trio run."""
    base = settings or ServeSettings()
    settings = replace(base, host="127.0.0.1", port=0, models_dir=models_dir)
    async with trio.open_nursery() as nursery:
        info: ServerInfo = await nursery.start(
            serve_segdl, settings, Scheme.from_password(password)
        )
        yield info
        nursery.cancel_scope.cancel()
