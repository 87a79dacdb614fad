"""Google Drive: a shared file's link → the ``drive.usercontent.google.com`` download URL.

Flow (reference/sources.md §3): every link shape is reduced to its file id and asked as
``{base}/uc?id={id}&export=download``, which redirects to the usercontent host.  A small file
comes back at once (with ``Content-Disposition``).  A large one comes back as the HTML "virus
scan warning" page whose ``#download-form`` is submitted by hand: its ``action`` plus *every*
hidden input (``confirm``, ``uuid`` — per session, ``confirm=t`` alone is not enough —
``authuser``, ``at``…) merged into the query.  The page is read with :mod:`html.parser`, not a
regex.  The resulting URL is checked to serve the file (not yet another page) with
``Range: bytes=0-0``; the engine then downloads it in segments if ranges work.  A sign-in page
(the file is not shared publicly) is an :class:`AuthError`; a quota page is
:class:`ServerBusy`; nothing HTML is ever saved as the file.
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx

from ..core.events import Metadata
from ..core.headers import parse_content_disposition_filename
from ..core.urls import HttpURL
from ..errors import (
    AuthError,
    BadResponse,
    DownloadError,
    NotFound,
    ServerBusy,
    status_error,
)
from .base import DownloadPlan, SourceConfig
from .sitehttp import is_site_url, open_response, read_body, site_path

__all__ = ["DrivePage", "GoogleDriveResolver", "parse_drive_page", "parse_gdrive_url"]

PUBLIC_HOSTS = frozenset({"drive.google.com", "docs.google.com"})
USERCONTENT_HOSTS = frozenset({"drive.usercontent.google.com"})
# The warning page may come back after a confirmation (a new session): give up after a few.
MAX_PAGES = 3
MAX_PAGE_BYTES = 2 * 1024 * 1024

_ID = re.compile(r"[A-Za-z0-9_-]{10,}")
_FILE_PATH = re.compile(r"/file(?:/u/[0-9]+)?/d/([A-Za-z0-9_-]+)(?:/[A-Za-z]*)?/?")


def parse_gdrive_url(url: str, config: SourceConfig) -> str | None:
    """The file id of a Drive link, or None if *url* is not one."""
    on_drive = is_site_url(url, config.gdrive_url, PUBLIC_HOSTS)
    if not on_drive and not is_site_url(url, "https://drive.usercontent.google.com", ()):
        return None
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    candidate = query.get("id")
    if candidate is None and on_drive:
        match = _FILE_PATH.fullmatch(site_path(url, config.gdrive_url))
        candidate = match.group(1) if match else None
    if candidate is None or not _ID.fullmatch(candidate):
        return None
    return candidate


# -- the HTML pages Drive answers with ----------------------------------------------------


@dataclass
class _Form:
    id: str
    action: str
    hidden: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class DrivePage:
    """What matters in an HTML page from Drive."""

    title: str = ""
    forms: list[_Form] = field(default_factory=list)
    error: str = ""  # the text of ``<p class="uc-error-subcaption">``
    file_name: str = ""  # the text of ``<span class="uc-name-size"><a>…</a>``
    confirm_links: list[str] = field(
        default_factory=list
    )  # legacy ``/uc?export=download&confirm=``
    sign_in_fields: bool = False  # an ``identifier``/``Email``/``Passwd`` input

    def download_form(self) -> _Form | None:
        return next((f for f in self.forms if f.id == "download-form"), None)


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = DrivePage()
        self._form: _Form | None = None
        self._capture: str | None = None  # "title", "error" or "name"
        self._name_span_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "title":
            self._capture = "title"
        elif tag == "form":
            self._form = _Form(id=a.get("id", ""), action=a.get("action", ""))
            self.page.forms.append(self._form)
        elif tag == "input":
            name = a.get("name", "")
            if name in ("identifier", "Email", "Passwd", "password"):
                self.page.sign_in_fields = True
            if self._form is not None and a.get("type", "").lower() == "hidden" and name:
                self._form.hidden.append((name, a.get("value", "")))
        elif tag == "p" and "uc-error-subcaption" in classes:
            self._capture = "error"
        elif tag == "span" and "uc-name-size" in classes:
            self._name_span_depth = 1
        elif tag == "a":
            href = a.get("href", "")
            if "export=download" in href and "confirm=" in href:
                self.page.confirm_links.append(href)
            if self._name_span_depth:
                self._capture = "name"

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "span":
            self._name_span_depth = 0
        if tag in ("title", "p", "a"):
            self._capture = None

    def handle_data(self, data: str) -> None:
        if self._capture == "title":
            self.page.title += data
        elif self._capture == "error":
            self.page.error += data
        elif self._capture == "name":
            self.page.file_name += data


def parse_drive_page(html: str) -> DrivePage:
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    page = parser.page
    page.title, page.error, page.file_name = (
        " ".join(page.title.split()),
        " ".join(page.error.split()),
        page.file_name.strip(),
    )
    return page


def _form_url(form: _Form, page_url: str) -> str:
    """The URL a browser would GET when the form is submitted: action + every hidden input."""
    action = urljoin(page_url, form.action or page_url)
    parts = urlsplit(action)
    names = {name for name, _ in form.hidden}
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in names]
    query += form.hidden
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def _is_sign_in(url: str, page: DrivePage) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return (
        host.startswith("accounts.")
        or "ServiceLogin" in parts.path
        or "/signin" in parts.path.lower()
        or page.sign_in_fields
        or "sign in" in page.title.lower()
    )


# -- the resolver --------------------------------------------------------------------------


class GoogleDriveResolver:
    name = "gdrive"

    def parse(self, url: str, config: SourceConfig) -> str | None:
        return parse_gdrive_url(url, config)

    async def resolve(
        self, file_id: str, *, url: str, client: httpx.AsyncClient, config: SourceConfig
    ) -> DownloadPlan:
        current = f"{config.gdrive_url.rstrip('/')}/uc?" + urlencode(
            {"id": file_id, "export": "download"}
        )
        page_name = ""
        for _ in range(MAX_PAGES):
            async with open_response(
                client,
                "GET",
                current,
                # One byte is enough to tell the file from a page, and shows whether ranges work.
                headers={"Range": "bytes=0-0", "Accept-Encoding": "identity"},
                follow_redirects=True,
            ) as response:
                final = str(response.url)
                status = response.status_code
                content_type = response.headers.get("content-type", "").lower()
                disposition = response.headers.get("content-disposition")
                if status >= 400 and status != 416 and not content_type.startswith("text/html"):
                    raise _status_error(response, file_id)
                if not content_type.startswith("text/html") or (
                    disposition and status in (200, 206)
                ):
                    name = page_name or (
                        parse_content_disposition_filename(disposition) if disposition else None
                    )
                    return self._plan(client, final, file_id, name or None)
                body = await read_body(response, limit=MAX_PAGE_BYTES)
            page = parse_drive_page(body.decode("utf-8", "replace"))
            if status >= 400 and not _is_sign_in(final, page):
                raise _status_error(response, file_id)
            page_name = page.file_name or page_name
            current = _next_url(page, final, file_id)
        raise BadResponse(
            f"Google Drive kept asking to confirm the download of file {file_id}", url=current
        )

    def _plan(
        self, client: httpx.AsyncClient, url: str, file_id: str, name: str | None
    ) -> DownloadPlan:
        headers: dict[str, str] = {}
        # The engine does not share httpx's cookie jar: hand over the cookies Drive set for
        # this URL (the legacy confirm flow depends on them).
        request = urllib.request.Request(url)
        client.cookies.jar.add_cookie_header(request)
        cookie = request.unredirected_hdrs.get("Cookie")
        if cookie:
            headers["Cookie"] = cookie
        extra: dict[str, object] = {"source": "gdrive", "id": file_id}
        return DownloadPlan(
            urls=(HttpURL.parse(url),),
            headers=headers,
            filename=name,
            metadata=Metadata(name=name, extra=extra),
            source=self.name,
        )


def _next_url(page: DrivePage, page_url: str, file_id: str) -> str:
    """Where an HTML page from Drive says to go next, or the error it means."""
    form = page.download_form()
    if form is not None:
        return _form_url(form, page_url)
    if page.confirm_links:
        return urljoin(page_url, page.confirm_links[0])
    if page.error:
        lowered = page.error.lower()
        if "too many users" in lowered or "quota" in lowered:
            raise ServerBusy(f"Google Drive: {page.error} (file {file_id})", url=page_url)
        raise BadResponse(f"Google Drive: {page.error} (file {file_id})", url=page_url)
    if _is_sign_in(page_url, page):
        raise AuthError(
            f"Google Drive asks to sign in for file {file_id}: it is not shared with "
            "'Anyone with the link'",
            url=page_url,
            status=401,
        )
    raise BadResponse(
        f"Google Drive did not offer file {file_id} for download: is it shared with "
        "'Anyone with the link'?",
        url=page_url,
    )


def _status_error(response: httpx.Response, file_id: str) -> DownloadError:
    status = response.status_code
    url = str(response.url)
    if status == 404:
        return NotFound(
            f"Google Drive has no file {file_id} (or it was removed)", url=url, status=status
        )
    if status in (401, 403):
        return AuthError(
            f"Google Drive refused file {file_id}: it is not shared with 'Anyone with the link'",
            url=url,
            status=status,
        )
    return status_error(status, response.reason_phrase, url=url)
