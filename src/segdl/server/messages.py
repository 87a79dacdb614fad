"""The protocol's messages as documents: envelopes and the ``download`` replies.

Shapes follow reference sd-protocol.md §2–§5 (the fields qDiffusion reads are marked there):
every server message is ``{type, data, id}``; ``id`` is -1 for connection-level messages and
otherwise the id of the request the reply belongs to.  ``download`` replies carry a
``status`` — ``started`` (``label``), ``progress`` (``progress``, ``rate``, ``eta``),
``success`` (``label``), ``error`` (``message``, ``trace``) — and segdl adds ``queued`` and
``metadata``, which qDiffusion ignores.  segdl's own replies: ``paused`` (a download stopped
until resumed, like ``aborted``) and ``limit`` (``rate`` in bytes a second or null, ``job``: the
download's id, or null for the overall limit).  Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from ..core.events import Metadata, Progress, Started

__all__ = [
    "CONNECTION",
    "ack",
    "download_error",
    "download_metadata",
    "download_progress",
    "download_queued",
    "download_started",
    "download_success",
    "envelope",
    "error",
    "limit",
    "paused",
]

Message = dict[str, Any]

CONNECTION = -1  # the id of messages that belong to no request


def envelope(type: str, data: dict[str, Any] | None = None, id: int = CONNECTION) -> Message:
    message: Message = {"type": type, "id": id}
    if data is not None:
        message["data"] = data
    return message


def error(message: str, id: int = CONNECTION) -> Message:
    # Connection-level errors carry no trace (sd-protocol.md §1); replies to a request do.
    data: dict[str, Any] = {"message": message}
    if id != CONNECTION:
        data["trace"] = ""
    return envelope("error", data, id)


def ack(request_id: int, queue: int) -> Message:
    return envelope("ack", {"id": request_id, "queue": queue})


def _download(id: int, status: str, **fields: Any) -> Message:
    return envelope("download", {"status": status, **fields}, id)


def download_queued(id: int, position: int) -> Message:
    return _download(id, "queued", position=position)


def download_started(id: int, event: Started) -> Message:
    return _download(id, "started", label=event.filename, size=event.size)


def download_metadata(id: int, event: Metadata) -> Message:
    return _download(
        id,
        "metadata",
        name=event.name,
        model_type=event.model_type,
        base_model=event.base_model,
        trained_words=list(event.trained_words),
        sha256=event.sha256,
    )


def download_progress(id: int, event: Progress) -> Message:
    return _download(
        id,
        "progress",
        progress=event.progress,
        rate=event.rate,
        eta=event.eta,
        downloaded=event.downloaded,
        total=event.total,
        connections=event.connections,
    )


def download_success(id: int, *, label: str, path: str, size: int, sha256: str | None) -> Message:
    return _download(id, "success", label=label, path=path, size=size, sha256=sha256)


def download_error(id: int, message: str, code: int = 1) -> Message:
    # qDiffusion indexes both ``message`` and ``trace``; a traceback would only leak paths.
    return _download(id, "error", message=message, trace="", code=code)


def paused(id: int) -> Message:
    return envelope("paused", {}, id)


def limit(id: int, rate: int | None, job: int | None) -> Message:
    return envelope("limit", {"rate": rate, "job": job}, id)
