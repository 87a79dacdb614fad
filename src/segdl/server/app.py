"""``serve_segdl``: the WebSocket server that speaks the sd-inference-server download protocol.

One nursery for the server (listeners, the download queue), one per connection (trio-websocket's
reader, our writer).  A connection reads requests and answers through its :class:`Outbox`; the
writer task drains the outbox, so nothing a client does (or fails to do) ever blocks a
download or another client.  Requests are handled in order; only ``options`` touches the
disk, in a worker thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from ..core.folders import model_folder
from ..engine.options import Options
from ..errors import DownloadError, redact_url
from ..sources.base import SourceConfig
from ..sources.resolve import check_source_url
from . import messages
from .downloads import DownloadFunction, DownloadQueue, Subscriber
from .http import ReplayStream, is_websocket_upgrade, read_request_head, respond
from .library import list_models
from .outbox import Outbox
from .wire import Codec, DecryptError, MalformedMessage, Scheme, decode, encode

__all__ = ["ServeSettings", "ServerInfo", "is_loopback", "serve_segdl"]

log = logging.getLogger("segdl.server")

HEAD_TIMEOUT = 10.0  # seconds for a new connection to send its request head
CLOSE_TIMEOUT = 2.0  # seconds for a closing handshake before the socket is just closed
MAX_URL = 8192


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 28888
    models_dir: Path = Path("models")
    ssl_context: ssl.SSLContext | None = None
    max_concurrent: int = 3
    max_message_size: int = 8 * 1024 * 1024
    outbox_limit: int = 256
    allowed_origins: tuple[str, ...] = ()
    options: Options | None = None
    engine: str = "native"
    download: DownloadFunction | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ServerInfo:
    """What :func:`serve_segdl` reports through ``task_status`` once it listens."""

    host: str
    port: int
    queue: DownloadQueue
    secure: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.secure else 'http'}://{host}:{self.port}/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(eq=False)
class _Client:
    id: int
    ws: WebSocketConnection
    codec: Codec
    outbox: Outbox


async def serve_segdl(
    settings: ServeSettings,
    scheme: Scheme,
    *,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the page and the protocol until cancelled.  *scheme* holds the derived key."""
    async with trio.open_nursery() as nursery:
        queue = DownloadQueue(
            nursery,
            settings.models_dir,
            max_concurrent=settings.max_concurrent,
            options=settings.options,
            engine=settings.engine,
            download=settings.download,
        )
        server = _Server(settings, scheme, queue)
        listeners: list[trio.abc.Listener[Any]] = list(
            await trio.open_tcp_listeners(settings.port, host=settings.host)
        )
        port = listeners[0].socket.getsockname()[1]  # type: ignore[attr-defined]
        if settings.ssl_context is not None:
            listeners = [
                trio.SSLListener(lst, settings.ssl_context, https_compatible=True)
                for lst in listeners
            ]
        await nursery.start(trio.serve_listeners, server.handle_stream, listeners)
        task_status.started(
            ServerInfo(settings.host, port, queue, settings.ssl_context is not None)
        )
        await trio.sleep_forever()
    raise AssertionError("unreachable")


