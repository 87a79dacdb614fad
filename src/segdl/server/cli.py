"""``segdl serve``: its arguments and its main, for ``segdl.cli.main`` to mount."""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.sizes import parse_size
from . import DEFAULT_PASSWORD

if TYPE_CHECKING:
    from .app import ServerInfo, ServeSettings
    from .wire import Scheme

# ``.app`` (trio-websocket, wsproto) is imported only when the server runs: every
# ``segdl get`` builds this parser, and should not pay for the server's imports.

__all__ = ["add_serve_arguments", "run_serve", "startup_warning"]

EXIT_OK = 0
EXIT_UNKNOWN = 1
EXIT_BAD_OPTION = 28


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=28888, help="port (default 28888)")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        metavar="DIR",
        help="models directory; downloads go to DIR/SD, DIR/LoRA, … (default ./models)",
    )
    parser.add_argument(
        "--password",
        default=DEFAULT_PASSWORD,
        help=f"the protocol's shared password (default {DEFAULT_PASSWORD}, as qDiffusion)",
    )
    parser.add_argument("--certfile", type=Path, help="TLS certificate (PEM): serve https/wss")
    parser.add_argument("--keyfile", type=Path, help="TLS private key (PEM)")
    parser.add_argument(
        "-j",
        "--max-concurrent-downloads",
        type=int,
        default=3,
        metavar="N",
        help="downloads at once; the rest wait (default 3)",
    )
    parser.add_argument(
        "--max-overall-download-limit",
        default="0",
        metavar="RATE",
        help="bytes a second for all downloads together, e.g. 10M (K, M, G; 0: no limit, the "
        "default). Clients can change it with the 'limit' request",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin whose pages may connect (repeatable; '*' for any). "
        "The server's own page always may",
    )


def _ssl_context(certfile: Path, keyfile: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


def startup_warning(host: str, password: str) -> str | None:
    from .app import is_loopback

    if is_loopback(host) or password != DEFAULT_PASSWORD:
        return None
    return (
        f"listening on {host} with the default password: anyone who can reach this port can "
        "download files onto this machine. Choose a password with --password."
    )


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted; return the exit code."""
    logging.basicConfig(level=logging.INFO, format="segdl serve: %(message)s", stream=sys.stderr)
    if args.keyfile is not None and args.certfile is None:
        print("segdl: error: --keyfile needs --certfile", file=sys.stderr)
        return EXIT_BAD_OPTION
    if args.max_concurrent_downloads < 1:
        print("segdl: error: --max-concurrent-downloads must be at least 1", file=sys.stderr)
        return EXIT_BAD_OPTION
    try:
        overall_limit = parse_size(args.max_overall_download_limit) or None
    except ValueError as exc:
        print(f"segdl: error: --max-overall-download-limit: {exc}", file=sys.stderr)
        return EXIT_BAD_OPTION
    try:
        context = _ssl_context(args.certfile, args.keyfile) if args.certfile else None
        args.models_dir.mkdir(parents=True, exist_ok=True)
    except (OSError, ssl.SSLError) as exc:
        print(f"segdl: error: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    warning = startup_warning(args.host, args.password)
    if warning:
        print(f"segdl serve: WARNING: {warning}", file=sys.stderr)
    from .app import ServeSettings

    settings = ServeSettings(
        host=args.host,
        port=args.port,
        models_dir=args.models_dir,
        ssl_context=context,
        max_concurrent=args.max_concurrent_downloads,
        allowed_origins=tuple(args.allow_origin),
        max_overall_download_limit=overall_limit,
    )
    print("segdl serve: deriving the key…", file=sys.stderr)
    from .wire import Scheme

    scheme = Scheme.from_password(args.password)
    failures: list[OSError] = []
    import trio  # here, not at the top: `segdl get` builds this parser too

    try:
        trio.run(partial(_main, settings, scheme))
    except* KeyboardInterrupt:
        pass  # Ctrl-C is how a server is stopped
    except* OSError as group:  # e.g. the port is taken
        failures.extend(_leaves(group))
    if failures:
        print(f"segdl: error: {failures[0]}", file=sys.stderr)
        return EXIT_UNKNOWN
    return EXIT_OK


def _leaves(group: BaseExceptionGroup[OSError]) -> list[OSError]:
    found: list[OSError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


async def _main(settings: ServeSettings, scheme: Scheme) -> None:
    import trio

    async with trio.open_nursery() as nursery:
        from .app import serve_segdl

        info: ServerInfo = await nursery.start(serve_segdl, settings, scheme)
        print(
            f"segdl serve: the page is at {info.url}, the protocol at "
            f"{'wss' if info.secure else 'ws'}://{info.url.split('://', 1)[1]} "
            f"(models in {settings.models_dir.resolve()})",
            file=sys.stderr,
        )
