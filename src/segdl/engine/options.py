"""Download options: aria2c's knobs with aria2c's `-x16 -s16 -k1M` as defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..core.checksum import Checksum
from ..core.destinations import DestinationPolicy
from ..core.proxyrules import ProxySettings

__all__ = ["MIB", "ModelFileOptions", "Options", "RetryPolicy", "environment_proxies"]

MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """Per-connection retries: exponential backoff with jitter.

    ======================  =========================================================
    ``max_tries``           tries per connection before it gives up (aria2 ``-m``, 5)
    ``base_delay``          first backoff, doubled each try
    ``max_delay``           backoff ceiling, and ceiling for a server's Retry-After
    ``jitter``              fraction of the delay randomised (spreads 16 retries out)
    ======================  =========================================================
    """

    max_tries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: float = 0.5

    def delay(self, attempt: int, *, retry_after: float | None, rand: float) -> float:
        """Seconds to wait before try number *attempt* (1-based); *rand* is in [0, 1).

        A server's ``Retry-After`` (RFC 9110 §10.2.3) is honoured up to ``max_delay``.
        """
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_delay)
        backoff: float = min(self.max_delay, self.base_delay * 2.0 ** max(0, attempt - 1))
        return backoff * (1 - self.jitter * rand)


def environment_proxies() -> ProxySettings:
    """``http_proxy``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``… as curl reads them.

    Raises ValueError (:class:`~segdl.core.proxyrules.ProxyConfigError`) for a proxy URL
    segdl cannot use, naming the variable."""
    return ProxySettings.from_environment(os.environ)


@dataclass(frozen=True, kw_only=True, slots=True)
class Options:
    """How to download.  The names follow aria2c's long options.

    ``connections``       ``-x``: connections to the server for one file (1–16)
    ``split``             ``-s``: ranges a file is split into at most at a time
    ``min_split_size``    ``-k``: no range smaller than this is split off (≥ 1 MiB)
    ``continue_partial``  ``-c``: continue an existing file that has no control file
    ``allow_overwrite``   replace a file segdl cannot vouch for (once the new one verified)
    ``checksum``          ``--checksum``: verify the whole file at the end
    ``headers``           extra request headers (auth); never sent to another origin
    ``ca_certificate``    extra CA bundle trusted for HTTPS
    ``connect_timeout``   seconds to establish a connection (aria2: 60)
    ``read_timeout``      seconds without a byte before a connection is retried (aria2: 60)
    ``save_interval``     seconds between control-file saves (after an fsync of the data);
                          the native engine also saves once 4 MiB arrived unsaved
    ``progress_interval`` seconds between progress events
    ``buffer_size``       bytes read per write; one buffer per connection
    ``compute_sha256``    hash the finished file and report it in the success event
    ``max_download_limit``  ``--max-download-limit``: bytes/s for this download (None: no limit)
    ``proxies``           proxies for every request (probe, site APIs, data connections):
                          aria2c's ``--all-proxy``… flags over the environment's, see
                          :mod:`segdl.core.proxyrules`; None: the environment's, read
                          when the download's request is built (an engine run by hand with
                          None uses no proxy)
    ``destinations``      where downloads may connect (``segdl serve``'s policy); None: anywhere
    """

    connections: int = 16
    split: int = 16
    min_split_size: int = MIB
    piece_length: int = MIB
    continue_partial: bool = False
    allow_overwrite: bool = False
    checksum: Checksum | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    ca_certificate: str | None = None
    connect_timeout: float = 30.0
    read_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    save_interval: float = 0.25
    progress_interval: float = 0.5
    buffer_size: int = MIB
    compute_sha256: bool = False
    max_download_limit: int | None = None
    proxies: ProxySettings | None = None
    destinations: DestinationPolicy | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.connections <= 16:
            raise ValueError("connections (-x) must be between 1 and 16")
        if self.split < 1:
            raise ValueError("split (-s) must be at least 1")
        if not MIB <= self.min_split_size <= 1024 * MIB:
            raise ValueError("min split size (-k) must be between 1M and 1024M")
        if self.piece_length < 16 * 1024:
            raise ValueError("piece length must be at least 16 KiB")
        if self.buffer_size < 64 * 1024:
            raise ValueError("buffer size must be at least 64 KiB")
        if self.max_download_limit is not None and self.max_download_limit <= 0:
            raise ValueError("a download limit must be positive")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be positive")

    @property
    def max_connections(self) -> int:
        """aria2 opens min(-x, -s) connections to one server for one URL."""
        return min(self.connections, self.split)


@dataclass(frozen=True, kw_only=True)
class ModelFileOptions:
    """What to do around a model download (the CLI's ``--no-metadata``, ``--nsfw-preview``,
    ``--type auto``; the server's ``"type": "auto"``)."""

    metadata: bool = True
    nsfw_preview: bool = False
    auto_folder: bool = False  # the request's directory is the models root
    #: Where "have it already?" looks for the published sha256 (None: it does not look).
    models_root: Path | None = None
    #: A copy found in another folder is hard-linked (or copied) into place instead of
    #: downloading it again; without this the download stops and says where the copy is.
    link_existing: bool = False
