"""Hostile WebSocket messages to ``segdl serve``, fuzzed against one long-running server.

Garbage frames, valid encryption around garbage, a wrong key, documents whose every field has
the wrong type, unknown types, folder ``type`` values such as ``../``, enormous messages and
thousands of requests: the server answers with well-formed errors (or closes that one
connection, as the protocol does for a message over the size limit), logs no internal
failure, stays up (a new client still gets ``hello`` and can download), and nothing is ever
written outside the models directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest
import trio
from hostile_support import (
    Closed,
    ExampleCounter,
    ProtocolClient,
    ServerThread,
    client_key,
    files_under,
    one_line,
    open_client,
    poll_until,
    record,
    serve_in_thread,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.utilities import LocalProtocolError

import segdl
from segdl.core.folders import FOLDERS
from segdl.server import ServeSettings
from segdl.testing.rangeserver import RangeServer, Resource

MIB = 1024 * 1024
EXAMPLES = int(os.environ.get("SEGDL_FUZZ_EXAMPLES", "150"))
MAX_MESSAGE = MIB
BODY = os.urandom(200_000)
TIMEOUT = 20

counter = ExampleCounter()


# ---- fixtures: one file host, one server, one log for the whole module


@pytest.fixture(scope="module")
def file_host() -> Iterator[RangeServer]:
    with RangeServer() as server:
        server.add("/model.safetensors", Resource(body=BODY))
        server.add(
            "/escape.safetensors",
            Resource(body=BODY, content_disposition='attachment; filename="../../escaped.bin"'),
        )
        server.add(
            "/absolute.bin",
            Resource(body=BODY, content_disposition='attachment; filename="/tmp/absolute.bin"'),
        )
        server.add(
            "/reserved.bin",
            Resource(body=BODY, content_disposition="attachment; filename*=UTF-8''..%2F..%2Fcon"),
        )
        yield server


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server")


class ServerLog(logging.Handler):
    """Records of the ``segdl`` loggers at WARNING and above (an internal failure is logged
    with ``log.exception``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def failures(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]


@pytest.fixture(scope="module")
def server_log() -> Iterator[ServerLog]:
    handler = ServerLog()
    logger = logging.getLogger("segdl")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def server(root: Path, server_log: ServerLog, file_host: RangeServer) -> Iterator[ServerThread]:
    settings = ServeSettings(
        max_message_size=MAX_MESSAGE,
        max_concurrent=2,
        options=segdl.Options(
            connections=2,
            split=2,
            read_timeout=5.0,
            connect_timeout=2.0,
            retry=segdl.RetryPolicy(max_tries=1, base_delay=0.01, max_delay=0.01),
        ),
    )
    with serve_in_thread(root / "models", settings) as info:
        yield info


# ---- what every answer must look like

CONNECTION_ERRORS = {
    "Invalid request",
    "Incorrect password",
    "Malformed request",
    "Message too large",
}
DOWNLOAD_STATUSES = {"queued", "started", "metadata", "progress", "success", "error"}


def check_message(message: dict[str, Any]) -> None:
    """The envelope of every server message (sd-protocol.md §2, §4, §5)."""
    assert isinstance(message.get("type"), str), message
    assert isinstance(message.get("id"), int), message
    kind, data = message["type"], message.get("data")
    if kind == "error":
        assert isinstance(data, dict), message
        assert isinstance(data.get("message"), str), message
        assert one_line(data["message"]), message
        if message["id"] == -1:
            assert data["message"] in CONNECTION_ERRORS, message
    elif kind == "ack":
        assert isinstance(data, dict), message
        assert isinstance(data.get("id"), int), message
        assert data["id"] >= 0, message
    elif kind == "download":
        assert isinstance(data, dict), message
        assert data.get("status") in DOWNLOAD_STATUSES, message
        if data["status"] == "error":
            assert isinstance(data.get("message"), str), message
            assert isinstance(data.get("trace"), str), message
            assert one_line(data["message"]), message
        if data["status"] == "success":
            folder, _, name = str(data["path"]).partition("/")
            assert folder in FOLDERS, message
            assert name, message
            assert "/" not in name, message


async def closing_code(client: ProtocolClient) -> int | None:
    """Read until the server closes the connection; its close code."""
    try:
        while True:
            await client.receive()
    except Closed as closed:
        return closed.code


async def replies_until_pong(client: ProtocolClient) -> list[dict[str, Any]]:
    """Send a ping and return every message up to its pong, each checked."""
    ping = secrets.randbelow(2**31 - 2) + 1
    await client.send("ping", id=ping)
    seen: list[dict[str, Any]] = []
    while True:
        message = await client.receive()
        check_message(message)
        seen.append(message)
        if message["type"] == "pong" and message["id"] == ping:
            return seen


def encoded(document: Any, codec: str) -> bytes:
    """*document* in *codec*; BSON that cannot hold it (huge ints, lone surrogates, a top
    level that is not a document) is sent as JSON instead."""
    if codec == "bson" and isinstance(document, dict):
        try:
            return bson.encode(document)
        except Exception:  # bson's InvalidDocument, OverflowError, UnicodeEncodeError
            pass
    return json.dumps(document, default=lambda raw: raw.hex()).encode("utf-8", "surrogatepass")


# ---- hostile frames


@st.composite
def frames(draw: st.DrawFn) -> tuple[str, bytes]:
    """A frame the server cannot use: how it is wrapped, and its bytes."""
    kind = draw(st.sampled_from(["raw", "sealed", "wrong-key", "short", "text", "truncated"]))
    plain = draw(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from(
                [
                    b"",
                    b"{}",
                    b"[]",
                    b"null",
                    b"{" * 5000,
                    b"[" * 100_000,
                    b'{"type": NaN}',
                    b'{"type": "ping", "id": 1e999}',
                    b'{"id": ' + b"9" * 5000 + b"}",
                    b"\xef\xbb\xbf{}",
                    bson.encode({"type": "ping"})[:-1],
                    b"\x05\x00\x00\x00\x00",
                    b"\xff\xff\xff\x7f\x00",
                    _nested_bson(200),
                ]
            ),
        )
    )
    return kind, plain


