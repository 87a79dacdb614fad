"""What a site says about a model, and the metadata files SD tools read beside it.  Pure.

The resolvers keep the site's own record (:class:`CivitAIRecord`, :class:`HuggingFaceRecord`);
this module turns it into the files other tools look for next to ``NAME.safetensors``, each
checked against the code that reads it:

``NAME.civitai.info``
    Civitai Helper (butaixianran/Stable-Diffusion-Webui-Civitai-Helper and its maintained fork
    zixaphir/…): ``scripts/ch_lib/civitai.py`` names it ``base + ".civitai" + ".info"`` from
    ``os.path.splitext(model_path)``, and ``model.py`` ``write_model_info`` writes the
    ``/api/v1/model-versions/{id}`` answer as ``json.dumps(model_info, indent=4)``.  Its
    readers (``load_model_info`` and the version check) use ``id``, ``modelId``,
    ``images[].url``/``nsfw`` and ``trainedWords``: the site's JSON, unchanged.
``NAME.json``
    A1111/Forge's "user metadata": ``modules/extra_networks.py`` ``get_user_metadata`` opens
    ``splitext(filename)[0] + '.json'``; ``extensions-builtin/Lora/ui_extra_networks_lora.py``
    ``create_item`` reads ``activation text`` (appended to the prompt), ``preferred weight``
    (0: the default multiplier), ``sd version`` (must name a ``network.SdVersion`` member:
    ``SD1``, ``SD2``, ``SDXL``; Forge adds ``Flux``; anything else falls back to the file's
    own detection) and ``negative text``; ``ui_edit_user_metadata.py`` edits ``description``
    and ``notes``.  Civitai Helper's fork writes the same keys (``model.py``
    ``process_model_info``).
``NAME.preview.EXT``
    ``modules/ui_extra_networks.py`` ``find_preview`` tries ``NAME.EXT`` and
    ``NAME.preview.EXT`` for EXT in png, jpg, jpeg, webp, gif (older releases: png, jpg,
    webp).  Civitai Helper saves whatever bytes it fetched as ``NAME.preview.png``; here the
    extension says what the bytes are (``.jpg`` for JPEG: every A1111 release accepts it), so
    a JPEG is never served as ``image/png``.

Nothing in a record or a file carries a token or a signed URL: :func:`scrub_secrets` removes
both before a record is kept.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Final
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

__all__ = [
    "MODEL_EXTENSIONS",
    "PREVIEW_EXTENSIONS",
    "CivitAIRecord",
    "HuggingFaceRecord",
    "MetadataNames",
    "SiteRecord",
    "choose_preview",
    "civitai_info_document",
    "format_site_date",
    "html_to_text",
    "huggingface_info",
    "image_suffix",
    "is_model_file_name",
    "is_sfw_image",
    "metadata_names",
    "scrub_secrets",
    "to_json_bytes",
    "webui_sd_version",
    "webui_user_metadata",
]

# The files SD tools load as models.  Civitai Helper scans .bin .pt .safetensors .ckpt;
# ComfyUI and sd-inference-server add .pth, .gguf, .sft and .onnx.
MODEL_EXTENSIONS: Final = frozenset(
    {".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx"}
)
# Preview extensions A1111's find_preview accepts, in the order it tries them.
PREVIEW_EXTENSIONS: Final = ("png", "jpg", "jpeg", "webp", "gif")

# CivitAI's NsfwLevel bit flags (src/server/common/enums.ts): PG 1, PG13 2, R 4, X 8, XXX 16,
# Blocked 32; sfwBrowsingLevelsFlag is PG | PG13 (browsingLevel.constants.ts).
_SFW_LEVELS: Final = 1 | 2
_BLOCKED_LEVEL: Final = 32

# Query keys that make a URL a credential: presigned S3/R2/B2/CloudFront links and tokens.
_SECRET_QUERY_KEYS: Final = frozenset(
    {
        "token",
        "access_token",
        "api_key",
        "apikey",
        "key",
        "signature",
        "sig",
        "expires",
        "policy",
        "key-pair-id",
        "authorization",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-amz-date",
        "x-amz-expires",
        "x-goog-signature",
        "x-goog-credential",
    }
)
# A secret shorter than this would erase innocent text (a token is never this short).
_MIN_SECRET: Final = 4


@dataclass(frozen=True, kw_only=True)
class CivitAIRecord:
    """The CivitAI API's own answers for one download (read-only by convention).

    ``version``  ``/api/v1/model-versions/{id}``, as sent (scrubbed)
    ``file``     the entry of ``version["files"]`` that is downloaded, if known
    ``model``    ``/api/v1/models/{id}`` when the resolver fetched it (a bare model URL)
    ``site``     the CivitAI base URL, for page links in messages and notes
    """

    version: Mapping[str, object]
    file: Mapping[str, object] | None = None
    model: Mapping[str, object] | None = None
    site: str = "https://civitai.com"

    @property
    def version_id(self) -> int | None:
        return _int(self.version.get("id"))

    @property
    def model_id(self) -> int | None:
        return _int(self.version.get("modelId"))

    @property
    def model_name(self) -> str | None:
        return _str(_dict(self.version.get("model")).get("name")) or _str(
            _dict(self.model).get("name")
        )

    @property
    def model_type(self) -> str | None:
        return _str(_dict(self.version.get("model")).get("type")) or _str(
            _dict(self.model).get("type")
        )

    @property
    def file_type(self) -> str | None:
        return _str(_dict(self.file).get("type"))

    @property
    def page_url(self) -> str:
        base = self.site.rstrip("/")
        if self.model_id is None:
            return f"{base}/model-versions/{self.version_id}"
        return f"{base}/models/{self.model_id}?modelVersionId={self.version_id}"

    def describe(self) -> str:
        """How a person names this version: ``"Dream Model v2.0 (model version 2002)"``."""
        name = self.model_name
        version = _str(self.version.get("name"))
        label = " ".join(part for part in (name, version) if part)
        ident = f"model version {self.version_id}"
        return f"{label} ({ident})" if label else ident


@dataclass(frozen=True, kw_only=True)
class HuggingFaceRecord:
    """One Hugging Face file as the Hub described it.

    ``sha256_from`` says how the sha256 was learnt (``"X-Linked-Etag"`` on the Hub's redirect
    for an LFS file); None when the Hub gave none (a small file kept in git has a git sha1).
    """

    endpoint: str
    repo: str  # "owner/name", or "datasets/owner/name" for other repo types
    revision: str
    path: str
    commit: str | None = None
    sha256: str | None = None
    size: int | None = None
    sha256_from: str | None = None

    @property
    def pinned_url(self) -> str:
        """The resolve URL at the exact commit when known (never a signed CDN URL)."""
        rev = quote(self.commit or self.revision, safe="")
        return f"{self.endpoint.rstrip('/')}/{quote(self.repo)}/resolve/{rev}/{quote(self.path)}"


SiteRecord = CivitAIRecord | HuggingFaceRecord


# -- keeping secrets out ------------------------------------------------------------------


def _scrub_text(text: str, secrets: Sequence[str]) -> str:
    # Removing one occurrence can join two halves into a new one (of the same secret or of
    # another), and so can dropping a query: repeat until nothing changes.  Every change
    # shortens the text (or only lower-cases a URL scheme, once), so this ends.
    while True:
        cleaned = text
        for secret in secrets:
            cleaned = cleaned.replace(secret, "")
        cleaned = _strip_signed_query(cleaned)
        if cleaned == text:
            return text
        text = cleaned


def _strip_signed_query(text: str) -> str:
    """A URL whose query holds a signature or a token loses its whole query."""
    if not text[:8].lower().startswith(("http://", "https://")):
        return text
    try:
        parts = urlsplit(text)
        keys = {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    except ValueError:
        return text
    if keys & _SECRET_QUERY_KEYS or any(k.startswith("x-amz-") for k in keys):
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return text


def scrub_secrets(value: object, secrets: Iterable[str | None] = ()) -> object:
    """A copy of a JSON value without any of *secrets* and without signed URL queries.

    Keys and string values are both cleaned; numbers, booleans and None pass unchanged.
    """
    wanted = tuple(sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len))
    return _scrub(value, wanted[::-1])


def _scrub(value: object, secrets: Sequence[str]) -> object:
    if isinstance(value, str):
        return _scrub_text(value, secrets)
    if isinstance(value, Mapping):
        return {_scrub_text(str(k), secrets): _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, secrets) for v in value]
    return value


# -- names ---------------------------------------------------------------------------------


def _stem(name: str) -> str:
    # os.path.splitext semantics, as every tool above uses: ".hidden" has no extension.
    return posixpath.splitext(name)[0]


def is_model_file_name(name: str) -> bool:
    """Does *name* end with an extension SD tools load as a model?"""
    return posixpath.splitext(name)[1].lower() in MODEL_EXTENSIONS


@dataclass(frozen=True, slots=True)
class MetadataNames:
    """The names of the metadata files beside model file ``NAME.EXT``."""

    civitai_info: str  # NAME.civitai.info
    user_metadata: str  # NAME.json
    preview_stem: str  # NAME.preview (+ .png/.jpg/…)
    existing_previews: tuple[str, ...]  # names A1111 would show as the preview, in its order

    def preview(self, suffix: str) -> str:
        return self.preview_stem + suffix


def metadata_names(model_file_name: str) -> MetadataNames:
    stem = _stem(model_file_name)
    previews = tuple(
        name for ext in PREVIEW_EXTENSIONS for name in (f"{stem}.{ext}", f"{stem}.preview.{ext}")
    )
    return MetadataNames(
        civitai_info=f"{stem}.civitai.info",
        user_metadata=f"{stem}.json",
        preview_stem=f"{stem}.preview",
        existing_previews=previews,
    )


# -- CivitAI -------------------------------------------------------------------------------


def civitai_info_document(record: CivitAIRecord) -> Mapping[str, object]:
    """What Civitai Helper keeps in ``NAME.civitai.info``: the model-version JSON."""
    return record.version


def to_json_bytes(document: Mapping[str, object]) -> bytes:
    """JSON as Civitai Helper and A1111 write it (indent 4), ASCII-only: Civitai Helper reads
    with the platform's default encoding (cp1252 on Windows), so non-ASCII stays escaped."""
    return (json.dumps(document, indent=4, ensure_ascii=True) + "\n").encode("ascii")


