"""The aria2c engine against a real aria2c and the local range server.

Every download ends byte-identical to the served file; a cancel leaves no aria2c process
(not even a zombie) and keeps a resumable partial; a partial may change engine either way.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import httpx
import pytest
import trio

import segdl
import segdl.engine.aria2c as aria2c_engine
from segdl.core.controlfile import ControlFile
from segdl.core.events import Event, Progress, Started
from segdl.core.resume import pieces_from_control
from segdl.core.urls import HttpURL
from segdl.engine.aria2c import Aria2cEngine, aria2c_available, error_from_status
from segdl.engine.base import EventSink
from segdl.engine.native import NativeEngine
from segdl.engine.target import validators_of
from segdl.engine.throttle import RateLimit
from segdl.io import files
from segdl.io.probe import ProbeResult, probe
from segdl.jobs.flow import fetch_probed
from segdl.testing.processes import child_processes
from segdl.testing.rangeserver import Fault, RangeServer, Resource
from segdl.testing.tls import CertPair, client_context, server_context

MIB = 1024 * 1024
BODY = os.urandom(10 * MIB + 12345)
SHA = hashlib.sha256(BODY).hexdigest()
TOKEN = "Bearer hf_s3cr3t-token-for-the-test"

FAST = segdl.Options(
    read_timeout=2.0,
    connect_timeout=2.0,
    save_interval=0.2,
    progress_interval=0.1,
    retry=segdl.RetryPolicy(max_tries=2, base_delay=0.01, max_delay=0.05),
)


@pytest.fixture(autouse=True)
def _need_aria2c() -> None:
    if aria2c_available():
        return
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail("aria2c is not installed, and CI=true forbids skipping", pytrace=False)
    pytest.skip("aria2c is not installed (apt-get install aria2): the aria2c engine needs it")


# ---- helpers


async def probe_url(url: str, headers: dict[str, str] | None = None) -> ProbeResult:
    async with httpx.AsyncClient(trust_env=False) as client:
        return await probe(client, HttpURL.parse(url), headers=headers)


async def download_with_aria2c(
    probed: ProbeResult,
    path: pathlib.Path,
    options: segdl.Options,
    emit: EventSink,
    *,
    limits: Sequence[RateLimit] = (),
    mirrors: Sequence[ProbeResult] = (),
) -> segdl.Success:
    """Open the target, run the aria2c engine, finish: the download flow after its probe."""
    return await fetch_probed(
        probed, path, options, emit, engine=Aria2cEngine(), limits=limits, mirrors=mirrors
    )


async def download_to_path(
    probed: ProbeResult, path: pathlib.Path, options: segdl.Options, emit: EventSink
) -> segdl.Success:
    return await fetch_probed(probed, path, options, emit, engine=NativeEngine())


def cmdline(pid: int) -> list[str]:
    raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0") if part]


def sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def refetched(server: RangeServer, done: set[int], since: int = 0) -> list[str]:
    """Range requests (after request number *since*) that begin inside a piece in *done*.

    Both engines bound a request at the next piece that is done, so a request starting in
    a done piece is a piece fetched twice.  (What the server pushed is no measure: an
    engine drops a connection on reaching a piece someone else has, after the server has
    written ahead into the socket.)
    """
    again = []
    for record in server.requests[since:]:
        if record.range in (None, "bytes=0-0"):
            continue
        first = int(record.range.removeprefix("bytes=").split("-")[0])
        if first // MIB in done:
            again.append(record.range)
    return again


def unranged(server: RangeServer, since: int = 0) -> int:
    """GETs without Range: aria2c opens with one and drops it once it knows the size."""
    return sum(1 for r in server.requests[since:] if r.range is None)


def done_pieces(path: pathlib.Path) -> set[int]:
    """The pieces the control file of the download to *path* says are done."""
    control = ControlFile.decode(files.control_path(files.partial_path(path)).read_bytes())
    return set(pieces_from_control(control).done_indices())


def cancel_after(
    scope: trio.CancelScope, nbytes: int, seen: list[Event]
) -> Callable[[Event], None]:
    """An event sink that records events and cancels *scope* once *nbytes* are down."""

    def emit(event: Event) -> None:
        seen.append(event)
        if isinstance(event, Progress) and event.downloaded >= nbytes:
            scope.cancel()

    return emit


def control_bytes(path: pathlib.Path) -> int:
    """The bytes the control file of the download to *path* claims."""
    control = ControlFile.decode(files.control_path(files.partial_path(path)).read_bytes())
    return pieces_from_control(control).downloaded


@pytest.fixture
def slow_server() -> Iterator[RangeServer]:
    """16 connections × 512 KiB/s: the 10 MiB file takes over a second."""
    with RangeServer(rate_limit=512 * 1024) as server:
        server.add("/model.safetensors", Resource(body=BODY))
        yield server
    assert not server.errors, server.errors


# ---- a download


async def test_download_is_byte_identical_with_events(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    range_server.add("/model.safetensors", Resource(body=BODY))
    probed = await probe_url(range_server.url("/model.safetensors"))
    events: list[Event] = []
    target = tmp_path / "model.safetensors"

    result = await download_with_aria2c(
        probed, target, replace(FAST, compute_sha256=True), events.append
    )

    assert sha(target) == SHA
    assert result == segdl.Success(path=str(target), size=len(BODY), sha256=SHA)
    assert listing(tmp_path) == ["model.safetensors"]  # control and validator files gone
    assert events[0] == Started(filename="model.safetensors", size=len(BODY), path=str(target))
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress, "no progress events"
    assert progress[-1].progress == 1.0
    assert progress[-1].downloaded == progress[-1].total == len(BODY)
    fractions = [p.progress for p in progress]
    assert fractions == sorted(fractions)
    # Several connections really were used, each asking for a range of the file.
    ranged = [r for r in range_server.requests if r.range not in (None, "bytes=0-0")]
    assert len({r.connection_id for r in ranged}) > 1
    assert child_processes("aria2c") == []


async def test_progress_arrives_while_downloading(
    slow_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    probed = await probe_url(slow_server.url("/model.safetensors"))
    events: list[Event] = []

    await download_with_aria2c(probed, tmp_path / "m.bin", FAST, events.append)

    middle = [e for e in events if isinstance(e, Progress) and 0 < e.progress < 1]
    assert middle, "no progress between 0 and 1"
    assert any(p.rate > 0 and p.connections > 1 and p.eta is not None for p in middle)
    assert sha(tmp_path / "m.bin") == SHA


async def test_complete_file_does_not_start_aria2c(
    range_server: RangeServer, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    range_server.add("/model.safetensors", Resource(body=BODY))
    (tmp_path / "model.safetensors").write_bytes(BODY)
    probed = await probe_url(range_server.url("/model.safetensors"))

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("aria2c was started for a complete file")

    monkeypatch.setattr(trio.lowlevel, "open_process", no_process)
    events: list[Event] = []
    result = await download_with_aria2c(
        probed,
        tmp_path / "model.safetensors",
        replace(FAST, compute_sha256=True, continue_partial=True),
        events.append,
    )
    assert result.sha256 == SHA
    assert isinstance(events[-1], Progress)
    assert events[-1].progress == 1.0


@pytest.mark.parametrize(
    "resource",
    [
        Resource(body=BODY, accept_ranges=False),
        Resource(body=BODY, accept_ranges=False, send_length=False),
    ],
    ids=["no-ranges", "no-ranges-no-length"],
)
async def test_server_without_ranges(
    range_server: RangeServer, tmp_path: pathlib.Path, resource: Resource
) -> None:
    range_server.add("/model.safetensors", resource)
    probed = await probe_url(range_server.url("/model.safetensors"))
    assert not probed.accepts_ranges
    (tmp_path / "m.bin").write_bytes(b"old partial that cannot be continued")
    events: list[Event] = []

    result = await download_with_aria2c(
        probed, tmp_path / "m.bin", replace(FAST, allow_overwrite=True), events.append
    )

    assert sha(tmp_path / "m.bin") == SHA
    assert result.size == len(BODY)
    assert listing(tmp_path) == ["m.bin"]
    last = events[-1]
    assert isinstance(last, Progress)
    assert last.progress == 1.0


# ---- cancel, and switching engines


async def test_cancel_stops_aria2c_keeps_partial_and_native_finishes_it(
    slow_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    probed = await probe_url(slow_server.url("/model.safetensors"))
    target = tmp_path / "model.safetensors"
    events: list[Event] = []
    pids: list[int] = []

    with trio.CancelScope() as scope:

        def emit(event: Event) -> None:
            pids.extend(p for p in child_processes("aria2c") if p not in pids)
            cancel_after(scope, 3 * MIB, events)(event)

        await download_with_aria2c(probed, target, FAST, emit)
    assert scope.cancelled_caught, "the download finished before it could be cancelled"

    # aria2c is gone the moment the call returns: no process, no zombie.
    assert pids, "aria2c was never seen running"
    assert child_processes("aria2c") == []
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")
    # The partial and aria2's control file stay, and the control file claims real bytes;
    # segdl's validators are back in it now that aria2c (which drops them) has stopped.
    assert listing(tmp_path) == ["model.safetensors.part", "model.safetensors.part.aria2"]
    sealed = files.read_sealed(files.partial_path(target))
    assert sealed is not None
    assert sealed[1] == validators_of(probed)
    claimed = control_bytes(target)
    done = done_pieces(target)
    assert 0 < claimed < len(BODY)
    assert claimed >= 2 * MIB  # saved at the stop, not only at the last periodic save
    served = len(slow_server.requests)

    # Switch: the native engine resumes aria2c's partial.
    slow_server.rate_limit = None
    result = await download_to_path(probed, target, FAST, lambda event: None)

    assert sha(target) == SHA
    assert result.size == len(BODY)
    assert listing(tmp_path) == ["model.safetensors"]
    assert unranged(slow_server, served) == 0
    assert refetched(slow_server, done, served) == []


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.02, 0.06, 0.3])
async def test_cancel_at_any_moment_leaves_no_process(
    slow_server: RangeServer, tmp_path: pathlib.Path, delay: float
) -> None:
    """Starting, connecting, adding, downloading: a cancel in any phase stops aria2c."""
    probed = await probe_url(slow_server.url("/model.safetensors"))
    workdirs = pathlib.Path(tempfile.gettempdir()).glob
    before = set(workdirs("segdl-aria2c-*"))
    with trio.move_on_after(delay) as scope:
        await download_with_aria2c(probed, tmp_path / "m.bin", FAST, lambda event: None)
    assert scope.cancelled_caught
    assert child_processes("aria2c") == []
    assert set(workdirs("segdl-aria2c-*")) <= before  # the private directory is removed
    # Whatever was kept resumes to the exact file.
    slow_server.rate_limit = None
    await download_with_aria2c(probed, tmp_path / "m.bin", FAST, lambda event: None)
    assert sha(tmp_path / "m.bin") == SHA


async def test_native_partial_finished_by_aria2c(
    slow_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    probed = await probe_url(slow_server.url("/model.safetensors"))
    target = tmp_path / "model.safetensors"
    events: list[Event] = []
    # Small buffers: the native engine counts bytes per buffer written.
    native = replace(FAST, buffer_size=64 * 1024)
    with trio.CancelScope() as scope:
        await download_to_path(probed, target, native, cancel_after(scope, 3 * MIB, events))
    assert scope.cancelled_caught
    claimed = control_bytes(target)
    done = done_pieces(target)
    assert 0 < claimed < len(BODY)
    served = len(slow_server.requests)

    slow_server.rate_limit = None
    resumed: list[Event] = []
    result = await download_with_aria2c(probed, target, FAST, resumed.append)

    assert sha(target) == SHA
    assert result.size == len(BODY)
    assert listing(tmp_path) == ["model.safetensors"]
    progress = [e for e in resumed if isinstance(e, Progress)]
    assert all(e.downloaded >= claimed for e in progress)  # from the native engine's state
    # aria2c fetched what was missing, not the whole file again.
    assert unranged(slow_server, served) <= 1
    assert refetched(slow_server, done, served) == []
    assert child_processes("aria2c") == []


async def test_aria2c_partial_resumed_by_aria2c_through_public_download(
    slow_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    """A second aria2c run continues the first's partial (a restart after a cancel)."""
    probed = await probe_url(slow_server.url("/model.safetensors"))
    target = tmp_path / "model.safetensors"
    with trio.CancelScope() as scope:
        await download_with_aria2c(probed, target, FAST, cancel_after(scope, 2 * MIB, []))
    assert scope.cancelled_caught
    assert 0 < control_bytes(target) < len(BODY)
    done = done_pieces(target)
    slow_server.rate_limit = None
    served = len(slow_server.requests)

    await download_with_aria2c(probed, target, FAST, lambda event: None)

    assert sha(target) == SHA
    assert unranged(slow_server, served) <= 1
    assert refetched(slow_server, done, served) == []


