"""Hostile URLs, fuzzed: bad schemes, credentials, control characters, huge and broken URLs.

Whatever the URL, ``segdl.download`` ends in success or one :class:`segdl.DownloadError`
whose message is one line without the URL's password or ``?token=``; a URL that cannot be
fetched (not http(s), control characters, CRLF, too long) is an :class:`segdl.InvalidURL`
before any request is sent; nothing is written for a failure; and no request that reaches the
server carries a header smuggled in through the URL.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from hostile_support import (
    ExampleCounter,
    RawRequest,
    ScriptedServer,
    files_under,
    one_line,
    range_answer,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import segdl
from segdl.core.urls import MAX_URL_LENGTH

PASSWORD = "pw-H7q2zX"
TOKEN = "tok-Zp93Kd"
INJECTED = "X-Injected-Fuzz"
BODY = os.urandom(20_000)
FAST = segdl.Options(
    connect_timeout=2.0,
    read_timeout=2.0,
    save_interval=0.05,
    progress_interval=0.05,
    retry=segdl.RetryPolicy(max_tries=1, base_delay=0.01, max_delay=0.01),
)
EXAMPLES = int(os.environ.get("SEGDL_FUZZ_EXAMPLES", "150"))

counter = ExampleCounter()


@pytest.fixture(scope="module")
def origin() -> Iterator[ScriptedServer]:
    """Serves BODY at every path (correct ranges); records every request head."""

    def answer(request: RawRequest) -> bytes:
        return range_answer(request, BODY)

    with ScriptedServer(answer) as server:
        yield server
    assert not server.errors


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("urls")


class LogRecords(logging.Handler):
    """Every record of every logger, formatted, while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def all_logs() -> Iterator[LogRecords]:
    handler = LogRecords()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


# ---- the strategy

SCHEMES = st.one_of(
    st.sampled_from(["http", "http", "http", "HTTP", "https", "hTtP"]),
    st.sampled_from(["file", "javascript", "data", "ftp", "ws", "", "h", "http ", "ht\ttp"]),
    st.text(alphabet="abchtpxyz+-.:\x00\r\n ", max_size=6),
)
SEPARATORS = st.one_of(
    st.just("://"), st.sampled_from(["://", ":", ":/", ":///", "//", ":\\\\", ":/\\"])
)
USERINFO = st.sampled_from(
    [
        "",
        "",
        "",
        f"user:{PASSWORD}@",
        f"{PASSWORD}@",
        f":{PASSWORD}@",
        f"user:{PASSWORD}:x@",
        f"u%40x:{PASSWORD}@",
        f"user:{PASSWORD}%0d%0a{INJECTED}:%201@",
    ]
)
HOSTILE_PIECES = st.sampled_from(
    [
        f"\r\n{INJECTED}: 1\r\n",
        f"%0d%0a{INJECTED}:%201",
        f"\n{INJECTED}: 1",
        " HTTP/1.1\r\n" + INJECTED + ": 1\r\n\r\n",
        "\x00",
        "\x7f",
        "\x85",
        "\u2028",
        "\u202e",
        "\t",
        " ",
    ]
)
ODD_PIECES = st.sampled_from(
    [
        "../",
        "..\\",
        "..",
        ".",
        "é",
        "模型",
        "%",
        "%zz",
        "%00",
        "%2F",
        "?",
        "#",
        "@",
        "[",
        ";",
        "a.bin",
    ]
)
CLEAN_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S"]), max_size=8
)
PATHS = st.one_of(
    st.lists(st.one_of(CLEAN_TEXT, ODD_PIECES), max_size=5).map("".join),
    st.lists(st.one_of(st.text(max_size=8), ODD_PIECES, HOSTILE_PIECES), max_size=6).map("".join),
)
QUERIES = st.sampled_from(
    ["", "", f"?token={TOKEN}", f"?a=1&token={TOKEN}", f"?x=\r\n{INJECTED}: 1", "?%0d%0a=1"]
)


@st.composite
def hostile_urls(draw: st.DrawFn, port: int) -> str:
    ours = f"127.0.0.1:{port}"
    hosts = st.one_of(
        st.just(ours),
        st.sampled_from(
            [
                ours,
                f"localhost:{port}",
                f"[::1]:{port}",  # nothing listens there: connection refused
                "127.0.0.1:1",  # nor there
                "",
                "a..b",
                "x" * 70 + ".test",
                "127.0.0.1:99999",
                "127.0.0.1:-1",
                "[::1",
                f"{ours}\r\n{INJECTED}: 1",
                "%0d%0a",
                "127.0.0.1\x00.test",
            ]
        ),
    )
    if draw(st.integers(0, 19)) == 0:
        return draw(st.text(max_size=40))  # anything at all
    # Each part is ordinary or hostile on its own, so that a URL with one hostile part is
    # common and URLs that reach the server are too.
    good_scheme = st.sampled_from(["http", "http", "HTTP", "https", "hTtP"])
    good_path = st.lists(st.one_of(CLEAN_TEXT, ODD_PIECES), max_size=5).map("".join)
    hostile = draw(st.sets(st.sampled_from(["scheme", "separator", "host", "path"]), max_size=2))
    return (
        draw(SCHEMES if "scheme" in hostile else good_scheme)
        + draw(SEPARATORS if "separator" in hostile else st.just("://"))
        + draw(USERINFO)
        + draw(hosts if "host" in hostile else st.just(ours))
        + "/"
        + draw(PATHS if "path" in hostile else good_path)
        + draw(QUERIES)
    )


