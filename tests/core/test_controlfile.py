"""The aria2 control file codec: golden bytes, properties, and files written by real aria2c."""

from __future__ import annotations

import http.server
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segdl.core.controlfile import (
    BLOCK_LENGTH,
    CONTROL_SUFFIX,
    ControlFile,
    ControlFileError,
    InFlightPiece,
    bitfield_indices,
    control_path,
    make_bitfield,
)

MIB = 1024 * 1024
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

# ---------------------------------------------------------------------------------------
# Golden bytes, built by hand from the table in reference/anchors.md §1.9.
#
# 3 pieces of 1 MiB, the last one 100000 bytes; piece 0 complete; piece 1 in flight with
# blocks 0-9 and 12 done (the gap at 10 ends its usable prefix at 10 blocks).

GOLDEN_TOTAL = 2 * MIB + 100_000  # 0x2186A0
GOLDEN_V1 = bytes.fromhex(
    "0001"  # version 1
    "00000000"  # extension
    "00000000"  # info hash length (no info hash follows)
    "00100000"  # piece length 1048576
    "00000000002186a0"  # total length 2197152
    "0000000000000000"  # upload length
    "00000001"  # bitfield length: ceil(3 / 8)
    "80"  # bitfield: piece 0 done, 5 spare bits zero
    "00000001"  # one in-flight piece
    "00000001"  # index 1
    "00100000"  # length 1048576
    "00000008"  # block bitfield length: 64 blocks
    "ffc8000000000000"  # blocks 0-9 and 12
)
# Version 0: the same fields in host byte order, which we read as little-endian.
# EXTENSION is a byte array in aria2, so it has no byte order.
GOLDEN_V0 = bytes.fromhex(
    "0000"
    "00000000"
    "00000000"
    "00001000"
    "a086210000000000"
    "0000000000000000"
    "01000000"
    "80"
    "01000000"
    "01000000"
    "00001000"
    "08000000"
    "ffc8000000000000"
)
GOLDEN = ControlFile(
    piece_length=MIB,
    total_length=GOLDEN_TOTAL,
    bitfield=b"\x80",
    in_flight=(InFlightPiece(1, MIB, bytes.fromhex("ffc8000000000000")),),
)


def test_golden_encode() -> None:
    assert GOLDEN.encode() == GOLDEN_V1


def test_golden_decode() -> None:
    decoded = ControlFile.decode(GOLDEN_V1)
    assert decoded == GOLDEN
    assert decoded.num_pieces == 3
    assert [decoded.is_piece_done(i) for i in range(3)] == [True, False, False]
    assert decoded.in_flight[0].completed_prefix() == 10 * BLOCK_LENGTH


def test_version_0_is_read_little_endian_and_written_as_version_1() -> None:
    decoded = ControlFile.decode(GOLDEN_V0)
    assert decoded == GOLDEN
    assert decoded.encode() == GOLDEN_V1


def test_extension_and_info_hash_round_trip() -> None:
    cf = ControlFile(
        piece_length=MIB,
        total_length=MIB,
        bitfield=b"\x00",
        upload_length=12345,
        info_hash=bytes(range(20)),
        extension=1,
    )
    data = cf.encode()
    assert data[:14] == bytes.fromhex("00010000000100000014") + bytes(range(4))
    assert ControlFile.decode(data) == cf


def test_empty_download() -> None:
    cf = ControlFile(piece_length=MIB, total_length=0, bitfield=b"")
    assert cf.num_pieces == 0
    assert ControlFile.decode(cf.encode()) == cf
    assert len(cf.encode()) == 2 + 4 + 4 + 4 + 8 + 8 + 4 + 0 + 4


def test_trailing_bytes_are_ignored_like_aria2() -> None:
    assert ControlFile.decode(GOLDEN_V1 + b"\x00\x01junk") == GOLDEN


def test_spare_bits_are_cleared_on_read() -> None:
    data = bytearray(GOLDEN_V1)
    data[_BITFIELD] = 0x87  # piece 0 plus three of the five spare bits
    decoded = ControlFile.decode(bytes(data))
    assert decoded == GOLDEN
    assert decoded.encode() == GOLDEN_V1


