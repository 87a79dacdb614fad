"""What the hostile-input, secrets and soak tests share (reliability suite, part B).

* :class:`ScriptedServer` — a raw TCP server that answers each request with whatever bytes the
  test scripts (a malformed status line, a 100 KiB head, two Content-Lengths…), since
  RangeServer only speaks correct HTTP.  :func:`range_answer` is a *correct* answer built from
  RFC 9110 §14 here, independently of segdl's client (STYLE.md's parfive warning).
* :class:`ExampleCounter` — how many examples each fuzz target ran, asserted against a floor
  and reported (stdout, and ``$SEGDL_RELIABILITY_REPORT`` as JSON lines when set).
* File-tree snapshots, process figures (RSS, threads, trio tasks).
* The protocol client of ``tests/server`` and the fake sites of ``tests/sources``, re-exported:
  pytest puts only this folder on ``sys.path`` when it collects it alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import trio

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("server", "sources"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.append(str(_TESTS / _folder))

from fake_civitai import CivitFile, CivitModel, CivitVersion, FakeCivitAI  # noqa: E402
from fake_huggingface import FakeHub, HubRepo  # noqa: E402
from helpers import interrupted, prepare_source_env  # noqa: E402
from wsclient import (  # noqa: E402
    PASSWORD,
    Closed,
    ProtocolClient,
    client_key,
    open_client,
    open_server,
)

from segdl.server import ServerInfo, ServeSettings  # noqa: E402

__all__ = [
    "PASSWORD",
    "CivitFile",
    "CivitModel",
    "CivitVersion",
    "Closed",
    "ExampleCounter",
    "FakeCivitAI",
    "FakeHub",
    "HubRepo",
    "ProtocolClient",
    "RawRequest",
    "ScriptedServer",
    "ServerThread",
    "client_key",
    "files_under",
    "interrupted",
    "one_line",
    "open_client",
    "open_server",
    "poll_until",
    "prepare_source_env",
    "range_answer",
    "record",
    "rss_bytes",
    "serve_in_thread",
    "trio_task_count",
    "working_threads",
]

MIB = 1024 * 1024
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# A server that says exactly what it is told


@dataclass(frozen=True)
class RawRequest:
    """A request head as received: the method, target, lower-cased headers and the bytes."""

    method: str
    target: str
    headers: dict[str, str] = field(hash=False)
    raw: bytes

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


#: Turns a request into the exact bytes sent back; the connection is closed after them.
Handler = Callable[[RawRequest], bytes]

_HEAD_END = b"\r\n\r\n"
_MAX_REQUEST_HEAD = 64 * 1024


class ScriptedServer:
    """``with ScriptedServer(handler) as server: … server.url("/x") …``

    One thread accepts, one thread per connection reads one request head, sends
    ``handler(request)``, half-closes and waits (briefly) for the client to close, so the
    client reads every byte rather than a reset.  The handler may be replaced at any time.
    Failures of the handler are kept in :attr:`errors` (a test should check it is empty).
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[RawRequest] = []
        self.errors: list[BaseException] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

    @property
    def port(self) -> int:
        port: int = self._listener.getsockname()[1]
        return port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> ScriptedServer:
        thread = threading.Thread(target=self._accept_loop, name="scripted-accept", daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(10)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._sockets.add(sock)
                # Finished connection threads are forgotten as new ones start.
                self._threads = [t for t in self._threads if t.is_alive()]
                thread = threading.Thread(
                    target=self._serve, args=(sock,), name="scripted-conn", daemon=True
                )
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(5)
            head = self._read_head(sock)
            if head is None:
                return
            request = _parse_request(head)
            with self._lock:
                self.requests.append(request)
            try:
                answer = self.handler(request)
            except Exception as exc:
                self.errors.append(exc)
                return
            with contextlib.suppress(OSError):
                sock.sendall(answer)
                sock.shutdown(socket.SHUT_WR)
                # Wait for the client's close: closing with unread input would reset the
                # connection and could destroy the answer still in flight.
                sock.settimeout(2)
                while sock.recv(65536):
                    pass
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(sock)
            sock.close()

    @staticmethod
    def _read_head(sock: socket.socket) -> bytes | None:
        data = b""
        while _HEAD_END not in data:
            if len(data) > _MAX_REQUEST_HEAD:
                return None
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
            if not data[:1].isalpha():
                return None  # not HTTP (a TLS ClientHello, say): close at once
        return data.partition(_HEAD_END)[0]


def _parse_request(head: bytes) -> RawRequest:
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target = rest.rpartition(" ")[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return RawRequest(method=method, target=target, headers=headers, raw=head)


_BYTE_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


def range_answer(
    request: RawRequest, body: bytes, *, extra: list[tuple[bytes, bytes]] | None = None
) -> bytes:
    """A correct answer for *body*: ``206`` for one satisfiable byte range, ``416`` for an
    unsatisfiable one, else ``200`` — RFC 9110 §14.1.2 (positions inclusive) and §14.4.

    *extra* header lines are sent as given (bytes: a test may put anything in them).
    """
    size = len(body)
    status = b"200 OK"
    fields: list[tuple[bytes, bytes]] = [(b"Accept-Ranges", b"bytes"), (b"ETag", b'"fixed"')]
    payload = body
    match = _BYTE_RANGE.fullmatch(request.headers.get("range", ""))
    if match is not None and (match.group(1) or match.group(2)):
        first_text, last_text = match.groups()
        if first_text:
            first = int(first_text)
            last = min(int(last_text), size - 1) if last_text else size - 1
        else:  # suffix-range: the last N bytes
            first, last = max(0, size - int(last_text)), size - 1
        if first >= size or last < first:
            status, payload = b"416 Range Not Satisfiable", b""
            fields.append((b"Content-Range", b"bytes */%d" % size))
        else:
            status, payload = b"206 Partial Content", body[first : last + 1]
            fields.append((b"Content-Range", b"bytes %d-%d/%d" % (first, last, size)))
    fields += extra or []
    fields += [(b"Content-Length", b"%d" % len(payload)), (b"Connection", b"close")]
    head = b"HTTP/1.1 " + status + b"\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in fields)
    return head + b"\r\n" + (b"" if request.method == "HEAD" else payload)


# --------------------------------------------------------------------------------------------
# Counting examples


class ExampleCounter:
    """Examples run per fuzz target (every run of the test body, shrinking included)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def hit(self, target: str) -> None:
        self.counts[target] += 1

    def report(self, target: str, *, at_least: int) -> int:
        """Assert *target* ran at least *at_least* examples; print and record the count."""
        count = self.counts[target]
        prefix = target + "/"
        outcomes = {k[len(prefix) :]: n for k, n in self.counts.items() if k.startswith(prefix)}
        record(target, examples=count, **({"outcomes": outcomes} if outcomes else {}))
        assert count >= at_least, f"{target}: only {count} examples ran"
        return count


def record(target: str, **figures: object) -> None:
    """Print figures for the report; append them as JSON to $SEGDL_RELIABILITY_REPORT."""
    print(f"[reliability] {target}: {figures}")
    path = os.environ.get("SEGDL_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"target": target, **figures}) + "\n")


# --------------------------------------------------------------------------------------------
# Files and messages


def files_under(root: Path) -> set[Path]:
    """Every file and symlink under *root*, resolved paths (directories excluded)."""
    found: set[Path] = set()
    for folder, _dirs, names in os.walk(root):
        for name in names:
            found.add(Path(folder, name).resolve())
    return found


def one_line(message: str) -> bool:
    """A message a terminal shows on one line: no line break of any kind, short enough."""
    return len(message.splitlines()) == 1 and len(message) <= 2000


# --------------------------------------------------------------------------------------------
# This process


def rss_bytes() -> int:
    """Resident set size of this process (/proc/self/statm, Linux)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        resident = int(f.read().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE")


def working_threads() -> list[str]:
    """Names of live threads, without trio's idle cached workers (they expire by themselves
    after 10 s; a busy worker is named after its job)."""
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith("Trio thread "))


def trio_task_count() -> int:
    """Tasks alive in the current trio run."""

    def walk(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
        yield task
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                yield from walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None, "not inside a trio run"
    return sum(1 for _ in walk(root))


# --------------------------------------------------------------------------------------------
# The server, outliving one trio run


@dataclass(frozen=True)
class ServerThread:
    """A server running in its own thread and trio run."""

    info: ServerInfo
    token: trio.lowlevel.TrioToken

    @property
    def port(self) -> int:
        return self.info.port

    async def call(self, function: Callable[[], T]) -> T:
        """Run *function* in the server's trio thread (its state is not thread-safe), from
        another trio run (through a worker thread, as trio requires)."""
        return await trio.to_thread.run_sync(
            partial(trio.from_thread.run_sync, function, trio_token=self.token)
        )


@contextmanager
def serve_in_thread(
    models_dir: Path, settings: ServeSettings | None = None
) -> Iterator[ServerThread]:
    """``segdl serve`` in a thread with its own trio run, for tests whose examples each run
    in a trio run of their own (hypothesis): one server sees every example."""
    started = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        async with open_server(models_dir, settings) as info:
            state["server"] = ServerThread(info, trio.lowlevel.current_trio_token())
            state["stop"] = trio.Event()
            started.set()
            await state["stop"].wait()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            state["error"] = exc
            started.set()

    thread = threading.Thread(target=run, name="segdl-serve-fuzz", daemon=True)
    thread.start()
    started.wait(30)
    try:
        if "error" in state:
            raise state["error"]
        yield state["server"]
    finally:
        if "stop" in state:
            trio.from_thread.run_sync(state["stop"].set, trio_token=state["server"].token)
        thread.join(30)
    assert "error" not in state, state.get("error")


async def poll_until(
    condition: Callable[[], bool | Awaitable[bool]], interval: float = 0.02
) -> None:
    """Wait until *condition* (a function, or a coroutine function) holds, looking every
    *interval* seconds: for state with no event to wait on, such as another thread's.
    Bound it with a cancel scope."""
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        await trio.sleep(interval)
