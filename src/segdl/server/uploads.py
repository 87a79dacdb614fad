"""Uploads: qDiffusion's ``chunk`` messages, into ``MODELS/FOLDER/NAME``.

What qDiffusion sends (``source/remote.py``, ``RemoteInferenceUpload.run``), one message at a
time, every data chunk with the id of its ``upload`` request::

    {"type": "chunk", "data": {"type": T, "name": N, "chunk": <512 KiB>, "index": i,
                               "total": ceil(size / 512 KiB)}, "id": U}      i = 0, 1, …
    {"type": "chunk", "data": {"type": T, "name": N}}                  the end (no id)
    {"type": "chunk", "data": {"type": T, "name": N, "index": -1}}     stopped (no id)

and what it reads back (``source/misc.py``, ``DownloadManager.onBackendResponse``): ``download``
replies under ``U``: ``started`` (``label``), ``progress`` (``progress``, ``eta``), ``success``
(``label`` optional), ``error`` (``message`` and ``trace``).  It never waits for them, so a
chunk that cannot be taken is answered with an error once; the chunks that follow for the
same upload are dropped quietly (acked, as every request) until its end message.

The rules, stricter than sd-inference-server's ``Inference.upload`` (which appends whatever
arrives to ``MODELS/T/N.tmp``):

- ``T`` goes through the folder allow-list and ``N`` through the download's filename
  sanitising (only its last path component, no control characters, no dot files, at most 243
  bytes), so nothing is written outside the models directory;
- chunk 0 starts an upload (aborting the same client's earlier upload of that name); every
  other chunk must be the next one, no larger than the first; anything else is refused with
  an error and aborts the upload; a chunk for an upload never started, or another client's,
  is refused with an error and written nowhere;
- the size is known only as ``total`` × the first chunk's length (exact but for the last
  chunk): the free space for that much is checked first, and the cap (``max_size``) against
  the smallest size those chunks could make, then against every byte as it arrives;
- the data goes to ``NAME.upload.part`` (no model scanner lists it) and is published by the
  end message alone, atomically, replacing a file of that name only then;
- an upload stops, its partial file removed, on ``index: -1``, on ``cancel`` of its id, when
  its client is gone for good, and when the server stops.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeGuard

import trio

from ..core.folders import model_folder
from ..core.headers import MAX_PARTIAL_NAME_BYTES, sanitize_filename
from ..core.progress import MIB, RateMeter
from ..errors import DownloadError
from ..io.files import check_free_space, check_writable_dir
from ..io.uploadfile import PartialUpload, open_partial_upload
from . import messages
from .outbox import Outbox

__all__ = ["PARTIAL_SUFFIX", "Owner", "Upload", "UploadRefused", "Uploads"]

log = logging.getLogger("segdl.server")

PARTIAL_SUFFIX: Final = ".upload.part"
# Failed uploads remembered so their remaining chunks are dropped without an error each.
MAX_FAILED: Final = 256
# A download of NAME in progress has one of these beside it (in place: aria2's control file;
# or its partial file): an upload must not replace its file.
_DOWNLOAD_MARKERS: Final = (".aria2", ".part")
# The names of unfinished files: aria2's control file and its temporary, segdl's validators,
# partial downloads and uploads.
_RESERVED_SUFFIXES: Final = (".aria2", ".aria2__temp", ".segdl", ".part")


class Owner(Protocol):
    """Whoever sent an upload's chunks: replies go to its outbox (a client session)."""

    @property
    def outbox(self) -> Outbox: ...


class UploadRefused(Exception):
    """A chunk message that cannot be taken; the message is for the client."""


@dataclass(eq=False)
class Upload:
    folder: str
    name: str
    request_id: int
    owner: Owner
    total: int
    chunk_size: int
    file: PartialUpload
    meter: RateMeter
    next_index: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def label(self) -> str:
        return self.name

    @property
    def expected_size(self) -> int:
        return self.total * self.chunk_size


