"""The download page: served on the protocol's port, and driven in Debian's headless chromium.

The browser test needs ``/usr/bin/chromium`` (apt ``chromium``) and the ``playwright`` Python
package (its API only; never ``playwright install``).  Without them it skips, except with
CI=true, where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from wsclient import MIB, open_client, open_server

from segdl.engine.options import Options
from segdl.server import ServerInfo, ServeSettings
from segdl.testing.rangeserver import RangeServer, Resource

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    # A name that is not localhost, to see the page on an insecure origin.
    "--host-resolver-rules=MAP segdl.test 127.0.0.1",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "page.png"


async def _get(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        while data := await stream.receive_some(65536):
            chunks.append(data)
    return b"".join(chunks)


async def test_the_page_is_served_on_the_same_port(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_server(tmp_path) as info:
            response = await _get(info.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _, body = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert b"Content-Security-Policy: default-src 'none'" in head
            assert b"<title>segdl" in body
            assert b"http://" not in body.replace(b"http://localhost", b"")  # no CDN
            assert b"sd-civitai-token" in body
            assert b"sd-huggingface-token" in body
            response = await _get(info.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert response.endswith(b"\r\n\r\n")
            response = await _get(info.port, b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")
            assert response.startswith(b"HTTP/1.1 404")
            response = await _get(info.port, b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert response.startswith(b"HTTP/1.1 405")
            assert await _get(info.port, b"garbage\r\n\r\n") == b""


# ---- the browser


def _require_browser() -> Any:
    on_ci = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = missing or "the playwright package is not installed (pip install playwright)"
    if missing:
        if on_ci:
            pytest.fail(f"{missing}, and CI=true forbids skipping", pytrace=False)
        pytest.skip(missing)
    return sync_playwright


@contextmanager
def server_thread(models_dir: Path, settings: ServeSettings | None = None) -> Iterator[ServerInfo]:
    """``segdl serve`` in a thread with its own trio run (Playwright's sync API blocks)."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with open_server(models_dir, settings) as info:
            box["info"] = info
            box["token"] = trio.lowlevel.current_trio_token()
            box["stop"] = trio.Event()
            started.set()
            await box["stop"].wait()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=run, name="segdl-serve")
    thread.start()
    started.wait(30)
    try:
        if "error" in box:
            raise box["error"]
        yield box["info"]
    finally:
        if "stop" in box:
            trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(30)
    assert "error" not in box, box.get("error")


def test_browser_downloads_and_sees_100_percent(tmp_path: Path) -> None:
    sync_playwright = _require_browser()
    body = os.urandom(8 * MIB)
    # Two connections at 768 KiB/s: about five seconds, time to see the bar move.
    settings = ServeSettings(options=Options(connections=2, split=2))
    with (
        RangeServer(rate_limit=768 * 1024) as files,
        server_thread(tmp_path / "models", settings) as info,
        sync_playwright() as playwright,
    ):
        files.add("/tiny-lora.safetensors", Resource(body=body))
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 720})
            page.goto(info.url)
            page.wait_for_selector("#status.ok", timeout=30_000)
            # The overall limit: asked for on connecting, then set (above the test's speed).
            page.locator("#limit-status", has_text="no limit").wait_for(timeout=30_000)
            page.fill("#limit", "4")
            page.click("#set-limit")
            page.locator("#limit-status", has_text="now 4.00 MiB/s").wait_for(timeout=30_000)
            assert info.queue.overall_limit.rate == 4 * MIB
            page.select_option("#type", "LoRA")
            page.fill("#civitai-token", "civitai-secret")
            page.fill("#hf-token", "hf-secret")
            page.fill("#url", files.url("/tiny-lora.safetensors"))
            page.click("#download")

            # Mid-download: speed and ETA are shown.
            # (Locators, not evaluated strings: the page's CSP forbids eval.)
            midway = re.compile(r"^[3-7]\d% · [\d.]+ MiB/s · ETA \d+:\d\d$")
            page.locator(".download .info", has_text=midway).wait_for(timeout=30_000)
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot))
            if os.environ.get("SEGDL_UPDATE_SCREENSHOT"):
                SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, SCREENSHOT)

            # Pause stops it on the server; Resume takes it up again.
            page.click(".download .pause")
            page.wait_for_selector(".download[data-state=paused]", timeout=30_000)
            assert page.locator(".download .pause").text_content() == "Resume"
            assert page.locator(".download .info").text_content() == "Paused."
            assert info.queue.jobs()[0].state.value == "paused"
            page.click(".download .pause")
            page.wait_for_selector(".download[data-state=running]", timeout=30_000)

            page.wait_for_selector(".download[data-state=done]", timeout=60_000)
            bar = page.locator(".download .bar")
            assert bar.get_attribute("aria-valuenow") == "100"
            assert "width: 100%" in (page.locator(".download .fill").get_attribute("style") or "")
            assert page.locator(".download .label").text_content() == "tiny-lora.safetensors"
            (origin,) = page.context.storage_state()["origins"]
            stored = {item["name"]: item["value"] for item in origin["localStorage"]}
            assert stored == {
                "sd-civitai-token": "civitai-secret",
                "sd-huggingface-token": "hf-secret",
            }
        finally:
            browser.close()
    assert (tmp_path / "models" / "LoRA" / "tiny-lora.safetensors").read_bytes() == body


def test_browser_on_plain_http_from_another_host_explains_webcrypto(tmp_path: Path) -> None:
    sync_playwright = _require_browser()
    with server_thread(tmp_path) as info, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"http://segdl.test:{info.port}/")
            banner = page.locator("#banner")
            banner.wait_for(state="visible", timeout=30_000)
            text = banner.text_content() or ""
            assert "secure context" in text
            assert "--certfile" in text
            assert "--keyfile" in text
        finally:
            browser.close()


async def test_the_page_asks_for_json_from_the_first_message(tmp_path: Path) -> None:
    # ``?codec=json`` makes even ``hello`` JSON (the client checks the codec of each reply).
    with trio.fail_after(20):
        async with (
            open_server(tmp_path) as info,
            open_client(info.port, codec="json", target="/?codec=json") as client,
        ):
            assert client.codecs_seen == {"json"}
            id = await client.send("ping")
            assert (await client.expect("pong"))["id"] == id
            assert client.codecs_seen == {"json"}
