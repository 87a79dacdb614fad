"""aria2c's proxy flags, shared by ``segdl get`` and ``segdl serve``."""

from __future__ import annotations

import argparse

from ..core.proxyrules import ProxySettings
from ..engine.options import environment_proxies

__all__ = ["add_proxy_arguments", "proxies_from_args"]


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
