"""Expected digests of a finished file, as aria2's ``--checksum=TYPE=HEX`` spells them.

Pure: stdlib only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .headers import shown

__all__ = ["Checksum", "parse_checksum"]


# aria2 --checksum TYPE names → (hashlib name, hex digits in a digest).
_CHECKSUM_TYPES = {
    "md5": ("md5", 32),
    "sha-1": ("sha1", 40),
    "sha-224": ("sha224", 56),
    "sha-256": ("sha256", 64),
    "sha-384": ("sha384", 96),
    "sha-512": ("sha512", 128),
}
_HEX = re.compile(r"[0-9a-fA-F]+")


@dataclass(frozen=True, slots=True)
class Checksum:
    """An expected digest of the finished file."""

    algorithm: str  # hashlib name, e.g. "sha256"
    hexdigest: str  # lowercase


def parse_checksum(text: str) -> Checksum:
    """Parse an aria2 ``--checksum`` value, ``TYPE=HEXDIGEST``.

    TYPE is ``md5``, ``sha-1``, ``sha-224``, ``sha-256``, ``sha-384`` or ``sha-512``, in any
    case and with or without the dash (``sha256=…``).

    Raises:
        ValueError: a one-line message naming what is wrong (format, type, hex, length).
    """
    kind, sep, digest = text.strip().partition("=")
    if not sep:
        raise ValueError(f"invalid checksum {shown(text)}: expected TYPE=HEXDIGEST")
    key = kind.strip().lower()
    if key.startswith("sha") and not key.startswith("sha-"):
        key = "sha-" + key[3:]
    if key not in _CHECKSUM_TYPES:
        known = ", ".join(_CHECKSUM_TYPES)
        raise ValueError(
            f"unsupported checksum type {shown(kind.strip())}: expected one of {known}"
        )
    algorithm, digits = _CHECKSUM_TYPES[key]
    digest = digest.strip()
    if not _HEX.fullmatch(digest):
        raise ValueError(f"invalid checksum {shown(text)}: the digest must be hexadecimal")
    if len(digest) != digits:
        raise ValueError(
            f"invalid checksum {shown(text)}: a {key} digest has {digits} hex digits, "
            f"not {len(digest)}"
        )
    return Checksum(algorithm=algorithm, hexdigest=digest.lower())
