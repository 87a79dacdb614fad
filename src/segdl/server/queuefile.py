"""The queue file: the server's unfinished downloads, kept across restarts.

``MODELS/.segdl-queue.json`` holds every download that is queued, running or paused, so a
restarted server takes them up again (each resumes from its own ``.aria2`` control file).
It is rewritten atomically on every change — a temporary file in the same directory, fsync,
rename, fsync of the directory — with mode 0600.  Version 1::

    {"version": 1, "next_id": 8,
     "jobs": [{"id": 7, "url": "https://…", "type": "LoRA", "state": "paused",
               "label": "x.safetensors", "limit": null, "downloaded": 1048576, "total": 4194304}]}

It never holds a token: the ``civitai_token``/``hf_token`` of a request are not written, and
URLs lose their user-info and every query parameter that carries a credential
(:func:`strip_secrets`), so a restarted download uses the server's own tokens
(``$CIVITAI_TOKEN``, ``$HF_TOKEN``).  A file that cannot be read, or holds anything we would not
have written (a folder off the allow-list, a URL we would refuse), is renamed aside to
``….corrupt`` with a one-line warning, and the server starts with an empty queue.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from ..core.folders import model_folder
from ..errors import DownloadError
from ..sources.base import SourceConfig
from ..sources.resolve import parse_source

__all__ = [
    "QUEUE_FILE",
    "CorruptQueueFile",
    "SavedJob",
    "SavedQueue",
    "from_document",
    "read_queue_file",
    "strip_secrets",
    "to_document",
    "write_queue_file",
]

log = logging.getLogger("segdl.server")

QUEUE_FILE: Final = ".segdl-queue.json"
VERSION: Final = 1
MAX_FILE_SIZE: Final = 8 * 1024 * 1024
MAX_URL: Final = 8192
MAX_ID: Final = 2**53  # exact in a JavaScript number, the page's

SavedState = Literal["queued", "running", "paused"]
SAVED_STATES: Final[frozenset[str]] = frozenset({"queued", "running", "paused"})

# Query parameters that carry credentials: CivitAI's ``?token=``, API keys, and the signature
# parts of signed storage URLs (AWS SigV4 ``X-Amz-Signature``/``-Credential``/``-Security-Token``,
# Google Cloud Storage ``X-Goog-…``, Azure's ``sig``).  Names are compared lower-cased; a name
# containing one of SECRET_WORDS counts too.
SECRET_NAMES: Final = frozenset({"key", "auth", "authorization", "sig", "pwd"})
SECRET_WORDS: Final = (
    "token",
    "secret",
    "signature",
    "password",
    "passwd",
    "credential",
    "api_key",
    "apikey",
)
# A Google Drive ``resourcekey`` names which shared file is meant, as the MEGA key in the
# fragment does: they are part of the link itself, and the download needs them.
NOT_SECRET: Final = frozenset({"resourcekey"})


class CorruptQueueFile(ValueError):
    """The queue file holds something this server would not have written."""


@dataclass(frozen=True)
class SavedJob:
    id: int
    url: str
    folder: str
    state: SavedState
    label: str | None = None
    limit: int | None = None
    downloaded: int = 0
    total: int | None = None


@dataclass(frozen=True)
class SavedQueue:
    next_id: int
    jobs: tuple[SavedJob, ...] = ()


def _is_secret(name: str) -> bool:
    name = name.strip().lower()
    if name in NOT_SECRET:
        return False
    return name in SECRET_NAMES or any(word in name for word in SECRET_WORDS)


def strip_secrets(url: str) -> str:
    """*url* without user-info and without the query parameters that carry credentials.

    The other parameters are kept byte for byte (CivitAI's ``type``/``format``, Drive's
    ``id``), and so is the fragment (MEGA's file key, which the download needs).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    netloc = parts.netloc.rpartition("@")[2]
    kept = []
    for piece in parts.query.split("&") if parts.query else []:
        name = unquote_plus(piece.partition("=")[0])
        if piece and not _is_secret(name):
            kept.append(piece)
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(kept), parts.fragment))


# ---- the document


