"""Find the resolver for a URL: the first site whose ``parse`` recognises it; direct last."""

from __future__ import annotations

from typing import Any

from ..core.urls import HttpURL
from .base import Resolver, SourceConfig, SourceRef
from .civitai import CivitAIResolver
from .direct import DirectResolver
from .gdrive import GoogleDriveResolver
from .huggingface import HuggingFaceResolver
from .mega import MegaResolver

__all__ = ["RESOLVERS", "parse_source"]

# Site resolvers go before the direct one, which takes every http(s) URL.
RESOLVERS: tuple[Resolver[Any], ...] = (
    CivitAIResolver(),
    HuggingFaceResolver(),
    GoogleDriveResolver(),
    MegaResolver(),
    DirectResolver(),
)


def parse_source(url: str, config: SourceConfig) -> SourceRef[Any]:
    """The user's *url*, read by the site it belongs to: an http(s) URL, or a site's own short
    form (``hf://owner/repo/file``, CivitAI's ``urn:air:…``).

    Raises:
        InvalidURL: nothing can download it (one clear line, no credentials).
    """
    text = url
    if url[:8].lower().startswith(("http://", "https://")):
        # Whatever site it names: refuse what no request line may carry, before a site reads it.
        text = HttpURL.parse(url)
    for resolver in RESOLVERS:
        target = resolver.parse(text, config)
        if target is not None:
            return SourceRef(text, resolver, target)
    raise AssertionError("the direct resolver parses every URL or raises")
