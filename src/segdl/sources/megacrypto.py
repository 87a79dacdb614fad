"""MEGA's file cryptography: link key, attributes, AES-128-CTR data and the chunk MAC.

From reference/sources.md §4.3 (mega.py, megajs, the MEGA SDK):

* the link key is 32 bytes, eight big-endian words ``a0…a7``; the AES key is
  ``a0^a4 ‖ a1^a5 ‖ a2^a6 ‖ a3^a7``, the CTR nonce ``a4 ‖ a5`` and the expected MAC ``a6 ‖ a7``;
* the data is AES-128-CTR with counter block ``nonce ‖ uint64_be(offset // 16)``;
* the attributes are AES-128-CBC with a zero IV over ``MEGA{json}`` padded with NULs;
* the MAC: a CBC-MAC (IV ``nonce ‖ nonce``) of each chunk of plaintext — chunks of 128 KiB,
  256 KiB, … growing by 128 KiB up to 1 MiB, then 1 MiB each — chained with AES (zero IV)
  and condensed to 8 bytes as ``(w0^w1, w2^w3)``.  A file whose size is a chunk boundary has
  no trailing empty chunk (mega.py and the SDK; megajs's streaming MAC differs there).

Pure functions (no I/O beyond the file object handed in); ``cryptography`` does the AES.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "MegaKey",
    "b64url_decode",
    "chunk_bounds",
    "condensed_mac",
    "decrypt_at",
    "decrypt_attributes",
]

FIRST_CHUNK = 128 * 1024
MAX_CHUNK = 1024 * 1024
_BLOCK = 16


class _Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


def b64url_decode(text: str) -> bytes:
    """MEGA's base64: URL alphabet, no padding (also tolerates ``+``, ``/`` and ``,``)."""
    cleaned = text.strip().replace("-", "+").replace("_", "/").replace(",", "")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64") from exc


@dataclass(frozen=True, slots=True)
class MegaKey:
    aes_key: bytes  # 16 bytes
    nonce: bytes  # 8 bytes
    meta_mac: bytes  # 8 bytes

    @classmethod
    def from_link_key(cls, key: bytes) -> MegaKey:
        if len(key) != 32:
            raise ValueError(f"a MEGA file key is 32 bytes, not {len(key)}")
        aes_key = bytes(x ^ y for x, y in zip(key[:16], key[16:], strict=True))
        return cls(aes_key=aes_key, nonce=key[16:24], meta_mac=key[24:32])


def decrypt_attributes(key: MegaKey, encrypted: bytes) -> dict[str, object]:
    """The attribute object (``{"n": name, …}``); ValueError if the key does not fit."""
    if not encrypted or len(encrypted) % _BLOCK:
        raise ValueError("attributes are not whole AES blocks")
    decryptor = Cipher(algorithms.AES(key.aes_key), modes.CBC(bytes(_BLOCK))).decryptor()
    plain = (decryptor.update(encrypted) + decryptor.finalize()).rstrip(b"\0")
    if not plain.startswith(b'MEGA{"'):
        raise ValueError("the key does not decrypt the attributes")
    try:
        parsed = json.loads(plain[4:].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError("attributes are not JSON") from exc
    if not isinstance(parsed, dict):
        raise ValueError("attributes are not a JSON object")
    return parsed


def decrypt_at(key: MegaKey, data: memoryview, offset: int) -> None:
    """Decrypt (or encrypt: CTR is symmetric) *data*, which sits at *offset* in the file, in place.

    Any offset works: the counter starts at the block holding *offset* and the keystream bytes
    before it are skipped.  Safe to call from several threads at once.
    """
    block, skip = divmod(offset, _BLOCK)
    counter = key.nonce + (block % (1 << 64)).to_bytes(8, "big")
    cipher = Cipher(algorithms.AES(key.aes_key), modes.CTR(counter)).encryptor()
    if skip:
        cipher.update(bytes(skip))
    try:
        cipher.update_into(data, data)
    except ValueError:
        # Older cryptography versions want a larger output buffer than the input.
        data[:] = cipher.update(data)


def chunk_bounds(size: int) -> Iterator[tuple[int, int]]:
    """``(start, length)`` of each MAC chunk of a *size*-byte file."""
    start, length = 0, FIRST_CHUNK
    while start < size:
        yield start, min(length, size - start)
        start += length
        length = min(length + FIRST_CHUNK, MAX_CHUNK)


def condensed_mac(key: MegaKey, plaintext: _Readable, size: int) -> bytes:
    """The 8-byte MAC of *size* bytes of plaintext read from *plaintext* (at its position)."""
    aes = algorithms.AES(key.aes_key)
    chain = Cipher(aes, modes.CBC(bytes(_BLOCK))).encryptor()
    file_mac = bytes(_BLOCK)
    buffer = bytearray(MAX_CHUNK + _BLOCK)
    for _start, length in chunk_bounds(size):
        view = memoryview(buffer)[:length]
        got = 0
        while got < length:
            n = plaintext.readinto(view[got:])
            if not n:
                raise ValueError(f"the file ended before {size} bytes")
            got += n
        padded = length + (-length % _BLOCK)
        buffer[length:padded] = bytes(padded - length)
        mac = Cipher(aes, modes.CBC(key.nonce + key.nonce)).encryptor()
        chunk_mac = mac.update(memoryview(buffer)[:padded])[-_BLOCK:]
        file_mac = chain.update(chunk_mac)
    w = [int.from_bytes(file_mac[i : i + 4], "big") for i in range(0, _BLOCK, 4)]
    return (w[0] ^ w[1]).to_bytes(4, "big") + (w[2] ^ w[3]).to_bytes(4, "big")
