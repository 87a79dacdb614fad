"""A download's first request is its probe, sent on a data connection (engine/warm.py): its
body is kept, the checks every response must pass still hold on it and after it, and
redirects follow the probe's credential rules.  ``segdl get`` may send it before the rest of
segdl has loaded (the head start), and the flow takes it over.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import threading
from pathlib import Path

import pytest
import trio

import segdl
from segdl.cli.main import main
from segdl.core.events import Event, Progress
from segdl.core.pieces import PieceMap
from segdl.core.resume import control_from_pieces, pieces_from_control
from segdl.engine.early import opening_ranges
from segdl.io.files import partial_path, read_control, write_control
from segdl.sources import civitai, gdrive, huggingface, mega
from segdl.sources.sitehosts import SITE_HOSTS, may_be_a_site
from segdl.testing.rangeserver import Fault, RangeServer, RequestInfo, Resource

MIB = 1024 * 1024
BODY = os.urandom(5 * MIB + 4321)
SHA = hashlib.sha256(BODY).hexdigest()
FAST = segdl.Options(
    connections=4,
    split=4,
    read_timeout=2.0,
    save_interval=0.05,
    retry=segdl.RetryPolicy(max_tries=2, base_delay=0.01, max_delay=0.02),
)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spans(server: RangeServer) -> list[tuple[int, int]]:
    """The byte ranges ``[first, end)`` the server was asked for, in order."""
    found = []
    for record in server.requests:
        assert record.range is not None, "a request without a range"
        first, _, last = record.range.removeprefix("bytes=").partition("-")
        found.append((int(first), int(last) + 1))
    return found


def is_probe(info: RequestInfo) -> bool:
    """The download's first request (its probe): the only one asking from byte 0."""
    return (info.range or "").startswith("bytes=0-")


def after_the_probe(fault: Fault) -> object:
    """A hook giving *fault* to every request but the download's first (its probe)."""

    def hook(info: RequestInfo) -> Fault | None:
        return None if is_probe(info) else fault

    return hook


# -- the probe is data -----------------------------------------------------------------------


async def test_the_first_request_is_the_probe_and_its_body_is_kept(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    await segdl.download(range_server.url("/f.bin"), tmp_path, options=FAST)
    assert sha(tmp_path / "f.bin") == SHA
    asked = spans(range_server)
    assert (0, MIB) in asked  # the first piece, from a request that is also the probe
    # No separate probe, and no byte asked for twice: the first piece's body was written.
    assert sorted(asked) == sorted(set(asked))
    ordered = sorted(asked)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ordered))
    assert sum(end - first for first, end in asked) == len(BODY)


async def test_a_resume_asks_first_for_the_first_missing_piece(tmp_path: Path) -> None:
    with RangeServer(rate_limit=512 * 1024) as server:
        server.add("/f.bin", Resource(body=BODY))
        with trio.CancelScope() as scope:

            def on_event(event: Event) -> None:
                if isinstance(event, Progress) and event.downloaded > 2 * MIB:
                    scope.cancel()

            await segdl.download(server.url("/f.bin"), tmp_path, options=FAST, on_event=on_event)
        control = read_control(partial_path(tmp_path / "f.bin"))
        assert control is not None
        missing = pieces_from_control(control).first_missing()
        assert missing is not None
        assert missing > 0
        seen: list[str | None] = []
        server.rate_limit = None

        def hook(info: RequestInfo) -> Fault | None:
            seen.append(info.range)
            return None

        server.on_request(hook)
        await segdl.download(server.url("/f.bin"), tmp_path, options=FAST)
    assert sha(tmp_path / "f.bin") == SHA
    # The first request (the probe) asked from the first missing byte; nothing before it
    # was asked for again.
    starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in seen if r is not None]
    assert missing in starts
    assert min(starts) == missing


# -- every check still holds -----------------------------------------------------------------


