"""Before and after: two installs of segdl and aria2c on issue 13's paths, in alternation.

    python benchmarks/ab.py --before /path/to/old/venv/bin/segdl [--reps 5]
        [--scenarios wan8,wan64,wan256,limit,crawl,resume] [--dest /dev/shm]

``benchmarks/wan.py`` compares the installed segdl with aria2c; judging a change needs the
old and the new segdl on the same path in the same minutes, since this 2-core VM's speed
drifts by tens of percent within an hour.  Each repetition runs every tool once, in an
order that rotates, so no tool always goes first.  The paths are wan.py's (its helpers
make them): the WAN relay (80 ms RTT, 6 MiB/s per connection) for 8, 64 and 256 MiB; nginx
``limit_rate 8m``, 256 MiB; the crawl (16 × 4 MiB/s, one connection at 8 KiB/s), 64 MiB;
kill-and-resume (nginx ``limit_rate 2m``, 5 SIGKILLs at 0.3–1.5 s, then ``-c``), 256 MiB;
``cpu``: loopback HTTPS, 1 GiB, CPU-s per GiB.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import wan
from wan import (
    ARIA2C,
    LOG_FORMAT,
    MIB,
    Run,
    Workspace,
    human,
    measure,
    median,
    served_bytes,
    wait_for_quiet,
    wan_relay,
    workspace,
)

from segdl.testing.nginx import Nginx

BEFORE = "segdl-before"
AFTER = "segdl"
TOOLS = [AFTER, BEFORE, ARIA2C]


def command(
    tool: str, url: str, out: Path, cafile: Path, before: str, *, resume: bool = False
) -> list[str]:
    argv = wan.command(AFTER if tool == BEFORE else tool, url, out, cafile, resume=resume)
    if tool == BEFORE:
        argv[0] = before
    return argv


def rotate(tools: Sequence[str], rep: int) -> list[str]:
    shift = rep % len(tools)
    return [*tools[shift:], *tools[:shift]]


class Table:
    def __init__(self) -> None:
        self.runs: dict[str, list[Run | None]] = {}
        self.extra: dict[str, list[float]] = {}

    def add(self, tool: str, run: Run | None, extra: float | None = None) -> None:
        self.runs.setdefault(tool, []).append(run)
        if extra is not None:
            self.extra.setdefault(tool, []).append(extra)

    def rows(self, label: str, size: int, limit: float | None, extra_name: str) -> list[str]:
        lines = []
        base = median([r.wall for r in self.runs.get(ARIA2C, []) if r is not None])
        for tool, runs in self.runs.items():
            walls = [r.wall for r in runs if r is not None]
            wall = median(walls)
            each = " / ".join("cut" if r is None else f"{r.wall:.2f}" for r in runs)
            cpu = median([r.cpu for r in runs if r is not None])
            rss = max((r.rss_mib for r in runs if r is not None), default=0.0)
            share = f"{size / wall / limit:.0%}" if limit else ""
            extra = median(self.extra.get(tool, []))
            extra_text = "" if extra != extra else f"{extra:.3f}"
            lines.append(
                f"| {label} | {tool} | {wall:.2f} | {each} | {wall / base:.2f} | {share} | "
                f"{cpu:.2f} | {rss:.0f} | {extra_text} |"
            )
        return [
            f"| path | tool | wall s (median) | each run | ÷ aria2c | % of limit | CPU-s | "
            f"RSS MiB | {extra_name} |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|",
            *lines,
        ]


def run_wan(ws: Workspace, ng: Nginx, size: int, reps: int, before: str) -> list[str]:
    name = ws.file_for(size)
    table = Table()
    rate = 6 * MIB
    with wan_relay(ng.https_port, ws.work / "relay.log", rtt=0.08, rate=rate) as relay:
        for rep in range(reps):
            for tool in rotate(TOOLS, rep):
                out = ws.fresh_out()
                closed = len(relay.closed_connections())
                argv = command(tool, relay.url(name), out, ws.pair.certfile, before)
                run = measure(argv, ws.work / "t")
                ws.check(f"wan {tool}", name, size)
                wait_for_quiet(relay.log, settle=0.3)
                sent = sum(c["to_client"] for c in relay.closed_connections()[closed:])
                table.add(tool, run, sent / size)
                print(f"wan {human(size)} {tool} {run.wall if run else 'cut'}", file=sys.stderr)
    return table.rows(f"80 ms, 6 MiB/s/conn, {human(size)}", size, 16 * rate, "served ÷ size")


def run_limit(ws: Workspace, reps: int, before: str) -> list[str]:
    size = 256 * MIB
    name = ws.file_for(size)
    table = Table()
    with ws.nginx("limit", limit_rate="8m") as ng:
        for rep in range(reps):
            for tool in rotate(TOOLS, rep):
                out = ws.fresh_out()
                run = measure(
                    command(tool, ng.https_url(name), out, ws.pair.certfile, before),
                    ws.work / "t",
                )
                ws.check(f"limit {tool}", name, size)
                table.add(tool, run)
                print(f"limit {tool} {run.wall if run else 'cut'}", file=sys.stderr)
    return table.rows("nginx limit_rate 8m, 256 MiB", size, 16 * 8 * MIB, "")


def run_crawl(ws: Workspace, ng: Nginx, reps: int, before: str, timeout: float) -> list[str]:
    size = 64 * MIB
    name = ws.file_for(size)
    lines: list[str] = []
    for crawler in (False, True):
        table = Table()
        for rep in range(reps):
            for tool in rotate(TOOLS, rep):
                log = ws.work / "relay-crawl.log"
                with wan_relay(
                    ng.https_port, log, rtt=0.0, rate=4 * MIB, crawl="3" if crawler else ""
                ) as relay:
                    out = ws.fresh_out()
                    argv = command(tool, relay.url(name), out, ws.pair.certfile, before)
                    run = measure(argv, ws.work / "t", timeout=timeout)
                    if run is not None:
                        ws.check(f"crawl {tool}", name, size)
                    wait_for_quiet(log, settle=0.3)
                sent = sum(c["to_client"] for c in relay.closed_connections())
                table.add(tool, run, sent / size)
                print(f"crawl={crawler} {tool} {run.wall if run else 'cut'}", file=sys.stderr)
        label = "64 MiB, 16 × 4 MiB/s" + (", one at 8 KiB/s" if crawler else "")
        lines += table.rows(label, size, None, "served ÷ size")
    return lines


def run_resume(ws: Workspace, reps: int, before: str, seed: int) -> list[str]:
    size = 256 * MIB
    name = ws.file_for(size)
    table = Table()
    with ws.nginx("resume", limit_rate="2m", log_format=LOG_FORMAT) as ng:
        for rep in range(reps):
            rng = random.Random(seed + rep)
            kill_after = [rng.uniform(0.3, 1.5) for _ in range(5)]
            for tool in rotate(TOOLS, rep):
                out = ws.fresh_out()
                argv = command(tool, ng.https_url(name), out, ws.pair.certfile, before, resume=True)
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
                ws.check(f"resume {tool}", name, size)
                wait_for_quiet(ng.access_log_path, settle=0.5)
                served, _ = served_bytes(ng.access_log_path, offset)
                table.add(tool, run, served / size)
                print(f"resume {tool} served {served / size:.3f}", file=sys.stderr)
    return table.rows("2 MiB/s/conn, 5 kills, 256 MiB", size, None, "served ÷ size")


def run_cpu(ws: Workspace, ng: Nginx, reps: int, before: str) -> list[str]:
    """Loopback HTTPS, 1 GiB into the destination: CPU-s per GiB (user + system)."""
    size = 1024 * MIB
    name = ws.file_for(size)
    table = Table()
    for rep in range(reps):
        for tool in rotate(TOOLS, rep):
            out = ws.fresh_out()
            run = measure(
                command(tool, ng.https_url(name), out, ws.pair.certfile, before), ws.work / "t"
            )
            ws.check(f"cpu {tool}", name, size)
            table.add(tool, run, None if run is None else run.cpu)
            print(f"cpu {tool} {run.cpu if run else 'cut'}", file=sys.stderr)
    return table.rows("loopback HTTPS, 1 GiB", size, None, "CPU-s per GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--before", required=True, help="the old install's segdl command (none: skip it)"
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--scenarios", default="wan8,wan64,wan256,limit,crawl,resume")
    parser.add_argument("--dest", default="/dev/shm")
    parser.add_argument("--crawl-timeout", type=float, default=240.0)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    if args.before == "none":
        TOOLS.remove(BEFORE)
    chosen = [c.strip() for c in args.scenarios.split(",") if c.strip()]
    sections: list[tuple[str, list[str]]] = []
    with workspace(Path(args.dest)) as (ws, ng):
        for scenario in chosen:
            if scenario.startswith("wan"):
                size = int(scenario[3:]) * MIB
                sections.append((scenario, run_wan(ws, ng, size, args.reps, args.before)))
            elif scenario == "limit":
                sections.append((scenario, run_limit(ws, args.reps, args.before)))
            elif scenario == "crawl":
                rows = run_crawl(ws, ng, args.reps, args.before, args.crawl_timeout)
                sections.append((scenario, rows))
            elif scenario == "cpu":
                sections.append((scenario, run_cpu(ws, ng, args.reps, args.before)))
            elif scenario == "resume":
                sections.append((scenario, run_resume(ws, args.reps, args.before, args.seed)))
            else:
                raise SystemExit(f"unknown scenario {scenario}")
    for title, lines in sections:
        print(f"#### {title}\n")
        print("\n".join(lines))
        print()


if __name__ == "__main__":
    main()
