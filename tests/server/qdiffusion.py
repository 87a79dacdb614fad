"""qDiffusion as a client, modelled on its source (read, not run): what it sends, what it reads.

From arenasys/qDiffusion ``source/remote.py`` (``RemoteInference.run``, ``reconnect``,
``RemoteInferenceUpload.run``), ``source/misc.py`` (``DownloadManager.onBackendResponse``),
``source/gui.py`` (``makeRequest``, ``onResponse``) and ``source/parameters.py``
(``VariantMap.set``, ``Parameters.optionsUpdated``):

- every message is sent as a list of 512 KiB pieces (``FRAGMENT_SIZE = 524288``), which the
  ``websockets`` library sends as one fragmented message ending with an empty final frame;
- after connecting it sends ``{"type": "options"}`` without an id;
- it keeps the id of the *first* ``hello``; on any later ``hello`` (after reconnecting, which
  it does only when the connection ended without a closing handshake) it sends
  ``{"type": "reconnect", "data": {"id": FIRST_ID}}`` without an id, and not ``options``;
- an upload is chunks of 512 KiB ``{type, name, chunk, index, total}`` with the upload
  request's id, then ``{type, name}`` without id (or ``{type, name, index: -1}`` when
  stopped); it never waits for replies between chunks;
- download replies are matched by the top-level id; ``started`` needs ``label``, ``progress``
  needs ``progress`` and ``eta``, ``error`` needs ``message`` and ``trace`` (KeyError
  otherwise); ``success`` may carry ``label``, and makes it ask for ``options`` again.

This module shares no code with the server.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from wsclient import PASSWORD, ProtocolClient

FRAGMENT_SIZE = 524288


def get_id() -> int:
    """gui.py ``get_id``: SystemRandom().randint(1, 2**31 - 1)."""
    return secrets.randbelow(2**31 - 1) + 1


@dataclass
class Entry:
    """One entry of qDiffusion's download list (misc.py ``DownloadManager``)."""

    label: str
    progress: float = 0.0
    eta: str = ""
    error: str | None = None
    finished: bool = False


