"""``download_batch``: many files, failures as data, aria2c's exit code, retries, cancel."""

from __future__ import annotations

import hashlib
import os
import pathlib

import pytest
import trio

import segdl
from segdl.batch import JobOutcome, check_targets, load_input_file
from segdl.core.checksum import Checksum
from segdl.testing.rangeserver import RangeServer, Resource

KIB = 1024
MIB = 1024 * KIB


def body(seed: int, size: int = 256 * KIB) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: str | pathlib.Path) -> str:
    return sha256(pathlib.Path(path).read_bytes())


async def test_failures_are_data_and_the_others_finish(tmp_path: pathlib.Path) -> None:
    with RangeServer() as server:
        bodies = {name: body(i) for i, name in enumerate("abc")}
        for name, data in bodies.items():
            server.add(f"/{name}.bin", Resource(body=data))
        seen: list[tuple[int, str]] = []
        result = await segdl.download_batch(
            [
                segdl.BatchJob((server.url("/a.bin"),), tmp_path),
                segdl.BatchJob((server.url("/missing.bin"),), tmp_path),
                segdl.BatchJob((server.url("/b.bin"),), tmp_path / "sub", out="bee.bin"),
                segdl.BatchJob((server.url("/mirror/c.bin"), server.url("/c.bin")), tmp_path),
            ],
            max_concurrent=2,
            on_event=lambda index, event: seen.append((index, event.type)),
        )
    assert [outcome.index for outcome in result] == [0, 1, 2, 3]
    assert len(result) == 4
    assert [outcome.ok for outcome in result] == [True, False, True, True]
    assert not result.ok
    assert result.exit_code == 3
    (missing,) = result.failed
    assert isinstance(missing.error, segdl.NotFound)
    assert missing.result is None
    assert len(result.succeeded) == 3
    assert file_sha(tmp_path / "a.bin") == sha256(bodies["a"])
    assert file_sha(tmp_path / "sub" / "bee.bin") == sha256(bodies["b"])
    assert file_sha(tmp_path / "c.bin") == sha256(bodies["c"])
    for index, last in ((0, "success"), (1, "error"), (2, "success"), (3, "success")):
        kinds = [kind for i, kind in seen if i == index]
        assert kinds[-1] == last, (index, kinds)
    for outcome in result.succeeded:
        assert outcome.average_speed is not None
        assert outcome.average_speed > 0


async def test_exit_code_is_the_failure_that_ended_last(tmp_path: pathlib.Path) -> None:
    """aria2c's rule; the slow checksum failure comes first in the list but ends last."""
    with RangeServer(rate_limit=512 * KIB) as server:
        data = body(1)
        server.add("/slow.bin", Resource(body=data))
        result = await segdl.download_batch(
            [
                segdl.BatchJob(
                    (server.url("/slow.bin"),), tmp_path, checksum=Checksum("sha256", "0" * 64)
                ),
                segdl.BatchJob((server.url("/missing.bin"),), tmp_path),
            ]
        )
    codes = {outcome.index: outcome.error.exit_code for outcome in result.failed if outcome.error}
    assert codes == {0: 32, 1: 3}
    first, second = result.outcomes
    assert second.order < first.order
    assert result.exit_code == 32


async def test_retry_runs_the_failures_again(tmp_path: pathlib.Path) -> None:
    with RangeServer() as server:
        here, later = body(1), body(2)
        server.add("/here.bin", Resource(body=here))
        jobs = [
            segdl.BatchJob((server.url("/here.bin"),), tmp_path),
            segdl.BatchJob((server.url("/later.bin"),), tmp_path),
        ]
        seen: list[int] = []
        result = await segdl.download_batch(jobs, on_event=lambda index, event: seen.append(index))
        assert [outcome.ok for outcome in result] == [True, False]
        assert result.exit_code == 3
        assert result.failed_jobs() == (jobs[1],)
        server.add("/later.bin", Resource(body=later))
        seen.clear()
        retried = await result.retry()
    assert retried.ok
    assert retried.exit_code == 0
    assert retried.outcomes[0] is result.outcomes[0]
    assert retried.outcomes[1].order > max(outcome.order for outcome in result)
    assert set(seen) == {1}
    assert file_sha(tmp_path / "here.bin") == sha256(here)
    assert file_sha(tmp_path / "later.bin") == sha256(later)