def test_spare_bits_of_a_short_piece_are_cleared_on_read() -> None:
    cf = ControlFile(
        piece_length=MIB,
        total_length=GOLDEN_TOTAL,
        bitfield=b"\x00",
        in_flight=(InFlightPiece.from_prefix(2, 100_000, 100_000),),
    )
    data = cf.encode()
    assert data[-1] == 0xFE  # 7 blocks, one spare bit
    assert ControlFile.decode(data[:-1] + b"\xff") == cf


def test_constructor_rejects_spare_bits() -> None:
    with pytest.raises(ControlFileError, match="past its 3 pieces"):
        ControlFile(piece_length=MIB, total_length=GOLDEN_TOTAL, bitfield=b"\x81")
    with pytest.raises(ControlFileError, match="past its 7 blocks"):
        InFlightPiece(2, 100_000, b"\xff")


def _patched(offset: int, value: bytes, data: bytes = GOLDEN_V1) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


# Offsets into GOLDEN_V1.
_HASH_LEN, _PIECE_LEN, _TOTAL, _BF_LEN, _BITFIELD, _COUNT = 6, 10, 14, 30, 34, 35
_INDEX, _LENGTH, _BLOCKS_LEN = 39, 43, 47


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "truncated: version", id="empty"),
        pytest.param(b"\x00\x02" + GOLDEN_V1[2:], "unsupported control file version 0002", id="v2"),
        pytest.param(b"\x01\x00" + GOLDEN_V1[2:], "version 0100", id="v256"),
        pytest.param(
            _patched(_HASH_LEN, b"\x00\x00\x00\x15"), "info hash length 21", id="hash-too-long"
        ),
        pytest.param(_patched(_PIECE_LEN, b"\x00\x00\x00\x00"), "piece length is 0", id="piece-0"),
        pytest.param(
            _patched(_TOTAL, b"\x80" + bytes(7)), "total length .* out of range", id="total-sign"
        ),
        pytest.param(
            _patched(_BF_LEN, b"\x00\x00\x00\x02"), "bitfield length 2, expected 1", id="bf-len"
        ),
        pytest.param(
            _patched(_COUNT, b"\x00\x00\x00\x04"), "4 in-flight pieces, but only 3", id="count"
        ),
        pytest.param(
            _patched(_COUNT, b"\xff\xff\xff\xff"), "4294967295 in-flight pieces", id="count-huge"
        ),
        pytest.param(
            _patched(_COUNT, b"\x00\x00\x00\x02"), "truncated: in-flight piece index", id="count-2"
        ),
        pytest.param(
            _patched(_INDEX, b"\x00\x00\x00\x03"), "index 3 out of range for 3", id="index"
        ),
        pytest.param(
            _patched(_INDEX, b"\x00\x00\x00\x00"), "piece 0 is also marked complete", id="done"
        ),
        pytest.param(
            _patched(_LENGTH, b"\x00\x10\x00\x01"), "more than the piece length", id="length"
        ),
        pytest.param(
            _patched(_LENGTH, b"\x00\x0f\xc0\x00"),
            "length 1032192, but the piece is 1048576",
            id="length-not-real",
        ),
        pytest.param(
            _patched(_INDEX, b"\x00\x00\x00\x02"),
            "piece 2: length 1048576, but the piece is 100000 bytes",
            id="last-piece-length",
        ),
        pytest.param(
            _patched(_BLOCKS_LEN, b"\x00\x00\x00\x07"), "bitfield length 7, expected 8", id="blk"
        ),
        pytest.param(GOLDEN_V1[:-1], "truncated: in-flight piece 1 bitfield", id="short"),
    ],
)
def test_decode_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ControlFileError, match=message):
        ControlFile.decode(data)


def test_decode_rejects_a_piece_listed_twice() -> None:
    twice = _patched(_COUNT, b"\x00\x00\x00\x02") + GOLDEN_V1[_INDEX:]
    with pytest.raises(ControlFileError, match="piece 1 listed twice"):
        ControlFile.decode(twice)


