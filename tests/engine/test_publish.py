"""Publishing: a download lives under NAME.part until its size and checksum verified, then
becomes NAME in one rename; asked again, a file segdl recorded is done at once; a changed
file replaces the old one only once the new one is complete and verified.

Every engine (native, single, aria2c), against the fake server of segdl.testing.rangeserver
(RFC 9110 ranges written independently of the client), whose request records show what was
fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import random
import threading
from collections.abc import Iterator
from dataclasses import asdict, replace

import httpx
import pytest
import trio

import segdl
from segdl.core.controlfile import ControlFile
from segdl.core.events import Event, Progress, Started, Success
from segdl.core.resume import Validators, pieces_from_control
from segdl.core.urls import HttpURL
from segdl.engine.aria2c import aria2c_available
from segdl.engine.native import NativeEngine
from segdl.engine.target import finish_target, open_target
from segdl.io import files, records
from segdl.io.probe import probe
from segdl.jobs.flow import AfterPublish, fetch_probed
from segdl.testing.rangeserver import RangeServer, Resource

MIB = 1024 * 1024
NAME = "model.safetensors"
OLD = random.Random(1).randbytes(5 * MIB + 321)
NEW = random.Random(2).randbytes(6 * MIB + 4321)
FAST = segdl.Options(
    read_timeout=2.0,
    connect_timeout=2.0,
    save_interval=0.05,
    progress_interval=0.05,
    retry=segdl.RetryPolicy(max_tries=2, base_delay=0.01, max_delay=0.05),
)
# What model scanners pick up: sd-inference-server's globs (storage.py), which ComfyUI's,
# A1111/Forge's and InvokeAI's extension lists include.
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checksum(data: bytes) -> segdl.Options:
    return replace(FAST, checksum=segdl.parse_checksum(f"sha-256={sha256(data)}"))


def data_requests(server: RangeServer, since: int = 0) -> list[str | None]:
    """The requests after *since* that asked for file bytes (not the 1-byte probe)."""
    return [r.range for r in server.requests[since:] if r.range != "bytes=0-0"]


def listing(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def need(engine: str) -> None:
    if engine != "aria2c" or aria2c_available():
        return
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail("aria2c is not installed, and CI=true forbids skipping", pytrace=False)
    pytest.skip("aria2c is not installed")


ENGINES = ["native", "single", "aria2c"]


@pytest.fixture
def server() -> Iterator[RangeServer]:
    with RangeServer() as started:
        yield started
    assert not started.errors, started.errors


async def get(
    server: RangeServer,
    directory: pathlib.Path,
    options: segdl.Options = FAST,
    **kwargs: object,
) -> Success:
    return await segdl.download(server.url("/" + NAME), directory, options=options, **kwargs)  # type: ignore[arg-type]


# -- nothing half-written in sight ------------------------------------------------------------


class Scanner:
    """A model scanner in a thread: lists the folder as fast as it can and notes every file
    with a model extension, checking its content the first time it sees it."""

    def __init__(self, directory: pathlib.Path, body: bytes) -> None:
        self.directory = directory
        self.body = body
        self.scans = 0
        self.wrong: list[str] = []
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-scanner")

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in self.directory.glob("*"):
                if path.suffix not in MODEL_EXTENSIONS or path.name in self.seen:
                    continue
                self.seen.add(path.name)
                try:
                    content = path.read_bytes()
                except FileNotFoundError:
                    continue
                if content != self.body:
                    self.wrong.append(f"{path.name}: {len(content)} bytes, not the file")
            self.scans += 1

    def __enter__(self) -> Scanner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_scan_during_a_download_finds_no_model_file(
    tmp_path: pathlib.Path, engine: str
) -> None:
    """Whatever the engine, a model scanner looking at the folder while the file downloads
    sees no file with a model extension; the one it sees in the end is the whole file."""
    need(engine)
    scans_while_downloading: list[int] = []
    with RangeServer(rate_limit=2 * MIB) as server, Scanner(tmp_path, NEW) as scanner:
        server.add("/" + NAME, Resource(body=NEW))

        def on_event(event: Event) -> None:
            if isinstance(event, Progress) and event.downloaded < len(NEW):
                scans_while_downloading.append(scanner.scans)
                assert not scanner.seen, f"a model file while downloading: {scanner.seen}"

        await get(server, tmp_path, engine=engine, on_event=on_event)
    assert scanner.wrong == []
    assert scanner.seen == {NAME}
    # It really looked while the file was downloading.
    assert len(scans_while_downloading) >= 3, scans_while_downloading
    assert scans_while_downloading[-1] > scans_while_downloading[0], scans_while_downloading
    assert listing(tmp_path) == [NAME]


def test_download_model_publishes_only_the_finished_file(
    tmp_path: pathlib.Path, server: RangeServer
) -> None:
    """``download_model`` inside an SD server: its model list never shows a half file."""
    server.add("/" + NAME, Resource(body=NEW))
    with Scanner(tmp_path, NEW) as scanner:
        path = segdl.download_model(server.url("/" + NAME), "LoRA", tmp_path)
    assert path == str(tmp_path / NAME)
    assert scanner.wrong == []
    assert listing(tmp_path) == [NAME]


# -- a wrong file never keeps the model's name ------------------------------------------------


@pytest.mark.parametrize("engine", ["native", "aria2c"])
@pytest.mark.parametrize("old_file", [False, True], ids=["new", "replacing"])
async def test_a_checksum_mismatch_then_a_good_server_finishes_exact(
    tmp_path: pathlib.Path, server: RangeServer, engine: str, old_file: bool
) -> None:
    """The server sends wrong bytes: exit 32, the message says so and that running again
    downloads it anew, and the bad bytes are gone (no NAME, no NAME.part to verify again);
    a file that was there stays as it was.  The next run against a good server fetches the
    whole file again and ends exact."""
    need(engine)
    tampered = bytearray(NEW)
    tampered[len(NEW) // 2] ^= 0xFF
    if old_file:
        server.add("/" + NAME, Resource(body=OLD, etag='"old"'))
        await get(server, tmp_path)
    server.add("/" + NAME, Resource(body=bytes(tampered), etag='"v2"'))
    options = replace(checksum(NEW), allow_overwrite=True)
    with pytest.raises(segdl.ChecksumMismatch) as info:
        await get(server, tmp_path, options, engine=engine)
    message = str(info.value)
    assert info.value.exit_code == 32
    assert "checksum mismatch" in message
    assert "deleted" in message
    assert "again" in message
    assert "\n" not in message
    if old_file:
        assert listing(tmp_path) == [NAME]
        assert (tmp_path / NAME).read_bytes() == OLD
    else:
        assert listing(tmp_path) == []

    server.add("/" + NAME, Resource(body=NEW, etag='"v3"'))
    since = len(server.requests)
    result = await get(server, tmp_path, options, engine=engine)
    assert (tmp_path / NAME).read_bytes() == NEW
    assert result.sha256 == sha256(NEW)
    assert listing(tmp_path) == [NAME]
    # Fetched anew from the first byte, not re-verified from what was there (the native
    # engine's probe, bytes=0-0, is its first request and its byte is kept: the data
    # requests then begin at byte 1).
    fetched = data_requests(server, since)
    assert any(r is None or r.startswith(("bytes=0-", "bytes=1-")) for r in fetched), fetched


async def test_a_complete_partial_that_fails_its_checksum_is_downloaded_anew(
    tmp_path: pathlib.Path, server: RangeServer
) -> None:
    """A complete NAME.part without a control file (as aria2c leaves one) is published only
    if its checksum matches; wrong bytes are replaced by a fresh download, not an error."""
    server.add("/" + NAME, Resource(body=NEW))
    files.partial_path(tmp_path / NAME).write_bytes(bytes(len(NEW)))
    await get(server, tmp_path, checksum(NEW))
    assert (tmp_path / NAME).read_bytes() == NEW
    assert listing(tmp_path) == [NAME]


# -- a partial another program finished -------------------------------------------------------


@pytest.mark.parametrize("with_checksum", [False, True])
async def test_a_complete_partial_is_published_without_a_data_request(
    tmp_path: pathlib.Path, server: RangeServer, with_checksum: bool
) -> None:
    """What ``aria2c -c -o NAME.part`` leaves (the partial complete, its control file
    deleted): the next run publishes it, fetching nothing but the probe."""
    server.add("/" + NAME, Resource(body=NEW))
    files.partial_path(tmp_path / NAME).write_bytes(NEW)
    result = await get(server, tmp_path, checksum(NEW) if with_checksum else FAST)
    assert data_requests(server) == []
    assert result == Success(
        path=str(tmp_path / NAME), size=len(NEW), sha256=sha256(NEW) if with_checksum else None
    )
    assert listing(tmp_path) == [NAME]


@pytest.mark.parametrize("changed", [False, True], ids=["same version", "changed since"])
async def test_a_partial_left_by_segdl_0_1_is_adopted(
    tmp_path: pathlib.Path, changed: bool
) -> None:
    """The old layout (NAME, NAME.aria2, NAME.segdl) is taken over and finished without
    fetching what it holds; its validators still guard against mixing versions; no old
    sidecar is left."""
    final = tmp_path / NAME
    partial = files.partial_path(final)
    with RangeServer(rate_limit=2 * MIB) as server:
        server.add("/" + NAME, Resource(body=OLD, etag='"v1"'))
        with trio.CancelScope() as scope:

            def on_event(event: Event) -> None:
                if isinstance(event, Progress) and event.downloaded >= 3 * MIB:
                    scope.cancel()

            await get(server, tmp_path, replace(FAST, connections=1), on_event=on_event)
        control = ControlFile.decode(files.control_path(partial).read_bytes())
        done = pieces_from_control(control).done_indices()
        assert done
        # Back to segdl 0.1's layout: the data at the model's name, the validators beside it.
        os.replace(partial, final)
        (tmp_path / f"{NAME}.aria2").write_bytes(control.encode())
        files.control_path(partial).unlink()
        legacy = Validators(url="http://x/", size=len(OLD), etag='"v1"', last_modified=None)
        (tmp_path / f"{NAME}.segdl").write_text(json.dumps({"version": 1, **asdict(legacy)}))
        served = OLD
        if changed:
            served = bytes(reversed(OLD))
            server.add("/" + NAME, Resource(body=served, etag='"v2"'))
        server.rate_limit = None
        since = len(server.requests)
        await get(server, tmp_path)
        fetched = data_requests(server, since)
    assert final.read_bytes() == served
    assert listing(tmp_path) == [NAME]
    starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in fetched if r is not None]
    if changed:
        assert 0 in starts  # the other version's bytes were not kept
    else:
        assert not [first for first in starts if first // MIB in done]


# -- asked again --------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_asked_again_an_unchanged_file_is_done_at_once(
    tmp_path: pathlib.Path, server: RangeServer, engine: str
) -> None:
    """segdl's record (outside the folder) says the file at NAME is the server's version:
    no data request, the file untouched, the same Success."""
    need(engine)
    server.add("/" + NAME, Resource(body=NEW))
    first = await get(server, tmp_path, engine=engine)
    before = (tmp_path / NAME).stat()
    since = len(server.requests)
    events: list[Event] = []
    again = await get(server, tmp_path, engine=engine, on_event=events.append)
    assert again == first
    assert data_requests(server, since) == []
    after = (tmp_path / NAME).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [type(e) for e in events] == [Started, Progress, Success]
    assert listing(tmp_path) == [NAME]


async def test_asked_again_with_a_published_sha256_nothing_is_hashed(
    tmp_path: pathlib.Path, server: RangeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The site's sha256 equals the one segdl recorded when it published the file: done at
    once, without a data request and without reading the file again."""
    server.add("/" + NAME, Resource(body=NEW, etag=None, last_modified=None))
    await get(server, tmp_path, checksum(NEW))
    hashed: list[pathlib.Path] = []
    real_hash = files.hash_file

    def hash_file(path: pathlib.Path, algorithm: str) -> str:
        hashed.append(path)
        return real_hash(path, algorithm)

    monkeypatch.setattr(files, "hash_file", hash_file)
    since = len(server.requests)
    result = await get(server, tmp_path, checksum(NEW))
    assert result.sha256 == sha256(NEW)
    assert data_requests(server, since) == []
    assert hashed == []


