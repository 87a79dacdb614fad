"""Pick the resolver for a URL: the first whose ``matches`` accepts it; direct last."""

from __future__ import annotations

import httpx

from .base import DownloadPlan, Resolver, SourceConfig
from .direct import DirectResolver

__all__ = ["RESOLVERS", "resolve_url"]

# Site resolvers go before the direct one, which accepts everything.
RESOLVERS: list[Resolver] = [DirectResolver()]


async def resolve_url(url: str, *, client: httpx.AsyncClient, config: SourceConfig) -> DownloadPlan:
    for resolver in RESOLVERS:
        if resolver.matches(url, config):
            return await resolver.resolve(url, client=client, config=config)
    raise AssertionError("the direct resolver matches every URL")
