"""Destination classes and the server's policy: metadata and link-local never, internal
addresses only when the server listens on loopback or is told to allow them."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segdl.core.destinations import (
    AddressClass,
    DestinationPolicy,
    classify_address,
    is_metadata_name,
)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", AddressClass.METADATA),
        ("fd00:ec2::254", AddressClass.METADATA),
        ("100.100.100.200", AddressClass.METADATA),
        ("::ffff:169.254.169.254", AddressClass.METADATA),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", AddressClass.METADATA),  # NAT64 of 169.254.169.254
        ("169.254.1.1", AddressClass.LINK_LOCAL),
        ("fe80::1%eth0", AddressClass.LINK_LOCAL),
        ("127.0.0.1", AddressClass.LOOPBACK),
        ("127.8.9.10", AddressClass.LOOPBACK),
        ("0.0.0.0", AddressClass.LOOPBACK),  # "this host": Linux connects it to loopback
        ("::1", AddressClass.LOOPBACK),
        ("::", AddressClass.LOOPBACK),
        ("10.0.0.1", AddressClass.PRIVATE),
        ("172.31.255.255", AddressClass.PRIVATE),
        ("192.168.1.5", AddressClass.PRIVATE),
        ("100.64.0.1", AddressClass.PRIVATE),
        ("fd12:3456::1", AddressClass.PRIVATE),
        ("::ffff:10.1.2.3", AddressClass.PRIVATE),
        ("224.0.0.1", AddressClass.RESERVED),
        ("255.255.255.255", AddressClass.RESERVED),
        ("ff02::1", AddressClass.RESERVED),
        ("172.32.0.1", AddressClass.PUBLIC),
        ("8.8.8.8", AddressClass.PUBLIC),
        ("2606:4700::1111", AddressClass.PUBLIC),
    ],
)
def test_classes(address: str, kind: AddressClass) -> None:
    assert classify_address(address) is kind


def test_metadata_names() -> None:
    assert is_metadata_name("metadata.google.internal.")
    assert is_metadata_name("METADATA")
    assert not is_metadata_name("metadata.example.com")


PUBLIC_SERVER = DestinationPolicy.for_server(listens_beyond_loopback=True, allow_private_urls=False)
LOOPBACK_SERVER = DestinationPolicy.for_server(
    listens_beyond_loopback=False, allow_private_urls=False
)
ALLOWING_SERVER = DestinationPolicy.for_server(
    listens_beyond_loopback=True, allow_private_urls=True
)


@given(address=st.ip_addresses())
def test_the_policy_follows_the_class(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    kind = classify_address(address)
    never = kind in (AddressClass.METADATA, AddressClass.LINK_LOCAL, AddressClass.RESERVED)
    internal = kind in (AddressClass.PRIVATE, AddressClass.LOOPBACK)
    for policy in (LOOPBACK_SERVER, ALLOWING_SERVER):
        assert (policy.refusal(address) is not None) is never
    assert (PUBLIC_SERVER.refusal(address) is not None) is (never or internal)


@given(v4=st.ip_addresses(v=4))
def test_an_ipv6_form_of_an_ipv4_address_is_judged_as_that_address(
    v4: ipaddress.IPv4Address,
) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{v4}")
    nat64 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(v4))
    assert classify_address(mapped) is classify_address(v4)
    assert classify_address(nat64) is classify_address(v4)


def test_explanations_are_one_line_and_say_what_to_do() -> None:
    text = PUBLIC_SERVER.explain("files.lan", "192.168.1.5", AddressClass.PRIVATE)
    assert text == (
        "refused to download from files.lan (192.168.1.5): a private address, and this server "
        "listens beyond loopback (start it with --allow-private-urls to allow)"
    )
    metadata = PUBLIC_SERVER.explain("169.254.169.254", "169.254.169.254", AddressClass.METADATA)
    assert metadata == (
        "refused to download from 169.254.169.254: a cloud metadata address is never fetched"
    )
