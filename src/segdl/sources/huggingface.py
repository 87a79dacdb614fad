"""Hugging Face: ``…/resolve/{rev}/{path}`` (and ``blob/``, ``hf://``) → CDN URL, size, sha256.

A ``HEAD`` on the resolve URL, following only *relative* redirects (a renamed repo), stops at
the first absolute redirect and reads the file's facts from that redirect itself: the CDN's
answer carries none of ``X-Linked-Size``, ``X-Linked-Etag`` (the sha256 of an LFS file) or
``X-Repo-Commit``, and for Xet-backed files the CDN's ``ETag`` is the Xet hash, not the
sha256 (reference/sources.md §2.2).  The token goes only to the Hub; the plan's URL is the
CDN URL, fetched without it (huggingface_hub does the same, §2.3).  Errors are classified by
``X-Error-Code`` / ``X-Error-Message`` as huggingface_hub's ``hf_raise_for_status`` does.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpx

from ..core.events import Metadata
from ..core.urls import HttpURL
from ..errors import (
    AuthError,
    BadResponse,
    DownloadError,
    InvalidURL,
    NotFound,
    ServerBusy,
    redact_url,
    status_error,
)
from .base import DownloadPlan, SourceConfig
from .sitehttp import is_site_url, open_response, site_path

__all__ = ["HFFile", "HuggingFaceResolver", "parse_hf_url"]

PUBLIC_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
REPO_TYPES = ("datasets", "spaces", "kernels")
MAX_REDIRECTS = 10
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INVALID_TOKEN = "Invalid credentials in Authorization header"
_DISABLED = "Access to this resource is disabled."


@dataclass(frozen=True, slots=True)
class HFFile:
    """One file of one repo at one revision (all as they appear in a URL: percent-encoded)."""

    repo_id: str  # "owner/name" (or a legacy one-part name)
    revision: str
    path: str
    repo_type: str = ""  # "", "datasets", "spaces" or "kernels"

    def resolve_url(self, endpoint: str) -> str:
        prefix = f"{self.repo_type}/" if self.repo_type else ""
        return f"{endpoint.rstrip('/')}/{prefix}{self.repo_id}/resolve/{self.revision}/{self.path}"

    @property
    def repo(self) -> str:
        """How a person names the repo: ``owner/name`` or ``datasets/owner/name``."""
        return f"{self.repo_type}/{self.repo_id}" if self.repo_type else self.repo_id


def _parse_short(rest: str) -> HFFile | None:
    """``owner/repo/path[@revision]``; also huggingface_hub's ``owner/repo@revision/path``.

    A ``datasets/`` (or ``spaces/``, ``kernels/``) prefix names the repo type.
    """
    segments = rest.split("/")
    repo_type = ""
    if segments and segments[0] in REPO_TYPES:
        repo_type, segments = segments[0], segments[1:]
    if len(segments) < 3 or not all(segments):
        return None
    owner, name, path_parts = segments[0], segments[1], segments[2:]
    revision = "main"
    if "@" in name:  # HfFileSystem form: owner/repo@revision/path
        name, _, revision = name.partition("@")
    else:
        joined = "/".join(path_parts)
        if "@" in joined:
            joined, _, revision = joined.rpartition("@")
            path_parts = joined.split("/")
    if not owner or not name or not revision or not all(path_parts):
        return None
    return HFFile(
        repo_id=f"{quote(owner)}/{quote(name)}",
        revision=quote(revision, safe=""),  # refs/pr/1 → refs%2Fpr%2F1, as hf_hub_url does
        path="/".join(quote(p) for p in path_parts),
        repo_type=repo_type,
    )


def parse_hf_url(url: str, config: SourceConfig) -> HFFile | None:
    """The file an ``hf://`` or ``resolve``/``blob`` URL names; None if it names no file."""
    if url[:5].lower() == "hf://":
        return _parse_short(url[5:].split("?", 1)[0].split("#", 1)[0])
    if not is_site_url(url, config.hf_endpoint, PUBLIC_HOSTS):
        return None
    segments = site_path(url, config.hf_endpoint).strip("/").split("/")
    repo_type = ""
    if segments and segments[0] in REPO_TYPES:
        repo_type, segments = segments[0], segments[1:]
    # A legacy repo has a one-part id ("gpt2/resolve/main/…"); the usual one has two.
    for at in (1, 2):
        if (
            len(segments) >= at + 3
            and segments[at] in ("resolve", "blob")
            and all(segments[:at])
            and all(segments[at + 1 :])
        ):
            return HFFile(
                repo_id="/".join(segments[:at]),
                revision=segments[at + 1],
                path="/".join(segments[at + 2 :]),
                repo_type=repo_type,
            )
    return None


