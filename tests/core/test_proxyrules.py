"""Proxy choice as curl makes it: proxy URLs, scheme/all precedence, flags over the environment,
and ``no_proxy`` matching (examples from curl's CURLOPT_NOPROXY page, then properties)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segdl.core.proxyrules import (
    DIRECT,
    NoProxy,
    ProxyConfigError,
    ProxySettings,
    ProxyURL,
    parse_no_proxy,
    parse_proxy_url,
)

# ---- proxy URLs


def test_proxy_url_defaults_follow_curl() -> None:
    assert parse_proxy_url("proxy.corp:3128") == ProxyURL("http", "proxy.corp", 3128)
    assert parse_proxy_url("http://proxy.corp").port == 1080
    assert parse_proxy_url("SOCKS5H://[::1]:9050") == ProxyURL("socks5h", "::1", 9050)


def test_proxy_url_credentials_are_decoded_and_hidden() -> None:
    proxy = parse_proxy_url("http://al%40ice:p%3Ass%20w@127.0.0.1:8080")
    assert (proxy.username, proxy.password) == ("al@ice", "p:ss w")
    assert proxy.display == "http://127.0.0.1:8080"
    assert "p:ss" not in repr(proxy)
    assert parse_proxy_url("http://bob@h:1").password == ""


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("https://user:hunter2@proxy:443", "unsupported proxy scheme 'https'"),
        ("socks4://user:hunter2@proxy:1080", "unsupported proxy scheme 'socks4'"),
        ("http://user:hunter2@proxy:99999", "bad host or port"),
        ("http://user:hunter2@:8080", "no host"),
        ("http://user:hunter2@proxy:8080/path", "scheme://[user:password@]host[:port]"),
        ("http://user:hun ter2@proxy:8080", "spaces or control characters"),
        ("   ", "empty proxy URL"),
    ],
)
def test_bad_proxy_urls_get_one_line_without_credentials(text: str, words: str) -> None:
    with pytest.raises(ProxyConfigError) as caught:
        parse_proxy_url(text, source="HTTPS_PROXY")
    message = str(caught.value)
    assert words in message
    assert message.startswith("HTTPS_PROXY: ")
    assert "hunter2" not in message
    assert "\n" not in message


# ---- no_proxy: curl's documented examples


@pytest.mark.parametrize(
    ("rules", "host", "direct"),
    [
        ("ample.com", "ample.com", True),
        ("ample.com", "www.ample.com", True),
        ("ample.com", "www.example.com", False),
        ("ample.com", "ample.com.org", False),
        (".ample.com", "ample.com", True),  # curl ignores a leading dot
        ("ample.com.", "WWW.Ample.Com.", True),  # and trailing dots, and case
        ("*", "anything.example", True),
        ("localhost, *", "anything.example", False),  # '*' only alone
        ("example.com,::1,localhost", "[::1]", True),
        ("192.168.0.0/16", "192.168.44.1", True),
        ("192.168.0.0/16", "192.169.0.1", False),
        ("10.1.2.3", "10.1.2.3", True),
        ("fd00::/8", "fd12::1", True),
        ("[::1]", "::1", True),
        ("10.0.0.0/8", "ten.example", False),  # names are never resolved to compare
        ("0", "0.0.0.0", False),  # an address host is compared with address rules only
        ("example.com:8080", "example.com", False),  # ports are not part of curl's rules
        ("", "example.com", False),
        ("a.example b.example,,c.example", "b.example", True),
    ],
)
def test_no_proxy_examples(rules: str, host: str, direct: bool) -> None:
    assert parse_no_proxy(rules).matches(host) is direct


# Labels start with a letter: a host made of digits and dots is an IPv4 address, which curl
# compares with address rules only ("0" does not match the host "0.0.0.0").
labels = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
names = st.lists(labels, min_size=1, max_size=4).map(".".join)


@given(rule=names, prefix=st.lists(labels, max_size=3))
def test_a_name_rule_matches_itself_and_every_name_below(rule: str, prefix: list[str]) -> None:
    host = ".".join([*prefix, rule])
    assert parse_no_proxy(rule).matches(host)
    assert parse_no_proxy("." + rule.upper()).matches(host + ".")


@given(rule=names, host=names)
def test_a_name_rule_matches_nothing_else(rule: str, host: str) -> None:
    expected = host == rule or host.endswith("." + rule)
    assert parse_no_proxy(rule).matches(host) is expected


@given(
    address=st.ip_addresses(v=4),
    prefix=st.integers(min_value=0, max_value=32),
    other=st.ip_addresses(v=4),
)
def test_a_cidr_rule_is_a_bitmask_comparison(
    address: ipaddress.IPv4Address, prefix: int, other: ipaddress.IPv4Address
) -> None:
    rule = parse_no_proxy(f"{address}/{prefix}")
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    assert rule.matches(str(address))
    assert rule.matches(str(other)) is ((int(other) ^ int(address)) & mask == 0)


@given(address=st.ip_addresses(v=6))
def test_ipv6_hosts_match_with_or_without_brackets(address: ipaddress.IPv6Address) -> None:
    rule = parse_no_proxy(f"{address}/128")
    assert rule.matches(str(address))
    assert rule.matches(f"[{address}]")


# ---- the choice


CORP = parse_proxy_url("http://corp:3128")
SOCKS = parse_proxy_url("socks5h://tor:9050")


def test_scheme_proxy_wins_over_all_proxy() -> None:
    settings = ProxySettings(all_proxy=SOCKS, https_proxy=CORP)
    assert settings.proxy_for("https", "example.com") == CORP
    assert settings.proxy_for("http", "example.com") == SOCKS


def test_curl_reads_http_proxy_in_lower_case_only() -> None:
    env = {"HTTP_PROXY": "http://evil:1", "HTTPS_PROXY": "http://corp:3128"}
    settings = ProxySettings.from_environment(env)
    assert settings.proxy_for("http", "example.com") is None
    assert settings.proxy_for("https", "example.com") == CORP
    lower = ProxySettings.from_environment({"http_proxy": "corp:3128"})
    assert lower.proxy_for("http", "example.com") == CORP


def test_lower_case_wins_and_empty_variables_are_unset() -> None:
    env = {
        "all_proxy": "socks5h://tor:9050",
        "ALL_PROXY": "http://other:1",
        "https_proxy": "",
        "NO_PROXY": "internal.example",
    }
    settings = ProxySettings.from_environment(env)
    assert settings.proxy_for("https", "example.com") == SOCKS
    assert settings.proxy_for("https", "a.internal.example") is None


def test_flags_override_the_environment_one_by_one() -> None:
    env = ProxySettings.from_environment(
        {"https_proxy": "http://envproxy:1", "no_proxy": "example.com"}
    )
    flags = ProxySettings.from_strings(all_proxy="http://corp:3128")
    merged = flags.over(env)
    # --all-proxy does not hide the environment's scheme proxy (aria2c's own precedence) ...
    assert merged.proxy_for("https", "x.org") == parse_proxy_url("http://envproxy:1")
    assert merged.proxy_for("http", "x.org") == CORP
    # ... NO_PROXY from the environment still applies, and --no-proxy "" overrides it.
    assert merged.proxy_for("http", "example.com") is None
    cleared = ProxySettings.from_strings(all_proxy="corp:3128", no_proxy="").over(env)
    assert cleared.proxy_for("http", "example.com") == CORP


def test_an_empty_flag_means_no_proxy_whatever_the_environment() -> None:
    env = ProxySettings.from_environment({"https_proxy": "http://corp:3128"})
    merged = ProxySettings.from_strings(https_proxy="").over(env)
    assert merged.https_proxy is DIRECT
    assert merged.proxy_for("https", "example.com") is None
    assert merged.proxies == ()


def test_bad_environment_names_the_variable() -> None:
    with pytest.raises(ProxyConfigError, match=r"^HTTPS_PROXY: unsupported proxy scheme"):
        ProxySettings.from_environment({"HTTPS_PROXY": "ftp://a:b@proxy:21"})


@given(
    no_proxy=st.one_of(st.none(), st.just(NoProxy(match_all=True))),
    scheme=st.sampled_from(["http", "https"]),
    host=names,
)
def test_no_proxy_star_always_goes_direct(no_proxy: NoProxy | None, scheme: str, host: str) -> None:
    settings = ProxySettings(all_proxy=CORP, no_proxy=no_proxy)
    expected = None if no_proxy is not None else CORP
    assert settings.proxy_for(scheme, host) == expected
