"""segdl's trailer on aria2's control file: the validators of the remote version a partial
belongs to, sealed with the control file they describe.

aria2's reader stops after the last in-flight piece and ignores what follows
(:mod:`.controlfile`), so segdl appends its own bytes to ``NAME.part.aria2``::

    aria2 control file (version 1)   what aria2c reads
    JSON                              {"url", "size", "etag", "last_modified"}
    LENGTH          4                 of the JSON, unsigned big-endian
    SHA-256        32                 of everything before it
    MAGIC           8                 b"segdl\\x00t1"

Why there: the validators share the control file's fate.  One atomic replace writes both,
so a crash never pairs a control file with another version's validators; aria2c, when it
takes a segdl partial over, rewrites the control file without the trailer and deletes it
when done, so nothing is left behind whichever program finishes; copying the folder takes
them along.  The digest seals the control file too: a flipped bit that still decodes (a
piece claimed but never fetched) is caught.

A control file without trailing bytes is aria2c's (or one aria2c rewrote): it has no
validators and is trusted as aria2c trusts it.  Trailing bytes that are not an intact
trailer mean damage: aria2c never writes any.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import struct

from .controlfile import ControlFile, ControlFileError
from .resume import Validators

__all__ = ["MAGIC", "seal", "unseal"]

MAGIC = b"segdl\x00t1"
_DIGEST_LENGTH = 32
_FIXED = 4 + _DIGEST_LENGTH + len(MAGIC)
# Validators are a redacted URL and three short fields; anything longer is damage.
_MAX_JSON = 64 * 1024


def seal(control: ControlFile, validators: Validators) -> bytes:
    """The control file's bytes followed by the trailer holding *validators*."""
    body = json.dumps(
        {
            "url": validators.url,
            "size": validators.size,
            "etag": validators.etag,
            "last_modified": validators.last_modified,
        },
        separators=(",", ":"),
    ).encode()
    if len(body) > _MAX_JSON:
        raise ValueError("validators too long for a control file trailer")
    sealed = control.encode() + body + struct.pack(">I", len(body))
    return sealed + hashlib.sha256(sealed).digest() + MAGIC


def unseal(data: bytes) -> tuple[ControlFile, Validators | None]:
    """The control file in *data* and the validators of its trailer (None: aria2c's file).

    Raises:
        ControlFileError: the control file does not decode, or it is followed by bytes that
            are not an intact trailer sealing it.
    """
    if not data.endswith(MAGIC):
        control = ControlFile.decode(data)
        if len(control.encode()) != len(data):
            raise ControlFileError("bytes after the control file that are not segdl's trailer")
        return control, None
    if len(data) < _FIXED:
        raise ControlFileError("truncated control file trailer")
    digest = data[-_FIXED + 4 : -len(MAGIC)]
    (length,) = struct.unpack(">I", data[-_FIXED : -_FIXED + 4])
    end = len(data) - _FIXED
    if length > min(_MAX_JSON, end):
        raise ControlFileError("control file trailer of an impossible length")
    if hashlib.sha256(data[: end + 4]).digest() != digest:
        raise ControlFileError("the control file does not match its seal: damaged")
    control_bytes = data[: end - length]
    control = ControlFile.decode(control_bytes)
    if len(control.encode()) != len(control_bytes):
        raise ControlFileError("the control file's length disagrees with its trailer")
    return control, _validators(data[end - length : end])


def _validators(body: bytes) -> Validators:
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise ControlFileError(f"control file trailer is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ControlFileError("control file trailer is not a JSON object")
    url, size = raw.get("url"), raw.get("size")
    etag, last_modified = raw.get("etag"), raw.get("last_modified")
    if not isinstance(url, str):
        raise ControlFileError("control file trailer without a URL")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ControlFileError(f"control file trailer with a bad size {size!r}")
    for name, value in (("etag", etag), ("last_modified", last_modified)):
        if value is not None and not isinstance(value, str):
            raise ControlFileError(f"control file trailer with a bad {name} {value!r}")
    return Validators(url=url, size=size, etag=etag, last_modified=last_modified)
