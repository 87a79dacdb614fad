"""Shared by the reliability suite: the figures it reports, and the checks every test makes.

The figures (faults injected per kind, kill-and-resume cycles, hypothesis examples, wrong
files, lost partials, …) are counted here while the tests run; ``tests/conftest.py`` prints
them at the end of the session and writes them as JSON to ``$SEGDL_FIGURES`` when set.  It
finds them as ``sys.modules["support"].FIGURES``, so this module is imported under that name
only (``from support import …``, as pytest's default import mode allows for a test folder
without ``__init__.py``).

Two figures must stay 0: *wrong files* (a download that reported success, or a resume that
finished, with bytes that differ from the served file) and *lost partials* (a failed download
that left data without the control file that makes it resumable, or that lost the partial
altogether).  The checks below count them before they fail the test, so a failing run shows
them in the summary as well.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from segdl.core.controlfile import ControlFile, ControlFileError, bitfield_indices
from segdl.testing.rangeserver import (
    CloseConnection,
    Delay,
    DropAfter,
    Fault,
    IgnoreRange,
    LongBody,
    RangeServer,
    ReplaceResource,
    RequestInfo,
    ShortBody,
    StallAfter,
    StatusFault,
    WrongContentRange,
)

__all__ = [
    "FIGURES",
    "MIB",
    "Figures",
    "check_claims",
    "claimed_ranges",
    "data_bytes_served",
    "data_requests",
    "expect_exact",
    "fault_kind",
    "is_data_request",
    "read_control",
    "refetched",
    "require_program",
    "sha256_file",
    "sidecars",
    "wait_gone",
]

MIB = 1024 * 1024


class Figures:
    """Counters for the closing note; thread-safe (server hooks count from their threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.faults: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.crash_cycles: Counter[str] = Counter()
        self.examples: Counter[str] = Counter()
        self.control_mutations: Counter[str] = Counter()
        self.checks: Counter[str] = Counter()
        self.redownloaded_bytes: Counter[str] = Counter()
        self.wrong_files = 0
        self.lost_partials = 0
        self.known_bugs: Counter[str] = Counter()

    def fault(self, kind: str, count: int = 1) -> None:
        with self._lock:
            self.faults[kind] += count

    def outcome(self, kind: str) -> None:
        with self._lock:
            self.outcomes[kind] += 1

    def crash_cycle(self, engine: str) -> None:
        with self._lock:
            self.crash_cycles[engine] += 1

    def example(self, test: str) -> None:
        with self._lock:
            self.examples[test] += 1

    def control_mutation(self, verdict: str) -> None:
        with self._lock:
            self.control_mutations[verdict] += 1

    def check(self, what: str, count: int = 1) -> None:
        """A named safety check that passed (e.g. a control file decoded after a kill)."""
        with self._lock:
            self.checks[what] += count

    def redownloaded(self, engine: str, nbytes: int) -> None:
        with self._lock:
            self.redownloaded_bytes[engine] += nbytes

    def wrong_file(self) -> None:
        with self._lock:
            self.wrong_files += 1

    def known_bug(self, what: str) -> None:
        """A wrong outcome reproduced by an xfail test (a known bug, not a regression)."""
        with self._lock:
            self.known_bugs[what] += 1

    def lost_partial(self) -> None:
        with self._lock:
            self.lost_partials += 1

    @property
    def recorded(self) -> bool:
        with self._lock:
            counters = (
                self.faults,
                self.outcomes,
                self.crash_cycles,
                self.examples,
                self.control_mutations,
                self.checks,
            )
            return any(counters) or bool(self.wrong_files or self.lost_partials)

    def as_dict(self) -> dict[str, object]:
        with self._lock:
            return {
                "faults_injected": dict(sorted(self.faults.items())),
                "faults_injected_total": sum(self.faults.values()),
                "outcomes": dict(sorted(self.outcomes.items())),
                "crash_resume_cycles": dict(sorted(self.crash_cycles.items())),
                "hypothesis_examples": dict(sorted(self.examples.items())),
                "hypothesis_examples_total": sum(self.examples.values()),
                "control_file_mutations": dict(sorted(self.control_mutations.items())),
                "safety_checks": dict(sorted(self.checks.items())),
                "redownloaded_bytes_after_kills": dict(sorted(self.redownloaded_bytes.items())),
                "wrong_files": self.wrong_files,
                "lost_partials": self.lost_partials,
                "known_bugs_reproduced_by_xfail_tests": dict(sorted(self.known_bugs.items())),
            }

    def summary_lines(self) -> list[str]:
        lines: list[str] = []
        for key, value in self.as_dict().items():
            label = key.replace("_", " ")
            if isinstance(value, dict):
                if not value:
                    continue
                items = ", ".join(f"{k} {v}" for k, v in value.items())
                lines.append(f"{label}: {items}")
            else:
                lines.append(f"{label}: {value}")
        return lines


FIGURES = Figures()


# -- faults ---------------------------------------------------------------------------------


def fault_kind(fault: Fault) -> str:
    """A short name for a fault, for the figures."""
    if isinstance(fault, StatusFault):
        names = {name.lower() for name, _ in fault.headers}
        if "location" in names:
            return f"redirect {fault.code}"
        suffix = " retry-after" if "retry-after" in names else ""
        return f"status {fault.code}{suffix}"
    if isinstance(fault, DropAfter):
        return "drop (reset)" if fault.reset else "drop"
    if isinstance(fault, StallAfter):
        return "stall"
    if isinstance(fault, IgnoreRange):
        return "200 to a range"
    if isinstance(fault, WrongContentRange):
        return "wrong content-range"
    if isinstance(fault, ShortBody):
        return "short body"
    if isinstance(fault, LongBody):
        return "long body"
    if isinstance(fault, ReplaceResource):
        return "file changed"
    if isinstance(fault, Delay):
        return "delay"
    if isinstance(fault, CloseConnection):
        return "close after response"
    return type(fault).__name__


def is_data_request(info: RequestInfo) -> bool:
    """A request for file bytes that is not a new download's probe: a GET with a Range that
    does not start at byte 0 (the probe asks from byte 0: ``bytes=0-0`` on httpx, the first
    piece when the first request is sent on a data connection)."""
    return info.method == "GET" and info.range is not None and not info.range.startswith("bytes=0-")


def data_requests(server: RangeServer, since: int = 0) -> list[str]:
    """The Range values of the data requests the server received (from request *since*)."""
    return [
        r.range
        for r in server.requests[since:]
        if r.method == "GET" and r.range is not None and r.range != "bytes=0-0"
    ]


def refetched(server: RangeServer, since: int, claimed: list[tuple[int, int]]) -> list[str]:
    """The data requests (from request *since*) that asked again for claimed bytes."""
    again: list[str] = []
    for value in data_requests(server, since):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", value)
        assert match is not None, value
        first = int(match.group(1))
        end = int(match.group(2)) + 1 if match.group(2) else 1 << 62
        if any(first < stop and start < end for start, stop in claimed):
            again.append(value)
    return again


def data_bytes_served(server: RangeServer, since: int = 0) -> int:
    """Body bytes of every ranged answer: a probe's byte counts too (sent on a data
    connection, the first request's body is written into the file)."""
    return sum(r.body_bytes for r in server.requests[since:] if r.range is not None)


# -- files ----------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def sidecars(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".aria2", ".segdl"))


def expect_exact(path: Path, body: bytes, *, known_bug: str | None = None) -> None:
    """The finished file is the served file, byte for byte, and no sidecar is left.

    In an xfail test pass *known_bug* (what it reproduces): a wrong file there is counted
    apart, so that "wrong files" stays the count of regressions.
    """
    same = path.is_file() and path.stat().st_size == len(body) and path.read_bytes() == body
    if not same:
        if known_bug is None:
            FIGURES.wrong_file()
        else:
            FIGURES.known_bug(known_bug)
    assert same, f"{path} differs from the served file"
    # Sidecars, and the temporary files they are written through (NAME.aria2__temp).
    left = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "."))
    assert left == [], f"a finished download left {left} behind"