# baseModel strings (civitai-shared basemodel.constants.ts) → A1111/Forge SdVersion names.
_SDXL_FAMILIES: Final = ("sdxl", "pony", "illustrious", "noobai")


def webui_sd_version(base_model: str | None) -> str:
    """The ``sd version`` A1111/Forge filter LoRAs by; ``Unknown`` where unsure (shown always)."""
    base = (base_model or "").strip().lower()
    if re.match(r"sd ?1(\.|\b)", base):
        return "SD1"
    if re.match(r"sd ?2(\.|\b)", base):
        return "SD2"
    if base.startswith(_SDXL_FAMILIES):
        return "SDXL"
    if re.match(r"sd ?3(\.|\b)", base):
        return "SD3"
    if base.startswith("flux.1"):
        return "Flux"
    return "Unknown"


_LORA_TYPES: Final = frozenset({"lora", "locon", "dora", "lycoris"})


def webui_user_metadata(record: CivitAIRecord) -> dict[str, object]:
    """A1111/Forge's ``NAME.json`` for a CivitAI model (keys as ui_edit_user_metadata.py)."""
    version = record.version
    words = [w.strip() for w in _list(version.get("trainedWords")) if isinstance(w, str)]
    model_text = html_to_text(_str(_dict(record.model).get("description")) or "")
    version_text = html_to_text(_str(version.get("description")) or "")
    notes = [f"{record.describe()} from CivitAI: {record.page_url}"]
    if version_text and model_text:
        notes.append(version_text)
    document: dict[str, object] = {
        "description": model_text or version_text,
        "sd version": webui_sd_version(_str(version.get("baseModel"))),
        # Appended to the prompt as is: comma-separated, as the Lora page's tag picker does.
        "activation text": ", ".join(w for w in words if w),
        "notes": "\n\n".join(notes),
    }
    if (record.model_type or "").lower() in _LORA_TYPES:
        # CivitAI publishes no weight; 0 tells the Lora page to use its default multiplier.
        document["preferred weight"] = 0
    return document


