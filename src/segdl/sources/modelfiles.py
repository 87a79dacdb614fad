"""Beside a finished model: its metadata files, and the folder its type belongs in.

After a download, :func:`write_model_metadata` writes what the SD tools read next to
``NAME.safetensors`` (formats and their sources: :mod:`segdl.core.modelinfo`):

* CivitAI: ``NAME.civitai.info`` (Civitai Helper), ``NAME.json`` (A1111/Forge user metadata)
  and ``NAME.preview.png|jpg|webp|gif`` (the first SFW still image, unless asked otherwise);
* Hugging Face: ``NAME.json`` with A1111's keys and the repo, revision, commit, path and
  sha256 (one file: no tool reads a Hub-specific one, and A1111 shows its description).

``NAME.json`` is never overwritten (the user may have edited it in A1111, and Civitai Helper
does not overwrite it either), nor is an existing preview; ``NAME.civitai.info`` is the site's
record and is refreshed.  Files are written atomically; metadata only ever accompanies a file
with a model extension.  Metadata is a courtesy: a preview that cannot be fetched is reported
through *on_warning*, never raised.

:func:`folder_for_record` answers ``--type auto``: the models sub-folder a CivitAI model's type
names (:func:`segdl.core.folders.civitai_folder`); :func:`published_digest` is what "have it
already?" (:mod:`segdl.jobs.modelfolder`) looks for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import trio

from ..core.folders import civitai_folder
from ..core.modelinfo import (
    CivitAIRecord,
    HuggingFaceRecord,
    SiteRecord,
    choose_preview,
    civitai_info_document,
    huggingface_info,
    image_suffix,
    is_model_file_name,
    metadata_names,
    to_json_bytes,
    webui_user_metadata,
)
from ..errors import DownloadError, redact_url
from ..io.files import write_atomic
from .base import DownloadPlan
from .sitehttp import open_response, read_body

__all__ = [
    "MAX_PREVIEW_BYTES",
    "folder_for_record",
    "published_digest",
    "write_model_metadata",
]

# Originals on CivitAI are a few MiB; anything far bigger is not a preview.
MAX_PREVIEW_BYTES = 32 * 1024 * 1024


def folder_for_record(record: SiteRecord | None) -> str:
    """The models sub-folder for ``--type auto``.

    Raises:
        ValueError: one line: the type has no folder, or the site says no type at all.
    """
    if isinstance(record, CivitAIRecord):
        return civitai_folder(record.model_type, record.file_type)
    raise ValueError(
        "--type auto needs a CivitAI model (its page says its type); for other URLs name "
        "the folder, e.g. --type LoRA"
    )


def _write_new(path: Path, data: bytes) -> bool:
    """Write *path* unless it exists (a user's file is never replaced)."""
    if path.exists() or path.is_symlink():
        return False
    write_atomic(path, data)
    return True


def _existing(directory: Path, names: tuple[str, ...]) -> bool:
    return any((directory / name).exists() for name in names)


async def write_model_metadata(
    model_path: Path,
    source: DownloadPlan | SiteRecord | None,
    *,
    client: httpx.AsyncClient,
    include_nsfw_preview: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the metadata files beside *model_path*; returns the files written.

    *source* is the download's plan (its ``record``) or a record from :func:`describe_url`.
    Nothing is written for a site without a record, or for a file without a model extension
    (``config.json`` from a Hub repo gets no ``config.json`` of metadata).

    Raises:
        DiskError: a metadata file could not be written.
    """
    record = source.record if isinstance(source, DownloadPlan) else source
    if record is None or not is_model_file_name(model_path.name):
        return []
    names = metadata_names(model_path.name)
    directory = model_path.parent
    written: list[Path] = []
    if isinstance(record, HuggingFaceRecord):
        target = directory / names.user_metadata
        if await trio.to_thread.run_sync(
            _write_new, target, to_json_bytes(huggingface_info(record))
        ):
            written.append(target)
        return written

    info = directory / names.civitai_info
    await trio.to_thread.run_sync(write_atomic, info, to_json_bytes(civitai_info_document(record)))
    written.append(info)
    user = directory / names.user_metadata
    if await trio.to_thread.run_sync(_write_new, user, to_json_bytes(webui_user_metadata(record))):
        written.append(user)

    if await trio.to_thread.run_sync(_existing, directory, names.existing_previews):
        return written
    url = choose_preview(record.version.get("images"), include_nsfw=include_nsfw_preview)
    if url is None:
        return written
    try:
        image = await _fetch_image(client, url)
    except DownloadError as exc:
        if on_warning is not None:
            on_warning(f"no preview for {model_path.name}: {exc}")
        return written
    suffix = image_suffix(image[:16])
    if suffix is None:
        if on_warning is not None:
            on_warning(
                f"no preview for {model_path.name}: {redact_url(url)} is not a PNG, JPEG, "
                "WebP or GIF image"
            )
        return written
    preview = directory / names.preview(suffix)
    if await trio.to_thread.run_sync(_write_new, preview, image):
        written.append(preview)
    return written


async def _fetch_image(client: httpx.AsyncClient, url: str) -> bytes:
    """The image's bytes (no credentials sent: images are public), at most
    :data:`MAX_PREVIEW_BYTES`."""
    async with open_response(
        client, "GET", url, headers={"Accept": "image/*"}, follow_redirects=True
    ) as response:
        if response.status_code != 200:
            raise DownloadError(f"the image host answered HTTP {response.status_code}", url=url)
        return await read_body(response, limit=MAX_PREVIEW_BYTES)


# -- have it already? ------------------------------------------------------------------------

# CivitAI's sizeKB is a float of KiB, rounded: a size this close is a candidate (the digest
# decides).  The Hub's X-Linked-Size is exact.
_CIVITAI_SIZE_TOLERANCE = 4096


def published_digest(source: DownloadPlan | SiteRecord | None) -> tuple[str, int | None, int]:
    """(sha256, size hint, size tolerance) the site publishes; sha256 "" when it publishes none."""
    if isinstance(source, DownloadPlan):
        if source.record is None:
            return (source.sha256 or "", source.size, 0)
        source = source.record
    if isinstance(source, HuggingFaceRecord):
        return (source.sha256 or "", source.size, 0)
    if isinstance(source, CivitAIRecord) and source.file is not None:
        hashes = source.file.get("hashes")
        digest = hashes.get("SHA256") if isinstance(hashes, dict) else None
        size_kb = source.file.get("sizeKB")
        size = (
            round(size_kb * 1024)
            if isinstance(size_kb, int | float) and not isinstance(size_kb, bool)
            else None
        )
        if isinstance(digest, str) and len(digest) == 64:
            return (digest.lower(), size, _CIVITAI_SIZE_TOLERANCE)
    return ("", None, 0)
