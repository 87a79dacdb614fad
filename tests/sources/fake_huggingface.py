"""A fake Hugging Face Hub and CDN, written from reference/sources.md §2 and §6.

* ``HEAD``/``GET /{[datasets/]repo}/resolve/{rev}/{path}``: a file kept in git answers ``200``
  with ``ETag: "<git sha1>"``; an LFS file answers ``302`` to the CDN (another origin) with
  ``X-Linked-Size``, ``X-Linked-Etag: "<sha256>"``, ``X-Repo-Commit``, ``ETag`` and
  ``Accept-Ranges`` on the redirect itself;
* errors with ``X-Error-Code`` / ``X-Error-Message``: 401 GatedRepo without a token, 403
  GatedRepo with a token that is not approved, 401 RepoNotFound for a private or missing repo
  without a token (404 with one), 404 RevisionNotFound / EntryNotFound, 401 "Invalid
  credentials in Authorization header";
* a renamed repo answers a relative 307;
* the CDN's ETag is its own (Xet) hash, never the sha256; a signed URL expires; a request
  carrying ``Authorization`` is refused (a signed URL with a second credential).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import quote, unquote

from fakeweb import check_clean, split_target, text

from segdl.testing.rangeserver import Fault, RangeServer, RequestInfo, Resource

LFS_THRESHOLD = 10 * 1024  # bigger files are "LFS" here (the real rule is .gitattributes)
INVALID = "Invalid credentials in Authorization header"


@dataclass
class HubRepo:
    files: dict[str, bytes]
    revisions: dict[str, str] = field(default_factory=lambda: {"main": "a" * 40})
    gated: bool = False
    private: bool = False
    approved: set[str] = field(default_factory=set)  # tokens allowed past the gate / privacy
    #: Pretend the sha256 of these paths is something else (a corrupted CDN object).
    lie_about: set[str] = field(default_factory=set)
    #: Fine-grained tokens without "read public gated repos": 403 with the Hub's message.
    fine_grained: set[str] = field(default_factory=set)
    #: Send the gated refusal's X-Error-Message without its X-Error-Code (as seen via some
    #: proxies and older Hub answers): the message alone must be understood.
    gated_without_code: bool = False


class FakeHub:
    def __init__(self, *, tokens: set[str] | None = None, rate_limit: int | None = None) -> None:
        self.hub = RangeServer()
        self.cdn = RangeServer(rate_limit=rate_limit)
        self.tokens = tokens if tokens is not None else {"hf-secret"}
        self.repos: dict[str, HubRepo] = {}
        self.renamed: dict[str, str] = {}
        self._valid: set[str] = set()
        self._signatures = itertools.count(1)
        self._lock = threading.Lock()
        self.hub.on_request(self._on_hub)
        self.cdn.on_request(self._on_cdn)

    @property
    def base_url(self) -> str:
        return self.hub.base_url

    def add(self, repo: str, spec: HubRepo) -> None:
        self.repos[repo] = spec
        for path, body in spec.files.items():
            if len(body) > LFS_THRESHOLD:
                xet = hashlib.blake2b(body, digest_size=32).hexdigest()
                name = path.rsplit("/", 1)[-1]
                self.cdn.add(
                    self._cdn_path(repo, path, body),
                    Resource(
                        body=body,
                        etag=f'"{xet}"',
                        content_disposition=(
                            f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"
                        ),
                    ),
                )

    @staticmethod
    def _cdn_path(repo: str, path: str, body: bytes) -> str:
        bucket = hashlib.sha256(f"{repo}/{path}".encode()).hexdigest()[:8]
        return f"/xet-bridge-us/{bucket}/{hashlib.blake2b(body, digest_size=32).hexdigest()}"

    def expire_cdn_urls(self) -> None:
        with self._lock:
            self._valid.clear()

    def __enter__(self) -> FakeHub:
        self.hub.start()
        self.cdn.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.hub.stop()
        self.cdn.stop()
        check_clean(self.hub, self.cdn)

    # ---- the Hub

    def _error(self, status: int, code: str | None, message: str, commit: str = "") -> Fault:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        return text(status, message, headers=headers)

    def _on_hub(self, info: RequestInfo) -> Fault | None:
        path, _query = split_target(info.path)
        segments = path.strip("/").split("/")
        prefix = ""
        if segments[0] in ("datasets", "spaces"):
            prefix, segments = segments[0] + "/", segments[1:]
        if len(segments) < 5 or segments[2] != "resolve":
            return None
        repo_name = prefix + "/".join(segments[:2])
        revision = unquote(segments[3])
        file_path = unquote("/".join(segments[4:]))

        authorization = info.headers.get("authorization")
        token: str | None = None
        if authorization is not None:
            token = authorization.removeprefix("Bearer ")
            if token not in self.tokens:
                return self._error(401, None, INVALID)
        if repo_name in self.renamed:
            new = self.renamed[repo_name]
            rest = "/".join(segments[2:])
            return Fault.status(307, headers={"Location": f"/{new}/{rest}"})
        repo = self.repos.get(repo_name)
        if repo is None or (repo.private and token not in repo.approved):
            status = 404 if token else 401
            return self._error(status, "RepoNotFound", "Repository not found")
        if repo.gated and token not in repo.approved:
            kind = "dataset" if prefix else "model"
            gated = None if repo.gated_without_code else "GatedRepo"
            if token in repo.fine_grained:
                return self._error(
                    403,
                    gated,
                    "Please enable access to public gated repositories in your fine-grained "
                    "token settings to view this repository.",
                )
            if token is None:
                return self._error(
                    401,
                    gated,
                    f"Access to {kind} {repo_name} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in.",
                )
            return self._error(
                403,
                gated,
                f"Access to {kind} {repo_name} is restricted and you are not in the "
                f"authorized list. Visit https://huggingface.co/{repo_name} to ask for access.",
            )
        commit = repo.revisions.get(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        body = repo.files.get(file_path)
        if body is None:
            return self._error(404, "EntryNotFound", f"{file_path} does not exist", commit)
        if len(body) <= LFS_THRESHOLD:
            blob = hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()
            self.hub.add(
                path, Resource(body=body, etag=f'"{blob}"', headers={"X-Repo-Commit": commit})
            )
            return None
        oid = hashlib.sha256(body).hexdigest()
        if file_path in repo.lie_about:
            oid = hashlib.sha256(body + b"!").hexdigest()
        xet = hashlib.blake2b(body, digest_size=32).hexdigest()
        signature = f"s{next(self._signatures)}"
        with self._lock:
            self._valid.add(signature)
        name = file_path.rsplit("/", 1)[-1]
        disposition = quote(f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";")
        location = self.cdn.url(
            f"{self._cdn_path(repo_name, file_path, body)}?X-Amz-Expires=3600"
            f"&response-content-disposition={disposition}&X-Amz-Signature={signature}"
        )
        return Fault.status(
            302,
            headers={
                "Location": location,
                "X-Linked-Size": str(len(body)),
                "X-Linked-Etag": f'"{oid}"',
                "X-Repo-Commit": commit,
                "ETag": f'"{oid}"',
                "X-Xet-Hash": xet,
                "Accept-Ranges": "bytes",
            },
        )

    # ---- the CDN

    def _on_cdn(self, info: RequestInfo) -> Fault | None:
        if "authorization" in info.headers:
            return text(400, "Only one auth mechanism allowed")
        _path, query = split_target(info.path)
        with self._lock:
            valid = query.get("X-Amz-Signature") in self._valid
        if not valid:
            return text(403, "Request has expired")
        return None
