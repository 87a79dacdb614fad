"""The batch display on made-up state: lines, widths, redraws, the summary, the reporter."""

from __future__ import annotations

import io
import json
import os

import pytest

import segdl
from segdl.batch import BatchJob, BatchResult, JobOutcome
from segdl.cli.batchprogress import (
    BatchReporter,
    BatchView,
    JobState,
    JobView,
    LiveDisplay,
    cut,
    display_width,
    render_lines,
    summary_lines,
)
from segdl.core.events import Aborted, Failed, Metadata, Progress, Started, Success

MIB = 1024 * 1024


def progress(done: int, total: int | None, rate: float = 12.5, eta: float | None = 3.0) -> Progress:
    return Progress(
        progress=done / total if total else 0.0,
        rate=rate,
        eta=eta,
        downloaded=done,
        total=total,
        connections=16,
    )


def view_with(*jobs: JobView) -> BatchView:
    return BatchView(list(jobs))


def sample() -> BatchView:
    return view_with(
        JobView("done.bin", JobState.DONE, size=10 * MIB),
        JobView(
            "model.safetensors",
            JobState.ACTIVE,
            size=100 * MIB,
            progress=progress(45 * MIB, 100 * MIB),
        ),
        JobView("broken.bin", JobState.FAILED),
        JobView("vae.pt", JobState.ACTIVE, progress=progress(MIB, None, rate=2.0, eta=None)),
        JobView("later.bin"),
        JobView("later2.bin"),
    )


def test_one_line_per_active_file_then_the_total() -> None:
    lines = render_lines(sample(), 120)
    assert len(lines) == 3
    first, second, total = lines
    assert first.startswith("#2 model.safetensors")
    bar = first[first.index("[") + 1 : first.index("]")]
    assert set(bar) == {"#", "-"}
    assert bar.count("#") == int(len(bar) * 0.45)
    assert " 45.0% 45.0 MiB/100.0 MiB" in first
    assert "12.5 MiB/s" in first
    assert "ETA 00:03" in first
    assert "16 conn" in first
    assert second.startswith("#4 vae.pt")
    assert "?%" in second
    assert "1.0 MiB/?" in second
    assert "ETA --:--" in second
    assert total == "Total: 1 done, 1 failed, 2 active, 2 queued | 56.0 MiB | 14.5 MiB/s"


@pytest.mark.parametrize("width", [200, 120, 100, 80, 60, 45, 30, 20, 12, 5, 2, 1, 0])
def test_every_line_fits_the_width(width: int) -> None:
    for line in render_lines(sample(), width):
        assert display_width(line) <= max(width - 1, 1), (width, line)


def test_narrow_terminals_keep_the_name_and_percent() -> None:
    line = render_lines(sample(), 40)[0]
    assert line.startswith("#2 model")
    assert "45.0%" in line
    assert "[" not in line  # no room for a bar
    assert display_width(line) <= 39


def test_long_and_wide_names_are_cut_with_an_ellipsis() -> None:
    view = view_with(
        JobView("日本語のモデル名" * 10, JobState.ACTIVE, progress=progress(MIB, 2 * MIB))
    )
    line = render_lines(view, 100)[0]
    assert "…" in line
    assert display_width(line) <= 99
    assert display_width("日本") == 4
    assert cut("日本語", 5) == "日本"
    assert cut("abcdef", 4, ellipsis=True) == "abc…"
    assert cut("abc", 4, ellipsis=True) == "abc"


def test_control_characters_from_a_server_never_reach_the_terminal() -> None:
    view = view_with(JobView("evil\x1b[2Jname", JobState.ACTIVE, progress=progress(1, 2)))
    assert "\x1b" not in render_lines(view, 100)[0]


def test_a_short_terminal_counts_the_files_that_do_not_fit() -> None:
    jobs = [JobView(f"f{i}.bin", JobState.ACTIVE, progress=progress(i, 10)) for i in range(10)]
    lines = render_lines(BatchView(jobs), 80, height=5)
    assert len(lines) == 5
    assert lines[3] == "… 7 more active"
    assert lines[4].startswith("Total: 0 done, 0 failed, 10 active")


