"""A fake Google Drive: ``drive`` (the configured base) and ``usercontent`` (another origin).

From reference/sources.md §3 and §6:

* ``/uc?id=``, ``/open?id=``, ``/file/d/{id}/view`` → ``303`` to
  ``usercontent/download?id={id}&export=download``; a file that is not shared publicly
  redirects to a sign-in page (200 HTML) instead;
* a small file answers at once with ``Content-Disposition`` (both ``filename`` and
  ``filename*``); a large one answers the "Virus scan warning" HTML page whose
  ``#download-form`` has hidden ``id``, ``export``, ``confirm=t``, ``uuid`` (new per page,
  required to match), ``authuser`` and ``at``; ``confirm=t`` alone gets the page again;
* the quota page (``uc-error-subcaption``); ranges can be switched off.

The usercontent ``/download`` path serves one downloadable file per fake (a Resource per path
is how RangeServer serves ranges); other ids are private or missing.
"""

from __future__ import annotations

import html as htmllib
import itertools
import threading
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import quote

from fakeweb import check_clean, html, split_target

from segdl.testing.rangeserver import Fault, RangeServer, RequestInfo, Resource

SIGN_IN_PAGE = """<!doctype html><html><head><title>Sign in - Google Accounts</title></head>
<body><form action="/v3/signin/_/AccountsSignInUi" method="post">
<input type="email" name="identifier"><input type="hidden" name="continue" value="x">
</form></body></html>"""

QUOTA_PAGE = """<!doctype html><html><head><title>Google Drive - Quota exceeded</title></head>
<body><div class="uc-main"><p class="uc-error-caption">Sorry, you can't view or download this
file at this time.</p><p class="uc-error-subcaption">Too many users have viewed or downloaded
this file recently. Please try accessing the file again later.</p></div></body></html>"""


@dataclass
class DriveFile:
    id: str
    name: str
    body: bytes
    large: bool = True  # too large to be virus-scanned: the warning page comes first
    shared: bool = True
    accept_ranges: bool = True


class FakeDrive:
    def __init__(self, file: DriveFile, *, rate_limit: int | None = None) -> None:
        self.drive = RangeServer()
        self.usercontent = RangeServer(rate_limit=rate_limit)
        self.file = file
        self.private: set[str] = set()
        self.quota_exceeded = False
        self.issued: set[str] = set()
        self._uuids = itertools.count(1)
        self._lock = threading.Lock()
        name = file.name
        self.usercontent.add(
            "/download",
            Resource(
                body=file.body,
                accept_ranges=file.accept_ranges,
                content_disposition=(
                    f"attachment; filename=\"{name}\"; filename*=UTF-8''{quote(name)}"
                ),
            ),
        )
        self.drive.on_request(self._on_drive)
        self.usercontent.on_request(self._on_usercontent)

    @property
    def base_url(self) -> str:
        return self.drive.base_url

    def __enter__(self) -> FakeDrive:
        self.drive.start()
        self.usercontent.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.drive.stop()
        self.usercontent.stop()
        check_clean(self.drive, self.usercontent)

    def _on_drive(self, info: RequestInfo) -> Fault | None:
        path, query = split_target(info.path)
        if path.startswith("/v3/signin/"):
            return html(200, SIGN_IN_PAGE)
        file_id = query.get("id")
        if file_id is None and path.startswith("/file/d/"):
            file_id = path.split("/")[3]
        if path not in ("/uc", "/open") and not path.startswith("/file/d/"):
            return None
        if file_id in self.private or (file_id == self.file.id and not self.file.shared):
            target = quote(f"https://drive.google.com/uc?id={file_id}", safe="")
            return Fault.status(
                302, headers={"Location": f"/v3/signin/identifier?continue={target}"}
            )
        if file_id != self.file.id:
            return html(404, "<html><title>Google Drive - Page Not Found</title></html>")
        return Fault.status(
            303,
            headers={"Location": self.usercontent.url(f"/download?id={file_id}&export=download")},
        )

    def _on_usercontent(self, info: RequestInfo) -> Fault | None:
        path, query = split_target(info.path)
        if path != "/download":
            return None
        if query.get("id") != self.file.id:
            return html(404, "<html><title>Not Found</title></html>")
        if self.quota_exceeded:
            return html(200, QUOTA_PAGE)
        if not self.file.large:
            return None
        with self._lock:
            confirmed = query.get("confirm") == "t" and query.get("uuid") in self.issued
        if confirmed:
            return None
        return html(200, self._warning_page())

    def _warning_page(self) -> str:
        uuid = f"{next(self._uuids):08d}-fake-uuid"
        with self._lock:
            self.issued.add(uuid)
        name = htmllib.escape(self.file.name)
        action = self.usercontent.url("/download")
        return f"""<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>
<meta http-equiv="content-type" content="text/html; charset=utf-8"/></head><body>
<div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive can't scan
this file for viruses.</p><p class="uc-warning-subcaption"><span class="uc-name-size"><a
href="/open?id={self.file.id}">{name}</a> (2.1G)</span> is too large for Google to scan for
viruses. Would you still like to download this file?</p>
<form id="download-form" action="{action}" method="get">
<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button"
 value="Download anyway"/>
<input type="hidden" name="id" value="{self.file.id}">
<input type="hidden" name="export" value="download">
<input type="hidden" name="authuser" value="0">
<input type="hidden" name="confirm" value="t">
<input type="hidden" name="uuid" value="{uuid}">
<input type="hidden" name="at" value="APZUnTV-fake:1711119843723">
</form></div></div></body></html>"""
