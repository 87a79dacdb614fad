"""segdl against aria2c on the paths users really download through (issue 13), in one run.

    python benchmarks/wan.py [--reps 3] [--scenarios wan,limit,crawl,resume,ttfr,cpu,imports]
                             [--with-1g] [--quick] [--dest /dev/shm]

Every download is the installed CLI as a user runs it, ``segdl get URL -x16 -s16 -k1M``,
alternating with ``aria2c -x16 -s16 -k1M`` (and curl where one stream makes sense), over HTTPS
from nginx (Debian's) with a self-signed certificate. Each run is timed by GNU time (wall,
user+system CPU, peak RSS); every result is checked by size and sha256. Tables of medians are
printed in Markdown, with each run's value so the noise can be judged.

How the paths are made:

- **wan**: the WAN-like relay of ``segdl.testing.wanrelay`` in front of nginx, TLS passing
  through: every connection pays an 80 ms round trip (the handshake's included) and gets its
  own 6 MiB/s cap. The relay is a Python process because this kernel has no ``netem`` and no
  ``fq`` qdisc (``tc`` loads only pfifo, tbf and htb, which cannot delay nor cap per flow):
  its own CPU time is read from ``/proc`` and shown next to each figure, since it competes
  with the client for the two cores. "% of path" is size / wall ÷ (16 × cap).
- **limit**: nginx ``limit_rate 8m`` per connection, no relay, no added RTT.
- **crawl**: the relay with 4 MiB/s per connection, no added RTT; with the crawler, the third
  connection accepted gets 8 KiB/s (for segdl its probe is the first, so the crawler is its
  second data connection; for aria2c its third). Runs are cut at ``--crawl-timeout``.
- **resume**: nginx ``limit_rate 2m``; the tool is SIGKILLed 5 times at random 0.3–1.5 s after
  its start (same seeded times for both tools), then the same command runs to the end. The
  server's ``$body_bytes_sent`` summed over its access log ÷ file size is what was fetched.
  Every launch passes ``-c`` (aria2c needs it to continue; segdl resumes from its control
  file either way).
- **ttfr**: from launching the process to the first request reaching nginx (its access log:
  ``$msec - $request_time``, millisecond resolution), loopback, 8 MiB.
- **cpu**: loopback HTTPS, 1 GiB into tmpfs: CPU-s per GiB. (Into /dev/null is skipped: neither
  ``segdl get`` nor aria2c can write a download there.)
- **imports**: ``python -X importtime -c "import segdl.cli.main"``, the 15 largest by
  cumulative time, and the interpreter's bare start-up for comparison.

The machine is a 2-core VM often shared with other work: read ratios within one run, and the
per-run values before trusting a median.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import Progress, sha256_of, write_random_file

from segdl.core.sizes import parse_size
from segdl.testing.nginx import Nginx
from segdl.testing.tls import CertPair, make_self_signed

MIB = 1024 * 1024
GIB = 1024 * MIB
SCENARIOS = ("wan", "limit", "crawl", "resume", "ttfr", "cpu", "imports")
SEGDL = "segdl"
ARIA2C = "aria2c"
CURL = "curl"
# $msec is when the request ended; $request_time how long it took from its first byte.
LOG_FORMAT = '$msec $request_time $status $body_bytes_sent "$http_range"'


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    rss_mib: float


@dataclass(frozen=True)
class Settings:
    reps: int
    wan_sizes: tuple[int, ...]
    wan_rtt: float
    wan_rate: int
    limit_size: int
    limit_rate: str
    crawl_size: int
    crawl_rate: int
    crawl_timeout: float
    resume_size: int
    resume_kills: int
    ttfr_size: int
    cpu_size: int
    seed: int


@dataclass
class Workspace:
    root: Path  # nginx serves this
    out: Path  # downloads land here, emptied before each run
    work: Path  # GNU time's reports, logs
    pair: CertPair
    digests: dict[int, str] = field(default_factory=dict)

    def file_for(self, size: int) -> str:
        """The URL path of a random file of *size* bytes, made on first use."""
        name = f"file-{size}.bin"
        if size not in self.digests:
            self.digests[size] = write_random_file(self.root / name, size)
        return name

    def fresh_out(self) -> Path:
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir()
        return self.out

    def nginx(
        self, label: str, *, limit_rate: str | None = None, log_format: str | None = None
    ) -> Nginx:
        """An nginx serving ``root`` over HTTPS with this workspace's certificate, logging
        requests only when given a *log_format*, its files under ``work/nginx-LABEL``."""
        return Nginx(
            self.root,
            certfile=self.pair.certfile,
            keyfile=self.pair.keyfile,
            workers=2,
            access_log=log_format is not None,
            log_format=log_format,
            limit_rate=limit_rate,
            workdir=self.work / f"nginx-{label}",
        )

    def check(self, label: str, name: str, size: int) -> None:
        got = self.out / name
        if not got.exists() or got.stat().st_size != size:
            raise RuntimeError(f"{label}: {got} is missing or has the wrong size")
        if sha256_of(got) != self.digests[size]:
            raise RuntimeError(f"{label}: wrong content")


@contextlib.contextmanager
def workspace(dest: Path) -> Iterator[tuple[Workspace, Nginx]]:
    """Served files and downloads under *dest*, scratch elsewhere, and the shared nginx
    (HTTPS, no access log) that serves them; all removed afterwards."""
    with (
        tempfile.TemporaryDirectory(dir=dest) as served,
        tempfile.TemporaryDirectory() as scratch,
    ):
        work = Path(scratch)
        ws = Workspace(
            root=Path(served) / "www",
            out=Path(served) / "out",
            work=work,
            pair=make_self_signed(work / "tls"),
        )
        ws.root.mkdir()
        with ws.nginx("shared") as ng:
            yield ws, ng


# ---- the tools, as users run them


def segdl_binary() -> str:
    """The installed ``segdl`` script of this interpreter's environment (as a user runs it)."""
    beside = Path(sys.executable).parent / "segdl"
    found = str(beside) if beside.exists() else shutil.which("segdl")
    if found is None:
        raise SystemExit("the segdl command is not installed: pip install -e '.[test,bench]'")
    return found


