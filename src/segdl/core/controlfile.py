"""The aria2 control file (``FILE.aria2``): what is done, encoded byte for byte like aria2.

Theory of operation
-------------------
aria2 keeps the resume state of ``FILE`` in ``FILE.aria2`` (reference/anchors.md §1.9,
aria2's ``doc/manual-src/en/technical-notes.rst`` "Control File (*.aria2) Format").  segdl
reads and writes the same file, so a download started by one program can be continued by
the other.  This module is only the codec and the invariants; reading, writing and the
atomic ``rename()`` belong to the I/O layer.

Layout, version 1 (every integer unsigned, big-endian)::

    VERSION            2   00 01
    EXTENSION          4   00 00 00 00 for HTTP (last byte & 1: BitTorrent info-hash check)
    INFO HASH LENGTH   4   0 for HTTP, at most 20
    INFO HASH          L
    PIECE LENGTH       4   > 0
    TOTAL LENGTH       8
    UPLOAD LENGTH      8   0 for HTTP
    BITFIELD LENGTH    4   == ceil(ceil(TOTAL / PIECE) / 8)
    BITFIELD           B   bit i = byte[i // 8] & (0x80 >> i % 8); 1 = piece complete
    NUM IN-FLIGHT      4   pieces with work started but not complete
    then NUM times:
      INDEX            4   < number of pieces
      LENGTH           4   the piece's length (the last piece is shorter)
      BITFIELD LENGTH  4   == ceil(ceil(LENGTH / 16384) / 8)
      BITFIELD         P   one bit per 16 KiB block of the piece, MSB first

Decisions where aria2's reader leaves room
-------------------------------------------
* **Version 0** files are accepted and never written.  aria2 wrote their integers in host
  byte order and reads them back the same way.  We read them as little-endian on every
  host: version 0 dates from aria2 0.x, whose builds ran on x86, and a fixed order keeps
  :meth:`ControlFile.decode` a pure function of its bytes.  EXTENSION is a byte array in
  aria2 (it tests ``extension[3] & 1``), not an integer, so it is big-endian in both versions.
* **Trailing bytes are ignored**, as aria2 does: its reader stops after the last in-flight
  piece and never looks for the end of the file.  The format is self-delimiting, so extra
  bytes cannot change the meaning of the fields before them.  Every strict prefix of a valid
  file is still rejected, because the last field it cuts is missing.
* **Spare bits** past the last piece (or the last block of a piece) are cleared on read and
  must be zero in a :class:`ControlFile`, so what we write is canonical.  aria2's
  ``BitfieldMan`` only ever sets bits below its block count, and its reader copies the
  bytes without looking at the spare bits, so being lenient here rejects nothing aria2 takes.
* **Stricter than aria2, on purpose.**  aria2 only checks that an in-flight LENGTH is at
  most PIECE LENGTH; its writer always stores the piece's real length (``Piece`` objects
  are created with it), so we require exactly that — a different length would make the
  block bitmap describe the wrong bytes.  An in-flight piece also marked complete, or the
  same index twice, is rejected: aria2 keeps in-flight pieces in a set keyed by index and
  removes a piece from it in the same step that sets its bit.  TOTAL LENGTH must fit in
  aria2's signed 64-bit lengths.
* What needs the download's context is the caller's job: aria2 aborts when TOTAL LENGTH
  differs from the server's length, converts or refuses a different PIECE LENGTH, and checks
  the info hash of a torrent.

Pure: stdlib only, no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BLOCK_LENGTH",
    "CONTROL_SUFFIX",
    "ControlFile",
    "ControlFileError",
    "InFlightPiece",
    "bitfield_indices",
    "control_path",
    "make_bitfield",
]

BLOCK_LENGTH = 16 * 1024  # aria2 Piece.h: a piece is tracked in blocks of this size
CONTROL_SUFFIX = ".aria2"

_VERSION_1 = b"\x00\x01"
_VERSION_0 = b"\x00\x00"
_MAX_INFO_HASH_LENGTH = 20  # a SHA-1 BitTorrent info hash
_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
_I64_MAX = 0x7FFF_FFFF_FFFF_FFFF


class ControlFileError(ValueError):
    """The control file is corrupt, truncated or not one we can use."""


def control_path(path: str) -> str:
    """The control file that belongs to the data file *path*: ``path + ".aria2"``."""
    return path + CONTROL_SUFFIX


def make_bitfield(num_pieces: int, done: Iterable[int]) -> bytes:
    """A bitfield of *num_pieces* bits, MSB first, with the bits in *done* set."""
    if num_pieces < 0:
        raise ValueError(f"num_pieces must not be negative, got {num_pieces}")
    bits = bytearray(_ceil_div(num_pieces, 8))
    for index in done:
        if not 0 <= index < num_pieces:
            raise ValueError(f"piece index {index} out of range for {num_pieces} pieces")
        bits[index >> 3] |= 0x80 >> (index & 7)
    return bytes(bits)


def bitfield_indices(bitfield: bytes, num_pieces: int) -> list[int]:
    """The indices below *num_pieces* whose bit is set, ascending.  Spare bits are ignored."""
    if len(bitfield) * 8 < num_pieces:
        raise ValueError(f"a bitfield of {len(bitfield)} bytes cannot hold {num_pieces} bits")
    indices: list[int] = []
    for byte_index in range(_ceil_div(num_pieces, 8)):
        byte = bitfield[byte_index]
        if not byte:
            continue
        base = byte_index * 8
        for bit in range(8):
            if byte & (0x80 >> bit) and base + bit < num_pieces:
                indices.append(base + bit)
    return indices


@dataclass(frozen=True, slots=True)
class InFlightPiece:
    """A piece with work started but not complete, and which of its 16 KiB blocks are done."""

    index: int
    length: int  # the piece's length (the last piece of a file is shorter)
    blocks: bytes  # one bit per block, MSB first; a set bit is a block fully on disk

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", bytes(self.blocks))
        if not 0 <= self.index <= _U32_MAX:
            raise ControlFileError(f"in-flight piece index {self.index} out of range")
        if not 1 <= self.length <= _U32_MAX:
            raise ControlFileError(
                f"in-flight piece {self.index}: length {self.length} out of range"
            )
        num_blocks = _ceil_div(self.length, BLOCK_LENGTH)
        expected = _ceil_div(num_blocks, 8)
        if len(self.blocks) != expected:
            raise ControlFileError(
                f"in-flight piece {self.index}: block bitfield is {len(self.blocks)} bytes,"
                f" expected {expected}"
            )
        if _has_spare_bits(self.blocks, num_blocks):
            raise ControlFileError(
                f"in-flight piece {self.index}: bits set past its {num_blocks} blocks"
            )

    @property
    def num_blocks(self) -> int:
        return _ceil_div(self.length, BLOCK_LENGTH)

    def completed_prefix(self) -> int:
        """Bytes from the start of the piece covered by the run of done blocks from block 0.

        This is what a resume may keep: aria2 resumes a piece at its first missing block, so
        done blocks after a gap are downloaded again.
        """
        run = 0
        for byte in self.blocks:
            if byte == 0xFF:
                run += 8
                continue
            # Count the leading ones of this byte, then stop: the run has ended.
            mask = 0x80
            while byte & mask:
                run += 1
                mask >>= 1
            break
        return min(run * BLOCK_LENGTH, self.length)

    @classmethod
    def from_prefix(cls, index: int, length: int, done_bytes: int) -> InFlightPiece:
        """The piece with the blocks wholly inside its first *done_bytes* bytes marked done.

        A partial block is not marked (aria2 downloads it again), except that the piece's
        last, short block is done when *done_bytes* reaches the end of the piece.
        """
        if not 0 <= done_bytes <= length:
            raise ControlFileError(
                f"in-flight piece {index}: {done_bytes} bytes done is outside 0..{length}"
            )
        num_blocks = _ceil_div(length, BLOCK_LENGTH)
        full = num_blocks if done_bytes == length else done_bytes // BLOCK_LENGTH
        return cls(index, length, _leading_ones(num_blocks, full))


@dataclass(frozen=True, slots=True)
class ControlFile:
    """The resume state of one download, as stored in ``FILE.aria2``.

    Every instance is valid: the constructor checks what :meth:`decode` checks, so anything
    that exists can be encoded, and decodes back equal.
    """

    piece_length: int
    total_length: int
    bitfield: bytes  # one bit per piece, MSB first, 1 = complete; spare bits zero
    in_flight: tuple[InFlightPiece, ...] = ()
    upload_length: int = 0  # BitTorrent only; kept so a file round-trips
    info_hash: bytes = b""  # empty for HTTP
    extension: int = 0  # the 4-byte EXTENSION field, big-endian

    def __post_init__(self) -> None:
        object.__setattr__(self, "bitfield", bytes(self.bitfield))
        object.__setattr__(self, "info_hash", bytes(self.info_hash))
        object.__setattr__(self, "in_flight", tuple(self.in_flight))
        if not 1 <= self.piece_length <= _U32_MAX:
            raise ControlFileError(f"piece length {self.piece_length} out of range")
        # aria2 holds lengths in int64_t, so a larger TOTAL LENGTH can never match a download.
        if not 0 <= self.total_length <= _I64_MAX:
            raise ControlFileError(f"total length {self.total_length} out of range")
        if not 0 <= self.upload_length <= _U64_MAX:
            raise ControlFileError(f"upload length {self.upload_length} out of range")
        if not 0 <= self.extension <= _U32_MAX:
            raise ControlFileError(f"extension {self.extension:#x} does not fit in 4 bytes")
        if len(self.info_hash) > _MAX_INFO_HASH_LENGTH:
            raise ControlFileError(f"info hash length {len(self.info_hash)} is more than 20")
        num_pieces = self.num_pieces
        expected = _ceil_div(num_pieces, 8)
        if len(self.bitfield) != expected:
            raise ControlFileError(
                f"bitfield is {len(self.bitfield)} bytes, expected {expected}"
                f" for {num_pieces} pieces"
            )
        if _has_spare_bits(self.bitfield, num_pieces):
            raise ControlFileError(f"bitfield has bits set past its {num_pieces} pieces")
        seen: set[int] = set()
        for piece in self.in_flight:
            if not isinstance(piece, InFlightPiece):
                raise ControlFileError(f"in_flight holds {type(piece).__name__}, not a piece")
            self._check_in_flight(piece, seen)
            seen.add(piece.index)

    def _check_in_flight(self, piece: InFlightPiece, seen: set[int]) -> None:
        if piece.index >= self.num_pieces:
            raise ControlFileError(
                f"in-flight piece index {piece.index} out of range for {self.num_pieces} pieces"
            )
        real_length = self._length_of(piece.index)
        if piece.length != real_length:
            raise ControlFileError(
                f"in-flight piece {piece.index}: length {piece.length},"
                f" but the piece is {real_length} bytes"
            )
        if piece.index in seen:
            raise ControlFileError(f"in-flight piece {piece.index} listed twice")
        if self.is_piece_done(piece.index):
            raise ControlFileError(f"in-flight piece {piece.index} is also marked complete")

    def _length_of(self, index: int) -> int:
        start = index * self.piece_length
        return min(self.piece_length, self.total_length - start)

    @property
    def num_pieces(self) -> int:
        return _ceil_div(self.total_length, self.piece_length)

    def is_piece_done(self, index: int) -> bool:
        if not 0 <= index < self.num_pieces:
            raise IndexError(f"piece index {index} out of range for {self.num_pieces} pieces")
        return bool(self.bitfield[index >> 3] & (0x80 >> (index & 7)))

    def encode(self) -> bytes:
        """The file's bytes: version 1, big-endian, exactly as aria2's ``save()`` lays it out."""
        parts = [
            _VERSION_1,
            struct.pack(">II", self.extension, len(self.info_hash)),
            self.info_hash,
            struct.pack(
                ">IQQI",
                self.piece_length,
                self.total_length,
                self.upload_length,
                len(self.bitfield),
            ),
            self.bitfield,
            struct.pack(">I", len(self.in_flight)),
        ]
        for piece in self.in_flight:
            parts.append(struct.pack(">III", piece.index, piece.length, len(piece.blocks)))
            parts.append(piece.blocks)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> ControlFile:
        """Parse a control file of version 1 or 0 (see the module docstring).

        Raises:
            ControlFileError: for anything aria2's reader rejects — an unknown version, a
                truncated field, an impossible length or count — and for an in-flight piece
                that contradicts the rest of the file.  Bytes after the last field are
                ignored; spare bits are cleared.
        """
        reader = _Reader(data)
        version = reader.take(2, "version")
        if version == _VERSION_1:
            reader.byte_order = ">"
        elif version == _VERSION_0:
            reader.byte_order = "<"
        else:
            raise ControlFileError(f"unsupported control file version {version.hex()}")
        extension = int.from_bytes(reader.take(4, "extension"), "big")
        info_hash_length = reader.u32("info hash length")
        if info_hash_length > _MAX_INFO_HASH_LENGTH:
            raise ControlFileError(f"info hash length {info_hash_length} is more than 20")
        info_hash = reader.take(info_hash_length, "info hash")
        piece_length = reader.u32("piece length")
        if piece_length == 0:
            raise ControlFileError("piece length is 0")
        total_length = reader.u64("total length")
        if total_length > _I64_MAX:
            raise ControlFileError(f"total length {total_length} out of range")
        upload_length = reader.u64("upload length")
        num_pieces = _ceil_div(total_length, piece_length)
        bitfield_length = reader.u32("bitfield length")
        expected = _ceil_div(num_pieces, 8)
        if bitfield_length != expected:
            raise ControlFileError(
                f"bitfield length {bitfield_length}, expected {expected} for {num_pieces} pieces"
            )
        bitfield = _clear_spare_bits(reader.take(bitfield_length, "bitfield"), num_pieces)
        count = reader.u32("number of in-flight pieces")
        if count > num_pieces:
            raise ControlFileError(f"{count} in-flight pieces, but only {num_pieces} pieces")
        in_flight: list[InFlightPiece] = []
        for _ in range(count):
            index = reader.u32("in-flight piece index")
            if index >= num_pieces:
                raise ControlFileError(
                    f"in-flight piece index {index} out of range for {num_pieces} pieces"
                )
            length = reader.u32(f"in-flight piece {index} length")
            if length > piece_length:
                raise ControlFileError(
                    f"in-flight piece {index}: length {length} is more than the piece length"
                    f" {piece_length}"
                )
            num_blocks = _ceil_div(length, BLOCK_LENGTH)
            blocks_length = reader.u32(f"in-flight piece {index} bitfield length")
            if blocks_length != _ceil_div(num_blocks, 8):
                raise ControlFileError(
                    f"in-flight piece {index}: bitfield length {blocks_length},"
                    f" expected {_ceil_div(num_blocks, 8)} for {length} bytes"
                )
            blocks = reader.take(blocks_length, f"in-flight piece {index} bitfield")
            in_flight.append(InFlightPiece(index, length, _clear_spare_bits(blocks, num_blocks)))
        return cls(
            piece_length=piece_length,
            total_length=total_length,
            bitfield=bitfield,
            in_flight=tuple(in_flight),
            upload_length=upload_length,
            info_hash=info_hash,
            extension=extension,
        )


class _Reader:
    """Reads fields in order and turns a short read into :class:`ControlFileError`."""

    __slots__ = ("_data", "_offset", "byte_order")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0
        self.byte_order = ">"

    def take(self, size: int, what: str) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise ControlFileError(
                f"control file truncated: {what} needs {size} bytes at offset {self._offset},"
                f" {len(self._data) - self._offset} left"
            )
        chunk = bytes(self._data[self._offset : end])
        self._offset = end
        return chunk

    def u32(self, what: str) -> int:
        value: int = struct.unpack(self.byte_order + "I", self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = struct.unpack(self.byte_order + "Q", self.take(8, what))[0]
        return value


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _leading_ones(nbits: int, count: int) -> bytes:
    """An *nbits*-bit field, MSB first, whose first *count* bits are set."""
    size = _ceil_div(nbits, 8)
    return (((1 << count) - 1) << (size * 8 - count)).to_bytes(size, "big")


def _spare_mask(nbits: int) -> int:
    """The bits of the last byte of an *nbits*-bit field that lie past its end."""
    used = nbits & 7
    return 0 if used == 0 else 0xFF >> used


def _has_spare_bits(bits: bytes, nbits: int) -> bool:
    return bool(bits) and bool(bits[-1] & _spare_mask(nbits))


def _clear_spare_bits(bits: bytes, nbits: int) -> bytes:
    if not _has_spare_bits(bits, nbits):
        return bits
    return bits[:-1] + bytes([bits[-1] & ~_spare_mask(nbits) & 0xFF])
