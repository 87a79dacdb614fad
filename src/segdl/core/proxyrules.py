"""Which proxy a request goes through, as curl decides it.  Pure: the environment is passed in.

Proxy URLs are ``[scheme://][user:password@]host[:port]`` with scheme ``http`` (the default,
as in curl), ``socks5`` (names resolved here) or ``socks5h`` (names resolved by the proxy);
the port defaults to 1080, curl's default for every proxy type.  Anything else is refused with
one line that never repeats the credentials.

The choice for a URL (curl's rules, ``curl(1)`` "ENVIRONMENT" and ``CURLOPT_NOPROXY``):

* the scheme's own proxy (``http_proxy`` for ``http://`` URLs, ``https_proxy`` for
  ``https://``), else ``all_proxy``;
* aria2c's flags (``--http-proxy``, ``--https-proxy``, ``--all-proxy``, ``--no-proxy``) override
  the environment variable of the same meaning, one by one (:meth:`ProxySettings.over`);
* environment variables are read lower case first, then upper case, except ``http_proxy``,
  which curl reads in lower case only: a CGI program gets the client's ``Proxy:`` request
  header as ``HTTP_PROXY`` ("httpoxy", CVE-2016-5385), so upper case is never trusted for it;
* an empty environment variable counts as unset; an empty flag is a setting: ``--all-proxy ""``
  means no proxy (aria2c: "to override a previously defined proxy, use an empty string"), and
  ``--no-proxy ""`` overrides a ``NO_PROXY`` from the environment (as curl's ``--noproxy ""``);
* ``no_proxy`` is a list separated by commas (or blanks).  ``*`` alone means no proxy at all.
  A name matches itself and every name below it (``example.com`` matches ``example.com`` and
  ``a.example.com``, not ``notexample.com``); a leading dot and trailing dots are ignored,
  case too.  An IP address (IPv6 without brackets, brackets tolerated) or a CIDR block
  (``10.0.0.0/8``) matches URLs whose host is such a literal address: curl never resolves a
  name to compare it with an address, nor does this.  Ports are not part of curl's rules: an
  entry with a port (``host:8080``) matches nothing, as in curl.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import unquote, urlsplit

__all__ = [
    "DEFAULT_PROXY_PORT",
    "DIRECT",
    "PROXY_SCHEMES",
    "NoProxy",
    "ProxyConfigError",
    "ProxySettings",
    "ProxyURL",
    "parse_no_proxy",
    "parse_proxy_url",
]

DEFAULT_PROXY_PORT = 1080
PROXY_SCHEMES = ("http", "socks5", "socks5h")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")


class ProxyConfigError(ValueError):
    """A proxy setting that cannot be used; the message is one line without credentials."""


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """A parsed proxy.  ``repr`` and :attr:`display` never show the password."""

    scheme: str  # one of PROXY_SCHEMES
    host: str  # a name, or an IP address (IPv6 without brackets)
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        """``scheme://host:port``: how messages and logs name the proxy."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def is_direct(self) -> bool:
        """The explicit "no proxy" of an empty flag (:data:`DIRECT`)."""
        return self.scheme == "direct"

    @property
    def is_socks(self) -> bool:
        return self.scheme in ("socks5", "socks5h")

    @property
    def has_credentials(self) -> bool:
        return self.username is not None


#: An empty proxy flag: no proxy, whatever the environment says.
DIRECT = ProxyURL(scheme="direct", host="", port=0)


