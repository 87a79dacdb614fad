"""A fake CivitAI: the public API, the download endpoint and a presigned storage host.

Written from reference/sources.md §1 and its checklist (§6):

* ``GET /api/v1/model-versions/{id}`` and ``/api/v1/models/{id}`` with the documented shapes
  (``sizeKB`` float, upper-case ``hashes``, ``primary`` true/false vs true/omitted);
* ``/api/download/models/{v}``: the token from ``Authorization`` (its second word) first, then
  ``?token=``; errors as JSON for programs and as text (or a ``/login`` redirect) for a
  browser ``User-Agent``; modes for auth required, early access, archived, downloads disabled,
  no grant and rate limit; success is a ``307`` to a presigned storage URL;
* the storage host (a second server, so another origin) answers ``403`` to an expired
  signature and to any ``Authorization`` header, and serves ranges with a
  ``Content-Disposition: attachment; filename="…"``;
* the image host (a third origin, image.civitai.com) serves each version's ``images``, whose
  entries carry ``type``, ``nsfwLevel`` (bit flags: PG 1, PG13 2, R 4, X 8, XXX 16, Blocked
  32), ``width``/``height`` and an ``original=true`` URL as ``prepareModelVersionResponse``
  builds them; it refuses any ``Authorization`` header too.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal
from urllib.parse import quote

from fakeweb import bearer, check_clean, json_answer, split_target, text

from segdl.testing.rangeserver import Fault, RangeServer, RequestInfo, Resource

Mode = Literal["ok", "early_access", "archived", "disabled", "no_grant", "unpublished"]
BROWSERS = ("mozilla", "chrome", "safari", "firefox", "opera", "edge")
NO_STORE = {"Cache-Control": "no-store, max-age=0"}


@dataclass
class CivitFile:
    id: int
    name: str
    body: bytes
    type: str = "Model"
    primary: bool = True
    format: str = "SafeTensor"
    size: str = "pruned"
    fp: str = "fp16"
    #: What the API claims the SHA256 is (None: the real digest).
    claimed_sha256: str | None = None
    #: False: the storage host ignores Range for this file (every GET a whole 200).
    accept_ranges: bool = True

    @property
    def sha256(self) -> str:
        return (self.claimed_sha256 or hashlib.sha256(self.body).hexdigest()).upper()


@dataclass
class CivitImage:
    id: int
    body: bytes
    nsfw_level: int = 1
    type: str = "image"  # or "video"
    extension: str = "jpeg"  # the name in the URL; the bytes decide what it is


@dataclass
class CivitVersion:
    id: int
    name: str
    files: list[CivitFile]
    base_model: str = "SD 1.5"
    trained_words: list[str] = field(default_factory=list)
    require_auth: bool = True
    mode: Mode = "ok"
    description: str | None = None
    images: list[CivitImage] = field(default_factory=list)
    #: earlyAccessEndsAt while mode == "early_access" (the 403's "deadline" too).
    early_access_ends: str = "2026-12-31T00:00:00.000Z"


@dataclass
class CivitModel:
    id: int
    name: str
    type: str
    versions: list[CivitVersion]
    description: str | None = None
    tags: list[str] = field(default_factory=list)


class FakeCivitAI:
    """``with FakeCivitAI(tokens={"civ-secret"}) as fake: fake.add(model)``."""

    def __init__(self, *, tokens: set[str] | None = None, rate_limit: int | None = None) -> None:
        self.site = RangeServer()
        self.storage = RangeServer(rate_limit=rate_limit)
        self.images = RangeServer()
        self.tokens = tokens if tokens is not None else {"civ-secret"}
        self.rate_limited = False
        #: Answer every client as a browser (as the 2023 code did by Content-Type, §1.3).
        self.treat_all_as_browser = False
        #: Hostile: the API echoes the caller's token in the URLs it returns (the real one
        #: does not), to prove no token reaches a file segdl writes.
        self.echo_token = False
        self._models: dict[int, CivitModel] = {}
        self._versions: dict[int, tuple[CivitModel, CivitVersion]] = {}
        #: Seconds a storage URL works after it is handed out (None: until expired by hand);
        #: real ones carry X-Amz-Expires, and CivitAI's are short-lived.
        self.link_lifetime: float | None = None
        #: Every storage response is cut after this many body bytes (a flaky long path).
        self.cut_after: int | None = None
        #: How many storage responses are still cut (None: every one), and which requests'.
        self.cuts_left: int | None = None
        self.cut_if: Callable[[RequestInfo], bool] = lambda info: True
        #: A cut response outlives its link: every link handed out so far stops working.
        self.expire_on_cut = False
        #: The download endpoint answers 500 (the site cannot hand out a fresh link).
        self.refuse_links = False
        self.links_issued = 0
        self._valid_signatures: dict[str, float] = {}
        self._signatures = itertools.count(1)
        self._lock = threading.Lock()
        self.site.on_request(self._site)
        self.storage.on_request(self._storage)
        self.images.on_request(self._image_host)

    # ---- setup

    def add(self, model: CivitModel) -> None:
        self._models[model.id] = model
        for version in model.versions:
            self._versions[version.id] = (model, version)
            for f in version.files:
                self.storage.add(
                    self._object_path(f),
                    Resource(
                        body=f.body,
                        accept_ranges=f.accept_ranges,
                        content_disposition=f'attachment; filename="{f.name}"',
                    ),
                )
            for image in version.images:
                content_type = "video/mp4" if image.type == "video" else "image/jpeg"
                self.images.add(
                    self._image_path(image),
                    Resource(body=image.body, headers={"Content-Type": content_type}),
                )

    def expire_storage_urls(self) -> None:
        """Every storage URL handed out so far stops working (``X-Amz-Expires`` passed)."""
        with self._lock:
            self._valid_signatures.clear()

    @property
    def base_url(self) -> str:
        return self.site.base_url

    def __enter__(self) -> FakeCivitAI:
        self.site.start()
        self.storage.start()
        self.images.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.site.stop()
        self.storage.stop()
        self.images.stop()
        check_clean(self.site, self.storage, self.images)

    # ---- the metadata API

    def _file_json(
        self, version: CivitVersion, f: CivitFile, *, in_models: bool
    ) -> dict[str, object]:
        data: dict[str, object] = {
            "id": f.id,
            "name": f.name,
            "type": f.type,
            "sizeKB": len(f.body) / 1024,
            "metadata": {"format": f.format, "size": f.size, "fp": f.fp},
            "pickleScanResult": "Success",
            "virusScanResult": "Success",
            "hashes": {
                "AutoV2": f.sha256[:10],
                "SHA256": f.sha256,
                "CRC32": "DAEE95B7",
            },
            "downloadUrl": f"{self.base_url}/api/download/models/{version.id}"
            + ("" if f.primary else f"?type={quote(f.type)}&format={f.format}"),
        }
        if f.primary or not in_models:
            data["primary"] = f.primary  # /api/v1/models omits a false primary
        return data

    @staticmethod
    def _image_path(image: CivitImage) -> str:
        return f"/xG1nkqKTMzGDvpLrqFT7WA/img-{image.id}/original=true/{image.id}.{image.extension}"

    def _image_json(self, image: CivitImage) -> dict[str, object]:
        return {
            "url": self.images.url(self._image_path(image)),
            "nsfwLevel": image.nsfw_level,
            "width": 832,
            "height": 1216,
            "hash": "U9B:@L00~q%M",
            "type": image.type,
            "hasMeta": True,
            "onSite": False,
            "meta": {"prompt": "a dream", "seed": 42},
        }

    def _version_json(
        self, model: CivitModel, version: CivitVersion, *, in_models: bool = False
    ) -> dict[str, object]:
        early = version.mode == "early_access"
        data: dict[str, object] = {
            "id": version.id,
            "modelId": model.id,
            "name": version.name,
            "description": version.description,
            "baseModel": version.base_model,
            "baseModelType": "Standard",
            "air": f"urn:air:sd1:{model.type.lower()}:civitai:{model.id}@{version.id}",
            "status": "Published",
            "availability": "EarlyAccess" if early else "Public",
            "nsfwLevel": 1,
            "usageControl": "Generation" if version.mode == "disabled" else "Download",
            "earlyAccessEndsAt": version.early_access_ends if early else None,
            "earlyAccessConfig": (
                {"timeframe": 7, "chargeForDownload": True, "downloadPrice": 500} if early else None
            ),
            "trainedWords": version.trained_words,
            "stats": {"downloadCount": 1234, "thumbsUpCount": 56},
            "files": []
            if version.mode == "archived"
            else [self._file_json(version, f, in_models=in_models) for f in version.files],
            "images": [self._image_json(image) for image in version.images],
            "downloadUrl": f"{self.base_url}/api/download/models/{version.id}",
        }
        if not in_models:
            data["model"] = {"name": model.name, "type": model.type, "nsfw": False, "poi": False}
        return data

    def _site(self, info: RequestInfo) -> Fault | None:
        path, query = split_target(info.path)
        if match := re.fullmatch(r"/api/v1/model-versions/([0-9]+)", path):
            found = self._versions.get(int(match.group(1)))
            if found is None or found[1].mode == "unpublished":
                return json_answer(404, {"error": "Model not found"})
            data = self._version_json(*found)
            token = bearer(info.headers)
            if self.echo_token and token:
                data["downloadUrl"] = f"{data['downloadUrl']}?token={token}"
                data["note"] = f"requested with {token}"
            return json_answer(200, data)
        if match := re.fullmatch(r"/api/v1/models/([0-9]+)", path):
            model = self._models.get(int(match.group(1)))
            if model is None:
                return json_answer(404, {"error": "No model with id " + match.group(1)})
            published = [v for v in model.versions if v.mode != "unpublished"]
            return json_answer(
                200,
                {
                    "id": model.id,
                    "name": model.name,
                    "description": model.description,
                    "type": model.type,
                    "tags": model.tags,
                    "creator": {"username": "dreamer", "image": None},
                    "modelVersions": [
                        self._version_json(model, v, in_models=True) for v in published
                    ],
                },
            )
        if match := re.fullmatch(r"/api/download/models/([0-9]+)", path):
            return self._download(int(match.group(1)), info, query)
        return None

    # ---- the download endpoint (§1.3)

    def _download(self, version_id: int, info: RequestInfo, query: dict[str, str]) -> Fault:
        agent = info.headers.get("user-agent", "").lower()
        browser = self.treat_all_as_browser or any(b in agent for b in BROWSERS)

        def error(status: int, error: str, **fields: str) -> Fault:
            if browser:
                return text(status, error, headers=NO_STORE)
            return json_answer(status, {"error": error, **fields}, headers=NO_STORE)

        # §1.2: the Authorization header wins; then ?token=.
        token = bearer(info.headers)
        if token is None:
            token = query.get("token")
        user = token if token in self.tokens else None
        if self.rate_limited:
            return error(
                429,
                "We've noticed an unusual amount of downloading from your account. Contact "
                "support@civitai.com or come back later.",
            )
        found = self._versions.get(version_id)
        if found is None or found[1].mode == "unpublished":
            return error(404, "File not found")
        _model, version = found
        chosen = self._choose(version, query)
        if chosen is None:
            return error(404, "File not found")
        if version.mode == "archived":
            return error(410, "Model archived, not available for download")
        if version.mode == "disabled":
            return json_answer(
                401,
                {
                    "error": "Unauthorized",
                    "message": "The creator of this asset has disabled downloads on this file",
                },
                headers=NO_STORE,
            )
        if version.require_auth and user is None:
            if browser:
                return Fault.status(
                    307,
                    headers={
                        "Location": f"/login?returnUrl=%2Fmodel-versions%2F{version_id}"
                        "&reason=download-auth",
                        **NO_STORE,
                    },
                )
            return error(
                401,
                "Unauthorized",
                message="The creator of this asset requires you to be logged in to download it",
            )
        if version.mode == "early_access":
            if browser:
                return Fault.status(307, headers={"Location": f"/model-versions/{version_id}"})
            return error(
                403,
                "Early Access",
                deadline=version.early_access_ends,
                message="This asset is in Early Access. You can use Buzz access it now!",
            )
        if version.mode == "no_grant":
            return error(403, "You do not have access to download this file")
        if self.refuse_links:
            return error(500, "Internal Server Error")
        signature = f"sig{next(self._signatures)}"
        with self._lock:
            self._valid_signatures[signature] = time.monotonic()
            self.links_issued += 1
        disposition = quote(f'attachment; filename="{chosen.name}"')
        location = self.storage.url(
            f"{self._object_path(chosen)}?X-Amz-Expires=86400"
            f"&response-content-disposition={disposition}"
            f"&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={signature}"
        )
        return Fault.status(307, headers={"Location": location, **NO_STORE})

    def _choose(self, version: CivitVersion, query: dict[str, str]) -> CivitFile | None:
        if "fileId" in query:
            return next((f for f in version.files if str(f.id) == query["fileId"]), None)
        keys = {k: v for k, v in query.items() if k in ("type", "format", "size", "fp")}
        if not keys:
            return next((f for f in version.files if f.primary), None)
        for f in version.files:
            own = {"type": f.type, "format": f.format, "size": f.size, "fp": f.fp}
            if all(own[k] == v for k, v in keys.items()):
                return f
        return None

    @staticmethod
    def _object_path(f: CivitFile) -> str:
        # The object key is not the user-facing name (§1.4).
        return f"/civitai-delivery/{f.id}/model/{hashlib.sha1(f.name.encode()).hexdigest()[:8]}.bin"

    # ---- the storage host (§1.4)

    def _storage(self, info: RequestInfo) -> Fault | None:
        if "authorization" in info.headers:
            # A presigned URL plus a foreign credential: the storage host refuses it.
            return text(403, "Forbidden: unexpected Authorization header")
        _path, query = split_target(info.path)
        with self._lock:
            issued = self._valid_signatures.get(query.get("X-Amz-Signature", ""))
        lifetime = self.link_lifetime
        if issued is None or (lifetime is not None and time.monotonic() - issued > lifetime):
            return text(403, "Request has expired")
        if self.cut_after is not None and self.cuts_left != 0 and self.cut_if(info):
            if self.cuts_left is not None:
                self.cuts_left -= 1
            if self.expire_on_cut:
                self.expire_storage_urls()
            return Fault.drop_after(self.cut_after)
        return None

    # ---- the image host

    def _image_host(self, info: RequestInfo) -> Fault | None:
        if "authorization" in info.headers:
            return text(403, "Forbidden: unexpected Authorization header")
        return None