class _Server:
    def __init__(self, settings: ServeSettings, scheme: Scheme, queue: DownloadQueue) -> None:
        self._settings = settings
        self._scheme = scheme
        self._queue = queue
        self._client_ids = itertools.count(1)

    # -- a connection

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        try:
            head = None
            with trio.move_on_after(HEAD_TIMEOUT):
                head = await read_request_head(stream)
                if head is not None and not is_websocket_upgrade(head):
                    await respond(stream, head)
                    return
            if head is None:  # garbage, or nothing in time
                return
            if not self._origin_allowed(head.headers):
                log.warning("refused a WebSocket from origin %r", head.headers.get("origin"))
                with trio.move_on_after(HEAD_TIMEOUT):
                    await respond(stream, head, status=403)
                return
            codec = Codec.JSON if head.query("codec") == "json" else Codec.BSON
            await self._websocket(ReplayStream(stream, head.raw), codec)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed):
            pass  # the peer went away (or a TLS handshake failed): nothing to answer
        except Exception:
            # A bug must cost one connection, never the server.
            log.exception("connection handler failed")
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await stream.aclose()

    def _origin_allowed(self, headers: dict[str, str]) -> bool:
        """Browsers send Origin; any web site could otherwise drive a server that keeps the
        default password.  Programs (qDiffusion) send none."""
        origin = headers.get("origin")
        if origin is None or "*" in self._settings.allowed_origins:
            return True
        if origin in self._settings.allowed_origins:
            return True
        return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()

    async def _websocket(self, stream: trio.abc.Stream, codec: Codec) -> None:
        async with trio.open_nursery() as ws_nursery:
            request = await wrap_server_stream(
                ws_nursery, stream, max_message_size=self._settings.max_message_size
            )
            ws = await request.accept()
            client = _Client(
                next(self._client_ids), ws, codec, Outbox(limit=self._settings.outbox_limit)
            )
            log.info("client %d connected", client.id)
            client.outbox.put(messages.envelope("hello", {"id": client.id}))
            try:
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(self._write_loop, client, tasks.cancel_scope)
                    tasks.start_soon(self._drop_when_overflowing, client, tasks.cancel_scope)
                    await self._read_loop(client)
                    tasks.cancel_scope.cancel()
            finally:
                self._queue.unsubscribe(client.outbox)
                client.outbox.close()
                reason = "too slow" if client.outbox.overflowed else "bye"
                # A send cut off midway breaks the stream: then the socket is just closed.
                broken = contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError)
                with trio.move_on_after(CLOSE_TIMEOUT, shield=True), broken:
                    await ws.aclose(1008 if client.outbox.overflowed else 1000, reason)
                ws_nursery.cancel_scope.cancel()
                log.info("client %d disconnected (%s)", client.id, reason)

    async def _write_loop(self, client: _Client, done: trio.CancelScope) -> None:
        try:
            while (message := await client.outbox.get()) is not None:
                data = self._scheme.seal(encode(message, client.codec))
                await client.ws.send_message(data)
        except ConnectionClosed:
            pass
        finally:
            done.cancel()

    async def _drop_when_overflowing(self, client: _Client, done: trio.CancelScope) -> None:
        # The writer may be stuck sending to a client that stopped reading: stop it here.
        await client.outbox.wait_overflow()
        log.warning("client %d reads too slowly: dropping it", client.id)
        done.cancel()

    async def _read_loop(self, client: _Client) -> None:
        while True:
            try:
                data = await client.ws.get_message()
            except ConnectionClosed:
                return
            if isinstance(data, str):
                client.outbox.put(messages.error("Invalid request"))
                continue
            try:
                request, codec = decode(self._scheme.open(data))
            except DecryptError:
                client.outbox.put(messages.error("Incorrect password"))
                continue
            except MalformedMessage:
                client.outbox.put(messages.error("Malformed request"))
                continue
            client.codec = codec
            await self._dispatch(client, request)

    # -- requests

    async def _dispatch(self, client: _Client, request: dict[str, Any]) -> None:
        type = request.get("type")
        data = request.get("data", {})
        if data is None:
            data = {}
        if not isinstance(type, str) or not isinstance(data, dict):
            client.outbox.put(messages.error("Malformed request"))
            return
        raw_id = request.get("id")
        valid_id = isinstance(raw_id, int) and not isinstance(raw_id, bool) and raw_id >= 0
        id = raw_id if valid_id else secrets.randbelow(2**31 - 1) + 1
        assert isinstance(id, int)
        put = client.outbox.put
        put(messages.ack(id, self._queue.waiting()))
        if type == "ping":
            put(messages.envelope("pong", None, id))
        elif type == "options":
            models = await trio.to_thread.run_sync(list_models, self._settings.models_dir)
            put(messages.envelope("options", models, id))
        elif type == "download":
            self._download(client, id, data)
        elif type == "cancel":
            self._cancel(client, data)
        elif type == "downloads":
            listing = [job.summary() for job in self._queue.jobs()]
            put(messages.envelope("downloads", {"downloads": listing}, id))
        elif type == "reconnect":
            pass  # nothing is kept per connection that a new one would need
        else:
            put(messages.error(f"segdl serve only downloads models ({type[:40]!r})", id))

    def _download(self, client: _Client, id: int, data: dict[str, Any]) -> None:
        url = data.get("url")
        if not isinstance(url, str) or not url.strip():
            client.outbox.put(messages.download_error(id, "no URL given"))
            return
        url = url.strip()
        if len(url) > MAX_URL:
            client.outbox.put(messages.download_error(id, "the URL is too long"))
            return
        try:
            # http(s), or a site's short form its resolver understands (hf://…).
            check_source_url(url, SourceConfig.from_env())
        except DownloadError as exc:
            client.outbox.put(messages.download_error(id, str(exc)))
            return
        try:
            folder = model_folder(data.get("type", ""))
        except ValueError as exc:
            client.outbox.put(messages.download_error(id, str(exc)))
            return
        civitai_token = _token(data.get("civitai_token"))
        # Before 2024 qDiffusion sent a single ``token``, for Hugging Face (sd-protocol.md §5).
        hf_token = _token(data.get("hf_token")) or _token(data.get("token"))
        log.info("client %d asks for %s into %s", client.id, redact_url(url), folder)
        self._queue.submit(
            url,
            folder,
            Subscriber(client.outbox, id),
            civitai_token=civitai_token,
            hf_token=hf_token,
        )

    def _cancel(self, client: _Client, data: dict[str, Any]) -> None:
        target = data.get("id")
        job = None
        if isinstance(target, int):
            job = self._queue.find(client.outbox, target)
        download_id = data.get("download")  # extension: a job id from ``downloads``
        if job is None and isinstance(download_id, int):
            job = self._queue.get(download_id)
        if job is not None:
            self._queue.cancel(job)


def _token(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None
