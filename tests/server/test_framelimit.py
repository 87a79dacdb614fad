"""The message size guard, against wsproto's own framing on both sides.

Frames are built by wsproto's client-side ``FrameProtocol`` (masked, as a client sends them)
and what the guard passes on is parsed by wsproto's server-side one, so the guard is checked
against an independent implementation of RFC 6455 §5.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from segdl.server.framelimit import GuardedStream, MessageSizeGuard

LIMIT = 1000


@dataclass(frozen=True)
class Message:
    opcode: Opcode  # BINARY, TEXT or PING
    pieces: tuple[int, ...]  # fragment sizes

    @property
    def size(self) -> int:
        return sum(self.pieces)


messages = st.builds(
    Message,
    opcode=st.sampled_from([Opcode.BINARY, Opcode.BINARY, Opcode.TEXT, Opcode.PING]),
    pieces=st.lists(st.integers(0, 700), min_size=1, max_size=5).map(tuple),
)


def payload(message: Message, number: int) -> bytes:
    # ASCII, so a text message is valid UTF-8 however it is cut.
    pattern = f"<{number}:{message.opcode.name}>".encode()
    return (pattern * (message.size // len(pattern) + 1))[: message.size]


def encode(sequence: list[Message]) -> bytes:
    client = FrameProtocol(client=True, extensions=[])
    out = []
    for number, message in enumerate(sequence):
        data = payload(message, number)
        if message.opcode is Opcode.PING:
            out.append(client.ping(data[:125]))
            continue
        offset = 0
        for i, size in enumerate(message.pieces):
            piece = data[offset : offset + size]
            offset += size
            fin = i == len(message.pieces) - 1
            out.append(
                client.send_data(piece.decode() if message.opcode is Opcode.TEXT else piece, fin)
            )
    return b"".join(out)


def decode(data: bytes) -> list[tuple[Opcode, bytes]]:
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(data)
    received: list[tuple[Opcode, bytes]] = []
    parts: list[bytes] = []
    opcode = None
    for frame in server.received_frames():
        part = frame.payload  # bytes, or str for text (close frames never come here)
        assert isinstance(part, bytes | str)
        data = part.encode() if isinstance(part, str) else part
        if frame.opcode is Opcode.PING:
            received.append((Opcode.PING, data))
            continue
        if opcode is None:
            opcode = frame.opcode
        parts.append(data)
        if frame.message_finished:
            received.append((opcode, b"".join(parts)))
            parts, opcode = [], None
    return received


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(sequence=st.lists(messages, max_size=8), points=st.lists(st.integers(0, 10**6)))
@settings(max_examples=300)
def test_small_messages_pass_unchanged_and_large_binary_ones_are_cut(
    sequence: list[Message], points: list[int]
) -> None:
    wire = encode(sequence)
    guard = MessageSizeGuard(LIMIT, skip=0)
    passed = b"".join(guard.feed(piece) for piece in cut(wire, points))
    received = decode(passed)
    assert len(received) == len(sequence)
    data_number = 0
    for number, (message, (opcode, got)) in enumerate(zip(sequence, received, strict=True)):
        sent = payload(message, number)
        if message.opcode is Opcode.PING:
            assert (opcode, got) == (Opcode.PING, sent[:125])
            continue
        assert opcode is message.opcode
        oversized = guard.pop_oversized(data_number)
        if message.opcode is Opcode.BINARY and message.size > LIMIT:
            assert oversized == message.size
            assert len(got) <= LIMIT
            assert sent.startswith(got)
        else:
            assert oversized is None
            assert got == sent
        data_number += 1


def test_the_http_head_passes_unread() -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    frames = encode([Message(Opcode.BINARY, (2000,))])
    guard = MessageSizeGuard(LIMIT, skip=len(head))
    passed = guard.feed(head + frames)
    assert passed.startswith(head)
    assert decode(passed[len(head) :]) == [(Opcode.BINARY, b"")]
    assert guard.pop_oversized(0) == 2000
    assert guard.pop_oversized(0) is None


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        MessageSizeGuard(0)


async def test_the_stream_never_returns_more_than_asked() -> None:
    send, receive = trio.testing.memory_stream_pair()
    guarded = GuardedStream(receive, MessageSizeGuard(LIMIT))
    wire = encode([Message(Opcode.BINARY, (300, 300)), Message(Opcode.BINARY, (5000,))])
    await send.send_all(wire)
    await send.aclose()
    got = b""
    while chunk := await guarded.receive_some(7):
        assert len(chunk) <= 7
        got += chunk
    assert decode(got) == [
        (Opcode.BINARY, payload(Message(Opcode.BINARY, (300, 300)), 0)),
        (Opcode.BINARY, b""),
    ]
