"""``segdl`` command line: thin — parse, build Options, call the library, map exit codes.

Exit codes follow aria2c's table (reference/anchors.md §1.11); every failure prints one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NoReturn, TextIO

import trio

from ..api import DownloadHandle, open_manager
from ..core.events import Error, Event, Success
from ..core.folders import model_folder
from ..core.headers import parse_checksum, parse_size
from ..engine.options import Options, RetryPolicy
from ..errors import DownloadError
from ..server.cli import add_serve_arguments, run_serve
from .progressbar import ProgressBar, format_bytes

EXIT_OK = 0
EXIT_UNKNOWN = 1
EXIT_INTERRUPTED = 7
EXIT_BAD_OPTION = 28


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_OPTION, f"segdl: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="segdl",
        description="Fast, resumable, segmented downloads of large model files.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    get = sub.add_parser("get", help="download files (aria2c-style options)")
    get.add_argument(
        "urls", nargs="*", metavar="URL", help="URL; several URLs are mirrors of one file"
    )
    get.add_argument("-d", "--dir", default=".", help="directory to save into (default: .)")
    get.add_argument("-o", "--out", help="file name (default: from the server or the URL)")
    get.add_argument(
        "-x",
        "--max-connection-per-server",
        type=int,
        default=16,
        metavar="N",
        help="connections per file, 1-16 (default 16)",
    )
    get.add_argument(
        "-s",
        "--split",
        type=int,
        default=16,
        metavar="N",
        help="ranges to split a file into (default 16)",
    )
    get.add_argument(
        "-k",
        "--min-split-size",
        default="1M",
        metavar="SIZE",
        help="do not split ranges smaller than 2*SIZE (default 1M)",
    )
    get.add_argument(
        "-c",
        "--continue",
        dest="continue_",
        action="store_true",
        help="continue a partial file that has no control file",
    )
    get.add_argument(
        "--allow-overwrite", action="store_true", help="replace an existing file instead of failing"
    )
    get.add_argument(
        "-i",
        "--input-file",
        metavar="FILE",
        help="read URLs from FILE, one a line (tab-separated mirrors)",
    )
    get.add_argument(
        "-j",
        "--max-concurrent-downloads",
        type=int,
        default=5,
        metavar="N",
        help="files downloaded at once (default 5)",
    )
    get.add_argument("--checksum", metavar="TYPE=DIGEST", help="verify, e.g. sha-256=HEX")
    get.add_argument("--ca-certificate", metavar="FILE", help="extra CA certificates (PEM)")
    get.add_argument("--engine", choices=("native", "aria2c", "single"), default="native")
    get.add_argument(
        "--type",
        metavar="TYPE",
        help="model type: save into DIR/FOLDER (SD, LoRA, TI, SR, CN, HN, VAE, Detailer, "
        "or an alias such as checkpoint, lora, embedding, upscaler, controlnet)",
    )
    get.add_argument("--connect-timeout", type=float, default=30.0, metavar="SEC")
    get.add_argument(
        "-t",
        "--timeout",
        type=float,
        default=60.0,
        metavar="SEC",
        help="seconds without data before a connection is retried (default 60)",
    )
    get.add_argument("-m", "--max-tries", type=int, default=5, metavar="N")
    get.add_argument(
        "--civitai-token",
        default=os.environ.get("CIVITAI_TOKEN"),
        help="CivitAI API token (default: $CIVITAI_TOKEN)",
    )
    get.add_argument(
        "--hf-token",
        default=os.environ.get("HF_TOKEN"),
        help="Hugging Face token (default: $HF_TOKEN)",
    )
    get.add_argument("--json", action="store_true", help="print one JSON event per line")
    get.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")

    serve = sub.add_parser(
        "serve", help="WebSocket server for SD user interfaces, with a download page"
    )
    add_serve_arguments(serve)

    demo = sub.add_parser("demo", help="serve a generated file locally and download it")
    demo.add_argument("--size", default="256M", help="size of the generated file (default 256M)")
    demo.add_argument(
        "--rate",
        default="4M",
        help="per-connection speed limit of the local server (default 4M/s)",
    )
    demo.add_argument(
        "-d", "--dir", default="segdl-demo", help="where to save (default segdl-demo)"
    )
    return parser


@dataclass
class _Job:
    urls: list[str]
    out: str | None = None


@dataclass
class _Reporter:
    """Turns events into terminal output: a bar on a TTY, JSON lines, or nothing."""

    json_lines: bool
    quiet: bool
    stdout: TextIO
    stderr: TextIO
    bar: ProgressBar | None = None
    multiple: bool = False
    finished: list[str] = field(default_factory=list)

    def __call__(self, download_id: int, event: Event) -> None:
        if self.json_lines:
            data = event.to_dict()
            if self.multiple:
                data["download"] = download_id
            self.stdout.write(json.dumps(data) + "\n")
            self.stdout.flush()
            return
        if self.bar is not None:
            self.bar.handle(download_id, event)
        if isinstance(event, Success) and not self.quiet:
            line = f"Download complete: {event.path} ({format_bytes(event.size)})"
            if event.sha256:
                line += f" sha256={event.sha256}"
            print(line, file=self.stdout, flush=True)
        elif isinstance(event, Error) and self.bar is not None:
            self.bar.clear()


def read_input_file(path: str) -> list[_Job]:
    """aria2c's input file, the basic form: a URL a line, mirrors separated by tabs."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise DownloadError(f"cannot read input file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise DownloadError(f"input file {path} is not UTF-8 text") from exc
    jobs: list[_Job] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t":
            key, _, value = line.strip().partition("=")
            if not jobs or key not in ("out",) or not value:
                raise DownloadError(
                    f"{path}:{number}: unsupported option line {line.strip()!r} "
                    "(only out= is supported)"
                )
            jobs[-1].out = value
            continue
        jobs.append(_Job(urls=[u for u in line.split("\t") if u.strip()]))
    return jobs


