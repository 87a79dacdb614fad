"""Direct URLs: any other http(s) URL, fetched as it is."""

from __future__ import annotations

import httpx

from ..core.urls import HttpURL
from .base import DownloadPlan, SourceConfig

__all__ = ["DirectResolver"]


class DirectResolver:
    """The fallback: every http(s) URL; anything else is refused here, with one clear line
    (:meth:`HttpURL.parse`).

    No token is ever added here: each site's resolver sends its own token to its own site.
    """

    name = "direct"

    def parse(self, url: str, config: SourceConfig) -> HttpURL:
        return HttpURL.parse(url)

    async def resolve(
        self, target: HttpURL, *, url: str, client: httpx.AsyncClient, config: SourceConfig
    ) -> DownloadPlan:
        return DownloadPlan(urls=(target,), source=self.name)
