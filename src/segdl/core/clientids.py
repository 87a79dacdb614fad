"""Client ids for the ``hello`` message: random-looking, never repeated, from a secret key.

qDiffusion reconnects by naming the id its first ``hello`` carried (reference sd-protocol.md
§2), so an id must never be given to a second client during a server's lifetime, and a
restarted server must not hand out the ids of the previous one in the same order (counting
from 1 would give a new client the id an old one reconnects with).  sd-inference-server draws
``SystemRandom().randint(1, 2**31 - 1)`` for each client; segdl keeps that range.

Instead of remembering every id ever issued, ids are a keyed pseudo-random permutation of a
counter: a balanced Feistel network over 32 bits (Luby–Rackoff: with a pseudo-random round
function, four rounds or more make a pseudo-random permutation), BLAKE2b keyed with the secret
as the round function, and cycle walking to stay inside 1…2³¹−1.  Distinct counters give
distinct ids, and without the key the next id cannot be told from the previous ones.  Pure:
the caller supplies the key (``secrets.token_bytes``).
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["MAX_CLIENT_ID", "ClientIds", "feistel"]

MAX_CLIENT_ID: Final = 2**31 - 1  # ids are 1 … MAX_CLIENT_ID, as sd-inference-server's
ROUNDS: Final = 8
_HALF_BITS: Final = 16


def _round_value(key: bytes, round: int, half: int, half_bits: int) -> int:
    digest = hashlib.blake2b(
        round.to_bytes(1, "big") + half.to_bytes(8, "big"), key=key, digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") & ((1 << half_bits) - 1)


def feistel(key: bytes, value: int, *, half_bits: int = _HALF_BITS, rounds: int = ROUNDS) -> int:
    """A permutation of ``0 … 2**(2*half_bits) - 1`` chosen by *key*.

    Raises:
        ValueError: *value* is outside the domain.
    """
    mask = (1 << half_bits) - 1
    if not 0 <= value <= (1 << (2 * half_bits)) - 1:
        raise ValueError(f"{value} is outside the permutation's domain")
    left, right = value >> half_bits, value & mask
    for round in range(rounds):
        left, right = right, left ^ _round_value(key, round, right, half_bits)
    return (left << half_bits) | right


class ClientIds:
    """Hands out ``1 … 2**31 - 1`` in an order only *key* determines, each value once.

    Raises :class:`RuntimeError` after 2³¹−1 ids rather than repeat one.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the key must be at least 16 bytes")
        if len(key) > 64:  # BLAKE2b's longest key
            raise ValueError("the key must be at most 64 bytes")
        self._key = key
        self._issued = 0

    def __next__(self) -> int:
        if self._issued >= MAX_CLIENT_ID:
            raise RuntimeError("every client id has been used")
        index = self._issued
        self._issued += 1
        return self.at(index)

    def __iter__(self) -> ClientIds:
        return self

    def at(self, index: int) -> int:
        """The id number *index* (from 0) of this sequence."""
        if not 0 <= index < MAX_CLIENT_ID:
            raise ValueError(f"index {index} is outside 0 … {MAX_CLIENT_ID - 1}")
        # Cycle walking: the 32-bit permutation restricted to the values below MAX_CLIENT_ID
        # is a permutation of those values; about two steps on average.
        value = feistel(self._key, index)
        while value >= MAX_CLIENT_ID:
            value = feistel(self._key, value)
        return value + 1