def test_events_move_jobs_between_states() -> None:
    view = BatchView.for_jobs(
        [BatchJob(("http://h/a/first.bin?sig=x",)), BatchJob(("hf://o/r/f",), out="named.bin")]
    )
    assert [job.name for job in view.jobs] == ["first.bin", "named.bin"]
    assert view.apply(0, Metadata(name="x"))
    assert view.jobs[0].state is JobState.ACTIVE
    assert not view.apply(0, Started(filename="real.bin", size=5))
    assert view.jobs[0].name == "real.bin"
    assert not view.apply(0, progress(2, 5))
    assert view.apply(0, Success(path="/x/real.bin", size=5))
    assert view.jobs[0].downloaded == 5
    assert view.apply(1, Failed(message="no", code=3))
    assert view.count(JobState.FAILED) == 1
    assert view.apply(1, Aborted())


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_live_display_redraws_in_place_and_throttles() -> None:
    out = io.StringIO()
    clock = FakeClock()
    view = BatchView([JobView("a.bin"), JobView("b.bin")])
    display = LiveDisplay(
        out, view, interval=0.2, size=lambda: os.terminal_size((80, 24)), clock=clock
    )
    display.event(0, Started(filename="a.bin", size=10))
    first = out.getvalue()
    assert first.startswith("\r#1 a.bin")
    assert first.count("\x1b[K\n") == 2
    assert first.endswith("\x1b[J")
    assert "\x1b[2J" not in first  # never a full clear: no flicker

    display.event(0, progress(5, 10))  # too soon: not drawn
    assert out.getvalue() == first
    clock.now += 0.25
    display.event(0, progress(6, 10))
    frame = out.getvalue()[len(first) :]
    assert frame.startswith("\r\x1b[2A#1 a.bin")
    assert "60.0%" in frame

    display.event(1, Started(filename="b.bin", size=10))  # a state change: drawn at once
    frame = out.getvalue()[len(first) + len(frame) :]
    assert frame.startswith("\r\x1b[2A")
    assert frame.count("\x1b[K\n") == 3

    mark = len(out.getvalue())
    stream = io.StringIO()
    display.print_above("Download complete: a.bin", stream)
    assert out.getvalue()[mark:].startswith("\r\x1b[3A\x1b[J\r#1 a.bin")
    assert stream.getvalue() == "Download complete: a.bin\n"

    display.clear()
    assert out.getvalue().endswith("\r\x1b[3A\x1b[J")
    mark = len(out.getvalue())
    display.clear()
    assert len(out.getvalue()) == mark


def outcome(index: int, url: str, *, error: segdl.DownloadError | None = None) -> JobOutcome:
    job = BatchJob((url,), "/models")
    result = None if error else Success(path=f"/models/f{index}.bin", size=4 * MIB)
    return JobOutcome(index, job, result, error, 2.0, index + 1)


def test_summary_is_arias_download_results() -> None:
    result = BatchResult(
        (
            outcome(0, "http://h/f0.bin"),
            outcome(
                1,
                "https://user:pw@h/f1.bin?token=secret",
                error=segdl.NotFound("HTTP 404 Not Found from https://h/f1.bin?…"),
            ),
        )
    )
    lines = summary_lines(result)
    assert lines[0] == "Download Results:"
    ok = next(line for line in lines if "|OK  |" in line)
    assert ok.split("|")[0].strip() == "1"
    assert "2.0 MiB/s" in ok
    assert ok.endswith("/models/f0.bin")
    err = next(line for line in lines if "|ERR |" in line)
    assert err.split("|")[0].strip() == "2"
    assert "https://h/f1.bin?…" in err
    assert "HTTP 404" in err
    assert "secret" not in "\n".join(lines)
    assert "pw" not in err


def test_reporter_json_lines_carry_the_file_number() -> None:
    out, err = io.StringIO(), io.StringIO()
    report = BatchReporter(json_lines=True, quiet=False, stdout=out, stderr=err)
    report(0, Started(filename="a.bin", size=1))
    report(2, Failed(message="HTTP 404", code=3))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines == [
        {"type": "started", "filename": "a.bin", "size": 1, "path": None, "download": 1},
        {"type": "error", "message": "HTTP 404", "code": 3, "download": 3},
    ]
    assert err.getvalue() == "segdl: error: #3: HTTP 404\n"
    report.finish(BatchResult(()))
    assert "Download Results" not in out.getvalue()


def test_reporter_plain_lines() -> None:
    out, err = io.StringIO(), io.StringIO()
    report = BatchReporter(json_lines=False, quiet=False, stdout=out, stderr=err)
    report(0, Success(path="/m/a.bin", size=MIB, sha256="ab"))
    assert out.getvalue() == "Download complete: /m/a.bin (1.0 MiB) sha256=ab\n"
    report.finish(BatchResult((outcome(0, "http://h/a.bin"),)))
    assert "Download Results:" in out.getvalue()
    assert err.getvalue() == ""