def read_control(path: Path) -> ControlFile | None:
    """The control file beside the data file *path*; None if absent or undecodable."""
    try:
        return ControlFile.decode(path.with_name(path.name + ".aria2").read_bytes())
    except (FileNotFoundError, ControlFileError):
        return None


def claimed_ranges(control: ControlFile) -> list[tuple[int, int]]:
    """The byte ranges ``[start, end)`` a control file says are on disk, as segdl reads it:
    done pieces, and the run of done blocks at the start of each in-flight piece."""
    ranges: list[tuple[int, int]] = []
    length, total = control.piece_length, control.total_length
    for index in bitfield_indices(control.bitfield, control.num_pieces):
        ranges.append((index * length, min((index + 1) * length, total)))
    for piece in control.in_flight:
        start = piece.index * length
        if piece.completed_prefix():
            ranges.append((start, start + piece.completed_prefix()))
    return sorted(ranges)


def check_claims(data: bytes, control: ControlFile, bodies: Iterable[bytes]) -> bytes | None:
    """The body (among *bodies*, the versions served) whose bytes every claim of *control*
    matches in *data*, or None when some claimed byte is wrong for all of them."""
    ranges = claimed_ranges(control)
    for body in bodies:
        if len(body) != control.total_length:
            continue
        if all(data[start:end] == body[start:end] for start, end in ranges):
            return body
    return None


# -- programs and processes -----------------------------------------------------------------


def require_program(name: str, found: bool) -> None:
    """Skip a test that needs an external program, except on CI, where it must be there
    (the pattern of ``tests/conftest.py``)."""
    if found:
        return
    message = f"{name} is not installed"
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"{message}, and CI=true forbids skipping", pytrace=False)
    pytest.skip(message)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X")


def wait_gone(pids: Iterable[int], *, timeout: float = 10.0) -> list[int]:
    """Wait for *pids* (processes a test started, here orphans of a killed command) to exit;
    return those still running after *timeout*."""
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if _alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if _alive(pid)]
    return left