def _nested_bson(depth: int) -> bytes:
    document: dict[str, Any] = {"type": "ping"}
    for _ in range(depth):
        document = {"d": document}
    return bson.encode(document)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(frame=frames())
async def test_hostile_frames_get_an_error_and_the_connection_stays(
    server: ServerThread, frame: tuple[str, bytes]
) -> None:
    counter.hit("ws-frames")
    kind, plain = frame
    with trio.fail_after(TIMEOUT):
        async with open_client(server.port) as client:
            if kind == "raw":
                await client.send_bytes(plain)
            elif kind == "sealed":
                await client.send_bytes(client.seal(plain))
            elif kind == "wrong-key":
                await client.send_bytes(client.seal(plain, client_key("not the password")))
            elif kind == "short":
                await client.send_bytes(plain[:31])
            elif kind == "text":
                await client.send_text(plain.decode("utf-8", "replace"))
            else:
                await client.send_bytes(client.seal(plain)[:-1])  # the tag cut short
            replies = await replies_until_pong(client)
    errors = [m for m in replies if m["type"] == "error" and m["id"] == -1]
    counter.hit(f"ws-frames/{errors[0]['data']['message'] if errors else 'accepted'}")
    if kind in ("wrong-key", "truncated"):
        assert errors[0]["data"]["message"] == "Incorrect password"
    if kind == "text":
        assert errors[0]["data"]["message"] == "Invalid request"


def test_hostile_frames_example_count() -> None:
    counter.report("ws-frames", at_least=min(EXAMPLES, 50))


# ---- hostile HTTP before any WebSocket

