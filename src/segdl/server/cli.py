"""``segdl serve``: its arguments and its main, for ``segdl.cli.main`` to mount."""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.proxyrules import ProxySettings
from ..core.sizes import parse_size
from ..engine.options import environment_proxies
from . import DEFAULT_PASSWORD

if TYPE_CHECKING:
    from .app import ServerInfo, ServeSettings
    from .wire import Scheme

# ``.app`` (trio-websocket, wsproto) is imported only when the server runs: every
# ``segdl get`` builds this parser, and should not pay for the server's imports.

__all__ = [
    "add_proxy_arguments",
    "add_serve_arguments",
    "proxies_from_args",
    "run_serve",
    "startup_warning",
]

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
    parser.add_argument(
        "--link-existing",
        action="store_true",
        help="a model already in another models folder (same sha256) is hard-linked into "
        "place instead of downloaded again",
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
        "--max-message-size",
        default="64M",
        metavar="SIZE",
        help="largest protocol message taken (K, M, G; default 64M); a larger one is answered "
        "with an error. qDiffusion sends 512 KiB upload chunks",
    )
    parser.add_argument(
        "--max-upload-size",
        default="64G",
        metavar="SIZE",
        help="largest model a client may upload (K, M, G; 0: no cap; default 64G)",
    )
    parser.add_argument(
        "--reconnect-grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long a client whose connection was lost may take to reconnect and get its "
        "replies (default 60, as sd-inference-server)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin whose pages may connect (repeatable; '*' for any). "
        "The server's own page always may",
    )
    parser.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="let clients download from private and loopback addresses although the server "
        "listens beyond loopback (link-local and cloud metadata addresses stay refused)",
    )
    add_proxy_arguments(parser)


def add_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "proxies",
        "as curl and aria2c: the flags override http_proxy, HTTPS_PROXY, ALL_PROXY and NO_PROXY "
        "(lower or upper case; http_proxy lower case only, as in curl). A proxy is "
        "[http://|socks5://|socks5h://][USER:PASSWORD@]HOST[:PORT]; an empty value means none",
    )
    group.add_argument(
        "--all-proxy", metavar="PROXY", help="proxy for every URL (default: $ALL_PROXY)"
    )
    group.add_argument(
        "--http-proxy", metavar="PROXY", help="proxy for http:// URLs (default: $http_proxy)"
    )
    group.add_argument(
        "--https-proxy", metavar="PROXY", help="proxy for https:// URLs (default: $HTTPS_PROXY)"
    )
    group.add_argument(
        "--no-proxy",
        metavar="LIST",
        help="hosts, domains, IP addresses and CIDR blocks reached without a proxy, separated "
        "by commas; '*' for all (default: $NO_PROXY)",
    )


def proxies_from_args(args: argparse.Namespace) -> ProxySettings:
    """The flags over the environment.  Raises ValueError (one line, no credentials)."""
    flags = ProxySettings.from_strings(
        all_proxy=args.all_proxy,
        http_proxy=args.http_proxy,
        https_proxy=args.https_proxy,
        no_proxy=args.no_proxy,
    )
    return flags.over(environment_proxies())


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
        max_message_size = parse_size(args.max_message_size)
        if max_message_size < 1024:
            raise ValueError("must be at least 1K")
    except ValueError as exc:
        print(f"segdl: error: --max-message-size: {exc}", file=sys.stderr)
        return EXIT_BAD_OPTION
    try:
        max_upload_size = parse_size(args.max_upload_size) or None
    except ValueError as exc:
        print(f"segdl: error: --max-upload-size: {exc}", file=sys.stderr)
        return EXIT_BAD_OPTION
    if not 0 <= args.reconnect_grace <= 86400:
        print("segdl: error: --reconnect-grace must be 0 to 86400 seconds", file=sys.stderr)
        return EXIT_BAD_OPTION
    try:
        context = _ssl_context(args.certfile, args.keyfile) if args.certfile else None
        args.models_dir.mkdir(parents=True, exist_ok=True)
    except (OSError, ssl.SSLError) as exc:
        print(f"segdl: error: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    from ..engine.options import Options

    try:
        options = Options(proxies=proxies_from_args(args))
    except ValueError as exc:
        print(f"segdl: error: {exc}", file=sys.stderr)
        return EXIT_BAD_OPTION
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
        link_existing=args.link_existing,
        max_message_size=max_message_size,
        max_upload_size=max_upload_size,
        reconnect_grace=args.reconnect_grace,
        options=options,
        allow_private_urls=args.allow_private_urls,
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