def command(tool: str, url: str, out: Path, cafile: Path, *, resume: bool = False) -> list[str]:
    if tool == SEGDL:
        argv = [segdl_binary(), "get", url, "-x16", "-s16", "-k1M", "-q", "-d", str(out)]
        argv += ["--ca-certificate", str(cafile)]
        return [*argv, "-c"] if resume else argv
    if tool == ARIA2C:
        argv = ["aria2c", "-q", "-x16", "-s16", "-k1M", f"--ca-certificate={cafile}"]
        argv += ["-c"] if resume else ["--allow-overwrite=true"]
        return [*argv, "-d", str(out), url]
    if tool == CURL:
        name = url.rsplit("/", 1)[-1]
        return ["curl", "-sS", "--fail", "--cacert", str(cafile), "-o", str(out / name), url]
    raise ValueError(tool)


def measure(argv: Sequence[str], report: Path, timeout: float | None = None) -> Run | None:
    """Run *argv* under GNU time; None if it was still running after *timeout* seconds (its
    whole process group is killed then). GNU time, not wait4 on our own child: a forked child
    starts with its parent's RSS high-water mark."""
    timed = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(report), *argv]
    with subprocess.Popen(
        timed,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return None
    if process.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({process.returncode}): {stderr.strip()}")
    wall, user, system, rss_kib = report.read_text().split()[-4:]
    return Run(wall=float(wall), cpu=float(user) + float(system), rss_mib=int(rss_kib) / 1024)


def alternate(tools: Sequence[str], rep: int) -> list[str]:
    return list(tools) if rep % 2 == 0 else list(reversed(tools))


# ---- the relay, as a process of its own so that its CPU time can be read


class RelayProcess:
    def __init__(self, process: subprocess.Popen[str], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.port}/{name}"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def closed_connections(self) -> list[dict[str, float]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


@contextlib.contextmanager
def wan_relay(
    upstream_port: int, log: Path, *, rtt: float, rate: int, crawl: str = ""
) -> Iterator[RelayProcess]:
    argv = [sys.executable, "-m", "segdl.testing.wanrelay"]
    argv += ["--upstream", f"127.0.0.1:{upstream_port}", "--rtt", str(rtt), "--rate", str(rate)]
    argv += ["--log", str(log)] + (["--crawl", crawl] if crawl else [])
    log.unlink(missing_ok=True)
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"the relay did not start: {line!r}")
        yield RelayProcess(process, int(line), log)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_quiet(path: Path, settle: float = 0.5, limit: float = 10.0) -> None:
    """Wait until *path* has stopped growing: servers log a request when they notice its end."""
    deadline = time.monotonic() + limit
    last = -1
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else 0
        if size == last:
            return
        last = size
        time.sleep(settle)