async def _run_get(
    args: argparse.Namespace, jobs: list[_Job], base: Options, report: _Reporter
) -> int:
    handles: list[DownloadHandle] = []
    async with open_manager(max_concurrent=args.max_concurrent_downloads) as manager:
        for number, job in enumerate(jobs, 1):
            handle = manager.submit(
                job.urls,
                args.dir,
                out=job.out or args.out,
                options=base,
                engine=args.engine,
                on_event=partial(report, number),
                civitai_token=args.civitai_token,
                hf_token=args.hf_token,
            )
            handles.append(handle)
    code = EXIT_OK
    for handle in handles:
        if handle.error is not None:
            print(f"segdl: error: {handle.error}", file=report.stderr, flush=True)
            if code == EXIT_OK:
                code = handle.error.exit_code
    return code


def _options_from_args(args: argparse.Namespace) -> Options:
    try:
        checksum = parse_checksum(args.checksum) if args.checksum else None
        if args.ca_certificate and not os.path.isfile(args.ca_certificate):
            raise ValueError(f"CA certificate file not found: {args.ca_certificate}")
        return Options(
            connections=args.max_connection_per_server,
            split=args.split,
            min_split_size=parse_size(args.min_split_size),
            continue_partial=args.continue_,
            allow_overwrite=args.allow_overwrite,
            checksum=checksum,
            ca_certificate=args.ca_certificate,
            connect_timeout=args.connect_timeout,
            read_timeout=args.timeout,
            retry=RetryPolicy(max_tries=max(1, args.max_tries)),
        )
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc


class _UsageError(Exception):
    pass


def cmd_get(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    options = _options_from_args(args)
    if args.out and len(args.urls) > 1 and args.input_file:
        raise _UsageError("-o cannot be used with several files")
    jobs: list[_Job] = [_Job(urls=list(args.urls))] if args.urls else []
    if args.input_file:
        jobs.extend(read_input_file(args.input_file))
    if not jobs:
        raise _UsageError("no URL given (pass URLs or -i FILE)")
    if args.max_concurrent_downloads < 1:
        raise _UsageError("-j must be at least 1")
    if args.type:
        try:
            args.dir = os.path.join(args.dir, model_folder(args.type))
        except ValueError as exc:
            raise _UsageError(str(exc)) from exc
    tty = stderr.isatty() and not args.json and not args.quiet
    report = _Reporter(
        json_lines=args.json,
        quiet=args.quiet,
        stdout=stdout,
        stderr=stderr,
        bar=ProgressBar(stderr) if tty else None,
        multiple=len(jobs) > 1,
    )
    return trio.run(_run_get, args, jobs, options, report)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "get":
            code = cmd_get(args, sys.stdout, sys.stderr)
        elif args.command == "serve":
            code = run_serve(args)
        elif args.command == "demo":
            from .demo import run_demo

            code = run_demo(args)
        else:  # pragma: no cover - argparse enforces the choices
            code = EXIT_UNKNOWN
    except _UsageError as exc:
        print(f"segdl: error: {exc}", file=sys.stderr)
        code = EXIT_BAD_OPTION
    except DownloadError as exc:
        print(f"segdl: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("\nsegdl: interrupted; run the same command again to resume", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)


if __name__ == "__main__":
    main()