async def test_cancelling_the_batch_keeps_resumable_partials(tmp_path: pathlib.Path) -> None:
    with RangeServer(rate_limit=256 * KIB) as server:
        data = [body(i, 2 * MIB) for i in range(3)]
        for i, item in enumerate(data):
            server.add(f"/p{i}.bin", Resource(body=item))
        jobs = [segdl.BatchJob((server.url(f"/p{i}.bin"),), tmp_path) for i in range(3)]
        moving: set[int] = set()
        options = segdl.Options(save_interval=0.05)
        with trio.move_on_after(20) as timeout:
            async with trio.open_nursery() as nursery:

                def on_event(index: int, event: segdl.Event) -> None:
                    if isinstance(event, segdl.Progress) and event.downloaded:
                        moving.add(index)
                        if len(moving) == 2:
                            nursery.cancel_scope.cancel()

                nursery.start_soon(
                    lambda: segdl.download_batch(
                        jobs, max_concurrent=2, options=options, on_event=on_event
                    )
                )
        assert not timeout.cancelled_caught
        for i in moving:
            assert (tmp_path / f"p{i}.bin.part.aria2").exists(), sorted(os.listdir(tmp_path))
            assert not (tmp_path / f"p{i}.bin").exists()
        # Never started: nothing on disk.
        assert not (tmp_path / "p2.bin").exists()
        assert not (tmp_path / "p2.bin.part").exists()
        server.rate_limit = None
        result = await segdl.download_batch(jobs, options=options)
    assert result.ok, [str(o.error) for o in result.failed]
    for i, item in enumerate(data):
        assert file_sha(tmp_path / f"p{i}.bin") == sha256(item)
        assert not (tmp_path / f"p{i}.bin.part.aria2").exists()
    assert sorted(os.listdir(tmp_path)) == [f"p{i}.bin" for i in range(len(data))]


def test_sync_call_and_per_job_options(tmp_path: pathlib.Path, range_server: RangeServer) -> None:
    good, bad = body(5), body(6)
    range_server.add("/good.bin", Resource(body=good))
    range_server.add("/bad.bin", Resource(body=bad))
    result = segdl.download_batch_sync(
        [
            segdl.BatchJob(
                (range_server.url("/good.bin"),),
                tmp_path,
                checksum=segdl.parse_checksum(f"sha-256={sha256(good)}"),
                split=1,
                connections=1,
                max_download_limit=0,
            ),
            segdl.BatchJob(
                (range_server.url("/bad.bin"),),
                tmp_path,
                checksum=segdl.parse_checksum(f"sha-256={sha256(good)}"),
            ),
        ],
        options=segdl.Options(max_download_limit=64 * MIB),
    )
    assert [outcome.ok for outcome in result] == [True, False]
    failure = result.outcomes[1].error
    assert isinstance(failure, segdl.ChecksumMismatch)
    assert result.exit_code == 32
    assert file_sha(tmp_path / "good.bin") == sha256(good)
    # split=1, connections=1: the data came in one ranged request.
    ranged = [r for r in range_server.requests if r.path == "/good.bin" and r.range != "bytes=0-0"]
    assert len(ranged) == 1


def test_sync_retry_of_failed_jobs(tmp_path: pathlib.Path, range_server: RangeServer) -> None:
    data = body(7)
    jobs = [segdl.BatchJob((range_server.url("/late.bin"),), tmp_path)]
    result = segdl.download_batch_sync(jobs)
    assert result.exit_code == 3
    range_server.add("/late.bin", Resource(body=data))
    again = segdl.download_batch_sync(result.failed_jobs())
    assert again.ok
    assert file_sha(tmp_path / "late.bin") == sha256(data)


