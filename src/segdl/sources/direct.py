"""Direct URLs: any other http(s) URL, fetched as it is."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from ..io.probe import check_url
from .base import DownloadPlan, SourceConfig

__all__ = ["DirectResolver"]


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _under(host: str, base_url: str) -> bool:
    base = _host(base_url)
    return bool(base) and (host == base or host.endswith("." + base))


class DirectResolver:
    """The fallback: matches every http(s) URL; other schemes are refused by ``check_url``."""

    name = "direct"

    def matches(self, url: str, config: SourceConfig) -> bool:
        return True

    async def resolve(
        self, url: str, *, client: httpx.AsyncClient, config: SourceConfig
    ) -> DownloadPlan:
        check_url(url)
        # A token is sent only to its own site: ``Authorization: Bearer`` is what both
        # CivitAI and Hugging Face accept (reference/sources.md).
        host = _host(url)
        headers: dict[str, str] = {}
        if config.civitai_token and _under(host, config.civitai_url):
            headers["Authorization"] = f"Bearer {config.civitai_token}"
        elif config.hf_token and _under(host, config.hf_endpoint):
            headers["Authorization"] = f"Bearer {config.hf_token}"
        return DownloadPlan(urls=(url,), headers=headers, source=self.name)
