"""Sizes as aria2 options spell them (``-k 1M``, ``--max-download-limit 512K``).

Pure: stdlib only.
"""

from __future__ import annotations

import re

from .headers import shown

__all__ = ["parse_size"]

# aria2 reads "K" and "M" (any case) as binary multiples; "G" and the IEC spellings are
# accepted too because people type them.
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"([0-9]{1,20})(?:\.([0-9]{0,20}))?[ \t]*([A-Za-z]*)")
_MAX_SIZE = 2**63 - 1  # what a file offset can hold


def parse_size(text: str) -> int:
    """Parse an aria2-style size such as ``"1048576"``, ``"1M"``, ``"1.5M"`` or ``"2GiB"``.

    Units are binary: ``K``/``KiB`` = 1024, ``M``/``MiB`` = 1024², ``G``/``GiB`` = 1024³, in
    any case.  A fractional value is rounded down to whole bytes.

    Raises:
        ValueError: ``invalid size '…'`` for anything else, negative numbers included.
    """
    match = _SIZE.fullmatch(text.strip())
    unit = match.group(3).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(
            f"invalid size {shown(text)}: expected a number with an optional unit "
            "K, M, G, KiB, MiB or GiB"
        )
    whole, fraction = match.group(1), match.group(2) or ""
    # Integer arithmetic keeps "1.1G" exact where a float would round the wrong way.
    scale: int = 10 ** len(fraction)
    size = (int(whole) * scale + int(fraction or "0")) * _SIZE_UNITS[unit] // scale
    if size > _MAX_SIZE:
        raise ValueError(f"invalid size {shown(text)}: too large")
    return size
