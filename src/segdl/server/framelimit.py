"""A message size limit that answers instead of hanging up.

trio-websocket enforces its ``max_message_size`` by closing the connection with 1009 (its
``WebSocketConnection._handle_message_event``), and offers no hook to do otherwise.  qDiffusion
shows that as "Connection aborted" and stops its backend.  So the limit is kept one layer
lower, on the bytes the client sends: :class:`MessageSizeGuard` follows the WebSocket framing
(RFC 6455 §5.2) without unmasking anything; once a binary message's payload would pass the
limit, the rest of its frames are dropped, and where its final frame was, an empty final
frame is put (masked, as client frames must be, §5.3).  trio-websocket then hands over a
message cut short, never more than the limit, and the guard has noted its real size, so the
server answers with an ``error`` and reads on.  Memory stays bounded by the limit.

Text messages are not cut (a cut could split a UTF-8 sequence, which RFC 6455 §8.1 makes a
protocol error): they pass through and meet trio-websocket's own limit, the same, which
closes with 1009.  The protocol never uses text messages (they get "Invalid request").
Control frames pass through untouched; frames that break the protocol are passed on for
wsproto to refuse.
"""

from __future__ import annotations

import struct
from typing import Final

import trio

__all__ = ["GuardedStream", "MessageSizeGuard"]

_CONTINUATION: Final = 0x0
_TEXT: Final = 0x1
_BINARY: Final = 0x2
_FIN: Final = 0x80
_MASK: Final = 0x80


class MessageSizeGuard:
    """Sans-IO: :meth:`feed` it what the client sent, forward what it returns.

    After a message that was cut, :meth:`pop_oversized` with that message's number (counting
    every complete text or binary message from 0, as they are received) gives its real size.
    """

    def __init__(self, limit: int, *, skip: int = 0) -> None:
        if limit < 1:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._skip = skip  # bytes passed on unread first: the HTTP upgrade request
        self._header = bytearray()
        self._payload_left = 0
        self._forwarding = True
        # The data message in progress.
        self._in_message = False
        self._binary = False
        self._forwarded = 0  # payload bytes passed on
        self._frames_forwarded = 0
        self._size = 0  # payload bytes the client sent
        self._cutting = False
        self._messages = 0  # complete data messages so far
        self._oversized: dict[int, int] = {}

    def pop_oversized(self, message_number: int) -> int | None:
        """The real size of message *message_number* if it was cut, else ``None``."""
        return self._oversized.pop(message_number, None)

    def feed(self, data: bytes) -> bytes:
        out: list[bytes | memoryview] = []
        view = memoryview(data)
        if self._skip:
            taken = min(self._skip, len(view))
            out.append(view[:taken])
            view = view[taken:]
            self._skip -= taken
        while view:
            if self._payload_left:
                taken = min(self._payload_left, len(view))
                if self._forwarding:
                    out.append(view[:taken])
                view = view[taken:]
                self._payload_left -= taken
                continue
            needed = self._header_size()
            want = 2 if needed is None else needed
            taken = min(want - len(self._header), len(view))
            self._header += view[:taken]
            view = view[taken:]
            needed = self._header_size()
            if needed is not None and len(self._header) == needed:
                out.extend(self._on_header())
        return b"".join(out)

    def _header_size(self) -> int | None:
        """The size of the header being read, once its first two bytes are in."""
        if len(self._header) < 2:
            return None
        length7 = self._header[1] & 0x7F
        extended = 2 if length7 == 126 else 8 if length7 == 127 else 0
        mask = 4 if self._header[1] & _MASK else 0
        return 2 + extended + mask

    def _on_header(self) -> list[bytes]:
        header = bytes(self._header)
        self._header.clear()
        first, second = header[0], header[1]
        fin, opcode = bool(first & _FIN), first & 0x0F
        length = second & 0x7F
        if length == 126:
            length = struct.unpack_from("!H", header, 2)[0]
        elif length == 127:
            length = struct.unpack_from("!Q", header, 2)[0]
        self._payload_left = length
        self._forwarding = True
        if opcode & 0x8 or opcode not in (_CONTINUATION, _TEXT, _BINARY):
            return [header]  # control frames (and reserved opcodes, for wsproto to refuse)
        if opcode != _CONTINUATION:
            self._in_message = True
            self._binary = opcode == _BINARY
            self._forwarded = self._frames_forwarded = self._size = 0
            self._cutting = False
        elif not self._in_message:
            return [header]  # a continuation of nothing: wsproto will refuse it
        self._size += length
        if self._binary and (self._cutting or self._forwarded + length > self.limit):
            self._cutting = True
            self._forwarding = False
            out = []
            if fin:
                out.append(self._empty_final_frame())
                self._oversized[self._messages] = self._size
                self._end_message()
            return out
        self._forwarded += length
        self._frames_forwarded += 1
        if fin:
            self._end_message()
        return [header]

    def _empty_final_frame(self) -> bytes:
        opcode = _BINARY if self._frames_forwarded == 0 else _CONTINUATION
        # A zero masking key leaves the (empty) payload as it is.
        return bytes([_FIN | opcode, _MASK | 0, 0, 0, 0, 0])

    def _end_message(self) -> None:
        self._messages += 1
        self._in_message = False


class GuardedStream(trio.abc.Stream):
    """*stream*, with what it receives passed through a :class:`MessageSizeGuard`."""

    def __init__(self, stream: trio.abc.Stream, guard: MessageSizeGuard) -> None:
        self._stream = stream
        self.guard = guard
        self._pending = b""  # passed, but more than the caller asked for

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._pending:
            await trio.lowlevel.checkpoint()
        while not self._pending:
            data = bytes(await self._stream.receive_some(max_bytes))
            if not data:
                return b""
            # Empty when all of it was dropped (the middle of a message being cut): read on.
            self._pending = self.guard.feed(data)
        size = len(self._pending) if max_bytes is None else max_bytes
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()
