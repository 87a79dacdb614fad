"""``serve_segdl``: the WebSocket server that speaks the sd-inference-server download protocol.

One nursery for the server (listeners, the download queue), one per connection (trio-websocket's
reader, our writer).  A connection reads requests and answers through its :class:`Outbox`; the
writer task drains the outbox, so nothing a client does (or fails to do) ever blocks a
download or another client.  Requests are handled in order; ``options`` and ``chunk`` touch
the disk, in worker threads.

Each connection is a :class:`~.sessions.Session`: one lost without a closing handshake keeps
its downloads, uploads and unsent replies for ``reconnect_grace`` seconds, and ``reconnect``
moves them to a new connection (:mod:`.sessions`).  Uploads (``chunk``) are :mod:`.uploads`.
A binary message over ``max_message_size`` is cut short below trio-websocket and answered
with an error (:mod:`.framelimit`).

Besides the protocol's requests (reference sd-protocol.md), segdl's own, each acked first as
usual.  A download is addressed by the id of the ``download`` request that started it
(``{"id": R}``, this connection's requests only, as ``cancel``) or by its job id from the
``downloads`` listing (``{"job": N}``; ``{"download": N}`` is the same), which survives
reconnecting and a server restart; addressing by job id subscribes the request to the download's
events under its own id::

    {"type": "pause",  "data": {"id": R} | {"job": N}, "id": P}
        → every subscriber: {"type": "paused", "data": {}, "id": its request id}
          once the download has stopped (no connection, no slot, partial file kept)
    {"type": "resume", "data": {"id": R} | {"job": N}, "id": P}
        → the usual download replies (queued, started, progress…, success) to every subscriber
    {"type": "limit",  "data": {"rate": B, "id": R} | {"rate": B, "job": N} | {"rate": B}, "id": P}
        → {"type": "limit", "data": {"rate": B | null, "job": N | null}, "id": P}
          B: bytes a second; 0 or null for no limit; without ``rate``, only report the limit.
          Without a download, the server's overall limit.  Applies to running downloads.
    {"type": "downloads", "id": P}
        → {"type": "downloads", "data": {"downloads": [{id, url, type, state, label, progress,
           rate, eta, downloaded, total, limit, path, message, clients}…], "limit": B | null}}

``state`` is ``queued``, ``running``, ``paused``, ``done``, ``failed`` or ``cancelled``.  An
unknown download, a pause or resume of one that has ended, and a bad rate (negative, not a
number, over 1 TiB/s) are answered with ``{"type": "error", "data": {"message", "trace"},
"id": P}``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import secrets
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, TypeGuard
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from ..core.clientids import ClientIds
from ..core.destinations import DestinationPolicy
from ..core.folders import AUTO, model_folder
from ..engine.options import Options
from ..errors import DownloadError, redact_url
from . import messages
from .downloads import (
    FINAL_STATES,
    DownloadQueue,
    Job,
    JobError,
    JobState,
    RunDownload,
    Subscriber,
)
from .framelimit import GuardedStream, MessageSizeGuard
from .http import ReplayStream, is_websocket_upgrade, read_request_head, respond
from .library import list_models
from .outbox import Outbox
from .queuefile import QUEUE_FILE, read_queue_file
from .sessions import Session, Sessions
from .uploads import Uploads
from .wire import Codec, DecryptError, MalformedMessage, Scheme, decode, encode

__all__ = ["ServeSettings", "ServerInfo", "is_loopback", "serve_segdl"]

log = logging.getLogger("segdl.server")

# RFC 6455 §7.4.1: the code a connection gets when it ended without a closing handshake.
ABNORMAL_CLOSURE = 1006
HEAD_TIMEOUT = 10.0  # seconds for a new connection to send its request head
CLOSE_TIMEOUT = 2.0  # seconds for a closing handshake before the socket is just closed
MAX_URL = 8192
MAX_RATE = 2**40  # bytes a second (1 TiB/s): anything above is a mistake


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 28888
    models_dir: Path = Path("models")
    ssl_context: ssl.SSLContext | None = None
    max_concurrent: int = 3
    # qDiffusion sends uploads as 512 KiB chunks, and nothing limits its other messages.
    max_message_size: int = 64 * 1024 * 1024
    outbox_limit: int = 256
    send_timeout: float = 20.0  # seconds one message may wait for a client to read it
    allowed_origins: tuple[str, ...] = ()
    options: Options | None = None
    engine: str = "native"
    # What runs one download (the library's flow; tests put a fake here).
    run: RunDownload | None = field(default=None, compare=False)
    # Bytes a second for all downloads together; None (or 0) for no limit.
    max_overall_download_limit: int | None = None
    # Keep unfinished downloads in MODELS/.segdl-queue.json and take them up at start.
    persist_queue: bool = True
    # A model already under the models directory (same sha256) in another folder is linked
    # into place instead of downloaded again; otherwise the request fails saying where it is.
    link_existing: bool = False
    # Seconds a client whose connection was lost (no closing handshake) may take to come
    # back with ``reconnect``; sd-inference-server waits 60 s.
    reconnect_grace: float = 60.0
    # Seconds a connection named by ``reconnect`` has to answer a ping to keep its replies.
    reconnect_probe_timeout: float = 5.0
    # The largest model a client may upload; None for no cap.
    max_upload_size: int | None = 64 * 1024**3
    # Private and loopback destinations, refused when listening beyond loopback, are allowed.
    allow_private_urls: bool = False

    def download_options(self) -> Options:
        """The downloads' options, with the destination policy (core/destinations.py): what a
        client may make this machine fetch depends on who can reach the server."""
        options = self.options or Options()
        if options.destinations is not None:
            return options
        policy = DestinationPolicy.for_server(
            listens_beyond_loopback=not is_loopback(self.host),
            allow_private_urls=self.allow_private_urls,
        )
        return replace(options, destinations=policy)


@dataclass(frozen=True)
class ServerInfo:
    """What :func:`serve_segdl` reports through ``task_status`` once it listens."""

    host: str
    port: int
    queue: DownloadQueue
    secure: bool
    uploads: Uploads | None = None

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
    session: Session
    ws: WebSocketConnection
    codec: Codec
    guard: MessageSizeGuard

    @property
    def id(self) -> int:
        return self.session.id

    @property
    def outbox(self) -> Outbox:
        return self.session.outbox


@dataclass(eq=False)
class _WebSocketPeer:
    """A session's live connection, for :class:`Sessions`."""

    ws: WebSocketConnection
    scope: trio.CancelScope

    async def answers_ping(self) -> bool:
        try:
            await self.ws.ping()
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def drop(self) -> None:
        self.scope.cancel()


