"""segdl: fast, resumable, segmented downloads of large model files.

The public API lives here; everything else is private to the package's layers:
``segdl.core`` (pure logic), ``segdl.io`` (sockets, files, httpx), ``segdl.engine``
(trio orchestration), and the shells ``segdl.cli``.

The names below are loaded when first used (PEP 562): ``import segdl`` costs nothing, and
``segdl get`` loads only what a download needs, so that its first request goes out soon
after the process starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .core.version import __version__ as __version__

if TYPE_CHECKING:
    from .api import DownloadHandle as DownloadHandle
    from .api import DownloadManager as DownloadManager
    from .api import DownloadState as DownloadState
    from .api import download as download
    from .api import download_model as download_model
    from .api import download_sync as download_sync
    from .api import open_manager as open_manager
    from .batch import BatchJob as BatchJob
    from .batch import BatchResult as BatchResult
    from .batch import JobOutcome as JobOutcome
    from .batch import download_batch as download_batch
    from .batch import download_batch_sync as download_batch_sync
    from .batch import load_input_file as load_input_file
    from .core.checksum import Checksum as Checksum
    from .core.checksum import parse_checksum as parse_checksum
    from .core.events import Aborted as Aborted
    from .core.events import Event as Event
    from .core.events import Failed as Failed
    from .core.events import Metadata as Metadata
    from .core.events import Progress as Progress
    from .core.events import Started as Started
    from .core.events import Success as Success
    from .core.events import Warned as Warned
    from .core.inputfile import InputFileError as InputFileError
    from .engine.options import Options as Options
    from .engine.options import RetryPolicy as RetryPolicy
    from .engine.throttle import RateLimit as RateLimit
    from .errors import AuthError as AuthError
    from .errors import BadResponse as BadResponse
    from .errors import ChecksumMismatch as ChecksumMismatch
    from .errors import DestinationRefused as DestinationRefused
    from .errors import DiskError as DiskError
    from .errors import DiskFull as DiskFull
    from .errors import DownloadError as DownloadError
    from .errors import DuplicateModel as DuplicateModel
    from .errors import FileExists as FileExists
    from .errors import HTTPStatusError as HTTPStatusError
    from .errors import InvalidURL as InvalidURL
    from .errors import LinkExpired as LinkExpired
    from .errors import NetworkError as NetworkError
    from .errors import NotFound as NotFound
    from .errors import ProxyAuthError as ProxyAuthError
    from .errors import ProxyError as ProxyError
    from .errors import RemoteChanged as RemoteChanged
    from .errors import ResumeError as ResumeError
    from .errors import ServerBusy as ServerBusy
    from .errors import Timeout as Timeout

__all__ = [
    "Aborted",
    "AuthError",
    "BadResponse",
    "BatchJob",
    "BatchResult",
    "Checksum",
    "ChecksumMismatch",
    "DestinationRefused",
    "DiskError",
    "DiskFull",
    "DownloadError",
    "DownloadHandle",
    "DownloadManager",
    "DownloadState",
    "DuplicateModel",
    "Event",
    "Failed",
    "FileExists",
    "HTTPStatusError",
    "InputFileError",
    "InvalidURL",
    "JobOutcome",
    "LinkExpired",
    "Metadata",
    "NetworkError",
    "NotFound",
    "Options",
    "Progress",
    "ProxyAuthError",
    "ProxyError",
    "RateLimit",
    "RemoteChanged",
    "ResumeError",
    "RetryPolicy",
    "ServerBusy",
    "Started",
    "Success",
    "Timeout",
    "Warned",
    "download",
    "download_batch",
    "download_batch_sync",
    "download_model",
    "download_sync",
    "load_input_file",
    "open_manager",
    "parse_checksum",
]

# Where each public name lives (a module of this package).
_EXPORTS = {
    "DownloadHandle": "api",
    "DownloadManager": "api",
    "DownloadState": "api",
    "download": "api",
    "download_model": "api",
    "download_sync": "api",
    "open_manager": "api",
    "BatchJob": "batch",
    "BatchResult": "batch",
    "JobOutcome": "batch",
    "download_batch": "batch",
    "download_batch_sync": "batch",
    "load_input_file": "batch",
    "Checksum": "core.checksum",
    "parse_checksum": "core.checksum",
    "Aborted": "core.events",
    "Event": "core.events",
    "Failed": "core.events",
    "Metadata": "core.events",
    "Progress": "core.events",
    "Started": "core.events",
    "Success": "core.events",
    "Warned": "core.events",
    "InputFileError": "core.inputfile",
    "Options": "engine.options",
    "RetryPolicy": "engine.options",
    "RateLimit": "engine.throttle",
    "AuthError": "errors",
    "BadResponse": "errors",
    "ChecksumMismatch": "errors",
    "DestinationRefused": "errors",
    "DiskError": "errors",
    "DiskFull": "errors",
    "DownloadError": "errors",
    "DuplicateModel": "errors",
    "FileExists": "errors",
    "HTTPStatusError": "errors",
    "InvalidURL": "errors",
    "LinkExpired": "errors",
    "NetworkError": "errors",
    "NotFound": "errors",
    "ProxyAuthError": "errors",
    "ProxyError": "errors",
    "RemoteChanged": "errors",
    "ResumeError": "errors",
    "ServerBusy": "errors",
    "Timeout": "errors",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # loaded once
        return value
    # segdl.Error and segdl.Cancelled were events with exception-like names (now Failed and
    # Aborted): kept for one release, with a DeprecationWarning.
    from .core.events import deprecated_name

    return deprecated_name(__name__, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
