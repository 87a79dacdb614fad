"""Around a download into a models folder: its folder from the model's type, a copy that is
already there, and the metadata files beside the finished model (issue 15, items 5–7).

The flow (:mod:`.flow`) calls these at three points of a download with
:class:`~segdl.engine.options.ModelFileOptions`: :func:`choose_directory` once the site has
answered, :func:`find_copy` before anything is probed, and :func:`write_metadata` after the
model is published.  Metadata is a courtesy: what goes wrong there is a warning, never a
failed download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from ..core.events import Success, Warned
from ..core.modelinfo import SiteRecord
from ..engine.base import EventSink
from ..engine.options import ModelFileOptions
from ..errors import DiskError, DownloadError, DuplicateModel
from ..sources.base import DownloadPlan
from ..sources.modelfiles import (
    folder_for_record,
    published_digest,
    write_model_metadata,
)
from .hashindex import ModelIndex, place_model_copy

__all__ = [
    "ExistingModel",
    "choose_directory",
    "find_copy",
    "find_existing_model",
    "write_metadata",
]

# One index per cache directory and process: a file is hashed once, whatever asks.
_INDEXES: dict[Path | None, ModelIndex] = {}


def _index(cache_dir: Path | None) -> ModelIndex:
    index = _INDEXES.get(cache_dir)
    if index is None:
        index = _INDEXES[cache_dir] = ModelIndex(cache_dir)
    return index


def choose_directory(directory: Path, plan: DownloadPlan, files: ModelFileOptions | None) -> Path:
    """*directory*, or with ``auto_folder`` the sub-folder of it the model's type names.

    Raises:
        DownloadError: the type has no models folder (one line naming the choices).
    """
    if files is None or not files.auto_folder:
        return directory
    try:
        return directory / folder_for_record(plan.record)
    except ValueError as exc:
        raise DownloadError(str(exc)) from exc


async def find_copy(
    plan: DownloadPlan,
    directory: Path,
    files: ModelFileOptions | None,
    *,
    cache_dir: Path | None,
    emit: EventSink,
) -> Success | None:
    """The model is already under the models root with the published sha256: its Success
    (in *directory*, or linked there with ``link_existing``); None to download it.

    Raises:
        DuplicateModel: it is in another folder and ``link_existing`` was not asked for (the
            message says where, and how to link it).
    """
    if files is None or files.models_root is None:
        return None
    found = await find_existing_model(
        plan, models_dir=files.models_root, target_dir=directory, index=_index(cache_dir)
    )
    if found is None:
        return None
    path = found.path
    if not found.in_target_folder:
        if not files.link_existing:
            raise DuplicateModel(
                f"{found.message(files.models_root)} (--link-existing links it there)"
            )
        name = plan.filename or path.name
        target = directory / name
        how = await place_model_copy(path, target)
        emit(Warned(message=f"{how} {path} to {target} instead of downloading it again"))
        path = target
    digest = published_digest(plan)[0] or None
    size = await trio.to_thread.run_sync(lambda: path.stat().st_size)
    return Success(path=str(path), size=size, sha256=digest)


async def write_metadata(
    path: Path,
    plan: DownloadPlan,
    files: ModelFileOptions | None,
    *,
    client: httpx.AsyncClient,
    emit: EventSink,
) -> None:
    """The metadata files beside the finished model, when asked for; failures are warnings."""
    if files is None or not files.metadata:
        return

    def warn(message: str) -> None:
        emit(Warned(message=message))

    try:
        await write_model_metadata(
            path, plan, client=client, include_nsfw_preview=files.nsfw_preview, on_warning=warn
        )
    except (DiskError, DownloadError) as exc:
        warn(f"no metadata for {path.name}: {exc}")


@dataclass(frozen=True, slots=True)
class ExistingModel:
    """A file under the models directory with the published sha256 of the one asked for."""

    path: Path
    in_target_folder: bool

    def message(self, models_dir: Path) -> str:
        """One line for the user (paths relative to the models directory where possible)."""
        try:
            shown = str(self.path.relative_to(models_dir))
        except ValueError:
            shown = str(self.path)
        if self.in_target_folder:
            return f"already there: {shown} has the published sha256; nothing to download"
        return (
            f"the same file is already at {shown} (same sha256); link or copy it instead of "
            "downloading it again"
        )


async def find_existing_model(
    source: DownloadPlan | SiteRecord | None,
    *,
    models_dir: Path,
    target_dir: Path,
    index: ModelIndex,
    max_hash_bytes: int | None = None,
) -> ExistingModel | None:
    """Is the file the site describes already under *models_dir*?  (issue 15 item 5)

    A copy in *target_dir* is preferred (nothing to do); otherwise the first copy elsewhere
    is returned, for the caller to name it and link or copy it only when asked
    (:func:`segdl.jobs.hashindex.place_model_copy`).  None when the site publishes no sha256,
    or no file has it.
    """
    digest, size, tolerance = published_digest(source)
    if not digest or not await trio.to_thread.run_sync(models_dir.is_dir):
        return None
    search = await index.search(
        models_dir,
        digest,
        size=size,
        size_tolerance=tolerance,
        max_hash_bytes=max_hash_bytes,
    )
    if not search.matches:
        return None
    return await trio.to_thread.run_sync(_prefer_target, search.matches, target_dir)


def _prefer_target(matches: tuple[Path, ...], target_dir: Path) -> ExistingModel:
    target = target_dir.resolve()
    for path in matches:
        if path.parent.resolve() == target:
            return ExistingModel(path, in_target_folder=True)
    return ExistingModel(matches[0], in_target_folder=False)