def must_be_refused(url: str) -> bool:
    """URLs that may not cause any request: not http(s), or characters no request carries."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return True
    return any(c <= " " or c == "\x7f" or c in "\x85\u2028\u202e" for c in url)


def injected(request: RawRequest) -> bool:
    """Did a header from the URL reach the server as a header line of its own?"""
    lines = request.raw.decode("latin-1").split("\r\n")
    return any(line.lower().startswith(INJECTED.lower()) for line in lines[1:]) or (
        len(lines[0].split(" ")) != 3
    )


def leaked(text: str) -> bool:
    return PASSWORD in text or TOKEN in text


# ---- the tests


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
async def test_hostile_urls_fail_cleanly_and_send_nothing_injected(
    origin: ScriptedServer, workdir: Path, data: st.DataObject
) -> None:
    counter.hit("urls")
    url = data.draw(hostile_urls(origin.port), label="url")
    target = Path(tempfile.mkdtemp(dir=workdir))
    seen = len(origin.requests)
    events: list[segdl.Event] = []
    error: segdl.DownloadError | None = None
    with all_logs() as logs, trio.fail_after(20):
        try:
            result = await segdl.download(url, target, options=FAST, on_event=events.append)
        except segdl.DownloadError as exc:
            error = exc

    sent = origin.requests[seen:]
    for request in sent:
        assert not injected(request), request.raw
    for event in events:
        assert not leaked(json.dumps(event.to_dict(), default=str)), event
    for line in logs.lines:
        # httpx logs each request's URL: neither the password nor the token may be in it.
        assert not leaked(line), line
    counter.hit(f"urls/{type(error).__name__ if error else 'success'}")
    if error is not None:
        message = str(error)
        assert one_line(message), message
        assert not leaked(message), message
        assert not message.startswith("internal error"), message
        assert files_under(target) == set()
        assert isinstance(events[-1], segdl.Failed)
        if must_be_refused(url):
            assert isinstance(error, segdl.InvalidURL), (url, message)
            assert sent == []
    else:
        assert not must_be_refused(url), url
        path = Path(result.path).resolve()
        assert path.is_relative_to(target.resolve())
        assert path.read_bytes() == BODY
        assert files_under(target) == {path}


def test_hostile_urls_example_count() -> None:
    counter.report("urls", at_least=min(EXAMPLES, 50))
    # The strategy reaches every outcome: refused, failed on the network, and downloaded.
    outcomes = {key for key in counter.counts if key.startswith("urls/")}
    assert {"urls/InvalidURL", "urls/success", "urls/NetworkError"} <= outcomes, outcomes
    # Nothing waited for a timeout: refused, reset or answered at once.
    assert "urls/Timeout" not in outcomes, outcomes


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/" + "a" * 1_000_000,
        "http://127.0.0.1/" + "%0d%0a" * 200_000,
        f"http://user:{PASSWORD}@127.0.0.1/" + "b" * (MAX_URL_LENGTH + 1),
        "http://" + "h" * 1_000_000 + "/",
    ],
    ids=["1MB-path", "1MB-encoded-CRLF", "long-with-password", "1MB-host"],
)
async def test_huge_urls_are_refused_at_once(
    url: str, origin: ScriptedServer, tmp_path: Path
) -> None:
    seen = len(origin.requests)
    with trio.fail_after(5), pytest.raises(segdl.InvalidURL) as caught:
        await segdl.download(url, tmp_path)
    message = str(caught.value)
    assert one_line(message)
    assert len(message) < 200
    assert PASSWORD not in message
    assert len(origin.requests) == seen
    assert list(tmp_path.iterdir()) == []


async def test_password_in_url_reaches_only_its_host_as_basic_auth(
    origin: ScriptedServer, tmp_path: Path
) -> None:
    """Userinfo is the URL's own credential: sent (by the probe and the data plane) as
    ``Authorization: Basic``, never shown, never logged."""
    url = origin.url("/m.bin").replace("http://", f"http://user:{PASSWORD}@")
    seen = len(origin.requests)
    with all_logs() as logs:
        result = await segdl.download(url, tmp_path, options=FAST)
    assert Path(result.path).read_bytes() == BODY
    assert all(PASSWORD not in line for line in logs.lines)
    requests = origin.requests[seen:]
    assert requests  # the first request (the probe) and any further data requests
    for request in requests:
        assert request.headers.get("authorization", "").startswith("Basic ")
        assert "@" not in request.target


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "file:///etc/passwd",
        f"http://user:{PASSWORD}@127.0.0.1:1/x\r\nHost: evil",
        f"http:user:{PASSWORD}@127.0.0.1/x",
        f"user:{PASSWORD}@127.0.0.1/x",
    ],
)
def test_cli_prints_one_line_for_a_hostile_url(url: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "segdl", "get", url, "-d", str(tmp_path), "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CIVITAI_TOKEN": "", "HF_TOKEN": ""},
    )
    assert run.returncode == 1, run
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert PASSWORD not in run.stderr + run.stdout
    assert list(tmp_path.iterdir()) == []
