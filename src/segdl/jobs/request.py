"""One download, asked for: built and checked once where it enters, then passed down whole.

Every way in — a library call, a batch job, a line of an input file, a server message, the
command line — builds a :class:`DownloadRequest` with :func:`build_request`.  That is where
the URLs are parsed (the site's resolver reads the first, mirrors must be http(s)), the engine
name is checked and the site settings (endpoints, tokens) are read from the environment; what
runs the download never checks them again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

from ..core.proxyrules import ProxySettings
from ..core.urls import HttpURL
from ..engine.base import ENGINE_NAMES
from ..engine.options import ModelFileOptions, Options
from ..engine.throttle import RateLimit
from ..errors import DownloadError, InvalidURL
from ..sources.base import SourceConfig, SourceRef
from ..sources.resolve import parse_source

__all__ = ["CommonArgs", "DownloadRequest", "RequestArgs", "build_request"]


class CommonArgs(TypedDict, total=False):
    """The keywords every entry point takes (see :func:`segdl.download`)."""

    options: Options | None
    engine: str
    civitai_token: str | None
    hf_token: str | None
    limits: Sequence[RateLimit]
    model_files: ModelFileOptions | None


class RequestArgs(CommonArgs, total=False):
    """:class:`CommonArgs` and the file's name (``-o``)."""

    out: str | None


@dataclass(frozen=True, kw_only=True)
class DownloadRequest:
    """A checked request: where the file comes from and goes, and how to fetch it.

    ``source``     the first URL, parsed by its site's resolver
    ``mirrors``    further URLs of the same file (http(s) only)
    ``directory``  where the file goes; ``out`` its name (None: chosen from the answer)
    ``sites``      site endpoints and the user's tokens
    ``limits``     rate limits every connection passes
    ``model_files`` the models-folder steps: folder from the type, a copy already there,
                   metadata files beside the model (None: none of them)
    """

    source: SourceRef[Any]
    directory: Path
    mirrors: tuple[HttpURL, ...] = ()
    out: str | None = None
    options: Options = field(default_factory=Options)
    sites: SourceConfig = field(default_factory=SourceConfig)
    limits: tuple[RateLimit, ...] = ()
    engine: str = "native"
    model_files: ModelFileOptions | None = None

    @property
    def urls(self) -> tuple[str, ...]:
        """The URLs as they were given."""
        return (self.source.url, *self.mirrors)

    def __repr__(self) -> str:
        # Never the tokens (sites) nor a signed query string.
        return f"DownloadRequest({self.source.source}, {str(self.directory)!r})"


def build_request(
    url: str | Sequence[str],
    directory: str | os.PathLike[str] = ".",
    *,
    out: str | None = None,
    options: Options | None = None,
    engine: str = "native",
    civitai_token: str | None = None,
    hf_token: str | None = None,
    limits: Sequence[RateLimit] = (),
    model_files: ModelFileOptions | None = None,
    environ: Mapping[str, str] | None = None,
) -> DownloadRequest:
    """Check a download's arguments and build its request.

    *url* is one URL or several of the same file (mirrors); the first may be a site's short
    form (``hf://…``, ``urn:air:…``).  Tokens default from ``$CIVITAI_TOKEN``/``$HF_TOKEN``.

    Raises:
        InvalidURL: no URL, or one that cannot be downloaded.
        DownloadError: an unknown engine.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise InvalidURL("no URL given")
    if engine not in ENGINE_NAMES:
        raise DownloadError(f"unknown engine {engine!r}: choose native, single or aria2c")
    sites = SourceConfig.from_env(civitai_token=civitai_token, hf_token=hf_token, environ=environ)
    options = options or Options()
    if options.proxies is None:
        # The proxies of the environment, read here, once, as curl reads them.
        try:
            proxies = ProxySettings.from_environment(os.environ if environ is None else environ)
        except ValueError as exc:
            raise DownloadError(str(exc)) from exc
        options = replace(options, proxies=proxies)
    return DownloadRequest(
        source=parse_source(urls[0], sites),
        mirrors=tuple(HttpURL.parse(u) for u in urls[1:]),
        directory=Path(directory),
        out=out,
        options=options,
        sites=sites,
        limits=tuple(limits),
        engine=engine,
        model_files=model_files,
    )
