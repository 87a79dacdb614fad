"""Compare segdl with aria2c and curl on the same local servers, in one run.

    python benchmarks/bench.py [--size 1G] [--limited-size 256M] [--reps 3] [--dest DIR]
                               [--scenarios http,https,limited,latency] [--plot FILE.png]

Scenarios:
  http      nginx (Debian's), plain HTTP, the file from its page cache
  https     nginx over TLS with a self-signed certificate
  limited   nginx over TLS with ``limit_rate`` per connection (CDNs cap each connection:
            why segmenting matters)
  latency   segdl's test server with a delay before every response and a per-connection
            rate limit (a far-away server: each request pays a round trip)

Every tool downloads the same file in alternating order, to a tmpfs by default so the disk
is not what is measured (``--dest`` for a real disk).  Each run is timed by GNU time: wall
time, user+system CPU seconds, peak RSS.  Every result is checked by size and (once per
repetition) by sha256.  Prints a Markdown table of medians with the ratio to aria2c, and
writes a PNG plot of throughput per tool per scenario (needs matplotlib).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from segdl.core.sizes import parse_size
from segdl.testing.nginx import Nginx
from segdl.testing.rangeserver import Fault, RangeServer, RequestInfo, Resource
from segdl.testing.tls import CertPair, make_self_signed

MIB = 1024 * 1024
SCENARIOS = ("http", "https", "limited", "latency")
RATE_LIMITED = ("limited", "latency")
ONE_STREAM = ("segdl single", "curl")


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    rss_mib: float


@dataclass(frozen=True)
class Row:
    scenario: str
    tool: str
    mb_per_s: float
    cpu_per_gib: float
    rss_mib: float
    vs_aria2c: float | None


def measure(argv: list[str], report: Path) -> Run:
    """Run *argv* under GNU time: wait4 on our own child would report our peak RSS too,
    since a forked child starts with its parent's high-water mark."""
    timed = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(report), *argv]
    done = subprocess.run(timed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
    wall, user, system, rss_kib = report.read_text().split()[-4:]
    return Run(wall=float(wall), cpu=float(user) + float(system), rss_mib=int(rss_kib) / 1024)


def commands(url: str, out: Path, cafile: Path) -> dict[str, list[str]]:
    segdl = [
        sys.executable,
        "-m",
        "segdl",
        "get",
        url,
        "-d",
        str(out),
        "-q",
        "--ca-certificate",
        str(cafile),
    ]
    found = {"segdl native": segdl, "segdl single": [*segdl, "--engine", "single"]}
    if shutil.which("aria2c"):
        found["aria2c -x16"] = [
            "aria2c",
            "-q",
            "-x16",
            "-s16",
            "-k1M",
            "--allow-overwrite=true",
            f"--ca-certificate={cafile}",
            "-d",
            str(out),
            url,
        ]
    if shutil.which("curl"):
        found["curl"] = ["curl", "-sS", "--cacert", str(cafile), "-o", str(out / "file.bin"), url]
    return found


def write_random_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 8 * MIB))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * MIB):
            h.update(block)
    return h.hexdigest()


class Progress:
    """One status line on stderr while the benchmark runs."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = width * self.done // self.total
        line = f"\r[{'#' * filled}{'-' * (width - filled)}] {self.done}/{self.total} {label}"
        sys.stderr.write(line.ljust(100)[:100])
        sys.stderr.flush()


@contextlib.contextmanager
def latency_server(data: bytes, pair: CertPair, delay: float, rate: int) -> Iterator[str]:
    """segdl's RangeServer over TLS: *delay* before every response, *rate* per connection."""
    from segdl.testing.tls import server_context

    with RangeServer(tls=server_context(pair), rate_limit=rate) as server:
        server.add("/file.bin", Resource(body=data))

        def slow_start(info: RequestInfo) -> Fault | None:
            return Fault.delay(delay)

        server.on_request(slow_start)
        yield server.url("/file.bin")


