"""The one ``User-Agent`` every request of segdl sends: the probe, site APIs, data connections,
proxy tunnels and aria2c.

It names segdl and its version, as sites ask of programs, and contains no browser word:
CivitAI answers a browser's agent with a login page instead of a JSON error
(reference/sources.md §1.3), and edges that block default library agents (``python-httpx/…``,
``Python-urllib/…``) let a named program through.
"""

from __future__ import annotations

from .version import __version__

__all__ = ["USER_AGENT"]

USER_AGENT = f"segdl/{__version__} (+https://github.com/segdl/segdl)"