# ---- results


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def runs_text(values: Sequence[float], unit: str = "") -> str:
    return " / ".join(f"{v:.2f}{unit}" for v in values)


def human(size: int) -> str:
    return f"{size // GIB} GiB" if size >= GIB and size % GIB == 0 else f"{size / MIB:g} MiB"


@dataclass
class Timed:
    runs: dict[str, list[Run]] = field(default_factory=dict)
    relay_cpu: dict[str, list[float]] = field(default_factory=dict)
    served: dict[str, list[float]] = field(default_factory=dict)

    def add(self, tool: str, run: Run) -> None:
        self.runs.setdefault(tool, []).append(run)

    def wall(self, tool: str) -> float:
        return median([r.wall for r in self.runs.get(tool, [])])


def timed_table_rows(label: str, size: int, timed: Timed, path_limit: float | None) -> list[str]:
    base = timed.wall(ARIA2C) if ARIA2C in timed.runs else None
    rows = []
    for tool, runs in timed.runs.items():
        wall = timed.wall(tool)
        cpu = median([r.cpu for r in runs])
        rss = max(r.rss_mib for r in runs)
        ratio = f"{wall / base:.2f}" if base else ""
        share = f"{size / wall / path_limit:.0%}" if path_limit else ""
        relay = median(timed.relay_cpu.get(tool, []))
        relay_text = "" if relay != relay else f"{relay:.2f}"
        served = median(timed.served.get(tool, []))
        served_text = "" if served != served else f"{served:.3f}"
        rows.append(
            f"| {label} | {tool} | {wall:.2f} | {runs_text([r.wall for r in runs])} | "
            f"{cpu:.2f} | {rss:.0f} | {ratio} | {share} | {served_text} | {relay_text} |"
        )
    return rows


TIMED_HEADER = [
    "| path, file | tool | wall s (median) | each run, s | CPU-s | peak RSS MiB | "
    "time ÷ aria2c's | % of path limit | served ÷ size | relay CPU-s |",
    "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
]


# ---- scenarios


