"""The public library API: async, sync, the manager, the seed's download_model, events."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import sys
import threading
import traceback
from collections.abc import Callable

import pytest
import trio
import trio.testing

import segdl
from segdl.cli.main import main
from segdl.testing.rangeserver import Fault, RangeServer, Resource

MIB = 1024 * 1024
BODY = os.urandom(3 * MIB + 77)
SHA = hashlib.sha256(BODY).hexdigest()


async def test_manager_limits_concurrency_and_reports_failures_as_data(
    tmp_path: pathlib.Path,
) -> None:
    with RangeServer(rate_limit=8 * MIB) as server:
        for i in range(4):
            server.add(f"/m{i}.bin", Resource(body=BODY))
        running: set[int] = set()
        peak = 0

        def tracker(n: int) -> Callable[[segdl.Event], None]:
            def track(event: segdl.Event) -> None:
                nonlocal peak
                if isinstance(event, segdl.Started):
                    running.add(n)
                    peak = max(peak, len(running))
                elif isinstance(event, (segdl.Success, segdl.Failed)):
                    running.discard(n)

            return track

        async with segdl.open_manager(max_concurrent=2) as manager:
            handles = [
                manager.submit(server.url(f"/m{i}.bin"), tmp_path, on_event=tracker(i))
                for i in range(4)
            ]
            missing = manager.submit(server.url("/missing.bin"), tmp_path, on_event=tracker(9))
    assert peak == 2
    for handle in handles:
        assert handle.state is segdl.DownloadState.DONE
        assert handle.result is not None
        assert hashlib.sha256(pathlib.Path(handle.result.path).read_bytes()).hexdigest() == SHA
    assert missing.state is segdl.DownloadState.FAILED
    assert isinstance(missing.error, segdl.NotFound)
    with pytest.raises(segdl.NotFound):
        await missing.wait()


async def test_cancel_through_the_manager_keeps_the_partial(tmp_path: pathlib.Path) -> None:
    with RangeServer(rate_limit=MIB) as server:
        server.add("/slow.bin", Resource(body=BODY))
        events: list[segdl.Event] = []
        moving = trio.Event()

        def on_event(event: segdl.Event) -> None:
            events.append(event)
            if isinstance(event, segdl.Progress) and event.downloaded:
                moving.set()

        async with segdl.open_manager() as manager:
            handle = manager.submit(
                server.url("/slow.bin"),
                tmp_path,
                options=segdl.Options(save_interval=0.05),
                on_event=on_event,
            )
            await moving.wait()
            handle.cancel()
    assert handle.state is segdl.DownloadState.CANCELLED
    assert events[-1].type == "cancelled"
    # The partial and its control file stay; nothing has the file's name yet.
    assert (tmp_path / "slow.bin.part").exists()
    assert (tmp_path / "slow.bin.part.aria2").exists()
    assert not (tmp_path / "slow.bin").exists()
    with pytest.raises(segdl.DownloadError, match="cancelled"):
        await handle.wait()


def test_sync_download_and_events_in_order(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    range_server.add("/s.bin", Resource(body=BODY))
    events: list[segdl.Event] = []
    result = segdl.download_sync(
        range_server.url("/s.bin"),
        tmp_path,
        out="renamed.bin",
        options=segdl.Options(compute_sha256=True),
        on_event=events.append,
    )
    assert result.path == str(tmp_path / "renamed.bin")
    assert result.sha256 == SHA
    kinds = [e.type for e in events]
    assert kinds[0] == "started"
    assert kinds[-1] == "success"
    assert set(kinds) <= {"started", "progress", "success"}
    final = [e for e in events if isinstance(e, segdl.Progress)][-1]
    assert final.progress == 1.0
    assert final.downloaded == len(BODY)
    assert json.loads(json.dumps(events[0].to_dict())) == {
        "type": "started",
        "filename": "renamed.bin",
        "size": len(BODY),
        "path": str(tmp_path / "renamed.bin"),
    }


def test_download_model_returns_the_path_and_sends_the_token_to_its_site_only(
    range_server: RangeServer, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", range_server.base_url)
    range_server.add("/org/repo/resolve/main/lora.safetensors", Resource(body=BODY))
    seen: list[dict[str, object]] = []
    path = segdl.download_model(
        range_server.url("/org/repo/resolve/main/lora.safetensors"),
        "LoRA",
        str(tmp_path),
        progress_callback=seen.append,
        civitai_token="civ-secret",
        hf_token="hf-secret",
    )
    assert path == str(tmp_path / "lora.safetensors")
    assert hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest() == SHA
    statuses = [item["status"] for item in seen]
    # The site's metadata (when it publishes any) comes before the download starts.
    assert statuses.index("started") <= 1
    assert set(statuses[: statuses.index("started")]) <= {"metadata"}
    assert statuses[-1] == "success"
    assert all(item["model_type"] == "LoRA" for item in seen)
    auth = {r.headers.get("authorization") for r in range_server.requests}
    assert auth == {"Bearer hf-secret"}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert isinstance(info.value.code, int)
    return info.value.code, out, err


def test_cli_json_events(
    range_server: RangeServer, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    range_server.add("/j.bin", Resource(body=BODY))
    code, out, err = run_cli(
        [
            "get",
            range_server.url("/j.bin"),
            "-d",
            str(tmp_path),
            "--json",
            "--checksum",
            f"sha-256={SHA}",
        ],
        capsys,
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["type"] == "started"
    assert lines[-1] == {
        "type": "success",
        "path": str(tmp_path / "j.bin"),
        "size": len(BODY),
        "sha256": SHA,
    }


@pytest.mark.parametrize(
    ("fault", "code", "needle"),
    [
        (Fault.status(404), 3, "HTTP 404"),
        (Fault.status(401), 24, "HTTP 401"),
        (Fault.status(403), 24, "HTTP 403"),
        (Fault.status(500), 22, "HTTP 500"),
        (
            Fault.status(206, headers={"Content-Range": f"bytes 0-0/{1 << 50}"}, body=b"x"),
            9,
            "not enough disk space",
        ),
    ],
)
def test_cli_http_failures_map_to_aria2_exit_codes(
    range_server: RangeServer,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    fault: Fault,
    code: int,
    needle: str,
) -> None:
    range_server.add("/x.bin", Resource(body=BODY))
    # The fault answers the probe: the download's first request, the one asking from byte 0
    # (the connections opened meanwhile ask for the next pieces).
    range_server.on_request(
        lambda info: fault if (info.range or "").startswith("bytes=0-") else None
    )
    # A 5xx is retried (-m 1: no retry), as a data connection would retry it.
    got, _, err = run_cli(
        ["get", range_server.url("/x.bin"), "-d", str(tmp_path), "-m", "1"], capsys
    )
    assert got == code
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_cli_checksum_mismatch_and_existing_file(
    range_server: RangeServer, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    range_server.add("/c.bin", Resource(body=BODY))
    url = range_server.url("/c.bin")
    code, _, err = run_cli(
        ["get", url, "-d", str(tmp_path), "--checksum", "sha-256=" + "a" * 64], capsys
    )
    assert code == 32
    assert "checksum mismatch" in err
    (tmp_path / "other.bin").write_bytes(b"mine")
    code, _, err = run_cli(["get", url, "-d", str(tmp_path), "-o", "other.bin"], capsys)
    assert code == 13
    assert (tmp_path / "other.bin").read_bytes() == b"mine"


def test_cli_input_file_downloads_several(
    range_server: RangeServer, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a", "b"):
        range_server.add(f"/{name}.bin", Resource(body=BODY))
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"# models\n{range_server.url('/a.bin')}\n"
        f"{range_server.url('/gone.bin')}\t{range_server.url('/b.bin')}\n  out=b-renamed.bin\n"
    )
    code, out, err = run_cli(
        ["get", "-i", str(listing), "-d", str(tmp_path / "o"), "-j", "2"], capsys
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.bin", "b-renamed.bin"]
    assert out.count("Download complete") == 2


def test_no_thread_is_left_in_the_data_plane(
    range_server: RangeServer, tmp_path: pathlib.Path
) -> None:
    """After a download (and after a failed one) no thread still runs data-plane code."""
    range_server.add("/t.bin", Resource(body=BODY))
    segdl.download_sync(range_server.url("/t.bin"), tmp_path)
    # Dropped before any body byte: no progress, so the tries run out.
    range_server.inject(*[Fault.drop_after(0) for _ in range(200)])
    with pytest.raises(segdl.DownloadError):
        segdl.download_sync(
            range_server.url("/t.bin"),
            tmp_path / "failed",
            options=segdl.Options(retry=segdl.RetryPolicy(max_tries=2, base_delay=0.01)),
        )
    # trio keeps idle worker threads cached; none may be inside a connection.
    stuck = [
        thread_id
        for thread_id, frame in sys._current_frames().items()
        if thread_id != threading.get_ident()
        and any("segdl/io/dataplane.py" in f.filename for f in traceback.extract_stack(frame))
    ]
    assert stuck == []


def test_engines_give_the_same_file(range_server: RangeServer, tmp_path: pathlib.Path) -> None:
    """Each engine through the public call; aria2c only where it is installed (CI has it)."""
    range_server.add("/e.bin", Resource(body=BODY))
    engines = ["native", "single"]
    if shutil.which("aria2c") or os.environ.get("CI") == "true":
        engines.append("aria2c")
    for engine in engines:
        events: list[segdl.Event] = []
        result = segdl.download_sync(
            range_server.url("/e.bin"), tmp_path / engine, engine=engine, on_event=events.append
        )
        assert hashlib.sha256(pathlib.Path(result.path).read_bytes()).hexdigest() == SHA
        assert events[-1].type == "success", engine
    with pytest.raises(segdl.DownloadError, match="unknown engine"):
        segdl.download_sync(range_server.url("/e.bin"), tmp_path, engine="wget")


async def test_pause_holds_no_connection_and_resume_continues(tmp_path: pathlib.Path) -> None:
    body = os.urandom(6 * MIB)
    with RangeServer(rate_limit=MIB) as server:
        server.add("/slow.bin", Resource(body=body))
        moving = trio.Event()

        events: list[str] = []

        def on_event(event: segdl.Event) -> None:
            events.append(event.type)
            if isinstance(event, segdl.Progress) and event.downloaded > MIB:
                moving.set()

        async with segdl.open_manager() as manager:
            handle = manager.submit(
                server.url("/slow.bin"),
                tmp_path,
                options=segdl.Options(save_interval=0.05),
                on_event=on_event,
            )
            await moving.wait()
            handle.pause()
            assert handle.state is segdl.DownloadState.PAUSED
            await handle._stopped.wait()
            await trio.sleep(0.3)  # a closed socket reaches the server's thread
            assert server.open_connections == 0
            served_at_pause = server.statistics().body_bytes
            partial_size = (tmp_path / "slow.bin.part.aria2").stat().st_size
            assert partial_size > 0
            await trio.sleep(0.5)
            assert server.statistics().body_bytes == served_at_pause  # nothing moves
            handle.resume()
            result = await handle.wait()
    assert handle.state.value == "done"
    assert pathlib.Path(result.path).read_bytes() == body
    assert "cancelled" not in events  # a pause is not the end
    # Resumed from the control file: at most what was in flight when paused is fetched again.
    refetched = server.statistics().body_bytes - len(body)
    assert refetched <= 16 * 64 * 1024 + MIB


async def test_a_paused_queued_download_leaves_the_queue(tmp_path: pathlib.Path) -> None:
    with RangeServer(rate_limit=4 * MIB) as server:
        for name in ("a", "b"):
            server.add(f"/{name}.bin", Resource(body=BODY))
        async with segdl.open_manager(max_concurrent=1) as manager:
            first = manager.submit(server.url("/a.bin"), tmp_path)
            second = manager.submit(server.url("/b.bin"), tmp_path)
            await trio.testing.wait_all_tasks_blocked()
            second.pause()
            await first.wait()
            assert second.state is segdl.DownloadState.PAUSED
            assert not (tmp_path / "b.bin").exists()
            second.resume()
            await second.wait()
    assert (tmp_path / "b.bin").read_bytes() == BODY


async def test_cancel_while_paused_ends_the_download(tmp_path: pathlib.Path) -> None:
    with RangeServer(rate_limit=MIB) as server:
        server.add("/slow.bin", Resource(body=BODY))
        async with segdl.open_manager() as manager:
            handle = manager.submit(server.url("/slow.bin"), tmp_path)
            await trio.sleep(0.3)
            handle.pause()
            handle.cancel()
            with pytest.raises(segdl.DownloadError, match="cancelled"):
                await handle.wait()
    assert handle.state is segdl.DownloadState.CANCELLED


async def test_manager_limits_change_while_running(tmp_path: pathlib.Path) -> None:
    """The overall and per-download limits reach the connections (measured loosely here;
    tests/engine/test_limits.py measures accuracy)."""
    body = os.urandom(8 * MIB)
    with RangeServer() as server:
        server.add("/f.bin", Resource(body=body))
        received = 0

        def on_event(event: segdl.Event) -> None:
            nonlocal received
            if isinstance(event, segdl.Progress):
                received = event.downloaded

        async with segdl.open_manager(overall_limit=512 * 1024) as manager:
            handle = manager.submit(
                server.url("/f.bin"),
                tmp_path,
                options=segdl.Options(progress_interval=0.05),
                on_event=on_event,
            )
            await trio.sleep(2.0)
            assert received < 2 * MIB  # ~1 MiB at 512 KiB/s
            handle.set_limit(256 * 1024)  # the tighter one wins
            manager.set_overall_limit(None)
            before = received
            await trio.sleep(2.0)
            assert received - before < MIB
            handle.set_limit(None)
            await handle.wait()
    assert (tmp_path / "f.bin").read_bytes() == body


async def test_an_unusable_proxy_in_the_environment_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Read where the request is built: a one-line DownloadError naming the variable, not an
    internal error, and never the proxy's password."""
    monkeypatch.setenv("ALL_PROXY", "ftp://user:s3cret@proxy.example:21")
    events: list[segdl.Event] = []
    with pytest.raises(segdl.DownloadError) as info:
        await segdl.download("http://127.0.0.1:9/x.bin", tmp_path, on_event=events.append)
    message = str(info.value)
    assert "internal error" not in message
    assert "ALL_PROXY" in message or "all_proxy" in message
    assert "s3cret" not in message
    assert "\n" not in message
    assert isinstance(events[-1], segdl.Failed)
    assert list(tmp_path.iterdir()) == []