async def test_asked_again_a_file_it_cannot_vouch_for(
    tmp_path: pathlib.Path, server: RangeServer
) -> None:
    """No record (the user put the file there, or edited it since): refused without
    -c/--allow-overwrite (the library's defaults are aria2c's); a checksum settles it."""
    server.add("/" + NAME, Resource(body=NEW))
    await get(server, tmp_path)
    with (tmp_path / NAME).open("r+b") as f:  # edited in place: the record no longer holds
        f.write(b"x")
    with pytest.raises(segdl.FileExists, match="cannot tell it is this download"):
        await get(server, tmp_path)
    since = len(server.requests)
    await get(server, tmp_path, replace(checksum(NEW), allow_overwrite=True))
    assert (tmp_path / NAME).read_bytes() == NEW
    assert data_requests(server, since) != []


async def test_a_changed_file_replaces_the_old_one_only_when_complete(
    tmp_path: pathlib.Path,
) -> None:
    """The server's file changed (new ETag): without --allow-overwrite refused, the old file
    kept; with it, the new one downloads beside the old, which stays intact through a
    cancelled try, and is replaced in one rename once the new one is complete."""
    final = tmp_path / NAME
    with RangeServer(rate_limit=MIB) as server:
        server.add("/" + NAME, Resource(body=OLD, etag='"v1"'))
        server.rate_limit = None
        await get(server, tmp_path)
        server.add("/" + NAME, Resource(body=NEW, etag='"v2"'))
        with pytest.raises(segdl.FileExists, match="server's file has changed since"):
            await get(server, tmp_path)
        assert final.read_bytes() == OLD

        server.rate_limit = 256 * 1024
        replacing = replace(FAST, allow_overwrite=True)
        seen_old: list[bool] = []
        with trio.CancelScope() as scope:

            def on_event(event: Event) -> None:
                if isinstance(event, Progress):
                    seen_old.append(final.read_bytes() == OLD)
                    if event.downloaded >= 2 * MIB:
                        scope.cancel()

            await get(server, tmp_path, replacing, on_event=on_event)
        assert scope.cancelled_caught
        assert seen_old
        assert all(seen_old)
        assert final.read_bytes() == OLD  # the cancelled try left the old file alone
        assert listing(tmp_path) == [NAME, f"{NAME}.part", f"{NAME}.part.aria2"]

        server.rate_limit = None
        since = len(server.requests)
        result = await get(server, tmp_path, replacing)
    assert final.read_bytes() == NEW
    assert result.size == len(NEW)
    assert listing(tmp_path) == [NAME]
    # The partial was resumed, not fetched again.
    assert sum(r.body_bytes for r in server.requests[since:]) < len(NEW)