HTTP_TARGETS = st.sampled_from(
    [
        *("/", "/index.html", "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "//x", "*"),
        *("/?codec=json", "/?codec=../../x", "http://evil/", "/" + "a" * 9000, "/\x00", "/é"),
    ]
)
HTTP_HEADERS = st.lists(
    st.sampled_from(
        [
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            b"Sec-WebSocket-Key: not base64!",
            b"Sec-WebSocket-Version: 13",
            b"Sec-WebSocket-Version: 99",
            b"Origin: https://evil.example",
            b"Origin: null",
            b"Host: 127.0.0.1",
            b"Host: evil.example",
            b"Content-Length: 5",
            b"Content-Length: -1",
            b"Transfer-Encoding: chunked",
            b"X-Long: " + b"l" * 20_000,
            b"Bad Header: 1",
            b": no-name",
        ]
    ),
    max_size=6,
)


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=300))
    # Mostly well-formed, so that the page and the upgrade are reached, not only h11's checks.
    method = draw(
        st.one_of(st.just(b"GET"), st.sampled_from([b"HEAD", b"POST", b"get", b"G\x00T", b""]))
    )
    target = draw(HTTP_TARGETS).encode("utf-8")
    version = draw(
        st.one_of(st.just(b"HTTP/1.1"), st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x"]))
    )
    headers = draw(HTTP_HEADERS)
    if draw(st.booleans()):  # an upgrade, with one of its headers perhaps wrong
        headers = [
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            draw(st.sampled_from([b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"X: 1"])),
            draw(st.sampled_from([b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"])),
            *headers[:1],
        ]
    lines = [method + b" " + target + b" " + version, b"Host: 127.0.0.1", *headers]
    end = draw(st.one_of(st.just(b"\r\n\r\n"), st.sampled_from([b"\r\n", b"\n\n", b""])))
    return b"\r\n".join(lines) + end


@settings(
    max_examples=max(EXAMPLES // 2, 20),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(request=http_requests())
async def test_hostile_http_requests_are_answered_or_closed(
    server: ServerThread, request: bytes
) -> None:
    """The page and the upgrade share the port: garbage there costs one connection, at
    once, and the next WebSocket client is served."""
    counter.hit("http-heads")
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        try:
            await stream.send_all(request)
            answer = b""
            # An incomplete head waits for more (up to the server's head timeout): say no more.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_eof()
            with trio.move_on_after(5) as waited:
                while chunk := await stream.receive_some(65536):
                    answer += chunk
                    if len(answer) > 1_000_000:
                        break
            assert not waited.cancelled_caught, "the server neither answered nor closed"
        except (trio.BrokenResourceError, OSError):
            answer = b""  # reset by the server
        finally:
            await stream.aclose()
    status = answer.split(b"\r\n", 1)[0]
    counter.hit(f"http-heads/{status[:12].decode('latin-1') or 'closed'}")
    if status:
        assert status.startswith(b"HTTP/1.1 "), answer[:200]
        assert b"passwd" not in answer
    async with open_client(server.port) as client:
        await replies_until_pong(client)


def test_http_heads_example_count() -> None:
    counter.report("http-heads", at_least=min(EXAMPLES // 2, 20))


# ---- documents with the wrong types

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
REQUEST_TYPES = st.one_of(
    st.sampled_from(
        [
            *("download", "download", "ping", "options", "cancel", "downloads", "reconnect"),
            *("txt2img", "chunk", "fetch", "", "DOWNLOAD", "download\x00", "ping "),
        ]
    ),
    VALUES,
)
FOLDER_TYPES = st.one_of(
    st.sampled_from(
        [
            *FOLDERS,
            *("checkpoint", "lora", "../", "..", ".", "../../etc", "/tmp", "SD/../.."),
            *("SD/..", "../SD", "", "C:\\", "LoRA\x00", "Lo RA", "%2e%2e", "SD\\..\\..", "~"),
        ]
    ),
    st.text(max_size=12),
    VALUES,
)
PASTED_URLS = st.sampled_from(
    [
        "/model.safetensors",
        "/escape.safetensors",
        "/absolute.bin",
        "/reserved.bin",
        "/missing.bin",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://user:pw@127.0.0.1:1/x",
        "http://127.0.0.1:1/\r\nX-Injected: 1",
        "/model.safetensors\r\nX-Injected: 1",
        "/model.safetensors HTTP/1.1\r\nX-Injected: 1\r\n\r\n",
        "/model.safetensors%0d%0aX-Injected:%201",
        "hf://",
        "urn:air:sd1:checkpoint:civitai:1@2",
        "",
        " ",
        "x" * 9000,
    ]
)
MISSING = object()


@st.composite
def documents(draw: st.DrawFn, host: str) -> dict[str, Any]:
    type_ = draw(REQUEST_TYPES)
    if type_ == "download" and draw(st.booleans()):
        url = draw(st.one_of(PASTED_URLS, VALUES))
        if isinstance(url, str) and url.startswith("/"):
            url = host + url
        data: Any = {"type": draw(FOLDER_TYPES), "url": url}
        for token in ("civitai_token", "hf_token", "token"):
            if draw(st.booleans()):
                data[token] = draw(st.one_of(st.text(max_size=8), VALUES))
    elif type_ == "cancel" and draw(st.booleans()):
        data = {draw(st.sampled_from(["id", "download"])): draw(VALUES)}
    else:
        data = draw(st.one_of(VALUES, st.just(MISSING)))
    id_ = draw(
        st.one_of(
            st.integers(-(2**70), 2**70),
            st.integers(1, 2**31 - 1),
            st.floats(),
            st.text(max_size=4),
            st.none(),
            st.booleans(),
            st.just(MISSING),
        )
    )
    document: dict[str, Any] = {"type": type_}
    if data is not MISSING:
        document["data"] = data
    if id_ is not MISSING:
        document["id"] = id_
    for key in draw(st.lists(st.sampled_from(["type", "data", "id"]), max_size=1)):
        document.pop(key, None)
    return document


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
async def test_documents_of_every_wrong_shape_are_answered(
    server: ServerThread, file_host: RangeServer, data: st.DataObject
) -> None:
    counter.hit("ws-documents")
    batch = data.draw(
        st.lists(
            st.tuples(documents(file_host.base_url), st.sampled_from(["bson", "json"])),
            min_size=1,
            max_size=3,
        ),
        label="documents",
    )
    with trio.fail_after(TIMEOUT):
        async with open_client(server.port) as client:
            for document, codec in batch:
                if codec == "json" and _beyond_bson(document.get("id")):
                    # Only JSON can say this id; a BSON message after it would make the
                    # server answer in BSON: the known bug of test_an_id_bson_cannot_hold.
                    client.codec = "json"
                await client.send_bytes(client.seal(encoded(document, codec)))
            replies = await replies_until_pong(client)
    for reply in replies:
        counter.hit(f"ws-documents/{reply['type']}")


def valid_on_the_wire(document: Any, codec: str) -> bool:
    """Whether :func:`encoded` makes a message any decoder can read: BSON, or strict JSON."""
    data = encoded(document, codec)
    try:
        bson.decode(data)
        return True
    except Exception:  # not BSON: it went as JSON
        pass
    try:
        json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except ValueError:
        return False
    return True


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _beyond_bson(value: object) -> bool:
    return isinstance(value, int) and not -(2**63) <= value < 2**63


def test_documents_example_count() -> None:
    counter.report("ws-documents", at_least=min(EXAMPLES, 50))


@settings(
    max_examples=max(EXAMPLES // 3, 20),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    folder=st.one_of(st.sampled_from([*FOLDERS, "checkpoint", "Lora ", "embedding"]), FOLDER_TYPES),
    url=st.sampled_from(
        ["/model.safetensors", "/escape.safetensors", "/absolute.bin", "/reserved.bin"]
    ),
    codec=st.sampled_from(["bson", "json"]),
)
async def test_downloads_with_hostile_folders_and_names_stay_inside(
    server: ServerThread,
    file_host: RangeServer,
    root: Path,
    folder: Any,
    url: str,
    codec: str,
) -> None:
    """Every download either lands in an allowed folder of the models directory or is refused
    with a clear error, whatever folder ``type`` and ``Content-Disposition`` name it has."""
    counter.hit("ws-downloads")
    document = {"type": "download", "data": {"type": folder, "url": file_host.url(url)}}
    id = secrets.randbelow(2**31 - 2) + 1
    if not valid_on_the_wire({**document, "id": id}, codec):
        # NaN, Infinity (RFC 8259 §6) or a lone surrogate: the whole message is refused.
        with trio.fail_after(TIMEOUT):
            async with open_client(server.port) as client:
                await client.send_bytes(client.seal(encoded({**document, "id": id}, codec)))
                refusal = await client.expect("error")
        assert refusal["data"]["message"] == "Malformed request", refusal
        counter.hit("ws-downloads/error")
        return
    with trio.fail_after(TIMEOUT):
        async with open_client(server.port) as client:
            await client.send_bytes(client.seal(encoded({**document, "id": id}, codec)))
            replies = await client.download_replies(id)
    for reply in replies:
        check_message({"type": "download", "id": id, "data": reply})
    final = replies[-1]
    counter.hit(f"ws-downloads/{final['status']}")
    if final["status"] == "success":
        path = (root / "models" / final["path"]).resolve()
        assert path.is_relative_to((root / "models").resolve())
        assert path.read_bytes() == BODY
    else:
        assert final["status"] == "error", final


def test_downloads_example_count() -> None:
    counter.report("ws-downloads", at_least=min(EXAMPLES // 3, 20))
    assert counter.counts["ws-downloads/success"] > 0
    assert counter.counts["ws-downloads/error"] > 0


# ---- each wrong field on its own, with the answer it must get


def _ping(**fields: Any) -> dict[str, Any]:
    return {"type": "ping", **fields}


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"type": 5, "id": 1}, "Malformed request"),
        ({"type": ["ping"], "id": 1}, "Malformed request"),
        ({"type": None}, "Malformed request"),
        ({"type": "ping", "data": [1, 2]}, "Malformed request"),
        ({"type": "ping", "data": "x"}, "Malformed request"),
        (_ping(id=-5), "made-up id"),
        (_ping(id=1.5), "made-up id"),
        (_ping(id="7"), "made-up id"),
        (_ping(id=True), "made-up id"),
        (_ping(id=2**40), "its id"),
        ({"type": "download", "data": {"type": "SD", "url": 5}, "id": 3}, "no URL given"),
        ({"type": "download", "data": {"type": "SD", "url": ["x"]}, "id": 3}, "no URL given"),
        (
            {"type": "download", "data": {"type": "../..", "url": "http://127.0.0.1/x"}, "id": 3},
            "unknown model type",
        ),
        (
            {"type": "download", "data": {"type": {"a": 1}, "url": "http://127.0.0.1/x"}, "id": 3},
            "unknown model type",
        ),
        ({"type": "download", "data": {"type": "SD", "url": "x" * 9000}, "id": 3}, "too long"),
        ({"type": "cancel", "data": {"id": "everything"}, "id": 3}, "acked"),
        ({"type": "no-such-type", "id": 3}, "only downloads"),
    ],
)
@pytest.mark.parametrize("codec", ["bson", "json"])
async def test_each_wrong_field_gets_its_answer(
    server: ServerThread, document: dict[str, Any], expected: str, codec: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_client(server.port) as client:
            await client.send_bytes(client.seal(encoded(document, codec)))
            replies = await replies_until_pong(client)
    first = replies[0]
    if expected in CONNECTION_ERRORS:
        assert first == {"type": "error", "id": -1, "data": {"message": expected}}
        return
    assert first["type"] == "ack", replies
    request_id = first["data"]["id"]
    answers = [m for m in replies[1:] if m["id"] == request_id]
    if expected == "made-up id":
        assert 0 < request_id < 2**31
        assert answers[0] == {"type": "pong", "id": request_id}
    elif expected == "its id":
        assert request_id == document["id"]
    elif expected == "acked":
        assert answers == []
    else:
        (answer,) = answers
        assert expected in str(answer["data"]["message"]), answer


async def test_an_id_bson_cannot_hold_does_not_cost_the_connection(
    server: ServerThread, server_log: ServerLog, file_host: RangeServer
) -> None:
    """Ids are echoed back, in BSON (8-byte integers) or JSON: one too large to answer is
    refused with an error, and the connection goes on."""
    with trio.fail_after(TIMEOUT):
        async with open_client(server.port) as client:
            request = {
                "type": "download",
                "id": 2**70,
                "data": {"type": "SD", "url": file_host.url("/missing.bin")},
            }
            await client.send_bytes(client.seal(json.dumps(request).encode()))
            replies = await replies_until_pong(client)  # the ping is BSON
    assert any(m["type"] == "error" for m in replies), replies
    assert not any(m["type"] == "download" for m in replies), replies
    assert not server_log.failures()


# ---- size and volume


async def test_a_message_over_the_limit_is_refused_and_only_a_text_one_closes(
    server: ServerThread,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_client(server.port) as bystander, open_client(server.port) as big:
            # A binary message (the protocol's kind) is answered, and the connection stays.
            await big.send("ping", {"padding": "x" * (MAX_MESSAGE + 1)}, fragment=64 * 1024)
            replies = await replies_until_pong(big)
            assert replies[0]["type"] == "error"
            assert replies[0]["data"]["message"] == "Message too large"
            assert replies[0]["data"]["limit"] == MAX_MESSAGE
            assert replies[0]["data"]["size"] > MAX_MESSAGE
            # A text message cannot be cut safely: trio-websocket's 1009 stays for it.
            await big.send_text("x" * (MAX_MESSAGE + 1))
            assert await closing_code(big) == 1009  # RFC 6455 §7.4.1: message too big
            await replies_until_pong(bystander)
            # Just under the limit is fine.
            await bystander.send("ping", {"padding": "y" * (MAX_MESSAGE - 1000)}, fragment=MIB)
            await replies_until_pong(bystander)


async def test_thousands_of_requests_fast(server: ServerThread) -> None:
    """Pipelined pings on many connections at once: each connection gets every pong in
    order, or (if it let too much pile up) is dropped alone with 1008; the rest go on."""
    per_client, clients = 1000, 8
    outcomes: list[str] = []

    async def flood(index: int) -> None:
        async with open_client(server.port, codec="json" if index % 2 else "bson") as client:
            ids = list(range(1, per_client + 1))

            async def send_all() -> None:
                # The server may drop this client midway: then sending just stops.
                with contextlib.suppress(LocalProtocolError, trio.BrokenResourceError):
                    for id in ids:
                        await client.send("ping", id=id)

            pongs: list[int] = []
            code: int | None = 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                try:
                    while len(pongs) < per_client:
                        message = await client.receive()
                        check_message(message)
                        if message["type"] == "pong":
                            pongs.append(message["id"])
                except Closed as closed:
                    code = closed.code
                nursery.cancel_scope.cancel()
            if code == 0:
                assert pongs == ids
                outcomes.append("served")
            else:
                assert code == 1008, code  # dropped as too slow, alone
                outcomes.append("dropped")

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(clients):
                nursery.start_soon(flood, index)
        async with open_client(server.port) as after:
            await replies_until_pong(after)
    figures = {"served": outcomes.count("served"), "dropped": outcomes.count("dropped")}
    record("ws-flood", clients=clients, pings_each=per_client, **figures)
    assert figures["served"] + figures["dropped"] == clients


async def test_a_client_that_pipelines_requests_and_reads_gets_every_answer(
    server: ServerThread,
) -> None:
    count = 1000
    with trio.fail_after(60):
        async with open_client(server.port) as client:

            async def send_all() -> None:
                with contextlib.suppress(LocalProtocolError, trio.BrokenResourceError):
                    for id in range(1, count + 1):
                        await client.send("ping", id=id)

            pongs: list[int] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                try:
                    while len(pongs) < count:
                        message = await client.receive()
                        if message["type"] == "pong":
                            pongs.append(message["id"])
                finally:
                    nursery.cancel_scope.cancel()
    assert pongs == list(range(1, count + 1))


async def test_a_client_that_floods_and_never_reads_is_held_back_alone(
    server: ServerThread,
) -> None:
    """The server stops reading a client whose answers pile up (backpressure; or drops it
    if its outbox overflows anyway): the flood ends up stuck in that client's own socket,
    and everyone else is served meanwhile."""
    with trio.fail_after(60):
        async with open_client(server.port) as bystander, open_client(server.port) as flooder:
            sent = 0
            with (
                trio.move_on_after(10),
                contextlib.suppress(LocalProtocolError, trio.BrokenResourceError),
            ):
                for id in range(1, 100_000):
                    await flooder.send("ping", id=id)
                    sent = id
            assert sent < 99_999, "the server read every request of a client that never reads"
            await replies_until_pong(bystander)


# ---- afterwards


async def test_the_server_is_still_up_and_nothing_escaped(
    server: ServerThread, file_host: RangeServer, root: Path, server_log: ServerLog
) -> None:
    models = (root / "models").resolve()
    file_host.add("/final.safetensors", Resource(body=BODY))
    with trio.fail_after(60):
        async with open_client(server.port) as client:
            id = await client.send(
                "download", {"type": "LoRA", "url": file_host.url("/final.safetensors")}
            )
            replies = await client.download_replies(id)
    assert replies[-1]["status"] == "success", replies[-1]
    assert replies[-1]["path"] == "LoRA/final.safetensors"
    assert hashlib.sha256((models / "LoRA" / "final.safetensors").read_bytes()).hexdigest() == (
        hashlib.sha256(BODY).hexdigest()
    )

    # Wait for the downloads the fuzzing started, then look at every file.
    async def settled() -> bool:
        jobs = await server.call(server.info.queue.jobs)
        return not any(job.state.value in ("queued", "running") for job in jobs)

    with trio.fail_after(60):
        await poll_until(settled)
    everything = files_under(root)
    assert everything, "the fuzzing downloaded nothing at all"
    for path in everything:
        assert path.is_relative_to(models), path
        parts = path.relative_to(models).parts
        # Model files go into an allowed folder; the server keeps its own state beside them.
        assert parts[0] in FOLDERS or (len(parts) == 1 and parts[0].startswith(".segdl")), path
    assert not [p for p in everything if p.parent == models and not p.name.startswith(".segdl")]
    assert server_log.failures() == []
    # No header smuggled in through a pasted URL reached the file host.
    assert not [r for r in file_host.requests if "x-injected" in r.headers]
    folders = sorted({p.relative_to(models).parts[0] for p in everything})
    record("ws-tree", files=len(everything), folders=folders)
