"""``segdl`` command line: thin — parse, build Options, call the library, map exit codes.

Exit codes follow aria2c's table (reference/anchors.md §1.11); every failure prints one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

from ..core.folders import AUTO, model_folder
from ..core.sizes import parse_size
from ..engine.options import ModelFileOptions, Options, RetryPolicy
from ..errors import DownloadError, FileExists
from ..server.cli import add_proxy_arguments, add_serve_arguments, proxies_from_args, run_serve
from . import headstart

if TYPE_CHECKING:
    from ..batch import BatchJob, BatchResult
    from ..core.checksum import Checksum
    from ..core.events import Event
    from ..engine.throttle import RateLimit
    from .progressbar import ProgressBar

# The rest (trio, the engine, httpx, the sources, the batch display) is imported where it is
# used, after `segdl get` has sent its first request (see .headstart).

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
        "--allow-overwrite",
        action="store_true",
        help="replace an existing file segdl cannot vouch for, once the new one is complete "
        "and verified (without it: exit 13)",
    )
    get.add_argument(
        "-i",
        "--input-file",
        metavar="FILE",
        help="read files from FILE (aria2c's format): a line of tab-separated mirror URLs per "
        "file, then indented name=value lines (dir, out, checksum, max-download-limit, split, "
        "max-connection-per-server)",
    )
    get.add_argument(
        "-j",
        "--max-concurrent-downloads",
        type=int,
        default=5,
        metavar="N",
        help="files downloaded at once (default 5)",
    )
    get.add_argument(
        "--max-overall-download-limit",
        default="0",
        metavar="RATE",
        help="bytes/s for all downloads together, e.g. 2M or 512K (default 0: no limit)",
    )
    get.add_argument(
        "--max-download-limit",
        default="0",
        metavar="RATE",
        help="bytes/s for each download, e.g. 2M or 512K (default 0: no limit)",
    )
    get.add_argument("--checksum", metavar="TYPE=DIGEST", help="verify, e.g. sha-256=HEX")
    get.add_argument("--ca-certificate", metavar="FILE", help="extra CA certificates (PEM)")
    get.add_argument("--engine", choices=("native", "aria2c", "single"), default="native")
    get.add_argument(
        "--type",
        metavar="TYPE",
        help="model type: save into DIR/FOLDER (SD, LoRA, TI, SR, CN, HN, VAE, Detailer, "
        "or an alias such as checkpoint, lora, embedding, upscaler, controlnet); auto: the "
        "folder the CivitAI model's type names",
    )
    get.add_argument(
        "--no-metadata",
        action="store_true",
        help="do not write NAME.civitai.info, NAME.json and NAME.preview.* beside the model",
    )
    get.add_argument(
        "--link-existing",
        action="store_true",
        help="a model already under -d DIR with the published sha256 is hard-linked (or "
        "copied) into place instead of downloaded again",
    )
    get.add_argument(
        "--nsfw-preview",
        action="store_true",
        help="the preview may be the model's first image even if it is not safe for work",
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
    add_proxy_arguments(get)
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
class _Reporter:
    """One file's events as terminal output: a bar on a TTY, JSON lines, or nothing.

    (A batch has its own, :class:`~segdl.cli.batchprogress.BatchReporter`.)
    """

    json_lines: bool
    quiet: bool
    stdout: TextIO
    stderr: TextIO
    bar: ProgressBar | None = None

    def __call__(self, download_id: int, event: Event) -> None:
        from ..core.events import Failed, Success, Warned
        from .progressbar import format_bytes

        if self.json_lines:
            data = event.to_dict()
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
        elif isinstance(event, Failed) and self.bar is not None:
            self.bar.clear()
        elif isinstance(event, Warned) and not self.quiet:
            if self.bar is not None:
                self.bar.clear()
            print(f"segdl: warning: {event.message}", file=self.stderr, flush=True)


async def _run_batch(
    jobs: list[BatchJob],
    options: Options,
    args: argparse.Namespace,
    limits: tuple[RateLimit, ...],
    on_event: Callable[[int, Event], None],
    model_files: ModelFileOptions,
) -> BatchResult:
    from ..batch import download_batch

    return await download_batch(
        jobs,
        max_concurrent=args.max_concurrent_downloads,
        options=options,
        engine=args.engine,
        on_event=on_event,
        limits=limits,
        civitai_token=args.civitai_token,
        hf_token=args.hf_token,
        model_files=model_files,
    )


def _rate(text: str, flag: str) -> int | None:
    """An aria2 rate (``2M``, ``512K``, bytes/s); 0 means no limit."""
    try:
        rate = parse_size(text)
    except ValueError as exc:
        raise _UsageError(f"{flag}: {exc}") from exc
    return rate or None


def _options_from_args(args: argparse.Namespace) -> Options:
    try:
        if args.ca_certificate and not os.path.isfile(args.ca_certificate):
            raise ValueError(f"CA certificate file not found: {args.ca_certificate}")
        return Options(
            connections=args.max_connection_per_server,
            split=args.split,
            min_split_size=parse_size(args.min_split_size),
            continue_partial=args.continue_,
            allow_overwrite=args.allow_overwrite,
            ca_certificate=args.ca_certificate,
            connect_timeout=args.connect_timeout,
            read_timeout=args.timeout,
            retry=RetryPolicy(max_tries=max(1, args.max_tries)),
            max_download_limit=_rate(args.max_download_limit, "--max-download-limit"),
            proxies=proxies_from_args(args),
        )
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc


class _UsageError(Exception):
    pass


def _collect_jobs(args: argparse.Namespace) -> list[BatchJob]:
    """The URLs given as arguments (one file, mirrors), then the input file's entries."""
    from ..batch import BatchJob, check_targets, load_input_file
    from ..core.checksum import parse_checksum
    from ..core.inputfile import InputFileError

    try:
        checksum = parse_checksum(args.checksum) if args.checksum else None
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc
    jobs: list[BatchJob] = []
    if args.urls:
        jobs.append(BatchJob(tuple(args.urls), args.dir))
    if args.input_file:
        try:
            jobs.extend(load_input_file(args.input_file, directory=args.dir))
        except InputFileError as exc:
            raise _UsageError(str(exc)) from exc
    if not jobs:
        raise _UsageError("no URL given (pass URLs or -i FILE)")
    if args.out or checksum:
        # -o and --checksum name one file: the one on the command line, or the only one.
        if not args.urls and len(jobs) > 1:
            raise _UsageError(
                "-o and --checksum apply to one file; in an input file with several files "
                "use indented out= and checksum= lines"
            )
        jobs[0] = _with_file_options(jobs[0], args.out, checksum)
    try:
        check_targets(jobs)
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc
    return jobs