def run_scenario(
    name: str,
    url: str,
    size: int,
    digest: str,
    out: Path,
    pair: CertPair,
    reps: int,
    work: Path,
    progress: Progress,
) -> list[Row]:
    tools = commands(url, out, pair.certfile)
    runs: dict[str, list[Run]] = {tool: [] for tool in tools}
    for rep in range(reps):
        order = list(tools) if rep % 2 == 0 else list(reversed(tools))
        if rep and name in RATE_LIMITED:
            # One stream at the per-connection limit is 16x slower by design: once is enough.
            order = [t for t in order if t not in ONE_STREAM]
        for tool in order:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            runs[tool].append(measure(tools[tool], work / "time.txt"))
            got = out / "file.bin"
            if got.stat().st_size != size:
                raise RuntimeError(f"{name}/{tool}: wrong size {got.stat().st_size}")
            progress.step(f"{name} {tool} rep {rep + 1}: {runs[tool][-1].wall:.2f} s")
        # Speed means nothing if the file is wrong: check the last one of each repetition.
        if sha256_of(out / "file.bin") != digest:
            raise RuntimeError(f"{name}/{order[-1]}: wrong content")
    base = statistics.median(r.wall for r in runs["aria2c -x16"]) if "aria2c -x16" in runs else None
    rows = []
    for tool, measured in runs.items():
        wall = statistics.median(r.wall for r in measured)
        rows.append(
            Row(
                scenario=name,
                tool=tool,
                mb_per_s=size / wall / 1e6,
                cpu_per_gib=statistics.median(r.cpu for r in measured) / (size / 1024**3),
                rss_mib=max(r.rss_mib for r in measured),
                vs_aria2c=None if base is None else base / wall,
            )
        )
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | tool | MB/s (median) | CPU s/GiB | peak RSS MiB | speed vs aria2c |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = "" if r.vs_aria2c is None else f"{r.vs_aria2c:.2f}×"
        lines.append(
            f"| {r.scenario} | {r.tool} | {r.mb_per_s:.0f} | {r.cpu_per_gib:.2f} | "
            f"{r.rss_mib:.0f} | {ratio} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            f"(no plot: matplotlib is not installed; pip install matplotlib) {path}",
            file=sys.stderr,
        )
        return
    scenarios = list(dict.fromkeys(r.scenario for r in rows))
    tools = list(dict.fromkeys(r.tool for r in rows))
    width = 0.8 / len(tools)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, tool in enumerate(tools):
        values = [
            next((r.mb_per_s for r in rows if r.scenario == s and r.tool == tool), 0.0)
            for s in scenarios
        ]
        xs = [j + (i - (len(tools) - 1) / 2) * width for j in range(len(scenarios))]
        ax.bar(xs, values, width, label=tool)
    ax.set_xticks(range(len(scenarios)), scenarios)
    ax.set_ylabel("MB/s (median, higher is better)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="1G", help="file size for http and https")
    parser.add_argument(
        "--limited-size",
        default="512M",
        help="file size for the rate-limited scenarios (one-stream tools run once there)",
    )
    parser.add_argument("--rate", default="8m", help="per-connection limit (nginx syntax)")
    parser.add_argument("--latency", type=float, default=0.15, help="seconds before each response")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dest", default="/dev/shm", help="where downloads are written")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--plot", default="benchmarks/results/throughput.png")
    args = parser.parse_args()
    if not Path("/usr/bin/time").exists():
        raise SystemExit("GNU time is needed: apt-get install time")
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    size, limited = parse_size(args.size), parse_size(args.limited_size)
    rate = parse_size(args.rate.upper())

    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(dir=args.dest) as dest,
        tempfile.TemporaryDirectory() as scratch,
    ):
        work = Path(scratch)
        root = Path(dest) / "www"
        root.mkdir()
        out = Path(dest) / "out"
        pair = make_self_signed(work / "tls")
        sizes = {s: (size if s in ("http", "https") else limited) for s in chosen}
        digests = {n: write_random_file(root / f"{n}.bin", n) for n in set(sizes.values())}
        for n in digests:
            (root / f"file-{n}").mkdir()
            os.link(root / f"{n}.bin", root / f"file-{n}" / "file.bin")
        tools = commands("http://x/file.bin", out, pair.certfile)
        per_rep = {s: len(tools) for s in chosen}
        later = {
            s: len([t for t in tools if s not in RATE_LIMITED or t not in ONE_STREAM])
            for s in chosen
        }
        progress = Progress(total=sum(per_rep[s] + later[s] * (args.reps - 1) for s in chosen))
        for scenario in chosen:
            n = sizes[scenario]
            if scenario == "latency":
                data = (root / f"{n}.bin").read_bytes()
                with latency_server(data, pair, args.latency, rate) as url:
                    rows += run_scenario(
                        scenario, url, n, digests[n], out, pair, args.reps, work, progress
                    )
                del data
                continue
            limit = args.rate if scenario == "limited" else None
            with Nginx(
                root,
                certfile=pair.certfile,
                keyfile=pair.keyfile,
                workers=2,
                access_log=False,
                limit_rate=limit,
                workdir=work / f"nginx-{scenario}",
            ) as ng:
                url = (ng.http_url if scenario == "http" else ng.https_url)(f"file-{n}/file.bin")
                rows += run_scenario(
                    scenario, url, n, digests[n], out, pair, args.reps, work, progress
                )
    sys.stderr.write("\n")
    title = (
        f"{platform.node()}: {os.cpu_count()} CPUs, {args.reps} reps, "
        f"{args.size} (limited/latency {args.limited_size}), dest {args.dest}"
    )
    print(f"\n{title}; limit {args.rate}/connection, latency {args.latency} s\n")
    print(table(rows))
    plot_path = Path(args.plot)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, plot_path, title)
    print(f"\nplot: {plot_path}")


if __name__ == "__main__":
    main()