def scenario_wan(ws: Workspace, ng: Nginx, s: Settings, progress: Progress) -> list[str]:
    lines = list(TIMED_HEADER)
    path_limit = 16 * s.wan_rate
    with wan_relay(ng.https_port, ws.work / "relay-wan.log", rtt=s.wan_rtt, rate=s.wan_rate) as r:
        for size in s.wan_sizes:
            name = ws.file_for(size)
            url = r.url(name)
            # One stream at 6 MiB/s is 16x slower by design: curl only where that is short.
            tools = [SEGDL, ARIA2C] + ([CURL] if size <= 8 * MIB else [])
            timed = Timed()
            for rep in range(s.reps):
                for tool in alternate(tools, rep):
                    out = ws.fresh_out()
                    closed_before = len(r.closed_connections())
                    cpu_before = r.cpu_seconds()
                    run = measure(command(tool, url, out, ws.pair.certfile), ws.work / "t")
                    assert run is not None
                    ws.check(f"wan {human(size)} {tool}", name, size)
                    wait_for_quiet(r.log, settle=0.3)
                    timed.add(tool, run)
                    timed.relay_cpu.setdefault(tool, []).append(r.cpu_seconds() - cpu_before)
                    sent = sum(c["to_client"] for c in r.closed_connections()[closed_before:])
                    timed.served.setdefault(tool, []).append(sent / size)
                    progress.step(f"wan {human(size)} {tool} {run.wall:.2f} s")
            label = (
                f"{s.wan_rtt * 1000:.0f} ms RTT, {s.wan_rate / MIB:g} MiB/s per conn, {human(size)}"
            )
            lines += timed_table_rows(label, size, timed, path_limit)
    return lines


def scenario_limit(ws: Workspace, s: Settings, progress: Progress) -> list[str]:
    name = ws.file_for(s.limit_size)
    lines = list(TIMED_HEADER)
    with ws.nginx("limit", limit_rate=s.limit_rate) as ng:
        timed = Timed()
        for rep in range(s.reps):
            for tool in alternate([SEGDL, ARIA2C], rep):
                out = ws.fresh_out()
                run = measure(
                    command(tool, ng.https_url(name), out, ws.pair.certfile), ws.work / "t"
                )
                assert run is not None
                ws.check(f"limit {tool}", name, s.limit_size)
                timed.add(tool, run)
                progress.step(f"limit {tool} {run.wall:.2f} s")
    rate = parse_size(s.limit_rate.upper())
    label = f"nginx limit_rate {s.limit_rate} per conn, {human(s.limit_size)}"
    return lines + timed_table_rows(label, s.limit_size, timed, 16 * rate)