@dataclass
class Client:
    """One qDiffusion backend: its connection (replaced when it reconnects) and its state."""

    port: int
    password: str = PASSWORD
    connection: ProtocolClient | None = None
    first_hello: int | None = None
    hellos: list[int] = field(default_factory=list)
    entries: dict[int, Entry] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] | None = None
    options_requests: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ws(self) -> ProtocolClient:
        assert self.connection is not None
        return self.connection

    async def connect(self) -> None:
        """``connect()`` the first time, ``reconnect()`` after a lost connection; then its
        first loop iteration reads the hello."""
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        connection = ProtocolClient(stream, host=f"127.0.0.1:{self.port}", password=self.password)
        await connection.handshake()
        first = self.first_hello is None
        self.connection = connection
        hello = await connection.receive()
        assert hello["type"] == "hello"
        if first:
            await self.send({"type": "options"})
        for request in self.read(hello):  # after a reconnection: ``reconnect``
            await self.send(request)

    async def send(self, request: dict[str, Any]) -> None:
        """``self.client.send(data)`` with data cut in FRAGMENT_SIZE pieces."""
        sealed = self.ws.seal(self.ws.encode(request))
        await self.ws.send_bytes(sealed, fragment=FRAGMENT_SIZE)

    async def request(self, request: dict[str, Any]) -> int:
        """gui.py ``makeRequest``: a fresh id, then send."""
        id = get_id()
        await self.send({**request, "id": id})
        return id

    async def download(self, type: str, url: str) -> int:
        id = await self.request({"type": "download", "data": {"type": type, "url": url}})
        self.entries[id] = Entry(label=url)
        return id

    async def upload(
        self, type: str, name: str, content: bytes, *, stop_after: int | None = None
    ) -> int:
        """settings.py ``upload`` and ``RemoteInferenceUpload.run``: chunks with the upload's
        id, then the end message; with *stop_after*, stopped after that many chunks."""
        id = get_id()
        self.entries[id] = Entry(label=name)
        for index, chunk in enumerate(chunks(content)):
            if stop_after is not None and index >= stop_after:
                await self.send(
                    {"type": "chunk", "data": {"type": type, "name": name, "index": -1}}
                )
                return id
            total = math.ceil(len(content) / FRAGMENT_SIZE)
            data = {"type": type, "name": name, "chunk": chunk, "index": index, "total": total}
            await self.send({"type": "chunk", "data": data, "id": id})
        await self.send({"type": "chunk", "data": {"type": type, "name": name}})
        return id

    async def cut(self) -> None:
        """The network goes away: the socket closes without a closing handshake."""
        await self.ws.cut()
        self.connection = None

    def read(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """remote.py ``run`` and gui.py ``onResponse`` for one message; returns requests it
        would queue in reply."""
        self.received.append(message)
        type, data, id = message["type"], message.get("data", {}), message.get("id", -1)
        queued: list[dict[str, Any]] = []
        if type == "hello":
            self.hellos.append(data["id"])
            if self.first_hello is None:
                self.first_hello = data["id"]
            else:
                queued.append({"type": "reconnect", "data": {"id": self.first_hello}})
        elif type == "options":
            self.options = data
        elif type == "error":
            assert isinstance(data["message"], str)
            self.errors.append(message)
        elif type == "download" and id in self.entries:
            entry = self.entries[id]
            status = data["status"]
            if status == "started":
                entry.label = data["label"]
            elif status == "success":
                entry.label = data.get("label", entry.label)
                entry.finished = True
                queued.append({"type": "options"})
            elif status == "error":
                entry.error = data["message"]
                assert isinstance(data["trace"], str)
                entry.finished = True
            elif status == "progress":
                entry.progress = data["progress"]
                eta = data["eta"]
                entry.eta = f"{int(eta // 60):02d}:{int(eta) % 60:02d}" if eta else ""
        return queued

    async def pump_until(self, done: Any) -> None:
        """Read (and answer, as qDiffusion queues its requests) until ``done()``."""
        while not done():
            message = await self.ws.receive()
            for request in self.read(message):
                if request["type"] == "options":
                    self.options_requests += 1
                await self.send(request)


def chunks(content: bytes) -> Iterator[bytes]:
    for start in range(0, len(content), FRAGMENT_SIZE):
        yield content[start : start + FRAGMENT_SIZE]


@asynccontextmanager
async def open_qdiffusion(port: int, *, password: str = PASSWORD) -> AsyncIterator[Client]:
    client = Client(port, password)
    await client.connect()
    try:
        yield client
    finally:
        if client.connection is not None:
            await client.connection.aclose()


# -- parameters.py: what qDiffusion makes of an ``options`` reply


def options_as_qdiffusion_reads_them(options: dict[str, Any]) -> dict[str, Any]:
    """The part of ``Parameters.optionsUpdated`` that turns ``options`` into its settings.

    Its settings map is typed (``VariantMap(strict=True)``: a new value is converted with the
    type of the default, so a string set where a list was becomes a list of characters); a key
    ``K`` of ``options`` fills the list ``Ks`` when that list is one of its settings, and ``K``
    is set to the first entry when unset; the models offered are the names in UNET, CLIP
    and VAE all three.  Raises KeyError where qDiffusion would.
    """
    defaults: dict[str, Any] = {
        "sampler": "Euler a", "samplers": [], "hr_upscaler": "Lanczos", "hr_upscalers": [],
        "img2img_upscaler": "Lanczos", "img2img_upscalers": [], "UNET": "", "UNETs": [],
        "CLIP": "", "CLIPs": [], "VAE": "", "VAEs": [], "LoRA": [], "LoRAs": [], "SR": [],
        "SRs": [], "TI": "", "TIs": [], "attention": "", "attentions": [], "device": "",
        "devices": [], "Detailers": [], "Detailer": "", "model_types": {}, "models": [],
        "model": "",
    }  # fmt: skip
    values = dict(defaults)

    def set(key: str, value: Any) -> None:
        if key in values:
            value = type(values[key])(value)
        values[key] = value

    for key, value in options.items():
        plural = key + "s"
        if plural in values:
            set(plural, value)
            if (not values.get(key) or values.get(key) not in value) and value:
                set(key, value[0])
    models = [k for k in options["UNET"] if k in options["CLIP"] and k in options["VAE"]]
    set("models", models)
    set("model_types", options.get("model_types", {}))
    if models and values["model"] not in models:
        set("model", models[0])
    return values
