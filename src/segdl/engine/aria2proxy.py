"""segdl's proxy settings as aria2c's options, for the private conf file of the aria2c engine.

aria2c takes ``--http-proxy``/``--https-proxy`` (HTTP proxies only: no SOCKS) and a
``--no-proxy`` list whose rules differ from curl's: a name without a leading dot matches only
itself, ``.example.com`` only names below it, and CIDR blocks numeric hosts.  Each of segdl's
rules (``example.com`` matches itself and below) becomes ``example.com,.example.com``; blocks
are passed as they are.  The proxy's user and password go in ``*-proxy-user`` and
``*-proxy-passwd`` lines of the conf file (mode 0600, removed once aria2c has read it), never
on aria2c's command line, which every local user can read.

aria2c also reads ``http_proxy``, ``https_proxy``, ``all_proxy`` and ``no_proxy`` from its
environment; :func:`aria2_environment` removes them, so that segdl's decision (flags over the
environment, curl's rules) is the only one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..core.proxyrules import ProxySettings, ProxyURL
from ..errors import DownloadError, redact_url

__all__ = ["aria2_environment", "aria2_proxy_conf", "check_aria2_proxies"]

_PROXY_VARIABLES = frozenset(
    name
    for base in ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")
    for name in (base, base.upper())
)


def check_aria2_proxies(proxies: ProxySettings, uris: Sequence[str]) -> None:
    """Refuse, in one line, a download whose URLs would go through a SOCKS proxy."""
    for uri in uris:
        proxy = proxies.proxy_for_url(uri)
        if proxy is not None and proxy.is_socks:
            raise DownloadError(
                f"the aria2c engine cannot use a SOCKS proxy ({proxy.display} for "
                f"{redact_url(uri)}); use --engine native",
                url=uri,
            )


def aria2_proxy_conf(proxies: ProxySettings) -> str:
    """Lines for aria2c's conf file (``name=value``), empty when no proxy applies."""
    if proxies.no_proxy is not None and proxies.no_proxy.match_all:
        return ""
    lines: list[str] = []
    for scheme in ("http", "https"):
        chosen = _scheme_proxy(proxies, scheme)
        if chosen is None or chosen.is_socks:
            continue
        lines += _proxy_lines(f"{scheme}-proxy", chosen)
    if not lines:
        return ""
    rules = _no_proxy_rules(proxies)
    if rules:
        lines.append("no-proxy=" + ",".join(rules))
    return "".join(f"{line}\n" for line in lines)


def aria2_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """*environ* without the proxy variables aria2c would read by itself."""
    return {k: v for k, v in environ.items() if k not in _PROXY_VARIABLES}


def _scheme_proxy(proxies: ProxySettings, scheme: str) -> ProxyURL | None:
    specific = proxies.https_proxy if scheme == "https" else proxies.http_proxy
    chosen = specific if specific is not None else proxies.all_proxy
    return None if chosen is None or chosen.is_direct else chosen


def _proxy_lines(option: str, proxy: ProxyURL) -> list[str]:
    lines = [f"{option}={proxy.display}"]
    if proxy.username is not None:
        user, password = proxy.username, proxy.password or ""
        if any(c in user + password for c in "\r\n\0"):
            raise DownloadError(
                f"the credentials of proxy {proxy.display} contain a line break; "
                "aria2c cannot take them (use --engine native)"
            )
        # After the URL: aria2c lets the later of the two set the credentials.
        lines += [f"{option}-user={user}", f"{option}-passwd={password}"]
    return lines


def _no_proxy_rules(proxies: ProxySettings) -> list[str]:
    rules: list[str] = []
    no_proxy = proxies.no_proxy
    if no_proxy is None:
        return rules
    for name in no_proxy.names:
        rules += [name, "." + name]
    rules += [str(network) for network in no_proxy.networks]
    return rules
