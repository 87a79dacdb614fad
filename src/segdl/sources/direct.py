"""Direct URLs: any other http(s) URL, fetched as it is."""

from __future__ import annotations

import httpx

from ..io.probe import check_url
from .base import DownloadPlan, SourceConfig

__all__ = ["DirectResolver"]


class DirectResolver:
    """The fallback: matches every http(s) URL; other schemes are refused by ``check_url``.

    No token is ever added here: each site's resolver sends its own token to its own site.
    """

    name = "direct"

    def matches(self, url: str, config: SourceConfig) -> bool:
        return True

    async def resolve(
        self, url: str, *, client: httpx.AsyncClient, config: SourceConfig
    ) -> DownloadPlan:
        check_url(url)
        return DownloadPlan(urls=(url,), source=self.name)
