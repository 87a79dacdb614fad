"""Compare segdl with aria2c and curl on the same local nginx, in one run.

    python benchmarks/bench.py [--size 1G] [--reps 3] [--dest /dev/shm] [--scenarios http,https]

Starts nginx (Debian's) with a generated config in a temp dir, serves one generated file over
HTTP and HTTPS (self-signed), and downloads it with each tool in alternating order, writing to
a tmpfs by default so the disk is not what is measured.  Each run is a child process measured
with ``wait4``: wall time, user+system CPU seconds, peak RSS.  Prints a Markdown table with
medians and the ratio of throughput to aria2c's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from segdl.core.headers import parse_size
from segdl.testing.nginx import Nginx
from segdl.testing.tls import make_self_signed

MIB = 1024 * 1024


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    rss_mib: float


def measure(argv: list[str], report: Path) -> Run:
    """Run *argv* under GNU time: wait4 on our own child would report our peak RSS too,
    since a forked child starts with its parent's high-water mark."""
    timed = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(report), *argv]
    done = subprocess.run(timed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
    wall, user, system, rss_kib = report.read_text().split()[-4:]
    return Run(wall=float(wall), cpu=float(user) + float(system), rss_mib=int(rss_kib) / 1024)


def tools(url: str, out: Path, cafile: Path) -> dict[str, list[str]]:
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
    found = {
        "segdl native": segdl,
        "segdl single": [*segdl, "--engine", "single"],
    }
    if not Path("/usr/bin/time").exists():
        raise SystemExit("GNU time is needed: apt-get install time")
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
        found["curl"] = [
            "curl",
            "-sS",
            "--cacert",
            str(cafile),
            "-o",
            str(out / Path(url).name),
            url,
        ]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dest", default="/dev/shm", help="where downloads are written")
    parser.add_argument("--scenarios", default="http,https")
    args = parser.parse_args()
    size = parse_size(args.size)

    with tempfile.TemporaryDirectory(dir=args.dest) as dest, tempfile.TemporaryDirectory() as work:
        root = Path(dest) / "www"
        root.mkdir()
        digest = write_random_file(root / "file.bin", size)
        pair = make_self_signed(Path(work) / "tls")
        out = Path(dest) / "out"
        with Nginx(
            root,
            certfile=pair.certfile,
            keyfile=pair.keyfile,
            workers=2,
            access_log=False,
            workdir=Path(work) / "nginx",
        ) as nginx:
            urls = {"http": nginx.http_url("file.bin"), "https": nginx.https_url("file.bin")}
            rows = []
            for scenario in args.scenarios.split(","):
                commands = tools(urls[scenario], out, pair.certfile)
                runs: dict[str, list[Run]] = {name: [] for name in commands}
                for rep in range(args.reps):
                    order = list(commands) if rep % 2 == 0 else list(reversed(commands))
                    for name in order:
                        shutil.rmtree(out, ignore_errors=True)
                        out.mkdir()
                        runs[name].append(measure(commands[name], Path(work) / "time.txt"))
                        got = out / "file.bin"
                        assert got.stat().st_size == size, f"{name}: wrong size"
                        print(
                            f"  {scenario} {name} rep {rep + 1}: {runs[name][-1].wall:.2f} s",
                            file=sys.stderr,
                        )
                    # Check one result per rep fully: speed means nothing if the file is wrong.
                    h = hashlib.sha256()
                    with (out / "file.bin").open("rb") as f:
                        while block := f.read(8 * MIB):
                            h.update(block)
                    assert h.hexdigest() == digest, f"{order[-1]}: wrong content"
                base = statistics.median(r.wall for r in runs.get("aria2c -x16", runs[order[0]]))
                for name, measured in runs.items():
                    wall = statistics.median(r.wall for r in measured)
                    cpu = statistics.median(r.cpu for r in measured)
                    rss = max(r.rss_mib for r in measured)
                    rows.append(
                        (
                            scenario,
                            name,
                            size / wall / 1e6,
                            cpu / (size / 1024**3),
                            rss,
                            base / wall,
                        )
                    )
    print(f"\n{args.size} file, {args.reps} reps, destination {args.dest}, {os.cpu_count()} CPUs\n")
    print("| scenario | tool | MB/s (median) | CPU s/GiB | peak RSS MiB | speed vs aria2c |")
    print("|---|---|---:|---:|---:|---:|")
    for scenario, name, mbs, cpu, rss, ratio in rows:
        print(f"| {scenario} | {name} | {mbs:.0f} | {cpu:.2f} | {rss:.0f} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