def parse_proxy_url(text: str, *, source: str = "proxy") -> ProxyURL:
    """Parse a proxy URL; *source* names the setting in errors (``--all-proxy``, ``NO_PROXY``).

    Raises :class:`ProxyConfigError` with one line that shows neither user nor password.
    """
    value = text.strip()
    if not value:
        raise ProxyConfigError(f"{source}: empty proxy URL")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise ProxyConfigError(f"{source}: the proxy URL contains spaces or control characters")
    if "://" not in value:
        value = "http://" + value  # curl's default proxy scheme
    scheme = value.split("://", 1)[0].lower()
    if scheme not in PROXY_SCHEMES:
        raise ProxyConfigError(
            f"{source}: unsupported proxy scheme {scheme[:20]!r}: use http://, socks5:// or "
            "socks5h://"
        )
    try:
        parts = urlsplit(value)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise ProxyConfigError(f"{source}: invalid proxy URL (bad host or port)") from None
    if not host:
        raise ProxyConfigError(f"{source}: the proxy URL has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyConfigError(f"{source}: a proxy URL is scheme://[user:password@]host[:port]")
    if port == 0:
        raise ProxyConfigError(f"{source}: invalid proxy port 0")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        password = ""
    return ProxyURL(
        scheme=scheme,
        host=host.lower().rstrip(".") or host,
        port=port or DEFAULT_PROXY_PORT,
        username=username,
        password=password,
    )


@dataclass(frozen=True, slots=True)
class NoProxy:
    """A parsed ``no_proxy`` list (see the module's docstring for the rules)."""

    match_all: bool = False
    names: tuple[str, ...] = ()  # lower case, no leading or trailing dots
    networks: tuple[IPNetwork, ...] = ()

    def matches(self, host: str) -> bool:
        """Should a request to *host* (a URL's host, IPv6 with or without brackets) go direct?"""
        if self.match_all:
            return True
        address = _ip_literal(host)
        if address is not None:
            return any(address in network for network in self.networks)
        name = host.lower().rstrip(".")
        if not name:
            return False
        return any(name == rule or name.endswith("." + rule) for rule in self.names)


def parse_no_proxy(text: str) -> NoProxy:
    """Parse a ``no_proxy`` list.  Entries that are neither names nor addresses are ignored,
    as curl ignores them (they can match nothing)."""
    if text.strip() == "*":
        return NoProxy(match_all=True)
    names: list[str] = []
    networks: list[IPNetwork] = []
    for token in text.replace(",", " ").split():
        network = _ip_network(token)
        if network is not None:
            networks.append(network)
            continue
        name = token.lower().strip(".")
        if name and ":" not in name and "/" not in name:
            names.append(name)
    return NoProxy(names=tuple(names), networks=tuple(networks))


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _ip_network(token: str) -> IPNetwork | None:
    text = token
    if text.startswith("["):
        # "[::1]" or "[fd00::]/8": brackets tolerated around the address.
        address, _, rest = text[1:].partition("]")
        text = address + rest
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxySettings:
    """The four proxy settings; None means "not set here" (see :meth:`over`)."""

    all_proxy: ProxyURL | None = None
    http_proxy: ProxyURL | None = None
    https_proxy: ProxyURL | None = None
    no_proxy: NoProxy | None = None

    @classmethod
    def from_strings(
        cls,
        *,
        all_proxy: str | None = None,
        http_proxy: str | None = None,
        https_proxy: str | None = None,
        no_proxy: str | None = None,
    ) -> ProxySettings:
        """Settings from aria2c-style flag values (None: flag not given)."""
        return cls(
            all_proxy=_proxy_or_none(all_proxy, "--all-proxy"),
            http_proxy=_proxy_or_none(http_proxy, "--http-proxy"),
            https_proxy=_proxy_or_none(https_proxy, "--https-proxy"),
            # An explicit empty --no-proxy "" is a setting (it overrides NO_PROXY), not None.
            no_proxy=parse_no_proxy(no_proxy) if no_proxy is not None else None,
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> ProxySettings:
        """curl's variables: lower case wins; ``http_proxy`` is read in lower case only."""

        def read(name: str, *, upper: bool = True) -> tuple[str, str] | None:
            for key in (name, name.upper()) if upper else (name,):
                value = environ.get(key)
                if value is not None and value.strip():
                    return key, value
            return None

        def proxy(name: str, *, upper: bool = True) -> ProxyURL | None:
            found = read(name, upper=upper)
            return parse_proxy_url(found[1], source=found[0]) if found else None

        no_proxy = read("no_proxy")
        return cls(
            all_proxy=proxy("all_proxy"),
            http_proxy=proxy("http_proxy", upper=False),
            https_proxy=proxy("https_proxy"),
            no_proxy=parse_no_proxy(no_proxy[1]) if no_proxy else None,
        )

    def over(self, base: ProxySettings) -> ProxySettings:
        """These settings, each unset one taken from *base* (flags over the environment)."""
        return ProxySettings(
            all_proxy=_first(self.all_proxy, base.all_proxy),
            http_proxy=_first(self.http_proxy, base.http_proxy),
            https_proxy=_first(self.https_proxy, base.https_proxy),
            no_proxy=_first(self.no_proxy, base.no_proxy),
        )

    @property
    def proxies(self) -> tuple[ProxyURL, ...]:
        """The proxies some request may go through."""
        found = (self.all_proxy, self.http_proxy, self.https_proxy)
        return tuple(p for p in found if p is not None and not p.is_direct)

    def proxy_for(self, scheme: str, host: str) -> ProxyURL | None:
        """The proxy for a request to ``scheme://host``, or None to go direct."""
        scheme = scheme.lower()
        if scheme == "https":
            chosen = _first(self.https_proxy, self.all_proxy)
        elif scheme == "http":
            chosen = _first(self.http_proxy, self.all_proxy)
        else:
            chosen = self.all_proxy
        if chosen is None or chosen.is_direct:
            return None
        if self.no_proxy is not None and self.no_proxy.matches(host):
            return None
        return chosen

    def proxy_for_url(self, url: str) -> ProxyURL | None:
        parts = urlsplit(url)
        return self.proxy_for(parts.scheme, parts.hostname or "")


def _proxy_or_none(value: str | None, source: str) -> ProxyURL | None:
    if value is None:
        return None
    if not value.strip():
        return DIRECT
    return parse_proxy_url(value, source=source)


def _first(first: _T | None, second: _T | None) -> _T | None:
    return first if first is not None else second