def scenario_crawl(ws: Workspace, ng: Nginx, s: Settings, progress: Progress) -> list[str]:
    name = ws.file_for(s.crawl_size)
    walls: dict[tuple[str, bool], list[float | None]] = {}
    crawled: dict[str, list[int]] = {}
    for with_crawler in (False, True):
        for rep in range(s.reps):
            for tool in alternate([SEGDL, ARIA2C], rep):
                # A fresh relay per run: connections are numbered from 1 for each tool.
                log = ws.work / "relay-crawl.log"
                crawl = "3" if with_crawler else ""
                with wan_relay(ng.https_port, log, rtt=0.0, rate=s.crawl_rate, crawl=crawl) as r:
                    out = ws.fresh_out()
                    argv = command(tool, r.url(name), out, ws.pair.certfile)
                    run = measure(argv, ws.work / "t", timeout=s.crawl_timeout)
                    if run is not None:
                        ws.check(f"crawl {tool}", name, s.crawl_size)
                    walls.setdefault((tool, with_crawler), []).append(
                        None if run is None else run.wall
                    )
                    wait_for_quiet(r.log, settle=0.3)
                # The relay logs a connection when it closes, and every one closes with it.
                if with_crawler:
                    through = [
                        int(c["to_client"])
                        for c in r.closed_connections()
                        if c["rate"] < s.crawl_rate
                    ]
                    crawled.setdefault(tool, []).append(sum(through))
                shown = "timeout" if run is None else f"{run.wall:.2f} s"
                crawler = "with" if with_crawler else "without"
                progress.step(f"crawl {crawler} {tool} {shown}")

    def show(values: list[float | None]) -> str:
        return " / ".join(f">{s.crawl_timeout:.0f}" if v is None else f"{v:.2f}" for v in values)

    def middle(values: list[float | None]) -> float:
        # A run cut at the timeout counts as the timeout: the median is then a lower bound.
        return median([s.crawl_timeout if v is None else v for v in values])

    lines = [
        "| tool | without crawler, s (median) | each run | with crawler, s (median) | each run "
        "| with ÷ without | bytes through the crawling connection |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for tool in (SEGDL, ARIA2C):
        without, with_ = walls[(tool, False)], walls[(tool, True)]
        cut = any(v is None for v in with_)
        ratio = middle(with_) / middle(without)
        lines.append(
            f"| {tool} | {middle(without):.2f} | {show(without)} | "
            f"{'≥ ' if cut else ''}{middle(with_):.2f} | {show(with_)} | "
            f"{'≥ ' if cut else ''}{ratio:.1f}× | "
            f"{' / '.join(str(b) for b in crawled.get(tool, []))} |"
        )
    return lines


def served_bytes(log: Path, offset: int) -> tuple[int, int]:
    """Body bytes nginx served per its access log from byte *offset* on, and the requests."""
    total = requests = 0
    with log.open() as f:
        f.seek(offset)
        for line in f:
            fields = line.split()
            if len(fields) >= 4:
                total += int(fields[3])
                requests += 1
    return total, requests


def scenario_resume(ws: Workspace, s: Settings, progress: Progress) -> list[str]:
    name = ws.file_for(s.resume_size)
    results: dict[str, list[tuple[float, int, bool, float]]] = {}
    with ws.nginx("resume", limit_rate="2m", log_format=LOG_FORMAT) as ng:
        for rep in range(s.reps):
            rng = random.Random(s.seed + rep)
            kill_after = [rng.uniform(0.3, 1.5) for _ in range(s.resume_kills)]
            for tool in alternate([SEGDL, ARIA2C], rep):
                out = ws.fresh_out()
                argv = command(tool, ng.https_url(name), out, ws.pair.certfile, resume=True)
                wait_for_quiet(ng.access_log_path, settle=0.3)
                offset = ng.access_log_path.stat().st_size
                for delay in kill_after:
                    with subprocess.Popen(
                        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    ) as process:
                        try:
                            process.wait(timeout=delay)
                        except subprocess.TimeoutExpired:
                            process.send_signal(signal.SIGKILL)
                            process.wait()
                run = measure(argv, ws.work / "t")
                assert run is not None
                got = out / name
                exact = got.exists() and sha256_of(got) == ws.digests[s.resume_size]
                wait_for_quiet(ng.access_log_path, settle=0.5)
                served, requests = served_bytes(ng.access_log_path, offset)
                results.setdefault(tool, []).append(
                    (served / s.resume_size, requests, exact, run.wall)
                )
                progress.step(f"resume {tool} served {served / s.resume_size:.2f}× exact={exact}")
    lines = [
        "| tool | served ÷ size (median) | each run | requests | sha256 | last run's wall s |",
        "|---|---:|---|---|---|---|",
    ]
    for tool, rows in results.items():
        ratios = [r[0] for r in rows]
        verdict = (
            "all exact"
            if all(r[2] for r in rows)
            else (f"**wrong in {sum(not r[2] for r in rows)} of {len(rows)}**")
        )
        counts = " / ".join(str(r[1]) for r in rows)
        lines.append(
            f"| {tool} | {median(ratios):.3f} | {runs_text(ratios)} | {counts} | {verdict} | "
            f"{runs_text([r[3] for r in rows])} |"
        )
    return lines


def scenario_ttfr(ws: Workspace, s: Settings, progress: Progress) -> list[str]:
    name = ws.file_for(s.ttfr_size)
    firsts: dict[str, list[float]] = {}
    walls: dict[str, list[float]] = {}
    with ws.nginx("ttfr", log_format=LOG_FORMAT) as ng:
        for rep in range(max(s.reps, 5)):
            for tool in alternate([SEGDL, ARIA2C, CURL], rep):
                out = ws.fresh_out()
                argv = command(tool, ng.https_url(name), out, ws.pair.certfile)
                wait_for_quiet(ng.access_log_path, settle=0.2)
                offset = ng.access_log_path.stat().st_size
                launched = time.time()
                started = time.monotonic()
                subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
                walls.setdefault(tool, []).append(time.monotonic() - started)
                ws.check(f"ttfr {tool}", name, s.ttfr_size)
                wait_for_quiet(ng.access_log_path, settle=0.2)
                with ng.access_log_path.open() as f:
                    f.seek(offset)
                    starts = [float(x.split()[0]) - float(x.split()[1]) for x in f if x.strip()]
                firsts.setdefault(tool, []).append(min(starts) - launched)
                progress.step(f"ttfr {tool} {firsts[tool][-1] * 1000:.0f} ms")
    lines = [
        f"| tool | first request after launch, ms (median) | each run, ms "
        f"| whole {human(s.ttfr_size)} download, s (median) |",
        "|---|---:|---|---:|",
    ]
    for tool, values in firsts.items():
        each = " / ".join(f"{v * 1000:.0f}" for v in values)
        lines.append(
            f"| {tool} | {median(values) * 1000:.0f} | {each} | {median(walls[tool]):.2f} |"
        )
    return lines


def scenario_cpu(ws: Workspace, s: Settings, progress: Progress) -> list[str]:
    name = ws.file_for(s.cpu_size)
    timed = Timed()
    with ws.nginx("cpu") as ng:
        for rep in range(s.reps):
            for tool in alternate([SEGDL, ARIA2C, CURL], rep):
                out = ws.fresh_out()
                run = measure(
                    command(tool, ng.https_url(name), out, ws.pair.certfile), ws.work / "t"
                )
                assert run is not None
                ws.check(f"cpu {tool}", name, s.cpu_size)
                timed.add(tool, run)
                progress.step(f"cpu {tool} {run.cpu:.2f} CPU-s")
    gib = s.cpu_size / GIB
    lines = [
        "| tool | CPU-s per GiB (median) | each run | wall s (median) | peak RSS MiB |",
        "|---|---:|---|---:|---:|",
    ]
    for tool, runs in timed.runs.items():
        per_gib = [r.cpu / gib for r in runs]
        lines.append(
            f"| {tool} | {median(per_gib):.2f} | {runs_text(per_gib)} | "
            f"{timed.wall(tool):.2f} | {max(r.rss_mib for r in runs):.0f} |"
        )
    return lines


def scenario_imports(reps: int) -> list[str]:
    def start_up(code: str) -> float:
        times = []
        for _ in range(max(reps, 5)):
            started = time.monotonic()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.monotonic() - started)
        return median(times)

    bare = start_up("pass")
    cli = start_up("import segdl.cli.main")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import segdl.cli.main"],
        check=True,
        capture_output=True,
        text=True,
    )
    pattern = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (.*)$")
    found = []
    for line in done.stderr.splitlines():
        match = pattern.match(line)
        if match:
            own, cumulative, module = match.groups()
            found.append((int(cumulative), int(own), module.rstrip()))
    found.sort(reverse=True)
    lines = [
        f"Interpreter start-up `python -c pass`: {bare * 1000:.0f} ms; "
        f"`python -c 'import segdl.cli.main'`: {cli * 1000:.0f} ms (medians).",
        "",
        "| module (indent = nesting) | cumulative ms | self ms |",
        "|---|---:|---:|",
    ]
    for cumulative, own, module in found[:15]:
        shown = module.replace(" ", "·")
        lines.append(f"| `{shown}` | {cumulative / 1000:.1f} | {own / 1000:.1f} |")
    return lines