def test_error_messages_are_one_line() -> None:
    for data in (b"", GOLDEN_V1[:20], _patched(_COUNT, b"\x00\x00\x00\x04")):
        with pytest.raises(ControlFileError) as info:
            ControlFile.decode(data)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"piece_length": 0}, "piece length 0"),
        ({"piece_length": 2**32}, "piece length"),
        ({"total_length": -1}, "total length"),
        ({"total_length": 2**63}, "total length"),
        ({"upload_length": 2**64}, "upload length"),
        ({"extension": 2**32}, "extension"),
        ({"info_hash": bytes(21)}, "info hash length 21"),
        ({"bitfield": b""}, "bitfield is 0 bytes, expected 1"),
        ({"in_flight": (InFlightPiece(3, MIB, bytes(8)),)}, "index 3 out of range"),
        ({"in_flight": (InFlightPiece(2, MIB, bytes(8)),)}, "the piece is 100000 bytes"),
        ({"in_flight": (InFlightPiece(0, MIB, bytes(8)),)}, "also marked complete"),
        (
            {"in_flight": (InFlightPiece(1, MIB, bytes(8)), InFlightPiece(1, MIB, bytes(8)))},
            "listed twice",
        ),
    ],
)
def test_constructor_rejects(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {
        "piece_length": MIB,
        "total_length": GOLDEN_TOTAL,
        "bitfield": b"\x80",
    }
    fields.update(kwargs)
    with pytest.raises(ControlFileError, match=message):
        ControlFile(**fields)


@pytest.mark.parametrize(
    ("index", "length", "blocks", "message"),
    [
        (-1, MIB, bytes(8), "index -1"),
        (2**32, MIB, bytes(8), "index"),
        (0, 0, b"", "length 0"),
        (0, 2**32, bytes(32768), "length"),
        (0, MIB, bytes(7), "7 bytes, expected 8"),
        (0, BLOCK_LENGTH + 1, b"", "0 bytes, expected 1"),
    ],
)
def test_in_flight_piece_rejects(index: int, length: int, blocks: bytes, message: str) -> None:
    with pytest.raises(ControlFileError, match=message):
        InFlightPiece(index, length, blocks)


def test_constructor_accepts_bytearray_and_list_and_stays_hashable() -> None:
    # Callers that build bitfields in a bytearray get an immutable, hashable value back.
    blocks = bytearray(bytes.fromhex("ffc8000000000000"))
    piece = InFlightPiece(1, MIB, blocks)  # type: ignore[arg-type]
    cf = ControlFile(
        piece_length=MIB,
        total_length=GOLDEN_TOTAL,
        bitfield=bytearray(b"\x80"),  # type: ignore[arg-type]
        in_flight=[piece],  # type: ignore[arg-type]
    )
    assert type(cf.bitfield) is bytes
    assert type(piece.blocks) is bytes
    assert cf == GOLDEN
    assert hash(cf) == hash(GOLDEN)


def test_is_piece_done_checks_the_index() -> None:
    with pytest.raises(IndexError):
        GOLDEN.is_piece_done(3)
    with pytest.raises(IndexError):
        GOLDEN.is_piece_done(-1)


def test_control_path() -> None:
    assert CONTROL_SUFFIX == ".aria2"
    assert control_path("/data/model.safetensors") == "/data/model.safetensors.aria2"


@pytest.mark.parametrize(
    ("length", "done", "blocks", "prefix"),
    [
        (MIB, 0, bytes(8), 0),
        (MIB, BLOCK_LENGTH - 1, bytes(8), 0),
        (MIB, BLOCK_LENGTH, b"\x80" + bytes(7), BLOCK_LENGTH),
        (MIB, 10 * BLOCK_LENGTH + 5, b"\xff\xc0" + bytes(6), 10 * BLOCK_LENGTH),
        (MIB, MIB, b"\xff" * 8, MIB),
        (100_000, 99_999, b"\xfc", 6 * BLOCK_LENGTH),  # the short last block is not whole yet
        (100_000, 100_000, b"\xfe", 100_000),  # now it is; the prefix stops at the piece end
        (1, 1, b"\x80", 1),
    ],
)
def test_from_prefix(length: int, done: int, blocks: bytes, prefix: int) -> None:
    piece = InFlightPiece.from_prefix(4, length, done)
    assert piece.blocks == blocks
    assert piece.completed_prefix() == prefix


def test_from_prefix_rejects_impossible_counts() -> None:
    with pytest.raises(ControlFileError):
        InFlightPiece.from_prefix(0, MIB, MIB + 1)
    with pytest.raises(ControlFileError):
        InFlightPiece.from_prefix(0, MIB, -1)


def test_completed_prefix_stops_at_the_first_gap() -> None:
    assert InFlightPiece(0, MIB, b"\x7f" + b"\xff" * 7).completed_prefix() == 0
    assert InFlightPiece(0, MIB, b"\xff\xff\xef" + b"\xff" * 5).completed_prefix() == (
        19 * BLOCK_LENGTH
    )


def test_make_bitfield_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        make_bitfield(3, [3])
    with pytest.raises(ValueError, match="negative"):
        make_bitfield(-1, [])
    with pytest.raises(ValueError, match="cannot hold"):
        bitfield_indices(b"\x00", 9)


def _piece_sets(num_pieces: int) -> st.SearchStrategy[tuple[int, set[int]]]:
    indices = st.sets(st.integers(0, num_pieces - 1)) if num_pieces else st.just(set[int]())
    return st.tuples(st.just(num_pieces), indices)


@given(st.integers(0, 300).flatmap(_piece_sets))
def test_bitfield_round_trip(case: tuple[int, set[int]]) -> None:
    num_pieces, done = case
    bitfield = make_bitfield(num_pieces, done)
    assert len(bitfield) == -(-num_pieces // 8)
    assert bitfield_indices(bitfield, num_pieces) == sorted(done)
    # Spare bits never count, and never reach a written bitfield.
    if bitfield:
        assert bitfield_indices(bitfield[:-1] + b"\xff", num_pieces) == sorted(
            set(done) | set(range((len(bitfield) - 1) * 8, num_pieces))
        )


@given(st.integers(1, 3 * MIB).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_from_prefix_keeps_whole_blocks(case: tuple[int, int]) -> None:
    length, done = case
    piece = InFlightPiece.from_prefix(0, length, done)
    expected = length if done == length else done - done % BLOCK_LENGTH
    assert piece.completed_prefix() == expected


# ---------------------------------------------------------------------------------------
# Properties over random valid control files.


def _bits(nbits: int, leading: int, extra: set[int]) -> bytes:
    """*nbits* bits, MSB first: the first *leading* set, plus those in *extra*."""
    size = -(-nbits // 8)
    value = ((1 << leading) - 1) << (size * 8 - leading)
    for bit in extra:
        value |= 1 << (size * 8 - 1 - bit)
    return value.to_bytes(size, "big")


@st.composite
def control_files(
    draw: st.DrawFn,
    *,
    max_pieces: int = 4096,
    max_total: int = 2**40,
    max_piece_length: int = U32_MAX,
) -> ControlFile:
    piece_length = draw(
        st.one_of(
            st.sampled_from([BLOCK_LENGTH, MIB]),
            st.integers(1, min(2**24, max_piece_length)),
            st.integers(1, max_piece_length),
        )
    )
    num_pieces = draw(st.integers(0, min(max_pieces, -(-max_total // piece_length))))
    if num_pieces == 0:
        total_length = 0
    else:
        total_length = draw(
            st.integers(
                (num_pieces - 1) * piece_length + 1, min(num_pieces * piece_length, max_total)
            )
        )
    done: set[int] = set()
    if num_pieces:
        done = draw(st.sets(st.integers(0, num_pieces - 1), max_size=32))
        if draw(st.booleans()):
            start = draw(st.integers(0, num_pieces - 1))
            done |= set(range(start, draw(st.integers(start, num_pieces))))
    candidates = sorted(set(range(num_pieces)) - done)
    indices: list[int] = []
    if candidates:
        indices = draw(st.lists(st.sampled_from(candidates), unique=True, max_size=8))
    in_flight = []
    for index in indices:
        length = min(piece_length, total_length - index * piece_length)
        num_blocks = -(-length // BLOCK_LENGTH)
        leading = draw(st.integers(0, num_blocks))
        extra = draw(st.sets(st.integers(0, num_blocks - 1), max_size=4))
        in_flight.append(InFlightPiece(index, length, _bits(num_blocks, leading, extra)))
    return ControlFile(
        piece_length=piece_length,
        total_length=total_length,
        bitfield=make_bitfield(num_pieces, done),
        in_flight=tuple(in_flight),
        upload_length=draw(st.one_of(st.just(0), st.integers(0, U64_MAX))),
        info_hash=draw(st.one_of(st.just(b""), st.binary(max_size=20))),
        extension=draw(st.one_of(st.just(0), st.integers(0, U32_MAX))),
    )


small_control_files = control_files(max_pieces=64, max_total=2**22, max_piece_length=2**18)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(control_files(), st.binary(max_size=16))
def test_round_trip(cf: ControlFile, trailing: bytes) -> None:
    data = cf.encode()
    decoded = ControlFile.decode(data)
    assert decoded == cf
    assert decoded.encode() == data
    assert ControlFile.decode(data + trailing) == cf
    # The done set and the prefixes survive as the numbers a resume uses.
    done = bitfield_indices(cf.bitfield, cf.num_pieces)
    assert [i for i in range(cf.num_pieces) if decoded.is_piece_done(i)] == done
    for piece in decoded.in_flight:
        assert 0 <= piece.completed_prefix() <= piece.length


@settings(deadline=None)
@given(small_control_files)
def test_every_truncation_is_rejected(cf: ControlFile) -> None:
    data = cf.encode()
    for end in range(len(data)):
        with pytest.raises(ControlFileError, match="truncated"):
            ControlFile.decode(data[:end])


@given(st.binary(max_size=200))
def test_garbage_raises_only_control_file_error(data: bytes) -> None:
    try:
        cf = ControlFile.decode(data)
    except ControlFileError:
        return
    assert ControlFile.decode(cf.encode()) == cf


@given(st.sampled_from([b"\x00\x00", b"\x00\x01"]), st.binary(max_size=200))
def test_garbage_after_a_valid_version_raises_only_control_file_error(
    version: bytes, rest: bytes
) -> None:
    try:
        cf = ControlFile.decode(version + rest)
    except ControlFileError:
        return
    assert ControlFile.decode(cf.encode()) == cf


@settings(deadline=None)
@given(small_control_files, st.data())
def test_corrupted_files_raise_only_control_file_error(
    cf: ControlFile, data: st.DataObject
) -> None:
    corrupt = bytearray(cf.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(corrupt) - 1))
        corrupt[position] = data.draw(st.integers(0, 255))
    try:
        decoded = ControlFile.decode(bytes(corrupt))
    except ControlFileError:
        return
    assert ControlFile.decode(decoded.encode()) == decoded


# ---------------------------------------------------------------------------------------
# Files written by a real aria2c.

_FILE_SIZE = 24 * MIB + 300_000  # 25 pieces; the last one short, with a partial last block
# Each response sends this much, then holds the connection open until the test ends.  aria2
# can then never finish, and the control file it saves has complete pieces and pieces whose
# last block is cut in the middle — without relying on how fast this machine is.
_STALL_AFTER = MIB + 300_000
_CHUNK = 64 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class _SlowServer(http.server.ThreadingHTTPServer):
    # Join every handler thread in server_close(), so no thread outlives the test.
    daemon_threads = False
    block_on_close = True

    def __init__(self, payload: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _SlowRangeHandler)
        self.payload = payload
        self.stopping = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # aria2 drops connections when it stops; that is the point of the test, not an error.
        pass


class _SlowRangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload with single byte ranges (RFC 9110 §14), slowly."""

    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _SlowServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def _byte_range(self, size: int) -> tuple[int, int] | None:
        """``(first, last)`` inclusive, ``None`` to send the whole body (§14.2: a server may
        ignore a Range it does not understand), or ``(size, size)`` for unsatisfiable."""
        header = self.headers.get("Range")
        if header is None:
            return None
        match = _RANGE.fullmatch(header.strip())
        if match is None or not (match[1] or match[2]):
            return None
        if not match[1]:  # suffix range: the last N bytes
            suffix = int(match[2])
            return (max(0, size - suffix), size - 1) if suffix else (size, size)
        first = int(match[1])
        last = int(match[2]) if match[2] else size - 1
        if last < first:
            return None
        if first >= size:
            return (size, size)
        return first, min(last, size - 1)

    def _respond(self, *, send_body: bool) -> None:
        payload = self.server.payload
        size = len(payload)
        byte_range = self._byte_range(size)
        if byte_range == (size, size):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if byte_range is None:
            first, last = 0, size - 1
            self.send_response(200)
        else:
            first, last = byte_range
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        if not send_body:
            return
        position, sent = first, 0
        try:
            while position <= last:
                if sent >= _STALL_AFTER:
                    self.server.stopping.wait(30)
                    self.close_connection = True
                    return
                end = min(position + _CHUNK, last + 1)
                self.wfile.write(payload[position:end])
                sent += end - position
                position = end
                if self.server.stopping.wait(0.02):
                    self.close_connection = True
                    return
        except ConnectionError:
            self.close_connection = True


@pytest.fixture
def slow_server() -> Iterator[_SlowServer]:
    payload = random.Random(1_048_576).randbytes(_FILE_SIZE)
    server = _SlowServer(payload)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        thread.join()
        server.server_close()


def _partly_done(path: Path) -> bool:
    try:
        cf = ControlFile.decode(path.read_bytes())
    except (OSError, ControlFileError):
        return False
    return any(cf.bitfield) and any(p.completed_prefix() for p in cf.in_flight)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("aria2c") is None, reason="aria2c is not installed (not on PATH)")
def test_real_aria2c_control_file(slow_server: _SlowServer, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{slow_server.server_address[1]}/f.bin"
    log_path = tmp_path / "aria2c.log"
    command = [
        "aria2c",
        "--no-conf",
        "-x16",
        "-s16",
        "-k1M",
        "--auto-save-interval=1",
        "--summary-interval=0",
        "--console-log-level=warn",
        "-d",
        str(tmp_path / "out"),
        "-o",
        "f.bin",
        url,
    ]
    control = tmp_path / "out" / ("f.bin" + CONTROL_SUFFIX)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not _partly_done(control):
                assert process.poll() is None, "aria2c exited before it was stopped"
                assert time.monotonic() < deadline, "aria2c made no progress in 60 s"
                time.sleep(0.1)
            # aria2 saves the control file on a graceful stop; SIGKILL would lose it.
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log_path.read_text(errors="replace")
    assert process.returncode != 0, output  # stopped, not finished
    assert control.exists(), output

    data = control.read_bytes()
    cf = ControlFile.decode(data)
    assert cf.encode() == data  # canonical: big-endian v1, spare bits zero, nothing trailing
    assert data[:2] == b"\x00\x01"
    assert cf.piece_length == MIB
    assert cf.total_length == _FILE_SIZE
    assert cf.num_pieces == 25
    assert (cf.upload_length, cf.info_hash, cf.extension) == (0, b"", 0)

    payload = slow_server.payload
    on_disk = (tmp_path / "out" / "f.bin").read_bytes()
    done = bitfield_indices(cf.bitfield, cf.num_pieces)
    assert done
    for index in done:
        start = index * MIB
        assert on_disk[start : start + MIB] == payload[start : start + MIB], index
    assert any(piece.completed_prefix() for piece in cf.in_flight)
    for piece in cf.in_flight:
        start = piece.index * MIB
        end = start + piece.completed_prefix()
        assert on_disk[start:end] == payload[start:end], piece.index