_Key = tuple[str, str]


class Uploads:
    """Every upload of one server, keyed by (folder, name)."""

    def __init__(
        self,
        models_dir: Path,
        *,
        max_size: int | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if max_size is not None and max_size < 1:
            raise ValueError("max_size must be positive (or None for no cap)")
        self._models_dir = models_dir
        self.max_size = max_size
        self._clock = clock
        self._active: dict[_Key, Upload] = {}
        # The raw (type, name) of failed uploads and whose they were: their later chunks
        # are dropped.
        self._failed: OrderedDict[tuple[str, str], Owner] = OrderedDict()

    def active(self) -> list[Upload]:
        return list(self._active.values())

    # -- messages

    async def handle(self, sender: Owner, request_id: int, data: dict[str, Any]) -> None:
        """One ``chunk`` message of *sender*, with *request_id* (made up if it had none)."""
        raw_type, raw_name = data.get("type"), data.get("name")
        if not isinstance(raw_type, str) or not isinstance(raw_name, str):
            sender.outbox.put(messages.error("an upload needs a type and a name", request_id))
            return
        failed_key = (raw_type[:64], raw_name[:512])
        failed = self._failed.get(failed_key) is sender
        index = data.get("index")
        if "chunk" not in data or index == -1:
            if failed:
                del self._failed[failed_key]  # its end: nothing more will come for it
                return
            try:
                key = _target(raw_type, raw_name)
            except UploadRefused as exc:
                sender.outbox.put(messages.error(str(exc), request_id))
                return
            if index == -1:
                await self._stop(sender, key)
            else:
                await self._finish(sender, key, request_id)
            return
        first = _is_count(index) and index == 0
        if not first and failed:
            return  # the error was sent when it failed
        if failed:
            del self._failed[failed_key]
        try:
            if first:
                await self._start(sender, request_id, raw_type, raw_name, data)
            else:
                await self._append(sender, raw_type, raw_name, data)
        except UploadRefused as exc:
            self._remember_failed(failed_key, sender)
            sender.outbox.put(messages.download_error(request_id, str(exc)))

    async def _start(
        self, sender: Owner, request_id: int, raw_type: str, raw_name: str, data: dict[str, Any]
    ) -> None:
        chunk, total = data.get("chunk"), data.get("total")
        folder, name = _target(raw_type, raw_name)
        if not _is_count(total) or total < 1:
            raise UploadRefused("the upload's total number of chunks is missing or wrong")
        if not isinstance(chunk, bytes) or not chunk:
            raise UploadRefused("an upload chunk must be non-empty binary data")
        current = self._active.get((folder, name))
        if current is not None:
            if current.owner is not sender:
                raise UploadRefused(f"{name} is being uploaded into {folder} by another client")
            await self._abort(current, "started again")
        smallest = (total - 1) * len(chunk) + 1
        if self.max_size is not None and smallest > self.max_size:
            raise UploadRefused(
                f"{name} is too large to upload: at least {smallest} bytes, "
                f"this server takes at most {self.max_size}"
            )
        directory = self._models_dir / folder
        final = directory / name
        partial = directory / (name + PARTIAL_SUFFIX)
        try:
            await trio.to_thread.run_sync(_check_target, directory, final, total * len(chunk))
            file = await trio.to_thread.run_sync(open_partial_upload, partial, final)
        except DownloadError as exc:  # DiskError, DiskFull
            raise UploadRefused(str(exc)) from None
        now = self._clock()
        upload = Upload(
            folder=folder,
            name=name,
            request_id=request_id,
            owner=sender,
            total=total,
            chunk_size=len(chunk),
            file=file,
            meter=RateMeter(total=total * len(chunk), start_bytes=0, now=now),
        )
        self._active[(folder, name)] = upload
        log.info("upload of %s into %s started (%d chunks)", name, folder, total)
        started = {"status": "started", "label": name}
        sender.outbox.put(messages.envelope("download", started, request_id))
        await self._write(upload, 0, chunk)

    async def _append(
        self, sender: Owner, raw_type: str, raw_name: str, data: dict[str, Any]
    ) -> None:
        folder, name = _target(raw_type, raw_name)
        upload = self._active.get((folder, name))
        if upload is None:
            raise UploadRefused(f"no upload of {name} into {folder} was started (chunk 0 first)")
        if upload.owner is not sender:
            raise UploadRefused(f"{name} is being uploaded into {folder} by another client")
        index, chunk, total = data.get("index"), data.get("chunk"), data.get("total")
        problem = None
        if not _is_count(index) or index != upload.next_index:
            problem = f"chunk {index!r} arrived where chunk {upload.next_index} was expected"
        elif total != upload.total:
            problem = f"chunk {index} says {total!r} chunks, chunk 0 said {upload.total}"
        elif not isinstance(chunk, bytes) or not chunk or len(chunk) > upload.chunk_size:
            problem = f"chunk {index} is empty or larger than chunk 0"
        elif self.max_size is not None and upload.file.written + len(chunk) > self.max_size:
            problem = f"{name} is larger than this server takes ({self.max_size} bytes)"
        if problem is not None:
            await self._abort(upload, problem)
            raise UploadRefused(f"upload of {name} stopped: {problem}; upload it again")
        assert isinstance(chunk, bytes)
        assert isinstance(index, int)
        await self._write(upload, index, chunk)

    async def _write(self, upload: Upload, index: int, chunk: bytes) -> None:
        async with upload.lock:
            if self._active.get((upload.folder, upload.name)) is not upload:
                return  # aborted while this chunk waited
            try:
                await trio.to_thread.run_sync(upload.file.append, chunk)
            except DownloadError as exc:
                await self._abort(upload, str(exc), locked=True)
                raise UploadRefused(f"upload of {upload.name} stopped: {exc}") from None
            upload.next_index = index + 1
        snapshot = upload.meter.sample(upload.file.written, self._clock())
        complete = upload.next_index >= upload.total
        progress = 1.0 if complete else upload.next_index / upload.total
        eta = 0.0 if complete else snapshot.eta
        # Until the last chunk, the size is known only as total × the first chunk's length.
        expected = upload.file.written if complete else upload.expected_size
        upload.owner.outbox.put(
            messages.envelope(
                "download",
                {
                    "status": "progress",
                    "progress": progress,
                    "rate": snapshot.rate / MIB,
                    "eta": eta,
                    "downloaded": upload.file.written,
                    "total": expected,
                },
                upload.request_id,
            ),
            coalesce=("progress", upload.request_id),
        )

    async def _finish(self, sender: Owner, key: _Key, request_id: int) -> None:
        folder, name = key
        upload = self._active.get(key)
        if upload is None or upload.owner is not sender:
            sender.outbox.put(
                messages.error(f"no upload of {name} into {folder} to finish", request_id)
            )
            return
        async with upload.lock:
            if self._active.get(key) is not upload:
                return
            if upload.next_index != upload.total:
                problem = f"only {upload.next_index} of {upload.total} chunks arrived"
                await self._abort(upload, problem, locked=True)
                upload.owner.outbox.put(
                    messages.download_error(
                        upload.request_id, f"upload of {name} is incomplete: {problem}"
                    )
                )
                return
            del self._active[key]
            try:
                await trio.to_thread.run_sync(_publish, upload.file)
            except (DownloadError, UploadRefused) as exc:
                await trio.to_thread.run_sync(upload.file.discard)
                log.info("upload of %s into %s failed: %s", name, folder, exc)
                upload.owner.outbox.put(
                    messages.download_error(upload.request_id, f"upload of {name} failed: {exc}")
                )
                return
        log.info("upload of %s into %s done (%d bytes)", name, folder, upload.file.written)
        upload.owner.outbox.put(
            messages.envelope(
                "download",
                {
                    "status": "success",
                    "label": name,
                    "path": f"{folder}/{name}",
                    "size": upload.file.written,
                    "sha256": upload.file.digest.hexdigest(),
                },
                upload.request_id,
            )
        )

    async def _stop(self, sender: Owner, key: _Key) -> None:
        upload = self._active.get(key)
        if upload is None or upload.owner is not sender:
            return  # nothing of this client's to stop
        await self._abort(upload, "stopped by the client")
        sender.outbox.put(messages.envelope("aborted", {}, upload.request_id))

    # -- for the connections

    async def cancel(self, sender: Owner, request_id: int) -> bool:
        """``cancel`` naming an upload's id: stop it; ``False`` if *sender* has none."""
        for upload in self.active():
            if upload.owner is sender and upload.request_id == request_id:
                await self._abort(upload, "cancelled")
                sender.outbox.put(messages.envelope("aborted", {}, request_id))
                return True
        return False

    def transfer(self, old: Owner, new: Owner) -> int:
        """*new* owns what *old* did (its client reconnected); returns how many moved."""
        moved = 0
        for upload in self._active.values():
            if upload.owner is old:
                upload.owner = new
                moved += 1
        for key, owner in self._failed.items():
            if owner is old:
                self._failed[key] = new
        return moved

    async def abort_owned_by(self, owner: Owner) -> None:
        """Its client is gone for good: stop its uploads, remove their partial files."""
        for key, failed_owner in list(self._failed.items()):
            if failed_owner is owner:
                del self._failed[key]
        for upload in self.active():
            if upload.owner is owner:
                await self._abort(upload, "its client went away")

    async def abort_all(self) -> None:
        for upload in self.active():
            await self._abort(upload, "the server is stopping")

    async def _abort(self, upload: Upload, why: str, *, locked: bool = False) -> None:
        key = (upload.folder, upload.name)
        if self._active.get(key) is upload:
            del self._active[key]
        log.info("upload of %s into %s aborted: %s", upload.name, upload.folder, why)
        if locked:
            await trio.to_thread.run_sync(upload.file.discard)
            return
        async with upload.lock:
            await trio.to_thread.run_sync(upload.file.discard)

    def _remember_failed(self, key: tuple[str, str], owner: Owner) -> None:
        self._failed[key] = owner
        while len(self._failed) > MAX_FAILED:
            self._failed.popitem(last=False)


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def _target(raw_type: str, raw_name: str) -> _Key:
    """The folder and file name an upload's ``type`` and ``name`` mean, made safe."""
    try:
        folder = model_folder(raw_type)
    except ValueError as exc:
        raise UploadRefused(str(exc)) from None
    name = sanitize_filename(raw_name, fallback="upload", max_bytes=MAX_PARTIAL_NAME_BYTES)
    if name.lower().endswith(_RESERVED_SUFFIXES):
        # Such a file would pass for a download's control file or another upload's partial.
        raise UploadRefused(
            f"{name}: names ending in {', '.join(_RESERVED_SUFFIXES)} are kept for unfinished files"
        )
    return folder, name


def _check_target(directory: Path, final: Path, size: int) -> None:
    """Blocking: room for *size* bytes, and no download writing *final* now."""
    check_writable_dir(directory)
    for marker in _DOWNLOAD_MARKERS:
        if final.with_name(final.name + marker).exists():
            raise UploadRefused(
                f"a download of {final.name} into {directory.name} is unfinished; "
                "let it end or delete it first"
            )
    if final.is_dir():
        raise UploadRefused(f"{final.name} is a folder in {directory.name}")
    check_free_space(directory, size)


def _publish(file: PartialUpload) -> None:
    for marker in _DOWNLOAD_MARKERS:
        if file.final.with_name(file.final.name + marker).exists():
            raise UploadRefused(f"a download of {file.final.name} started meanwhile")
    file.publish()