# ---- main


def settings_from(args: argparse.Namespace) -> Settings:
    if args.quick:
        return Settings(
            reps=1,
            wan_sizes=(8 * MIB, 32 * MIB),
            wan_rtt=args.rtt,
            wan_rate=parse_size(args.wan_rate),
            limit_size=64 * MIB,
            limit_rate="8m",
            crawl_size=16 * MIB,
            crawl_rate=4 * MIB,
            crawl_timeout=60.0,
            resume_size=64 * MIB,
            resume_kills=2,
            ttfr_size=MIB,
            cpu_size=128 * MIB,
            seed=args.seed,
        )
    sizes = [8 * MIB, 64 * MIB, 256 * MIB] + ([GIB] if args.with_1g else [])
    return Settings(
        reps=args.reps,
        wan_sizes=tuple(sizes),
        wan_rtt=args.rtt,
        wan_rate=parse_size(args.wan_rate),
        limit_size=256 * MIB,
        limit_rate="8m",
        crawl_size=64 * MIB,
        crawl_rate=4 * MIB,
        crawl_timeout=args.crawl_timeout,
        resume_size=256 * MIB,
        resume_kills=5,
        ttfr_size=8 * MIB,
        cpu_size=GIB,
        seed=args.seed,
    )


def steps(chosen: Sequence[str], s: Settings) -> int:
    per = {
        "wan": sum(s.reps * (3 if n <= 8 * MIB else 2) for n in s.wan_sizes),
        "limit": 2 * s.reps,
        "crawl": 4 * s.reps,
        "resume": 2 * s.reps,
        "ttfr": 3 * max(s.reps, 5),
        "cpu": 3 * s.reps,
        "imports": 0,
    }
    return sum(per[c] for c in chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--with-1g", action="store_true", help="add 1 GiB to the WAN sizes")
    parser.add_argument("--quick", action="store_true", help="small files, one rep: a smoke run")
    parser.add_argument("--rtt", type=float, default=0.08, help="WAN round trip, seconds")
    parser.add_argument("--wan-rate", default="6M", help="WAN cap per connection")
    parser.add_argument("--crawl-timeout", type=float, default=240.0)
    parser.add_argument("--seed", type=int, default=13, help="for the kill times")
    parser.add_argument("--dest", default="/dev/shm", help="where files are served and written")
    args = parser.parse_args()
    if not Path("/usr/bin/time").exists():
        raise SystemExit("GNU time is needed: apt-get install time")
    for program, package in (("aria2c", "aria2"), ("curl", "curl")):
        if shutil.which(program) is None:
            raise SystemExit(f"{program} is needed: apt-get install {package}")
    chosen = [c.strip() for c in args.scenarios.split(",") if c.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    s = settings_from(args)
    progress = Progress(total=max(1, steps(chosen, s)))
    sections: list[tuple[str, list[str]]] = []
    with workspace(Path(args.dest)) as (ws, ng):
        for scenario in chosen:
            if scenario == "wan":
                sections.append(("WAN-like path", scenario_wan(ws, ng, s, progress)))
            elif scenario == "limit":
                sections.append(("Per-connection cap", scenario_limit(ws, s, progress)))
            elif scenario == "crawl":
                title = (
                    f"A crawling connection ({human(s.crawl_size)}, 16 × "
                    f"{s.crawl_rate / MIB:g} MiB/s, one at 8 KiB/s)"
                )
                sections.append((title, scenario_crawl(ws, ng, s, progress)))
            elif scenario == "resume":
                title = (
                    f"Kill and resume ({human(s.resume_size)}, 2 MiB/s per connection, "
                    f"{s.resume_kills} SIGKILLs at 0.3–1.5 s)"
                )
                sections.append((title, scenario_resume(ws, s, progress)))
            elif scenario == "ttfr":
                sections.append(("Time to first request", scenario_ttfr(ws, s, progress)))
            elif scenario == "cpu":
                title = f"CPU per GiB, loopback HTTPS into tmpfs ({human(s.cpu_size)})"
                sections.append((title, scenario_cpu(ws, s, progress)))
            elif scenario == "imports":
                sections.append(("Imports of `segdl get`", scenario_imports(s.reps)))
    sys.stderr.write("\n")
    print(
        f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end, "
        f"{s.reps} reps, medians; destination {args.dest}\n"
    )
    for title, lines in sections:
        print(f"#### {title}\n")
        print("\n".join(lines))
        print()


if __name__ == "__main__":
    main()
