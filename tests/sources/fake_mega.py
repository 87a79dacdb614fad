"""A fake MEGA: the ``/cs`` JSON API and a storage server, from reference/sources.md §4 and §6.

* ``POST /cs?id={seq}`` with a JSON array of commands; ``{"a":"g","g":1,"p":handle}`` answers
  ``[{"s": size, "at": attributes, "g": storage URL, "msd": 1, "tl": 0}]``; errors are bare
  negative numbers (``-9`` ENOENT…); ``-3`` EAGAIN can be answered a few times first;
* the storage server serves the *ciphertext* with ``Range`` and with MEGA's path-suffix ranges
  ``{g}/{start}-{end}``; a 509 mode sends ``X-MEGA-Time-Left``.

The encryption here is written independently of segdl's: the keystream is built block by block
with AES-ECB over the counter blocks, and the MAC with one ECB call per 16-byte block.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fakeweb import check_clean

from segdl.testing.rangeserver import Fault, RangeServer, RequestInfo, Resource


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _ecb(key: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def ctr_encrypt(key: bytes, nonce: bytes, plain: bytes) -> bytes:
    blocks = (len(plain) + 15) // 16
    counters = b"".join(nonce + i.to_bytes(8, "big") for i in range(blocks))
    stream = _ecb(key, counters)[: len(plain)]
    return (int.from_bytes(plain, "big") ^ int.from_bytes(stream, "big")).to_bytes(
        len(plain), "big"
    )


def mac_chunks(size: int) -> list[tuple[int, int]]:
    """(start, end) of MEGA's MAC chunks, as mega.py's get_chunks lists them."""
    chunks: list[tuple[int, int]] = []
    start, step = 0, 0x20000
    while start + step < size:
        chunks.append((start, start + step))
        start += step
        if step < 0x100000:
            step += 0x20000
    if start < size:
        chunks.append((start, size))
    return chunks


def meta_mac(key: bytes, nonce: bytes, plain: bytes) -> bytes:
    block = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    file_mac = 0
    for start, end in mac_chunks(len(plain)):
        chunk = plain[start:end]
        chunk += bytes(-len(chunk) % 16)
        mac = int.from_bytes(nonce + nonce, "big")
        for i in range(0, len(chunk), 16):
            mixed = mac ^ int.from_bytes(chunk[i : i + 16], "big")
            mac = int.from_bytes(block.update(mixed.to_bytes(16, "big")), "big")
        mixed = file_mac ^ mac
        file_mac = int.from_bytes(block.update(mixed.to_bytes(16, "big")), "big")
    words = [(file_mac >> shift) & 0xFFFFFFFF for shift in (96, 64, 32, 0)]
    return (words[0] ^ words[1]).to_bytes(4, "big") + (words[2] ^ words[3]).to_bytes(4, "big")

    words = [int.from_bytes(file_mac[i : i + 4], "big") for i in range(0, 16, 4)]
    return (words[0] ^ words[1]).to_bytes(4, "big") + (words[2] ^ words[3]).to_bytes(4, "big")


@dataclass
class MegaFile:
    name: str
    plain: bytes
    handle: str = field(default_factory=lambda: b64url(os.urandom(6)))
    key: bytes = field(default_factory=lambda: os.urandom(16))
    nonce: bytes = field(default_factory=lambda: os.urandom(8))
    #: Bytes of ciphertext to flip on the server (a tampered file).
    tamper_at: int | None = None

    @functools.cached_property
    def mac(self) -> bytes:
        return meta_mac(self.key, self.nonce, self.plain)

    @property
    def link_key(self) -> str:
        mac = self.mac
        first = _xor(self.key, self.nonce + mac)
        return b64url(first + self.nonce + mac)

    def link(self, *, legacy: bool = False) -> str:
        if legacy:
            return f"https://mega.nz/#!{self.handle}!{self.link_key}"
        return f"https://mega.nz/file/{self.handle}#{self.link_key}"

    def attributes(self) -> str:
        text = b"MEGA" + json.dumps({"n": self.name, "c": "fingerprint"}).encode()
        text += bytes(-len(text) % 16)
        encryptor = Cipher(algorithms.AES(self.key), modes.CBC(bytes(16))).encryptor()
        return b64url(encryptor.update(text) + encryptor.finalize())

    def ciphertext(self) -> bytes:
        data = bytearray(ctr_encrypt(self.key, self.nonce, self.plain))
        if self.tamper_at is not None:
            data[self.tamper_at] ^= 0x01
        return bytes(data)


class _ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ApiServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        status, answer = self.server.fake._api(self.path, dict(self.headers.items()), body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _ApiServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, fake: FakeMega) -> None:
        super().__init__(("127.0.0.1", 0), _ApiHandler)
        self.fake = fake


@dataclass
class ApiCall:
    path: str
    headers: dict[str, str]
    body: object


class FakeMega:
    def __init__(self, *, rate_limit: int | None = None) -> None:
        self.storage = RangeServer(rate_limit=rate_limit)
        self.files: dict[str, MegaFile] = {}
        self.errors: dict[str, int] = {}  # handle → API error code
        self.eagain_first = 0  # answer -3 this many times before the real answer
        self.over_quota_seconds: int | None = None  # 509 from the storage server
        self.calls: list[ApiCall] = []
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        self._api_server = _ApiServer(self)
        self._thread = threading.Thread(target=self._api_server.serve_forever, daemon=True)
        self.storage.on_request(self._on_storage)

    @property
    def api_url(self) -> str:
        host, port = self._api_server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, file: MegaFile) -> MegaFile:
        self.files[file.handle] = file
        return file

    def __enter__(self) -> FakeMega:
        self.storage.start()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._api_server.shutdown()
        self._api_server.server_close()
        self._thread.join()
        self.storage.stop()
        check_clean(self.storage)

    def _api(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, object]:
        try:
            commands = json.loads(body)
        except ValueError:
            commands = None
        with self._lock:
            self.calls.append(ApiCall(path, headers, commands))
            if not re.fullmatch(r"/cs\?id=[0-9]+(&.*)?", path):
                return 200, -2
            if not isinstance(commands, list) or len(commands) != 1:
                return 200, -2
            if self.eagain_first:
                self.eagain_first -= 1
                return 200, -3
        command = commands[0]
        if not isinstance(command, dict) or command.get("a") != "g" or "p" not in command:
            return 200, [-2]
        handle = command["p"]
        if handle in self.errors:
            return 200, [self.errors[handle]]
        file = self.files.get(handle)
        if file is None:
            return 200, [-9]
        token = f"t{next(self._tokens)}-{handle}"
        self.storage.add(f"/dl/{token}", Resource(body=file.ciphertext(), etag=None))
        return 200, [
            {
                "s": len(file.plain),
                "at": file.attributes(),
                "msd": 1,
                "tl": 0,
                "g": self.storage.url(f"/dl/{token}"),
            }
        ]

    def _on_storage(self, info: RequestInfo) -> Fault | None:
        if self.over_quota_seconds is not None:
            return Fault.status(
                509,
                headers={"X-MEGA-Time-Left": str(self.over_quota_seconds)},
                body=b"Bandwidth Limit Exceeded",
            )
        match = re.fullmatch(r"(/dl/[^/]+)/([0-9]+)-([0-9]+)", info.path)
        if match is None:
            return None
        # The token is "t{n}-{handle}"; handles are base64url and may contain "-" too.
        handle = match.group(1).removeprefix("/dl/").split("-", 1)[1]
        data = self.files[handle].ciphertext()
        first, last = int(match.group(2)), int(match.group(3))
        return Fault.status(
            200,
            headers={"Content-Type": "application/octet-stream"},
            body=data[first : last + 1],
        )