def test_download_model_asked_again(tmp_path: pathlib.Path, server: RangeServer) -> None:
    """``download_model`` (the seed system's call) gets the file: at once when unchanged,
    replaced safely when the server's file changed — no flag needed."""
    server.add("/" + NAME, Resource(body=OLD, etag='"v1"'))
    url = server.url("/" + NAME)
    segdl.download_model(url, "LoRA", tmp_path)
    since = len(server.requests)
    assert segdl.download_model(url, "LoRA", tmp_path) == str(tmp_path / NAME)
    assert data_requests(server, since) == []
    server.add("/" + NAME, Resource(body=NEW, etag='"v2"'))
    statuses: list[object] = []
    segdl.download_model(url, "LoRA", tmp_path, progress_callback=lambda d: statuses.append(d))
    assert (tmp_path / NAME).read_bytes() == NEW
    assert listing(tmp_path) == [NAME]
    assert [s["status"] for s in statuses if isinstance(s, dict)][-1] == "success"


# -- crash safety of the publish step --------------------------------------------------------


class Crash(BaseException):
    """The process dies here: nothing after it reaches the disk."""


def crashed(exc: BaseException) -> bool:
    if isinstance(exc, Crash):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(crashed(e) for e in exc.exceptions)
    return exc.__cause__ is not None and crashed(exc.__cause__)