async def test_a_wrong_content_range_on_the_first_response_is_refused(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    wrong = Fault.wrong_content_range(shift=512)
    range_server.on_request(lambda info: wrong if is_probe(info) else None)
    with pytest.raises(segdl.BadResponse) as info:
        await segdl.download(range_server.url("/f.bin"), tmp_path, options=FAST)
    assert info.value.exit_code == 22
    assert "Content-Range" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # refused before the target was opened


async def test_a_200_where_ranges_were_promised_is_refused(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    # The first response is a 206 (ranges work); every later range is answered with 200.
    range_server.on_request(after_the_probe(Fault.ignore_range()))  # type: ignore[arg-type]
    with pytest.raises(segdl.BadResponse) as info:
        await segdl.download(range_server.url("/f.bin"), tmp_path, options=FAST)
    assert "instead of 206" in str(info.value)
    # The partial stays resumable, and holds no byte of the 200s.
    control = read_control(partial_path(tmp_path / "f.bin"))
    assert control is not None
    data = partial_path(tmp_path / "f.bin").read_bytes()
    assert data[:MIB] == BODY[:MIB]


async def test_a_changed_etag_after_the_first_response_restarts_then_gives_up(
    range_server: RangeServer, tmp_path: Path
) -> None:
    """The first response names the version; a later one that names another is never mixed
    in (RemoteChanged: the flow restarts, and gives up when it keeps changing)."""
    flips = iter(range(1000))
    lock = threading.Lock()
    range_server.add("/f.bin", Resource(body=BODY))

    def hook(info: RequestInfo) -> Fault | None:
        with lock:
            tag = next(flips)
        range_server.add("/f.bin", Resource(body=BODY, etag=f'"v{tag}"'))
        return None

    range_server.on_request(hook)
    with pytest.raises(segdl.RemoteChanged):
        await segdl.download(range_server.url("/f.bin"), tmp_path, options=FAST)
    assert not (tmp_path / "f.bin").exists() or sha(tmp_path / "f.bin") != SHA


# -- redirects and credentials ---------------------------------------------------------------


async def test_a_same_origin_redirect_keeps_the_credentials(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.add("/blob/f.bin", Resource(body=BODY))
    range_server.add_redirect("/dl/f.bin", "/blob/f.bin")
    options = segdl.Options(headers={"Authorization": "Bearer sekrit"}, connections=2, split=2)
    await segdl.download(range_server.url("/dl/f.bin"), tmp_path, out="f.bin", options=options)
    assert sha(tmp_path / "f.bin") == SHA
    assert all(r.headers.get("authorization") == "Bearer sekrit" for r in range_server.requests)
    # The redirect is followed once: every data request goes to the final URL.
    assert [r.path for r in range_server.requests][1:] == ["/blob/f.bin"] * (
        len(range_server.requests) - 1
    )


async def test_userinfo_is_basic_auth_for_its_origin_only(tmp_path: Path) -> None:
    with RangeServer() as storage, RangeServer() as site:
        storage.add("/blob/f.bin", Resource(body=BODY))
        site.add_redirect("/dl/f.bin", storage.url("/blob/f.bin"))
        url = site.url("/dl/f.bin").replace("http://", "http://user:pa%3Ass@")
        await segdl.download(url, tmp_path, options=FAST)
    assert sha(tmp_path / "f.bin") == SHA
    basic = "Basic " + base64.b64encode(b"user:pa:ss").decode()
    # The first request, and those sent ahead to the same URL, carry it; none went further.
    assert site.requests
    assert all(r.headers.get("authorization") == basic for r in site.requests)
    assert storage.requests
    assert all("authorization" not in r.headers for r in storage.requests)


async def test_a_redirect_loop_is_refused(range_server: RangeServer, tmp_path: Path) -> None:
    range_server.add_redirect("/a", "/b")
    range_server.add_redirect("/b", "/a")
    with pytest.raises(segdl.BadResponse, match="too many redirects"):
        await segdl.download(range_server.url("/a"), tmp_path, out="x.bin", options=FAST)
    assert list(tmp_path.iterdir()) == []


# -- the head start of `segdl get` -----------------------------------------------------------


def test_the_head_start_is_taken_over_not_sent_twice(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.add("/f.bin", Resource(body=BODY))
    with pytest.raises(SystemExit) as info:
        main(["get", range_server.url("/f.bin"), "-d", str(tmp_path), "-q", "-x4", "-s4"])
    assert info.value.code == 0
    assert sha(tmp_path / "f.bin") == SHA
    asked = spans(range_server)
    assert asked.count((0, MIB)) == 1
    assert sum(end - first for first, end in asked) == len(BODY)


def test_site_hosts_are_the_resolvers_own() -> None:
    assert SITE_HOSTS == (
        civitai.PUBLIC_HOSTS
        | huggingface.PUBLIC_HOSTS
        | gdrive.PUBLIC_HOSTS
        | gdrive.USERCONTENT_HOSTS
        | mega.PUBLIC_HOSTS
    )


@pytest.mark.parametrize(
    ("url", "site"),
    [
        ("https://huggingface.co/o/r/resolve/main/x.safetensors", True),
        ("https://civitai.com/api/download/models/1", True),
        ("https://MEGA.nz/file/abc#key", True),
        ("hf://o/r/x.safetensors", True),
        ("https://hub.test/o/r/resolve/main/x", True),  # HF_ENDPOINT points there
        ("https://cdn.example.org/x.safetensors", False),
        ("http://127.0.0.1:8080/f.bin", False),
    ],
)
def test_only_plain_urls_get_a_head_start(url: str, site: bool) -> None:
    assert may_be_a_site(url, {"HF_ENDPOINT": "https://hub.test"}) is site


async def test_a_first_request_that_crawls_is_sent_again_on_an_open_connection(
    range_server: RangeServer, tmp_path: Path
) -> None:
    """The first request's connection is slow to answer (here: 30 s before its first byte);
    once the connections opened meanwhile are ready, it is sent again on one of them, and
    whichever answers first is the probe."""
    range_server.add("/f.bin", Resource(body=BODY))
    seen: list[str | None] = []

    def hook(info: RequestInfo) -> Fault | None:
        seen.append(info.range)
        return Fault.delay(30.0) if is_probe(info) and seen.count(info.range) == 1 else None

    range_server.on_request(hook)
    options = segdl.Options(connections=4, split=4, read_timeout=60.0)
    with trio.fail_after(20):
        await segdl.download(range_server.url("/f.bin"), tmp_path, options=options)
    assert sha(tmp_path / "f.bin") == SHA
    first = f"bytes=0-{MIB - 1}"
    assert seen.count(first) == 2, seen  # the first request, and again on another connection


def test_what_a_download_opens_with(tmp_path: Path) -> None:
    new = tmp_path / "new.bin"
    # A new file: the first piece, then the next pieces for the connections opened ahead
    # (all but a spare one).
    pieces_of = [(i * MIB, (i + 1) * MIB - 1) for i in range(4)]
    assert opening_ranges(new, MIB, 4) == pieces_of  # 4 opened ahead: 3 ask, 1 spare
    assert opening_ranges(new, MIB, 0) == [(0, MIB - 1)]
    # A partial: its first missing bytes only, from the end of the written prefix.
    partial = tmp_path / "partial.bin"
    pieces = PieceMap(5 * MIB, MIB, done=[0, 2], partial={1: 40_000})
    partial.write_bytes(bytes(5 * MIB))
    write_control(partial, control_from_pieces(pieces))
    assert opening_ranges(partial, MIB, 15) == [(MIB + 32 * 1024, 2 * MIB - 1)]
    # Someone's file, without resume state: one byte, its bytes are probably not wanted.
    other = tmp_path / "other.bin"
    other.write_bytes(b"x")
    assert opening_ranges(other, MIB, 15) == [(0, 0)]
