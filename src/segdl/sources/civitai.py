"""CivitAI: model, version and download URLs → the signed storage URL, metadata and SHA256.

The flow (reference/sources.md §1):

1. The version id comes from the URL (``/api/download/models/{v}``, ``/models/{m}?modelVersionId=
   {v}``, ``/model-versions/{v}``, ``urn:air:…:civitai:{m}@{v}``) or, for a bare model page,
   from ``/api/v1/models/{m}`` (its first, newest published version).
2. ``/api/v1/model-versions/{v}`` gives the names, model type, base model, trained words and
   each file's name and SHA256.  Both API answers are cached on disk for an hour.
3. ``/api/download/models/{v}`` is asked with ``Authorization: Bearer`` (the header wins over
   ``?token=``, §1.2) and *not followed*: its ``307`` names a presigned storage URL on another
   host, which is returned as the plan's URL with no header at all, so the token never reaches
   the storage host.  Any other answer (401 JSON, a redirect to ``/login``…) becomes an error
   here, before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import httpx

from ..core.events import Metadata
from ..core.urls import HttpURL
from ..errors import (
    AuthError,
    BadResponse,
    DownloadError,
    HTTPStatusError,
    NotFound,
    ServerBusy,
    redact_url,
    status_error,
)
from .base import DownloadPlan, SourceConfig
from .cache import JsonCache
from .sitehttp import (
    as_dict,
    as_int,
    as_list,
    as_str,
    is_site_url,
    open_response,
    parse_json,
    read_body,
    site_path,
)

__all__ = ["CivitAIResolver", "CivitAITarget", "parse_civitai_url"]

PUBLIC_HOSTS = frozenset({"civitai.com", "www.civitai.com", "civitai.green", "www.civitai.green"})
CACHE_TTL = 3600.0  # seconds; the public API itself says s-maxage=300, versions rarely change
MAX_REDIRECTS = 5
# The query keys the download endpoint understands (zod schema, §1.1); anything else is dropped.
DOWNLOAD_QUERY_KEYS = ("type", "format", "size", "fp", "quantType", "fileId")

_DOWNLOAD = re.compile(r"/api/download/models/([0-9]+)/?")
_MODEL = re.compile(r"/models/([0-9]+)(?:/[^/]*)?/?")
_VERSION = re.compile(r"/model-versions/([0-9]+)/?")
_AIR = re.compile(r"urn:air:[^:]+:[^:]+:civitai:([0-9]+)(?:@([0-9]+))?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class CivitAITarget:
    """What a pasted CivitAI URL names."""

    version_id: int | None  # None: the model's newest version
    model_id: int | None = None
    query: tuple[tuple[str, str], ...] = ()  # file selection for the download endpoint
    token: str | None = None  # a ``?token=`` the user pasted along


def _positive(text: str) -> int | None:
    value = int(text)
    return value if 0 < value <= 2**31 - 1 else None


def parse_civitai_url(url: str, config: SourceConfig) -> CivitAITarget | None:
    """The target of a CivitAI URL or AIR, or None when *url* is not one we understand."""
    air = _AIR.fullmatch(url.strip())
    if air is not None:
        model_id = _positive(air.group(1))
        version_id = _positive(air.group(2)) if air.group(2) else None
        return CivitAITarget(version_id, model_id) if model_id else None
    if not is_site_url(url, config.civitai_url, PUBLIC_HOSTS):
        return None
    parts = urlsplit(url)
    path = site_path(url, config.civitai_url)
    pairs = parse_qsl(parts.query)
    query = dict(pairs)
    token = query.get("token") or None
    if match := _DOWNLOAD.fullmatch(path):
        version_id = _positive(match.group(1))
        selection = tuple((k, v) for k, v in pairs if k in DOWNLOAD_QUERY_KEYS)
        return CivitAITarget(version_id, None, selection, token) if version_id else None
    if match := _VERSION.fullmatch(path):
        version_id = _positive(match.group(1))
        return CivitAITarget(version_id, None, (), token) if version_id else None
    if match := _MODEL.fullmatch(path):
        model_id = _positive(match.group(1))
        if model_id is None:
            return None
        raw_version = query.get("modelVersionId", "")
        version_id = _positive(raw_version) if raw_version.isdigit() else None
        return CivitAITarget(version_id, model_id, (), token)
    return None


class CivitAIResolver:
    name = "civitai"

    def parse(self, url: str, config: SourceConfig) -> CivitAITarget | None:
        return parse_civitai_url(url, config)

    async def resolve(
        self,
        target: CivitAITarget,
        *,
        url: str,
        client: httpx.AsyncClient,
        config: SourceConfig,
    ) -> DownloadPlan:
        token = config.civitai_token or target.token
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        base = config.civitai_url.rstrip("/")
        cache = JsonCache(
            config.cache_dir / "civitai" if config.cache_dir is not None else None, ttl=CACHE_TTL
        )
        api = _Api(client, base, auth, cache)

        version_id = target.version_id
        if version_id is None:
            assert target.model_id is not None
            model = await api.get(f"models/{target.model_id}", what=f"model {target.model_id}")
            versions = as_list(as_dict(model).get("modelVersions"))
            version_id = as_int(as_dict(versions[0]).get("id")) if versions else None
            if version_id is None:
                raise NotFound(f"CivitAI model {target.model_id} has no published version")
        version = as_dict(
            await api.get(f"model-versions/{version_id}", what=f"model version {version_id}")
        )
        chosen = _pick_file(version, target.query)
        metadata = _metadata(version, chosen)

        download_url = f"{base}/api/download/models/{version_id}"
        if target.query:
            download_url += "?" + urlencode(target.query)
        storage = await _storage_url(client, download_url, auth, version_id)
        name = as_str(chosen.get("name")) if chosen else None
        if storage is None:
            # The site (a mirror) serves the bytes itself: the token stays on its origin.
            urls, headers = (download_url,), auth
        else:
            urls, headers = (storage,), {}
        return DownloadPlan(
            urls=tuple(HttpURL.parse(u) for u in urls),
            headers=headers,
            filename=name,
            sha256=metadata.sha256,
            metadata=metadata,
            source=self.name,
        )


class _Api:
    """``/api/v1/…`` with the on-disk cache in front."""

    def __init__(
        self, client: httpx.AsyncClient, base: str, auth: Mapping[str, str], cache: JsonCache
    ) -> None:
        self._client = client
        self._base = base
        self._auth = auth
        self._cache = cache

    async def get(self, endpoint: str, *, what: str) -> object:
        key = endpoint.replace("/", "-")
        cached = await self._cache.get(key)
        if cached is not None:
            return cached
        url = f"{self._base}/api/v1/{endpoint}"
        async with open_response(
            self._client, "GET", url, headers={**self._auth, "Accept": "application/json"}
        ) as response:
            body = await read_body(response)
            status = response.status_code
            if status >= 400:
                raise _api_error(status, response, body, url, what)
            if status != 200:
                raise BadResponse(f"CivitAI's API answered HTTP {status} for {what}", url=url)
            value = parse_json(body, url=url)
        if not isinstance(value, dict):
            raise BadResponse(f"CivitAI's API sent an unexpected answer for {what}", url=url)
        await self._cache.put(key, value)
        return value


def _error_fields(body: bytes) -> tuple[str, str]:
    """``(error, message)`` of a CivitAI error body: JSON ``{"error", "message"}`` or text."""
    text = body[:2000].decode("utf-8", "replace").strip()
    try:
        parsed = parse_json(body, url="")
    except BadResponse:
        return (text if "<" not in text else ""), ""
    fields = as_dict(parsed)
    return as_str(fields.get("error")) or "", as_str(fields.get("message")) or ""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _api_error(
    status: int, response: httpx.Response, body: bytes, url: str, what: str
) -> HTTPStatusError:
    error, _message = _error_fields(body)
    detail = f": {error}" if error else ""
    if status == 404:
        return NotFound(f"CivitAI has no {what}{detail}", url=url, status=status)
    if status in (401, 403):
        return AuthError(f"CivitAI refused to describe {what}{detail}", url=url, status=status)
    if status in (429, 503):
        return ServerBusy(
            f"CivitAI's API is busy (HTTP {status}){detail}",
            url=url,
            status=status,
            retry_after=_retry_after(response),
        )
    return status_error(status, response.reason_phrase, url=url)


def _pick_file(
    version: Mapping[str, object], query: tuple[tuple[str, str], ...]
) -> Mapping[str, object] | None:
    """The file the download endpoint will serve, as the server chooses it (§1.1)."""
    files = [as_dict(f) for f in as_list(version.get("files"))]
    wanted = dict(query)
    if "fileId" in wanted:
        return next((f for f in files if str(as_int(f.get("id"))) == wanted["fileId"]), None)
    if wanted:
        for f in files:
            meta = as_dict(f.get("metadata"))
            if "type" in wanted and as_str(f.get("type")) != wanted["type"]:
                continue
            if all(as_str(meta.get(k)) == v for k, v in wanted.items() if k != "type"):
                return f
        return None
    primary = next((f for f in files if f.get("primary") is True), None)
    return (
        primary
        or next((f for f in files if f.get("type") == "Model"), None)
        or (files[0] if files else None)
    )


def _metadata(version: Mapping[str, object], chosen: Mapping[str, object] | None) -> Metadata:
    model = as_dict(version.get("model"))
    words = tuple(w for w in as_list(version.get("trainedWords")) if isinstance(w, str))
    sha256: str | None = None
    extra: dict[str, object] = {
        "source": "civitai",
        "model_id": as_int(version.get("modelId")),
        "version_id": as_int(version.get("id")),
        "version_name": as_str(version.get("name")),
        "air": as_str(version.get("air")),
    }
    if chosen is not None:
        digest = as_str(as_dict(chosen.get("hashes")).get("SHA256"))
        if digest and re.fullmatch(r"[0-9A-Fa-f]{64}", digest):
            sha256 = digest.lower()
        size_kb = chosen.get("sizeKB")
        extra["file_name"] = as_str(chosen.get("name"))
        extra["file_id"] = as_int(chosen.get("id"))
        # sizeKB is a float in KiB and not always exact: informative only, SHA256 decides.
        if isinstance(size_kb, int | float) and not isinstance(size_kb, bool):
            extra["file_size"] = round(size_kb * 1024)
    return Metadata(
        name=as_str(model.get("name")),
        model_type=as_str(model.get("type")),
        base_model=as_str(version.get("baseModel")),
        trained_words=words,
        sha256=sha256,
        extra={k: v for k, v in extra.items() if v is not None},
    )


async def _storage_url(
    client: httpx.AsyncClient, url: str, auth: Mapping[str, str], version_id: int
) -> str | None:
    """Ask the download endpoint where the file is; None if it serves the file itself."""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        async with open_response(client, "GET", current, headers=auth) as response:
            status = response.status_code
            if response.is_redirect:
                location = response.headers.get("location", "")
                if not location:
                    raise BadResponse("CivitAI sent a redirect without Location", url=current)
                target: str = urljoin(current, location)
                if not _same_origin(target, url):
                    return target
                path = urlsplit(target).path
                if path.rstrip("/").endswith("/login"):
                    raise _auth_required(version_id, bool(auth), "")
                if "/model-versions/" in path:
                    # What a browser gets for an Early Access file (§1.3).
                    raise AuthError(
                        f"CivitAI model version {version_id} is in Early Access: it cannot be "
                        "downloaded yet",
                        url=url,
                        status=403,
                    )
                current = target
                continue
            if status >= 400:
                body = await read_body(response, limit=64 * 1024)
                raise _download_error(status, response, body, version_id, bool(auth), url)
            content_type = response.headers.get("content-type", "").lower()
            if status != 200 or content_type.startswith(("text/html", "application/json")):
                # Never save a page or an error document as the model.
                raise BadResponse(
                    f"CivitAI answered HTTP {status} ({content_type or 'no type'}) instead of "
                    f"the file for model version {version_id}",
                    url=url,
                )
            return None
    raise BadResponse(f"too many redirects from {redact_url(url)}", url=url)


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def _auth_required(version_id: int, had_token: bool, message: str) -> AuthError:
    why = f" ({message})" if message else ""
    if had_token:
        return AuthError(
            f"CivitAI did not accept the API token for model version {version_id}{why}",
            status=401,
        )
    return AuthError(
        f"CivitAI requires an API token to download model version {version_id}: set "
        f"CIVITAI_TOKEN or pass --civitai-token{why}",
        status=401,
    )


def _download_error(
    status: int,
    response: httpx.Response,
    body: bytes,
    version_id: int,
    had_token: bool,
    url: str,
) -> DownloadError:
    error, message = _error_fields(body)
    what = f"model version {version_id}"
    if status == 401:
        if "disabled downloads" in message:
            return AuthError(f"CivitAI: {message} ({what})", url=url, status=status)
        exc = _auth_required(version_id, had_token, message)
        exc.url = url
        return exc
    if status == 403:
        if error == "Early Access":
            detail = f": {message}" if message else ""
            return AuthError(f"CivitAI {what} is in Early Access{detail}", url=url, status=status)
        return AuthError(f"CivitAI: {error or 'Forbidden'} ({what})", url=url, status=status)
    if status in (404, 410):
        return NotFound(f"CivitAI: {error or 'File not found'} ({what})", url=url, status=status)
    if status in (429, 503):
        return ServerBusy(
            f"CivitAI is limiting downloads (HTTP {status}){': ' + error if error else ''}",
            url=url,
            status=status,
            retry_after=_retry_after(response),
        )
    if status == 400:
        return HTTPStatusError(
            f"CivitAI rejected the download request for {what}: {error or 'Bad Request'}",
            url=url,
            status=status,
        )
    return status_error(status, response.reason_phrase, url=url)
