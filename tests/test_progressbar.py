"""The terminal progress line: what a user sees while a download runs."""

from __future__ import annotations

import io

from segdl.cli.progressbar import ProgressBar, format_bytes, format_eta
from segdl.core.events import Progress, Started, Success

MIB = 1024 * 1024


def progress(done: int, total: int, rate: float = 12.5, eta: float | None = 3.0) -> Progress:
    return Progress(
        progress=done / total, rate=rate, eta=eta, downloaded=done, total=total, connections=16
    )


def test_single_download_line_shows_bar_rate_eta_and_connections() -> None:
    bar = ProgressBar(io.StringIO())
    bar.handle(1, Started(filename="model.safetensors", size=100 * MIB))
    bar.handle(1, progress(45 * MIB, 100 * MIB))
    line = bar.line(120)
    assert line.startswith("model.safetensors [")
    assert "#" * 5 in line
    assert " 45.0% 45.0 MiB/100.0 MiB" in line
    assert "12.5 MiB/s" in line
    assert "ETA 00:03" in line
    assert "[16 conn]" in line
    assert len(line) <= 120


def test_narrow_terminal_keeps_the_numbers() -> None:
    bar = ProgressBar(io.StringIO())
    bar.handle(1, progress(MIB, 4 * MIB))
    line = bar.line(40)
    assert len(line) <= 40
    assert "25.0%" in line


def test_several_downloads_are_summed() -> None:
    bar = ProgressBar(io.StringIO())
    bar.handle(1, progress(10 * MIB, 20 * MIB, rate=5))
    bar.handle(2, progress(30 * MIB, 60 * MIB, rate=7))
    line = bar.line(120)
    assert line.startswith("2 files [")
    assert "50.0%" in line
    assert "12.0 MiB/s" in line


def test_success_clears_the_line() -> None:
    out = io.StringIO()
    bar = ProgressBar(out)
    bar.handle(1, progress(MIB, 2 * MIB))
    bar.handle(1, Success(path="x", size=2 * MIB))
    assert bar.line(80) == ""
    assert out.getvalue().endswith("\r")


def test_formatting() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"
    assert format_eta(None) == "--:--"
    assert format_eta(59.6) == "01:00"
    assert format_eta(3725) == "1:02:05"