class HuggingFaceResolver:
    name = "huggingface"

    def parse(self, url: str, config: SourceConfig) -> HFFile | None:
        file = parse_hf_url(url, config)
        if file is None and url[:5].lower() == "hf://":
            raise InvalidURL(
                f"not a Hugging Face file URL: {redact_url(url)} (use …/resolve/REVISION/PATH "
                "or hf://owner/repo/path@revision)",
                url=url,
            )
        return file

    async def resolve(
        self, file: HFFile, *, url: str, client: httpx.AsyncClient, config: SourceConfig
    ) -> DownloadPlan:
        token = config.hf_token
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        start = file.resolve_url(config.hf_endpoint)
        current = start
        for _ in range(MAX_REDIRECTS + 1):
            async with open_response(
                client, "HEAD", current, headers={**auth, "Accept-Encoding": "identity"}
            ) as response:
                headers = response.headers
                if response.is_redirect:
                    location = headers.get("location", "")
                    if not location:
                        raise BadResponse("Hugging Face sent a redirect without Location", url=url)
                    target = urljoin(current, location)
                    if not urlsplit(location).netloc and not location.startswith("//"):
                        current = target  # relative: the repo was renamed or moved
                        continue
                    # The file lives elsewhere (the CDN): its facts are on this redirect.
                    plan = _plan(file, response, (target,), {}, size_header="x-linked-size")
                    return _with_mirrors(plan, file, config)
                if response.status_code >= 400:
                    raise _hf_error(response, file, config, had_token=bool(token))
                if response.status_code != 200:
                    raise BadResponse(
                        f"Hugging Face answered HTTP {response.status_code} for "
                        f"{redact_url(current)}",
                        url=current,
                    )
                # A small file kept in git: served by the Hub itself, with the token.
                plan = _plan(file, response, (current,), auth, size_header="content-length")
                return _with_mirrors(plan, file, config)
        raise BadResponse(f"too many redirects from {redact_url(start)}", url=start)


def _with_mirrors(plan: DownloadPlan, file: HFFile, config: SourceConfig) -> DownloadPlan:
    """The same file on the configured Hub mirrors (fetched without the token)."""
    mirrors = tuple(HttpURL.parse(file.resolve_url(e)) for e in config.hf_mirrors)
    return replace(plan, mirrors=mirrors) if mirrors else plan


def _plan(
    file: HFFile,
    response: httpx.Response,
    urls: tuple[str, ...],
    headers: dict[str, str],
    *,
    size_header: str,
) -> DownloadPlan:
    h = response.headers
    size_text = h.get("x-linked-size") or h.get(size_header) or ""
    size = int(size_text) if size_text.strip().isdigit() else None
    etag = (h.get("x-linked-etag") or h.get("etag") or "").removeprefix("W/").strip().strip('"')
    # The ETag of a file kept in git is its git sha1 (40 hex): only a 64-hex tag is a sha256.
    sha256 = etag.lower() if _SHA256.fullmatch(etag.lower()) else None
    name = posixpath.basename(unquote(file.path))
    extra: dict[str, object] = {
        "source": "huggingface",
        "repo": unquote(file.repo),
        "revision": unquote(file.revision),
        "path": unquote(file.path),
    }
    if commit := h.get("x-repo-commit"):
        extra["commit"] = commit
    if size is not None:
        extra["size"] = size
    return DownloadPlan(
        urls=tuple(HttpURL.parse(u) for u in urls),
        headers=headers,
        filename=name or None,
        size=size,
        sha256=sha256,
        metadata=Metadata(name=name or None, sha256=sha256, extra=extra),
        source="huggingface",
    )


def _hf_error(
    response: httpx.Response, file: HFFile, config: SourceConfig, *, had_token: bool
) -> DownloadError:
    status = response.status_code
    code = response.headers.get("x-error-code", "")
    message = response.headers.get("x-error-message", "")
    url = str(response.url)
    repo = unquote(file.repo)
    page = f"{config.hf_endpoint.rstrip('/')}/{file.repo}"
    where = f"{unquote(file.path)} at revision {unquote(file.revision)}"
    if message == _INVALID_TOKEN:
        return AuthError(
            "Hugging Face rejected the token (invalid credentials): check HF_TOKEN or --hf-token",
            url=url,
            status=status,
        )
    if code == "GatedRepo":
        if status == 401 or not had_token:
            text = (
                f"{repo} is a gated repository: accept its conditions at {page}, then set "
                "HF_TOKEN or pass --hf-token"
            )
        else:
            text = (
                f"{repo} is a gated repository and your token is not in its authorized list: "
                f"ask for access at {page}"
            )
        return AuthError(text, url=url, status=status)
    if message == _DISABLED:
        return NotFound(f"{repo} has been disabled on Hugging Face", url=url, status=status)
    if code == "RepoNotFound" or (status == 401 and code not in ("EntryNotFound",)):
        hint = (
            " (or your token cannot see it)"
            if had_token
            else " (if it is private, set HF_TOKEN or pass --hf-token)"
        )
        return NotFound(
            f"repository {repo} not found on Hugging Face{hint}", url=url, status=status
        )
    if code == "RevisionNotFound":
        return NotFound(
            f"revision {unquote(file.revision)} not found in {repo}", url=url, status=status
        )
    if code == "EntryNotFound" or status == 404:
        return NotFound(f"{where} not found in {repo}", url=url, status=status)
    if status == 403:
        detail = f": {message}" if message else ""
        return AuthError(f"Hugging Face refused {repo}{detail}", url=url, status=status)
    if status in (429, 503):
        retry = response.headers.get("retry-after", "")
        return ServerBusy(
            f"Hugging Face is rate limiting requests (HTTP {status})",
            url=url,
            status=status,
            retry_after=float(retry) if retry.isdigit() else None,
        )
    return status_error(status, response.reason_phrase, url=url)