PUBLISH_STEPS = ["state", "record", "rename", "directory fsync", "stale sidecars"]


@pytest.mark.parametrize("step", PUBLISH_STEPS)
@pytest.mark.parametrize("old_file", [False, True], ids=["new", "replacing"])
async def test_a_crash_in_the_publish_step(
    tmp_path: pathlib.Path,
    server: RangeServer,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    old_file: bool,
) -> None:
    """The process dies at each step of publishing the complete, verified partial: as its
    control file goes, before the record is written, before the rename, after it (before
    the directory fsync), before the sidecars of the old file go.  The model's name holds
    the old file or the whole new one, never a mix; the next run ends with the new file
    alone, without fetching it again."""
    final = tmp_path / NAME
    partial = files.partial_path(final)
    if old_file:
        server.add("/" + NAME, Resource(body=OLD, etag='"v1"'))
        await get(server, tmp_path)
    server.add("/" + NAME, Resource(body=NEW, etag='"v2"'))
    options = replace(FAST, allow_overwrite=True)
    # Armed once the transfer is over: the same functions also run before and during it.
    armed = threading.Event()
    real_replace = os.replace
    real_fsync_dir = files._fsync_dir
    real_remove_sidecars = files.remove_sidecars

    def on_event(event: Event) -> None:
        if isinstance(event, Progress) and event.downloaded == len(NEW):
            armed.set()

    def write_record(*args: object) -> None:
        raise Crash

    def rename(src: str, dst: str) -> None:
        if armed.is_set() and os.fspath(dst) == str(final):
            raise Crash
        real_replace(src, dst)

    def fsync_dir(directory: pathlib.Path) -> None:
        if armed.is_set() and directory == tmp_path and not partial.exists():
            raise Crash
        real_fsync_dir(directory)

    def remove_sidecars(path: pathlib.Path) -> None:
        if armed.is_set() and path == (partial if step == "state" else final):
            raise Crash
        real_remove_sidecars(path)

    if step == "record":
        monkeypatch.setattr(records, "write_record", write_record)
    elif step == "rename":
        monkeypatch.setattr(os, "replace", rename)
    elif step == "directory fsync":
        monkeypatch.setattr(files, "_fsync_dir", fsync_dir)
    else:
        monkeypatch.setattr(files, "remove_sidecars", remove_sidecars)
    with pytest.raises(BaseException) as info:  # noqa: PT011 - the crash, however wrapped
        await get(server, tmp_path, options, on_event=on_event)
    assert crashed(info.value), info.value
    assert armed.is_set()
    monkeypatch.undo()
    content = final.read_bytes() if final.exists() else None
    assert content in ((OLD if old_file else None), NEW)
    assert [n for n in listing(tmp_path) if n.endswith(MODEL_EXTENSIONS)] == (
        [NAME] if content is not None else []
    )
    done: list[int] = []
    if step == "state":
        # Killed before its control file went: the partial resumes from it.  What the last
        # save did not claim may be fetched again (the engine does not save a complete
        # state), nothing it claimed.
        control = ControlFile.decode(files.control_path(partial).read_bytes())
        done = pieces_from_control(control).done_indices()
    since = len(server.requests)
    result = await get(server, tmp_path, options)
    assert final.read_bytes() == NEW
    assert result.size == len(NEW)
    assert listing(tmp_path) == [NAME]
    fetched = data_requests(server, since)
    if step == "state":
        starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in fetched if r]
        assert not [first for first in starts if first // MIB in done]
    else:
        assert fetched == []


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_folder_holds_only_the_model_whatever_the_engine(
    tmp_path: pathlib.Path, server: RangeServer, engine: str
) -> None:
    """No sidecar of any kind is left in the folder: the validators travel in the control
    file, and the record of the finished file lives in segdl's cache."""
    need(engine)
    server.add("/" + NAME, Resource(body=NEW))
    await get(server, tmp_path, engine=engine)
    assert listing(tmp_path) == [NAME]
    record = records.read_record(tmp_path / NAME)
    assert record is not None
    assert record.identity == records.identity_of((tmp_path / NAME).stat())
    assert record.validators.etag == '"v1"'


# -- the place for after-publish steps -------------------------------------------------------


async def test_after_publish_steps_run_once_the_file_has_its_name(
    tmp_path: pathlib.Path, server: RangeServer
) -> None:
    """Steps given to the flow (the models index, metadata files) run in order once the
    verified file is under its name, also when it was there already; never after a
    failure."""
    server.add("/" + NAME, Resource(body=NEW))
    async with httpx.AsyncClient(trust_env=False) as client:
        probed = await probe(client, HttpURL.parse(server.url("/" + NAME)))
    final = tmp_path / NAME
    seen: list[tuple[str, bool, list[str]]] = []

    def step(label: str) -> AfterPublish:
        async def run(result: Success) -> None:
            seen.append((label, pathlib.Path(result.path).read_bytes() == NEW, listing(tmp_path)))

        return run

    steps = [step("index"), step("metadata")]
    for _ in range(2):  # downloaded, then found there
        await fetch_probed(
            probed, final, FAST, lambda e: None, engine=NativeEngine(), after_publish=steps
        )
    assert seen == [(label, True, [NAME]) for label in ("index", "metadata")] * 2

    seen.clear()
    server.add("/" + NAME, Resource(body=OLD, etag='"other"'))
    async with httpx.AsyncClient(trust_env=False) as client:
        changed = await probe(client, HttpURL.parse(server.url("/" + NAME)))
    with pytest.raises(segdl.ChecksumMismatch):
        await fetch_probed(
            changed,
            final,
            replace(checksum(NEW), allow_overwrite=True),
            lambda e: None,
            engine=NativeEngine(),
            after_publish=steps,
        )
    assert seen == []


async def test_open_and_finish_target_for_callers_without_a_check_of_their_own(
    tmp_path: pathlib.Path, server: RangeServer
) -> None:
    """``finish_target`` is verify then publish; a file that fails is deleted."""
    server.add("/" + NAME, Resource(body=NEW))
    async with httpx.AsyncClient(trust_env=False) as client:
        probed = await probe(client, HttpURL.parse(server.url("/" + NAME)))
    final = tmp_path / NAME
    for body, options in ((OLD, checksum(NEW)), (NEW, FAST)):
        files.partial_path(final).write_bytes(body[: len(NEW)].ljust(len(NEW), b"\0"))
        opened = open_target(final, probed, FAST)  # a complete partial: nothing to fetch
        assert opened.complete
        assert opened.path == files.partial_path(final)
        assert opened.final == final
        if options.checksum is not None:
            with pytest.raises(segdl.ChecksumMismatch, match="deleted"):
                finish_target(opened, options, url=probed.url)
            assert listing(tmp_path) == []
        else:
            result = finish_target(opened, options, url=probed.url)
            assert result == Success(path=str(final), size=len(NEW))
            assert listing(tmp_path) == [NAME]
