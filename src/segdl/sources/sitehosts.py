"""Which URLs a site resolver may claim, known without loading the resolvers.

The resolvers load httpx; ``segdl get URL`` wants to send a plain URL's first request before
that (:mod:`segdl.engine.early`), and must not send one for a site's URL, whose resolver
asks the site first (and adds the site's token).  ``tests/sources/test_sitehosts.py`` holds
this list to the resolvers' own.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["SITE_HOSTS", "SITE_URL_VARIABLES", "may_be_a_site"]

SITE_HOSTS = frozenset(
    {
        # CivitAI
        "civitai.com",
        "www.civitai.com",
        "civitai.green",
        "www.civitai.green",
        # Hugging Face
        "huggingface.co",
        "www.huggingface.co",
        "hf.co",
        # Google Drive
        "drive.google.com",
        "docs.google.com",
        "drive.usercontent.google.com",
        # MEGA
        "mega.nz",
        "www.mega.nz",
        "mega.co.nz",
        "www.mega.co.nz",
    }
)
# The variables that point a site at another address (DESIGN.md "Configuration").
SITE_URL_VARIABLES = ("SEGDL_CIVITAI_URL", "HF_ENDPOINT", "SEGDL_GDRIVE_URL")


def may_be_a_site(url: str, environ: Mapping[str, str]) -> bool:
    """Whether a site's resolver might claim *url*: not http(s), on a site's public host, or
    on the host of a site's configured address.  (False means surely a direct URL.)"""
    try:
        parts = urlsplit(url)
    except ValueError:
        return True
    if parts.scheme.lower() not in ("http", "https"):
        return True
    host = (parts.hostname or "").lower()
    if host in SITE_HOSTS:
        return True
    for variable in SITE_URL_VARIABLES:
        base = environ.get(variable)
        if base:
            try:
                base_host = (urlsplit(base).hostname or "").lower()
            except ValueError:
                return True
            if base_host == host:
                return True
    return False