def test_job_options_override_the_batch() -> None:
    base = segdl.Options(connections=4, split=8, max_download_limit=MIB)
    job = segdl.BatchJob(("http://h/x",), connections=2, max_download_limit=0)
    options = job.options_for(base)
    assert (options.connections, options.split, options.max_download_limit) == (2, 8, None)
    assert segdl.BatchJob(("http://h/x",)).options_for(base) == base
    limited = segdl.BatchJob(("http://h/x",), max_download_limit=5000, split=3)
    assert (limited.options_for(base).max_download_limit, limited.options_for(base).split) == (
        5000,
        3,
    )


def test_batch_job_values_are_checked() -> None:
    assert segdl.BatchJob("http://h/x").urls == ("http://h/x",)  # type: ignore[arg-type]
    assert segdl.BatchJob(["http://a", "http://b"]).urls == ("http://a", "http://b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one URL"):
        segdl.BatchJob(())
    with pytest.raises(ValueError, match="between 1 and 16"):
        segdl.BatchJob(("http://h/x",), connections=17)
    with pytest.raises(ValueError, match="split"):
        segdl.BatchJob(("http://h/x",), split=0)
    with pytest.raises(ValueError, match="negative"):
        segdl.BatchJob(("http://h/x",), max_download_limit=-1)


async def test_two_jobs_may_not_write_one_file(tmp_path: pathlib.Path) -> None:
    jobs = [
        segdl.BatchJob(("http://h/a",), tmp_path, out="x.bin"),
        segdl.BatchJob(("http://h/b",), tmp_path / "." / "sub" / "..", out="x.bin"),
    ]
    with pytest.raises(ValueError, match="jobs 0 and 1 both write"):
        check_targets(jobs)
    with pytest.raises(ValueError, match="both write"):
        await segdl.download_batch(jobs)
    with pytest.raises(ValueError, match="max_concurrent"):
        await segdl.download_batch([], max_concurrent=0)


async def test_an_empty_batch_is_ok() -> None:
    result = await segdl.download_batch([])
    assert result.ok
    assert result.exit_code == 0
    assert await result.retry() is result


def test_a_hand_made_result_cannot_retry() -> None:
    outcome = JobOutcome(0, segdl.BatchJob(("http://h/x",)), None, segdl.DownloadError("x"), 0.0, 1)
    result = segdl.BatchResult((outcome,))
    assert result.exit_code == 1
    assert outcome.average_speed is None
    with pytest.raises(RuntimeError, match="not made by download_batch"):
        trio.run(result.retry)


def test_load_input_file(tmp_path: pathlib.Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("http://h/a\n  dir=elsewhere\nhttp://h/b\n  out=b.bin\n", "utf-8")
    jobs = load_input_file(listing, directory=tmp_path)
    assert jobs == [
        segdl.BatchJob(("http://h/a",), "elsewhere"),
        segdl.BatchJob(("http://h/b",), tmp_path, out="b.bin"),
    ]
    with pytest.raises(segdl.DownloadError, match="cannot read input file"):
        load_input_file(tmp_path / "absent.txt")
    (tmp_path / "latin1.txt").write_bytes(b"http://h/\xe9\n")
    with pytest.raises(segdl.DownloadError, match="not UTF-8"):
        load_input_file(tmp_path / "latin1.txt")
    (tmp_path / "bad.txt").write_text("http://h/a\n  referer=x\n", "utf-8")
    with pytest.raises(segdl.InputFileError, match=r"bad\.txt:2: unsupported option"):
        load_input_file(tmp_path / "bad.txt")


def test_public_names() -> None:
    for name in ("download_batch", "download_batch_sync", "BatchJob", "BatchResult"):
        assert name in segdl.__all__
        assert hasattr(segdl, name)
