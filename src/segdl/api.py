"""The library API: ``await download(…)`` for trio programs, ``download_sync`` for scripts,
``open_manager`` for many downloads at once, and the seed system's ``download_model``.

Each call builds one :class:`~segdl.jobs.request.DownloadRequest` (the arguments are checked
there, once) and runs it through the one download flow (:mod:`segdl.jobs.flow`).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from functools import partial, wraps
from typing import ParamSpec, TypeVar, Unpack

import trio

from .core.events import Event, Failed, Success
from .engine.base import EventSink
from .engine.options import ModelFileOptions, Options
from .errors import DownloadError
from .jobs.flow import run_download
from .jobs.manager import DownloadHandle, DownloadManager, DownloadState, open_manager
from .jobs.request import RequestArgs, build_request

__all__ = [
    "DownloadHandle",
    "DownloadManager",
    "DownloadState",
    "download",
    "download_model",
    "download_sync",
    "open_manager",
]

P = ParamSpec("P")
T = TypeVar("T")


def _no_events(event: Event) -> None:
    pass


async def download(
    url: str | Sequence[str],
    directory: str | os.PathLike[str] = ".",
    *,
    on_event: EventSink | None = None,
    **kwargs: Unpack[RequestArgs],
) -> Success:
    """Download one file into *directory* and return its :class:`Success` event.

    Args:
        url: the file's URL, or several URLs of the same file (mirrors: connections are
            spread over them; one that fails or is far slower is dropped).
        directory: where the file goes (created if missing).
        on_event: called with every :mod:`segdl.core.events` event, from the trio thread.
        out: the file name; by default from Content-Disposition, then the URL.
        options: connections, split, resume and checksum settings (:class:`Options`).
        engine: ``"native"`` (segmented), ``"single"`` (one connection), ``"aria2c"``.
        civitai_token, hf_token: sent to their own site only (default: ``$CIVITAI_TOKEN``,
            ``$HF_TOKEN``).
        limits: bandwidth limits every connection passes (:class:`RateLimit`; share one
            among downloads for an overall limit, change it with ``set`` at any time).

    Raises:
        DownloadError: or one of its subclasses (see :mod:`segdl.errors`); the partial file
            and its control file are kept so a later call resumes.
    """
    emit = on_event or _no_events
    try:
        request = build_request(url, directory, **kwargs)
    except DownloadError as exc:
        emit(Failed(message=str(exc), code=exc.exit_code))
        raise
    return await run_download(request, emit)


def blocking(function: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """*function* for code that is not running trio: each call runs it in ``trio.run``."""

    @wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return trio.run(partial(function, *args, **kwargs))

    return run


download_sync = blocking(download)
download_sync.__doc__ = """:func:`download` for code that is not running trio: blocks until done."""


# -- the seed system's call --------------------------------------------------------------


def download_model(
    url: str,
    model_type: str,
    folder: str | os.PathLike[str],
    progress_callback: Callable[[dict[str, object]], None] | None = None,
    civitai_token: str | None = None,
    hf_token: str | None = None,
) -> str:
    """The seed system's ``download_model``: download *url* into *folder*, return the path.

    *progress_callback* receives each event as a dict with a ``status`` key
    (``started``, ``progress``, ``success``, ``error``, …) besides the event's fields.
    *model_type* is recorded in the events; the folder is the caller's choice.

    Asked again, it gets the file, safely: at once when segdl's record shows the file there
    is the server's current version; otherwise the new one is downloaded beside it and
    replaces it only once complete and verified (``allow_overwrite``: a failed second try
    never destroys a good file).
    """

    def emit(event: Event) -> None:
        if progress_callback is not None:
            data = event.to_dict()
            data["status"] = data["type"]
            data["model_type"] = model_type
            progress_callback(data)

    result = download_sync(
        url,
        folder,
        on_event=emit,
        options=Options(allow_overwrite=True),
        civitai_token=civitai_token,
        hf_token=hf_token,
        # As the SD tools expect: the site's metadata files beside the model.
        model_files=ModelFileOptions(metadata=True),
    )
    return result.path
