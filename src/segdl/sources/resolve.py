"""Pick the resolver for a URL: the first whose ``matches`` accepts it; direct last."""

from __future__ import annotations

import httpx

from ..io.probe import check_url
from .base import DownloadPlan, Resolver, SourceConfig
from .civitai import CivitAIResolver
from .direct import DirectResolver
from .gdrive import GoogleDriveResolver
from .huggingface import HuggingFaceResolver
from .mega import MegaResolver

__all__ = ["RESOLVERS", "check_source_url", "resolve_url"]

# Site resolvers go before the direct one, which accepts everything.
RESOLVERS: list[Resolver] = [
    CivitAIResolver(),
    HuggingFaceResolver(),
    GoogleDriveResolver(),
    MegaResolver(),
    DirectResolver(),
]


def check_source_url(url: str, config: SourceConfig) -> str:
    """Refuse what cannot be downloaded, with one clear line.

    An http(s) URL, or a site's own short form that its resolver understands
    (``hf://owner/repo/file``, CivitAI's ``urn:air:…``).
    """
    if not url.lower().startswith(("http://", "https://")) and any(
        resolver.name != "direct" and resolver.matches(url, config) for resolver in RESOLVERS
    ):
        return url
    return check_url(url)


async def resolve_url(url: str, *, client: httpx.AsyncClient, config: SourceConfig) -> DownloadPlan:
    for resolver in RESOLVERS:
        if resolver.matches(url, config):
            return await resolver.resolve(url, client=client, config=config)
    raise AssertionError("the direct resolver matches every URL")
