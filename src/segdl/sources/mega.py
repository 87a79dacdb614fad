"""MEGA: ``mega.nz/file/{handle}#{key}`` (or ``#!handle!key``) → a decrypting, MAC-checked plan.

The key is in the URL's fragment and never leaves this machine.  One ``a:g`` command
(``POST {api}/cs?id={seq}`` with the JSON array ``[{"a":"g","g":1,"ssl":2,"p":handle}]``)
returns the size, the encrypted attributes (the file name) and a temporary storage URL ``g``
that honours ``Range`` (reference/sources.md §4.2, §4.4).  The engine downloads the ciphertext
in segments like any other file; the plan's ``transform`` decrypts each chunk at its own file
offset (AES-128-CTR), and ``verify`` re-reads the finished file to check MEGA's chunk MAC
(``ChecksumMismatch`` on a mismatch).  A storage server out of bandwidth quota answers ``509``
with ``X-MEGA-Time-Left``: that becomes a :class:`ServerBusy` with the wait.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import trio

from ..core.events import Metadata
from ..core.urls import HttpURL
from ..errors import (
    AuthError,
    BadResponse,
    ChecksumMismatch,
    DownloadError,
    InvalidURL,
    NotFound,
    ServerBusy,
    redact_url,
    status_error,
)
from .base import DownloadPlan, SourceConfig
from .sitehttp import as_dict, as_int, as_list, as_str, open_response, parse_json, read_body

if TYPE_CHECKING:
    from .megacrypto import MegaKey

__all__ = ["MegaLink", "MegaResolver", "parse_mega_url"]

PUBLIC_HOSTS = frozenset({"mega.nz", "www.mega.nz", "mega.co.nz", "www.mega.co.nz"})
# EAGAIN (-3) and "Server Too Busy" are retried with exponential backoff, as megajs does.
EAGAIN_RETRIES = 4
EAGAIN_FIRST_DELAY = 0.25

_HANDLE = re.compile(r"[A-Za-z0-9_-]{8}")
_KEY = re.compile(r"[A-Za-z0-9_-]{43}")

# API error codes (mega.py errors.py, megajs ERRORS) and what they mean for a download.
_ERRORS: dict[int, tuple[type[DownloadError], str]] = {
    -2: (InvalidURL, "the link is malformed (EARGS)"),
    -4: (ServerBusy, "too many requests (ERATELIMIT)"),
    -6: (ServerBusy, "too many concurrent connections or transfers (ETOOMANY)"),
    -9: (NotFound, "the file does not exist or was removed (ENOENT)"),
    -11: (AuthError, "access denied (EACCESS)"),
    -16: (NotFound, "the file was taken down (EBLOCKED)"),
    -17: (ServerBusy, "the transfer quota is exceeded (EOVERQUOTA)"),
    -18: (ServerBusy, "the file is temporarily unavailable (ETEMPUNAVAIL)"),
}


@dataclass(frozen=True, slots=True)
class MegaLink:
    handle: str
    key: str  # base64url, 43 characters


def parse_mega_url(url: str) -> MegaLink | None:
    """A file link, new (``/file/{h}#{key}``) or legacy (``/#!{h}!{key}``); None otherwise.

    Real URL parsing (not a regex over the whole URL): handles may contain ``-`` (§4.1).
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https"):
        return None
    if (parts.hostname or "").lower() not in PUBLIC_HOSTS:
        return None
    path = parts.path.rstrip("/")
    if path.startswith("/file/"):
        handle, key = path[len("/file/") :], parts.fragment
    elif path == "" and parts.fragment.startswith("!"):
        pieces = parts.fragment[1:].split("!")
        if len(pieces) != 2:
            return None
        handle, key = pieces
    else:
        return None
    if not _HANDLE.fullmatch(handle) or not _KEY.fullmatch(key):
        return None
    return MegaLink(handle, key)


def _is_mega_link_shape(url: str) -> bool:
    """A MEGA URL we refuse with a clear message (a folder, a missing key) rather than fetch."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    return host in PUBLIC_HOSTS and (
        parts.path.startswith(("/file/", "/folder/")) or parts.fragment.startswith(("!", "F!"))
    )


class MegaResolver:
    name = "mega"

    def __init__(self) -> None:
        # mega.py starts the request sequence at a random number and counts up.
        self._sequence = random.randrange(0, 0xFFFFFFFF)

    def parse(self, url: str, config: SourceConfig) -> MegaLink | None:
        link = parse_mega_url(url)
        if link is None and _is_mega_link_shape(url):
            raise InvalidURL(
                f"unsupported MEGA link {redact_url(url)}: only file links with their key "
                "(https://mega.nz/file/HANDLE#KEY) can be downloaded",
                url=url,
            )
        return link

    async def resolve(
        self, link: MegaLink, *, url: str, client: httpx.AsyncClient, config: SourceConfig
    ) -> DownloadPlan:
        try:
            # Imported here: the cryptography package is only needed for MEGA links.
            from . import megacrypto
        except ImportError as exc:
            raise DownloadError(
                "MEGA links need the 'cryptography' package: pip install cryptography"
            ) from exc

        key = megacrypto.MegaKey.from_link_key(megacrypto.b64url_decode(link.key))
        answer = await self._get(client, config, link)

        size = as_int(answer.get("s"))
        storage = as_str(answer.get("g"))
        encrypted_attributes = as_str(answer.get("at"))
        if size is None or size < 0 or encrypted_attributes is None:
            raise BadResponse(f"MEGA's API sent an incomplete answer for file {link.handle}")
        if not storage:
            raise NotFound(f"MEGA file {link.handle} is not accessible anymore")
        try:
            attributes = megacrypto.decrypt_attributes(
                key, megacrypto.b64url_decode(encrypted_attributes)
            )
        except ValueError as exc:
            raise InvalidURL(
                f"the key in the MEGA link does not open file {link.handle} (wrong or "
                "truncated key)",
                url=redact_url(url),
            ) from exc
        name = as_str(attributes.get("n"))
        await _check_quota(client, storage)
        metadata = Metadata(
            name=name, extra={"source": "mega", "handle": link.handle, "size": size}
        )
        return DownloadPlan(
            urls=(HttpURL.parse(storage),),
            filename=name,
            size=size,
            metadata=metadata,
            transform=partial(megacrypto.decrypt_at, key),
            verify=_verifier(key, size, link.handle),
            source=self.name,
        )

    async def _get(
        self, client: httpx.AsyncClient, config: SourceConfig, link: MegaLink
    ) -> dict[str, object]:
        command = [{"a": "g", "g": 1, "ssl": 2, "p": link.handle}]
        delay = EAGAIN_FIRST_DELAY
        for attempt in range(EAGAIN_RETRIES + 1):
            self._sequence = (self._sequence + 1) % 0x100000000
            api = f"{config.mega_api_url.rstrip('/')}/cs?id={self._sequence}"
            async with open_response(
                client,
                "POST",
                api,
                headers={"Content-Type": "application/json"},
                content=json.dumps(command).encode(),
            ) as response:
                body = await read_body(response, limit=1024 * 1024)
                status = response.status_code
            busy = status in (500, 503) or response.reason_phrase == "Server Too Busy"
            code: int | None = None
            answer: object = None
            if not busy:
                if status != 200:
                    raise status_error(status, response.reason_phrase, url=api)
                parsed = parse_json(body, url=api)
                # The answer is an array with one result per command; an error is a
                # negative number, alone or in the array.
                answer = as_list(parsed)[0] if as_list(parsed) else parsed
                code = as_int(answer)
                busy = code == -3
            if busy:
                if attempt < EAGAIN_RETRIES:
                    await trio.sleep(delay)
                    delay *= 2
                    continue
                raise ServerBusy(
                    f"MEGA's API is busy (EAGAIN) for file {link.handle}: try again later",
                    url=api,
                )
            if code is not None:
                cls, why = _ERRORS.get(code, (BadResponse, f"API error {code}"))
                raise cls(f"MEGA: {why} (file {link.handle})")
            if not isinstance(answer, dict):
                raise BadResponse(f"MEGA's API sent an unexpected answer for file {link.handle}")
            return dict(as_dict(answer))
        raise AssertionError("unreachable")


async def _check_quota(client: httpx.AsyncClient, storage: str) -> None:
    """Turn the storage server's ``509`` (bandwidth quota) into a clear error with the wait.

    One ranged byte is asked; anything else than 509 is left for the engine's probe.
    """
    async with open_response(
        client, "GET", storage, headers={"Range": "bytes=0-0", "Accept-Encoding": "identity"}
    ) as response:
        if response.status_code != 509:
            return
        left = response.headers.get("x-mega-time-left", "").strip()
    wait = int(left) if left.isdigit() else None
    when = f": try again in {_duration(wait)}" if wait is not None else ": try again later"
    raise ServerBusy(
        f"MEGA's bandwidth quota for this IP address is exhausted{when}",
        url=storage,
        status=509,
        retry_after=float(wait) if wait is not None else None,
    )


def _duration(seconds: int) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{seconds} s ({hours} h {minutes:02d} min)"
    if minutes:
        return f"{seconds} s ({minutes} min {secs:02d} s)"
    return f"{seconds} s"


def _verifier(key: MegaKey, size: int, handle: str) -> Callable[[Path], Awaitable[None]]:
    from . import megacrypto

    def check(path: Path) -> None:
        with open(path, "rb", buffering=0) as f:
            try:
                mac = megacrypto.condensed_mac(key, f, size)
            except ValueError as exc:
                raise ChecksumMismatch(f"{path.name}: {exc}") from exc
        if mac != key.meta_mac:
            raise ChecksumMismatch(
                f"MEGA MAC mismatch for {path.name} (file {handle}): expected "
                f"{key.meta_mac.hex()}, got {mac.hex()}"
            )

    async def verify(path: Path) -> None:
        await trio.to_thread.run_sync(check, path)

    return verify