def _with_file_options(job: BatchJob, out: str | None, checksum: Checksum | None) -> BatchJob:
    # As in aria2c, an entry's own options win over the command line's.
    return replace(job, out=job.out or out, checksum=job.checksum or checksum)


def cmd_get(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    options = _options_from_args(args)
    overall = _rate(args.max_overall_download_limit, "--max-overall-download-limit")
    if args.max_concurrent_downloads < 1:
        raise _UsageError("-j must be at least 1")
    auto = bool(args.type) and args.type.strip().lower() == AUTO
    model_files = ModelFileOptions(
        metadata=not args.no_metadata,
        nsfw_preview=args.nsfw_preview,
        auto_folder=auto,
        # "Have it already?" looks under -d: the models directory when --type is given.
        models_root=Path(args.dir),
        link_existing=args.link_existing,
    )
    if args.type and not auto:
        try:
            args.dir = os.path.join(args.dir, model_folder(args.type))
        except ValueError as exc:
            raise _UsageError(str(exc)) from exc
    headstart.begin(args, options)
    import trio

    from ..engine.throttle import RateLimit
    from .batchprogress import BatchReporter, BatchView, LiveDisplay

    jobs = _collect_jobs(args)

    # One RateLimit shared by every connection of every download: an overall limit.
    limits = (RateLimit(overall),) if overall else ()
    tty = stderr.isatty() and not args.json and not args.quiet
    if args.input_file is None and len(jobs) == 1:
        return _get_one(args, jobs, options, limits, stdout, stderr, tty, model_files)
    display = LiveDisplay(stderr, BatchView.for_jobs(jobs)) if tty else None
    report = BatchReporter(
        json_lines=args.json, quiet=args.quiet, stdout=stdout, stderr=stderr, display=display
    )
    try:
        result = trio.run(_run_batch, jobs, options, args, limits, report, model_files)
    finally:
        report.close()
    report.finish(result)
    return result.exit_code


def _get_one(
    args: argparse.Namespace,
    jobs: list[BatchJob],
    options: Options,
    limits: tuple[RateLimit, ...],
    stdout: TextIO,
    stderr: TextIO,
    tty: bool,
    model_files: ModelFileOptions,
) -> int:
    """``segdl get URL``: a one-line bar, a completion line, one error line."""
    from .progressbar import ProgressBar

    report = _Reporter(
        json_lines=args.json,
        quiet=args.quiet,
        stdout=stdout,
        stderr=stderr,
        bar=ProgressBar(stderr) if tty else None,
    )

    def on_event(index: int, event: Event) -> None:
        report(index + 1, event)

    import trio

    result = trio.run(_run_batch, jobs, options, args, limits, on_event, model_files)
    for outcome in result.failed:
        assert outcome.error is not None
        print(f"segdl: error: {error_line(outcome.error)}", file=stderr, flush=True)
    return result.exit_code


# aria2c refuses an existing file without -c or --allow-overwrite (exit 13); so does segdl,
# unless its record shows the file is the server's current version.  The line says what to do.
EXISTS_HINT = (
    "run again with --allow-overwrite to download it beside the old file and replace that "
    "once the new one is complete and verified (or -c to continue it, as aria2c does)"
)


def error_line(error: DownloadError) -> str:
    """The error as ``segdl get`` prints it: the message, and what to do when it says."""
    if isinstance(error, FileExists):
        return f"{error}; {EXISTS_HINT}"
    return str(error)


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