async def test_continue_adopts_a_prefix_without_control_file(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    """``-c``: a file another program began is continued, not fetched again."""
    range_server.add("/model.safetensors", Resource(body=BODY))
    probed = await probe_url(range_server.url("/model.safetensors"))
    have = 4 * MIB + 5
    (tmp_path / "m.bin").write_bytes(BODY[:have])

    await download_with_aria2c(
        probed, tmp_path / "m.bin", replace(FAST, continue_partial=True), lambda event: None
    )

    assert sha(tmp_path / "m.bin") == SHA
    assert refetched(range_server, set(range(have // MIB))) == []


# ---- errors


async def test_404_is_not_found(range_server: RangeServer, tmp_path: pathlib.Path) -> None:
    range_server.add("/model.safetensors", Resource(body=BODY))
    probed = await probe_url(range_server.url("/model.safetensors"))
    range_server.remove("/model.safetensors")  # gone between probe and download

    with pytest.raises(segdl.NotFound) as caught:
        await download_with_aria2c(probed, tmp_path / "m.bin", FAST, lambda event: None)

    assert caught.value.exit_code == 3
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("aria2c: ")
    assert child_processes("aria2c") == []


async def test_403_is_auth_error(range_server: RangeServer, tmp_path: pathlib.Path) -> None:
    range_server.add("/model.safetensors", Resource(body=BODY))
    probed = await probe_url(range_server.url("/model.safetensors"))
    range_server.on_request(lambda info: Fault.status(403) if info.range != "bytes=0-0" else None)

    with pytest.raises(segdl.AuthError) as caught:
        await download_with_aria2c(probed, tmp_path / "m.bin", FAST, lambda event: None)

    assert caught.value.exit_code == 24
    assert caught.value.status == 403


async def test_checksum_verified_and_mismatch(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    range_server.add("/model.safetensors", Resource(body=BODY))
    probed = await probe_url(range_server.url("/model.safetensors"))

    good = replace(FAST, checksum=segdl.parse_checksum(f"sha-256={SHA}"))
    result = await download_with_aria2c(probed, tmp_path / "a.bin", good, lambda event: None)
    assert result.sha256 == SHA

    bad = replace(FAST, checksum=segdl.parse_checksum("sha-256=" + "0" * 64))
    with pytest.raises(segdl.ChecksumMismatch) as caught:
        await download_with_aria2c(probed, tmp_path / "b.bin", bad, lambda event: None)
    assert caught.value.exit_code == 32
    assert "expected sha256 0000" in str(caught.value)


async def test_missing_aria2c_is_a_clear_error(
    range_server: RangeServer, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    range_server.add("/model.safetensors", Resource(body=BODY))
    probed = await probe_url(range_server.url("/model.safetensors"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert not aria2c_available()

    with pytest.raises(segdl.DownloadError) as caught:
        await download_with_aria2c(probed, tmp_path / "m.bin", FAST, lambda event: None)

    assert str(caught.value) == (
        "aria2c engine requested but aria2c is not installed (apt-get install aria2)"
    )
    assert listing(tmp_path) == []  # nothing touched


@pytest.mark.parametrize(
    ("code", "message", "expected", "status"),
    [
        (3, "Resource not found", segdl.NotFound, 404),
        (24, "Authorization failed.", segdl.AuthError, 401),
        (22, "The response status is not successful. status=403", segdl.AuthError, 403),
        (22, "The response status is not successful. status=410", segdl.NotFound, 410),
        (22, "The response status is not successful. status=500", segdl.HTTPStatusError, 500),
        (29, "The response status is not successful. status=503", segdl.ServerBusy, 503),
        (32, "", segdl.ChecksumMismatch, None),
        (9, "No space left on device", segdl.DiskFull, None),
        (6, "Network problem has occurred.", segdl.NetworkError, None),
        (2, "Timeout.", segdl.Timeout, None),
        (13, "File exists", segdl.FileExists, None),
        (8, "cannot resume", segdl.ResumeError, None),
        (1, "Failed to establish connection, cause: Connection refused", segdl.NetworkError, None),
        (1, "something odd", segdl.DownloadError, None),
    ],
)
def test_error_codes_map_to_the_exception_tree(
    code: int, message: str, expected: type[segdl.DownloadError], status: int | None
) -> None:
    url = "https://cdn.example/f.bin?X-Amz-Signature=abc123"
    error = error_from_status(code, message, url=url)
    assert type(error) is expected
    if status is not None:
        assert isinstance(error, segdl.HTTPStatusError)
        assert error.status == status
    text = str(error)
    assert "\n" not in text
    assert "abc123" not in text  # the signed query never reaches a message
    assert text.startswith("aria2c: ")


def test_messages_redact_urls_that_aria2_quotes() -> None:
    error = error_from_status(
        1, "Failed to connect to https://user:pw@h.example/x?token=zzz now", url="http://a/b"
    )
    assert "zzz" not in str(error)
    assert "pw" not in str(error)


# ---- secrets stay out of argv


async def test_token_reaches_server_but_not_argv(
    slow_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    probed = await probe_url(
        slow_server.url("/model.safetensors"), headers={"Authorization": TOKEN}
    )
    assert probed.headers.get("Authorization") == TOKEN
    argvs: list[list[str]] = []

    def emit(event: Event) -> None:
        if isinstance(event, Progress):
            for pid in child_processes("aria2c"):
                argvs.append(cmdline(pid))

    await download_with_aria2c(probed, tmp_path / "m.bin", FAST, emit)

    assert sha(tmp_path / "m.bin") == SHA
    data = [r for r in slow_server.requests if r.range != "bytes=0-0"]
    assert data
    assert all(r.headers.get("authorization") == TOKEN for r in data)
    assert argvs, "aria2c's argv was never seen"
    for argv in argvs:
        joined = " ".join(argv)
        assert "s3cr3t" not in joined
        assert "rpc-secret" not in joined
        assert "Authorization" not in joined
        assert f"--stop-with-process={os.getpid()}" in argv


async def test_a_squatted_rpc_port_never_sees_the_secret(
    range_server: RangeServer, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aria2c still serves on ::1 when 127.0.0.1:PORT is taken; segdl must notice."""
    range_server.add("/model.safetensors", Resource(body=BODY))
    probed = await probe_url(range_server.url("/model.safetensors"), {"Authorization": TOKEN})
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        squatter.setblocking(False)
        ports = [squatter.getsockname()[1]]
        real = aria2c_engine._free_port
        monkeypatch.setattr(aria2c_engine, "_free_port", lambda: ports.pop() if ports else real())

        await download_with_aria2c(probed, tmp_path / "m.bin", FAST, lambda event: None)

        assert sha(tmp_path / "m.bin") == SHA
        with pytest.raises(BlockingIOError):
            squatter.accept()  # nobody connected to it
    assert child_processes("aria2c") == []


# ---- TLS


async def test_https_with_extra_ca_certificate(tls_pair: CertPair, tmp_path: pathlib.Path) -> None:
    with RangeServer(tls=server_context(tls_pair)) as server:
        server.add("/model.safetensors", Resource(body=BODY))
        async with httpx.AsyncClient(verify=client_context(tls_pair)) as client:
            probed = await probe(client, HttpURL.parse(server.url("/model.safetensors")))
        options = replace(FAST, ca_certificate=str(tls_pair.certfile))
        await download_with_aria2c(probed, tmp_path / "m.bin", options, lambda event: None)
        assert sha(tmp_path / "m.bin") == SHA

        # Without the CA, the certificate is not trusted: a network error, one line.
        with pytest.raises(segdl.NetworkError) as caught:
            await download_with_aria2c(probed, tmp_path / "n.bin", FAST, lambda event: None)
        assert "\n" not in str(caught.value)
    assert not server.errors or all(isinstance(e, OSError) for e in server.errors)


async def test_aria2c_killed_midway_is_a_clear_error(
    slow_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    probed = await probe_url(slow_server.url("/model.safetensors"))
    killed: list[int] = []

    def emit(event: Event) -> None:
        if isinstance(event, Progress) and event.downloaded >= MIB and not killed:
            for pid in child_processes("aria2c"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    with pytest.raises(segdl.DownloadError) as caught:
        await download_with_aria2c(probed, tmp_path / "m.bin", FAST, emit)

    assert killed
    assert "aria2c" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert child_processes("aria2c") == []  # reaped, not a zombie
    assert (tmp_path / "m.bin.part.aria2").exists()  # the last periodic save is still there
    assert not (tmp_path / "m.bin").exists()  # nothing under the model's name


async def test_limits_reach_aria2c_and_follow_changes(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    """A RateLimit becomes aria2's max-download-limit, changed live with changeOption;
    the rate is read from aria2c's own progress (completedLength over time)."""
    body = os.urandom(24 * MIB)
    range_server.add("/limited.bin", Resource(body))
    limit = segdl.RateLimit(1 * MIB)
    samples: list[tuple[float, int]] = []

    def on_event(event: Event) -> None:
        if isinstance(event, Progress):
            samples.append((trio.current_time(), event.downloaded))

    def rate_between(start: float, end: float) -> float:
        window = [(t, n) for t, n in samples if start <= t <= end]
        (t0, n0), (t1, n1) = window[0], window[-1]
        return (n1 - n0) / (t1 - t0)

    probed = await probe_url(range_server.url("/limited.bin"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: download_with_aria2c(
                probed, tmp_path / "limited.bin", FAST, on_event, limits=[limit]
            )
        )
        begin = trio.current_time()
        await trio.sleep(4.0)
        limit.set(4 * MIB)
        await trio.sleep(4.0)
        nursery.cancel_scope.cancel()
    slow = rate_between(begin + 1.0, begin + 4.0)
    fast = rate_between(begin + 5.0, begin + 8.0)
    assert slow == pytest.approx(1 * MIB, rel=0.2)
    # aria2 limits its speed averaged over its own window of seconds: right after a raise it
    # catches up on the slow seconds still in that window, so only bounds are checked.
    assert 2 * MIB < fast < 8 * MIB