async def serve_segdl(
    settings: ServeSettings,
    scheme: Scheme,
    *,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the page and the protocol until cancelled.  *scheme* holds the derived key.

    Unfinished downloads of the queue file in the models directory are taken up first.
    """
    queue_file = settings.models_dir / QUEUE_FILE if settings.persist_queue else None
    saved = None
    if queue_file is not None:
        saved = await trio.to_thread.run_sync(read_queue_file, queue_file)
    async with trio.open_nursery() as nursery:
        queue = DownloadQueue(
            nursery,
            settings.models_dir,
            max_concurrent=settings.max_concurrent,
            options=settings.download_options(),
            engine=settings.engine,
            run=settings.run,
            overall_limit=settings.max_overall_download_limit or None,
            queue_file=queue_file,
            link_existing=settings.link_existing,
        )
        if saved is not None:
            queue.restore(saved)
        uploads = Uploads(settings.models_dir, max_size=settings.max_upload_size)
        server = _Server(settings, scheme, queue, uploads, nursery)
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
            ServerInfo(settings.host, port, queue, settings.ssl_context is not None, uploads)
        )
        try:
            await trio.sleep_forever()
        finally:
            # Half-received uploads never get their end message now: remove their files.
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await uploads.abort_all()
    raise AssertionError("unreachable")


class _Server:
    def __init__(
        self,
        settings: ServeSettings,
        scheme: Scheme,
        queue: DownloadQueue,
        uploads: Uploads,
        nursery: trio.Nursery,
    ) -> None:
        self._settings = settings
        self._scheme = scheme
        self._queue = queue
        self._uploads = uploads
        self.sessions = Sessions(
            nursery,
            # A new key each start: a restarted server's ids follow no earlier order.
            ClientIds(secrets.token_bytes(32)),
            move=self._move_session,
            end=self._end_session,
            grace=settings.reconnect_grace,
            probe_timeout=settings.reconnect_probe_timeout,
        )

    # -- sessions

    def _move_session(self, old: Session, new: Session) -> None:
        # The old connection's hello is the only message meant for it alone.
        moved = new.outbox.adopt(old.outbox, keep=lambda message: message["type"] != "hello")
        downloads = self._queue.transfer(old.outbox, new.outbox)
        uploads = self._uploads.transfer(old, new)
        log.info(
            "client %d took over %d replies, %d downloads and %d uploads of client %d",
            new.id,
            moved,
            downloads,
            uploads,
            old.id,
        )

    async def _end_session(self, session: Session) -> None:
        self._queue.unsubscribe(session.outbox)
        session.outbox.close()
        await self._uploads.abort_owned_by(session)

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
            guard = MessageSizeGuard(self._settings.max_message_size, skip=head.head_size)
            await self._websocket(GuardedStream(ReplayStream(stream, head.raw), guard), codec)
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

    async def _websocket(self, stream: GuardedStream, codec: Codec) -> None:
        async with trio.open_nursery() as ws_nursery:
            request = await wrap_server_stream(
                ws_nursery, stream, max_message_size=self._settings.max_message_size
            )
            ws = await request.accept()
            peer = _WebSocketPeer(ws, trio.CancelScope())
            session = self.sessions.open(Outbox(limit=self._settings.outbox_limit), peer)
            client = _Client(session, ws, codec, stream.guard)
            log.info("client %d connected", client.id)
            client.outbox.put(messages.envelope("hello", {"id": client.id}))
            said_goodbye = False
            try:
                with peer.scope:
                    async with trio.open_nursery() as tasks:
                        tasks.start_soon(self._write_loop, client, tasks.cancel_scope)
                        tasks.start_soon(self._drop_when_overflowing, client, tasks.cancel_scope)
                        said_goodbye = await self._read_loop(client)
                        tasks.cancel_scope.cancel()
            finally:
                if said_goodbye:
                    await self.sessions.closed(session)
                else:
                    # Its replies wait (reconnect_grace) for the client to come back.
                    self.sessions.lost(session)
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
                with trio.move_on_after(self._settings.send_timeout) as sending:
                    await client.ws.send_message(data)
                if sending.cancelled_caught:
                    # Backpressure keeps its requests waiting, but a client that reads
                    # nothing at all would hold its connection forever.
                    log.warning("client %d reads nothing: dropping it", client.id)
                    break
        except ConnectionClosed:
            pass
        finally:
            done.cancel()

    async def _drop_when_overflowing(self, client: _Client, done: trio.CancelScope) -> None:
        # The writer may be stuck sending to a client that stopped reading: stop it here.
        await client.outbox.wait_overflow()
        log.warning("client %d reads too slowly: dropping it", client.id)
        done.cancel()

    async def _read_loop(self, client: _Client) -> bool:
        """Read and answer requests; ``True`` when the client ended with a closing
        handshake, ``False`` when its connection was lost."""
        number = -1
        while True:
            # Backpressure: a client that sends faster than it reads the answers waits
            # here (its requests stay in the socket) instead of overflowing its outbox.
            await client.outbox.wait_for_room()
            try:
                data = await client.ws.get_message()
            except ConnectionClosed as exc:
                return exc.reason is not None and exc.reason.code != ABNORMAL_CLOSURE
            number += 1
            size = client.guard.pop_oversized(number)
            if size is not None:
                limit = self._settings.max_message_size
                log.warning("client %d sent a message of %d bytes: refused", client.id, size)
                # A fixed message, as the protocol's other connection errors; the sizes beside.
                refusal = messages.error("Message too large")
                refusal["data"].update(size=size, limit=limit)
                client.outbox.put(refusal)
                continue
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
        if isinstance(raw_id, int) and not isinstance(raw_id, bool) and not _is_id(raw_id):
            client.outbox.put(messages.error("Invalid request"))
            return
        valid_id = _is_id(raw_id) and raw_id >= 0
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
            await self._cancel(client, data)
        elif type == "chunk":
            await self._uploads.handle(client.session, id, data)
        elif type in ("pause", "resume"):
            self._pause_or_resume(client, id, data, pause=type == "pause")
        elif type == "limit":
            self._limit(client, id, data)
        elif type == "downloads":
            listing = [job.summary() for job in self._queue.jobs()]
            overall = self._queue.overall_limit.rate
            limit = None if overall is None else int(overall)
            put(messages.envelope("downloads", {"downloads": listing, "limit": limit}, id))
        elif type == "reconnect":
            # Acked whatever it names; an unknown id changes nothing.
            old = data.get("id")
            if _is_id(old):
                await self.sessions.reconnect(client.session, old)
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
            kind = data.get("type", "")
            # "auto": the model's own type (CivitAI) chooses the folder once the site answers.
            auto = isinstance(kind, str) and kind.strip().lower() == AUTO
            folder = AUTO if auto else model_folder(kind)
        except ValueError as exc:
            client.outbox.put(messages.download_error(id, str(exc)))
            return
        civitai_token = _token(data.get("civitai_token"))
        # Before 2024 qDiffusion sent a single ``token``, for Hugging Face (sd-protocol.md §5).
        hf_token = _token(data.get("hf_token")) or _token(data.get("token"))
        try:
            # Built here, once: http(s), or a site's short form its resolver understands.
            request = self._queue.request(
                url, folder, civitai_token=civitai_token, hf_token=hf_token
            )
        except DownloadError as exc:
            client.outbox.put(messages.download_error(id, str(exc)))
            return
        log.info("client %d asks for %s into %s", client.id, redact_url(url), folder)
        self._queue.submit(request, folder, Subscriber(client.outbox, id))

    async def _cancel(self, client: _Client, data: dict[str, Any]) -> None:
        # Unknown ids are ignored, as sd-inference-server does: qDiffusion cancels any request.
        job, _ = self._find_job(client, data)
        if job is not None:
            self._queue.cancel(job)
            return
        target = data.get("id")
        if _is_id(target):
            await self._uploads.cancel(client.session, target)

    def _find_job(self, client: _Client, data: dict[str, Any]) -> tuple[Job | None, bool]:
        """The job *data* addresses, and whether by job id (rather than a request of ours)."""
        target = data.get("id")
        if _is_id(target):
            job = self._queue.find(client.outbox, target)
            if job is not None:
                return job, False
        for key in ("job", "download"):  # a job id from the ``downloads`` listing
            job_id = data.get(key)
            if _is_id(job_id):
                return self._queue.get(job_id), True
        return None, False

    def _lookup(self, client: _Client, id: int, data: dict[str, Any]) -> tuple[Job, bool] | None:
        """As :meth:`_find_job`, answering an error when nothing is found."""
        job, by_job_id = self._find_job(client, data)
        if job is None:
            if not any(_is_id(data.get(key)) for key in ("id", "job", "download")):
                message = "which download? Give the download request's id, or its job id (job)"
            else:
                message = "no such download"
            client.outbox.put(messages.error(message, id))
            return None
        if job.state in FINAL_STATES:
            client.outbox.put(
                messages.error(f"download {job.id} has already ended ({job.state.value})", id)
            )
            return None
        return job, by_job_id

    def _pause_or_resume(
        self, client: _Client, id: int, data: dict[str, Any], *, pause: bool
    ) -> None:
        found = self._lookup(client, id, data)
        if found is None:
            return
        job, by_job_id = found
        # The id the client follows this download under.
        follow = id if by_job_id else data["id"]
        if by_job_id:
            self._queue.subscribe(job, Subscriber(client.outbox, id))
        try:
            if pause:
                was_paused = job.state is JobState.PAUSED
                self._queue.pause(job)
                if was_paused:
                    client.outbox.put(messages.paused(follow))
            else:
                self._queue.resume(job)
        except JobError as exc:
            client.outbox.put(messages.error(str(exc), id))

    def _limit(self, client: _Client, id: int, data: dict[str, Any]) -> None:
        job: Job | None = None
        if any(key in data for key in ("id", "job", "download")):
            found = self._lookup(client, id, data)
            if found is None:
                return
            job = found[0]
        if "rate" in data:
            try:
                rate = parse_rate(data["rate"])
            except ValueError as exc:
                client.outbox.put(messages.error(str(exc), id))
                return
            if job is None:
                self._queue.overall_limit.set(rate)
                log.info("overall limit: %s", "none" if rate is None else f"{rate} B/s")
            else:
                self._queue.set_limit(job, rate)
                log.info("download %d limit: %s", job.id, "none" if rate is None else f"{rate} B/s")
        limit = self._queue.overall_limit if job is None else job.handle.limit
        effective = None if limit.rate is None else int(limit.rate)
        client.outbox.put(messages.limit(id, effective, None if job is None else job.id))


def parse_rate(value: object) -> int | None:
    """A ``limit`` request's rate: bytes a second, ``None`` for no limit.

    Raises:
        ValueError: a message for the client.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("the rate must be a number of bytes a second (0 or null: no limit)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("the rate must be a finite number")
    if value < 0:
        raise ValueError("the rate must not be negative")
    if value > MAX_RATE:
        raise ValueError(f"the rate is too large (at most {MAX_RATE} bytes a second)")
    if value == 0:
        return None
    rate = int(value)
    if rate < 1:
        raise ValueError("the rate must be at least 1 byte a second")
    return rate


# Ids are echoed back, in BSON (8-byte integers) or in JSON read by JavaScript (exact up to
# 2**53): a larger one could not be answered.
MAX_ID = 2**53 - 1


def _is_id(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and -MAX_ID <= value <= MAX_ID


def _token(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None