def is_sfw_image(image: Mapping[str, object]) -> bool:
    """Rated PG or PG-13 only.  Unrated (nsfwLevel 0) is not known to be safe."""
    level = image.get("nsfwLevel")
    if isinstance(level, int) and not isinstance(level, bool):
        return level != 0 and level & ~_SFW_LEVELS == 0
    # Older answers: "nsfw": false, or "None" / "Soft" / "Mature" / "X".
    nsfw = image.get("nsfw")
    return nsfw is False or nsfw == "None"


def choose_preview(images: object, *, include_nsfw: bool = False) -> str | None:
    """The URL of the first still image to use as the preview (the first SFW one unless
    *include_nsfw*); None when there is none.  Videos and blocked images are never chosen."""
    for item in _list(images):
        image = _dict(item)
        kind = image.get("type", "image")
        url = _str(image.get("url"))
        if kind != "image" or not url or not url.lower().startswith(("http://", "https://")):
            continue
        level = image.get("nsfwLevel")
        if isinstance(level, int) and not isinstance(level, bool) and level & _BLOCKED_LEVEL:
            continue
        if include_nsfw or is_sfw_image(image):
            return url
    return None


def image_suffix(head: bytes) -> str | None:
    """The preview suffix for an image's first bytes; None for what A1111 cannot show."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return ".gif"
    return None


# -- Hugging Face --------------------------------------------------------------------------


def huggingface_info(record: HuggingFaceRecord) -> dict[str, object]:
    """``NAME.json`` for a Hugging Face file: A1111's keys plus where it came from.

    A1111's metadata editor rewrites the dict it read, so the ``huggingface`` key survives
    a user's edits.
    """
    where = f"{record.repo}, {record.path}"
    at = f"revision {record.revision}" + (f" (commit {record.commit})" if record.commit else "")
    source: dict[str, object] = {
        "repo": record.repo,
        "revision": record.revision,
        "commit": record.commit,
        "path": record.path,
        "sha256": record.sha256,
        "sha256_from": record.sha256_from,
        "size": record.size,
        "url": record.pinned_url,
    }
    return {
        "description": f"From Hugging Face: {where}",
        "notes": f"{record.pinned_url}\n{at}"
        + (f"\nsha256 {record.sha256}" if record.sha256 else ""),
        "huggingface": {k: v for k, v in source.items() if v is not None},
    }


# -- text ----------------------------------------------------------------------------------


class _TextExtractor(HTMLParser):
    _BLOCKS: Final = frozenset(
        {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "pre"}
    )
    _HIDDEN: Final = frozenset({"script", "style"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """CivitAI's HTML descriptions as plain text: paragraphs kept, tags and scripts gone."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def format_site_date(value: object) -> str | None:
    """An ISO date from a site (``2026-12-31T00:00:00.000Z``) as ``2026-12-31 00:00 UTC``."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- typed access to parsed JSON -----------------------------------------------------------


def _dict(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