def to_document(queue: SavedQueue) -> dict[str, Any]:
    return {
        "version": VERSION,
        "next_id": queue.next_id,
        "jobs": [
            {
                "id": job.id,
                "url": strip_secrets(job.url),
                "type": job.folder,
                "state": job.state,
                "label": job.label,
                "limit": job.limit,
                "downloaded": job.downloaded,
                "total": job.total,
            }
            for job in queue.jobs
        ],
    }


def _integer(value: object, what: str, *, low: int = 0, high: int = 2**63 - 1) -> int:
    if type(value) is not int or not low <= value <= high:
        raise CorruptQueueFile(f"bad {what}")
    return value


def _optional_integer(value: object, what: str, *, low: int = 0) -> int | None:
    return None if value is None else _integer(value, what, low=low)


def _optional_text(value: object, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > 1024):
        raise CorruptQueueFile(f"bad {what}")
    return value


def _job(entry: object) -> SavedJob:
    if not isinstance(entry, Mapping):
        raise CorruptQueueFile("a job is not an object")
    url = entry.get("url")
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise CorruptQueueFile("bad url")
    try:
        parse_source(url, SourceConfig.from_env())
        # The same allow-list as a request's ``type``: never a path of the file's choosing.
        folder = model_folder(entry.get("type", ""))
    except (DownloadError, ValueError) as exc:
        raise CorruptQueueFile(str(exc)) from exc
    if entry.get("type") != folder:
        raise CorruptQueueFile("bad type")  # written canonical: an alias was put there by hand
    state = entry.get("state")
    if state not in SAVED_STATES:
        raise CorruptQueueFile("bad state")
    return SavedJob(
        id=_integer(entry.get("id"), "id", low=1, high=MAX_ID),
        url=url,
        folder=folder,
        state=cast(SavedState, state),
        label=_optional_text(entry.get("label"), "label"),
        limit=_optional_integer(entry.get("limit"), "limit", low=1),
        downloaded=_integer(entry.get("downloaded", 0), "downloaded"),
        total=_optional_integer(entry.get("total"), "total"),
    )


def from_document(document: object) -> SavedQueue:
    """Validate a parsed queue file.

    Raises:
        CorruptQueueFile: anything this server would not have written.
    """
    if not isinstance(document, Mapping) or document.get("version") != VERSION:
        raise CorruptQueueFile("not a version 1 queue file")
    entries = document.get("jobs")
    if not isinstance(entries, list):
        raise CorruptQueueFile("no job list")
    jobs = tuple(_job(entry) for entry in entries)
    ids = [job.id for job in jobs]
    if len(set(ids)) != len(ids):
        raise CorruptQueueFile("a job id is used twice")
    next_id = _integer(document.get("next_id", 1), "next_id", low=1, high=MAX_ID)
    return SavedQueue(next_id=max([next_id, *(i + 1 for i in ids)]), jobs=jobs)


# ---- the file (blocking: call these in a worker thread)


def read_queue_file(path: Path) -> SavedQueue | None:
    """The saved queue, or ``None`` if there is none or it cannot be used.

    A file that cannot be read or validated is renamed to ``path.corrupt`` (replacing an older
    one) and reported in one warning line; it never raises.
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _set_aside(path, f"cannot be read ({exc.strerror or exc})")
        return None
    if len(data) > MAX_FILE_SIZE:
        _set_aside(path, "is too large")
        return None
    try:
        return from_document(json.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # json.JSONDecodeError and CorruptQueueFile are ValueErrors.
        _set_aside(path, f"is corrupt ({str(exc)[:80]})")
        return None


def _set_aside(path: Path, problem: str) -> None:
    aside = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, aside)
    except OSError as exc:
        log.warning(
            "WARNING: the queue file %s %s and could not be renamed aside (%s); "
            "starting with an empty queue",
            path,
            problem,
            exc.strerror or exc,
        )
        return
    log.warning(
        "WARNING: the queue file %s %s; renamed it to %s and started with an empty queue",
        path,
        problem,
        aside.name,
    )


def write_queue_file(path: Path, queue: SavedQueue) -> None:
    """Replace the queue file atomically; the new content is durable when this returns.

    Raises:
        OSError: the directory is missing or not writable, the disk is full…
    """
    data = json.dumps(to_document(queue), indent=1).encode("utf-8") + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600 (O_EXCL), in the same directory as the target
    # so the rename is atomic (POSIX rename(2)).
    fd, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable once the directory entry is (fsync(2) on the directory).
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
