"""What a source resolver produces: a site-agnostic download plan.

A resolver turns the URL a user pasted into a :class:`DownloadPlan`: the URL(s) to fetch with
their headers, what the site publishes about the file (name, size, sha256, metadata), and any
post-steps.  Engines never learn which site a URL came from.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import httpx

from ..core.events import Metadata
from ..core.urls import HttpURL
from ..io.dataplane import Transform

__all__ = ["DownloadPlan", "Resolver", "SourceConfig", "SourceRef"]


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """Where each site lives (overridable for tests and mirrors) and the user's tokens.

    The variable names are the contract in DESIGN.md "Configuration".
    """

    civitai_url: str = "https://civitai.com"
    hf_endpoint: str = "https://huggingface.co"
    gdrive_url: str = "https://drive.google.com"
    mega_api_url: str = "https://g.api.mega.co.nz"
    civitai_token: str | None = None
    hf_token: str | None = None
    # Hub mirrors (e.g. https://hf-mirror.com) serving the same paths: extra sources of
    # each Hugging Face file; from SEGDL_HF_MIRRORS (comma-separated).
    hf_mirrors: tuple[str, ...] = ()
    cache_dir: Path | None = None  # metadata cache; None: no cache

    @classmethod
    def from_env(
        cls,
        *,
        civitai_token: str | None = None,
        hf_token: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> SourceConfig:
        env = os.environ if environ is None else environ
        cache = env.get("SEGDL_CACHE_DIR") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "segdl"
        )
        return cls(
            civitai_url=env.get("SEGDL_CIVITAI_URL") or cls.civitai_url,
            hf_endpoint=env.get("HF_ENDPOINT") or cls.hf_endpoint,
            gdrive_url=env.get("SEGDL_GDRIVE_URL") or cls.gdrive_url,
            mega_api_url=env.get("SEGDL_MEGA_API_URL") or cls.mega_api_url,
            civitai_token=civitai_token or env.get("CIVITAI_TOKEN") or None,
            hf_token=hf_token or env.get("HF_TOKEN") or None,
            hf_mirrors=tuple(
                m.strip() for m in env.get("SEGDL_HF_MIRRORS", "").split(",") if m.strip()
            ),
            cache_dir=Path(cache),
        )


@dataclass(frozen=True, kw_only=True)
class DownloadPlan:
    """Everything an engine needs, and what the site says the result must be.

    ``urls``       the file's URL(s) on the site, mirrors of one file (checked by the
                   resolver where they came from: :meth:`HttpURL.parse`)
    ``headers``    request headers for ``urls`` (auth); the probe drops credentials when a
                   redirect leaves the origin
    ``mirrors``    the same file on other hosts (public mirrors): fetched without ``headers``
    ``filename``   the site's name for the file: used when there is no Content-Disposition
    ``size``       published size in bytes, checked against the server's
    ``sha256``     published digest (lowercase hex), verified after the download
    ``metadata``   emitted as a ``metadata`` event before the download starts
    ``transform``  rewrites each chunk in place before it is written (MEGA decryption)
    ``verify``     post-step on the finished file; raises ChecksumMismatch (MEGA's MAC)
    ``source``     "civitai", "huggingface", "gdrive", "mega" or "direct", for messages
    """

    urls: tuple[HttpURL, ...]
    headers: Mapping[str, str] = field(default_factory=dict)
    mirrors: tuple[HttpURL, ...] = ()
    filename: str | None = None
    size: int | None = None
    sha256: str | None = None
    metadata: Metadata | None = None
    transform: Transform | None = None
    verify: Callable[[Path], Awaitable[None]] | None = None
    source: str = "direct"


Target = TypeVar("Target")


class Resolver(Protocol[Target]):
    """One site.  ``parse`` is cheap and pure: the site's own reading of a URL it recognises
    (None for one it does not); ``resolve`` takes that reading and may talk to the site."""

    name: str

    def parse(self, url: str, config: SourceConfig) -> Target | None: ...

    async def resolve(
        self, target: Target, *, url: str, client: httpx.AsyncClient, config: SourceConfig
    ) -> DownloadPlan: ...


@dataclass(frozen=True, slots=True)
class SourceRef(Generic[Target]):
    """A user's URL, parsed once by the resolver that recognised it.

    Resolving may be repeated (a resume, an expired signed link): the site is asked again,
    the URL is not parsed again.
    """

    url: str  # as the user gave it
    resolver: Resolver[Target]
    target: Target

    @property
    def source(self) -> str:
        return self.resolver.name

    async def resolve(self, *, client: httpx.AsyncClient, config: SourceConfig) -> DownloadPlan:
        return await self.resolver.resolve(self.target, url=self.url, client=client, config=config)


AnySource = SourceRef[Any]
