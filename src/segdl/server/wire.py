"""The bytes of one protocol message: AES-256-GCM around a BSON or JSON document.

As sd-inference-server does it (reference sd-protocol.md §1): the key is
PBKDF2-HMAC-SHA256(password, salt = SHA-256(password)[:16], 480 000 rounds, 32 bytes), and a
binary message is ``nonce(16) ‖ ciphertext ‖ tag(16)`` with empty associated data.  The
plaintext is a BSON document (qDiffusion) or UTF-8 JSON (the download page); the server
answers each client in the codec it last used.

BSON comes from pymongo's ``bson`` package: maintained by MongoDB, typed, and the standard
wire format, so it reads and writes the same bytes as py-bson 0.5.10, which qDiffusion uses
(both map ``int`` to int32 when it fits, else int64, and ``bytes`` to binary subtype 0).
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import secrets
import struct
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final

import bson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import DEFAULT_PASSWORD

__all__ = [
    "DEFAULT_PASSWORD",
    "Codec",
    "DecryptError",
    "MalformedMessage",
    "Scheme",
    "decode",
    "derive_key",
    "encode",
]

PBKDF2_ROUNDS: Final = 480_000
NONCE_SIZE: Final = 16
TAG_SIZE: Final = 16


class DecryptError(Exception):
    """The message was not sealed with our key (a wrong password, or not ours at all)."""


class MalformedMessage(Exception):
    """The plaintext is neither a BSON document nor a JSON object."""


@lru_cache(maxsize=4)
def derive_key(password: str) -> bytes:
    """The 32-byte AES key for *password*.  Slow on purpose (480 000 rounds): derive once."""
    secret = password.encode("utf-8")
    salt = hashlib.sha256(secret).digest()[:16]
    return hashlib.pbkdf2_hmac("sha256", secret, salt, PBKDF2_ROUNDS, dklen=32)


class Scheme:
    """Seals and opens messages with one key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_password(cls, password: str) -> Scheme:
        return cls(derive_key(password))

    def seal(self, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, b"")

    def open(self, message: bytes) -> bytes:
        if len(message) < NONCE_SIZE + TAG_SIZE:
            raise DecryptError("message too short")
        try:
            return self._aead.decrypt(message[:NONCE_SIZE], message[NONCE_SIZE:], b"")
        except InvalidTag:
            raise DecryptError("wrong key") from None


class Codec(enum.Enum):
    BSON = "bson"
    JSON = "json"


def _looks_like_bson(data: bytes) -> bool:
    # A BSON document starts with its own total length (int32 LE) and ends with NUL; JSON
    # text never ends with a NUL byte (RFC 8259 allows only whitespace after the value).
    return len(data) >= 5 and struct.unpack_from("<i", data)[0] == len(data) and data[-1] == 0


def decode(data: bytes) -> tuple[dict[str, Any], Codec]:
    """The document in *data*, and which codec it was written in."""
    if _looks_like_bson(data):
        try:
            return dict(bson.decode(data)), Codec.BSON
        except Exception as exc:  # bson raises InvalidBSON and, on some inputs, others
            raise MalformedMessage("invalid BSON document") from exc
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedMessage("neither BSON nor JSON") from exc
    if not isinstance(value, dict):
        raise MalformedMessage("the message is not an object")
    return value, Codec.JSON


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def encode(document: Mapping[str, Any], codec: Codec) -> bytes:
    if codec is Codec.BSON:
        return bson.encode(document)
    return json.dumps(_json_safe(document), separators=(",", ":")).encode("utf-8")


def _json_safe(value: Any) -> Any:
    """JSON has no NaN/Infinity and no bytes: send null and nothing we can't represent."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return None
    return value
