"""Where a server-side download may connect: the destination policy (issue 14, item 4).

``segdl serve`` fetches whatever URL a client sends, so a client could make the machine request
its cloud's metadata service (credentials at ``http://169.254.169.254/``) or hosts of the
internal network.  Every address a download connects to is classified here, after DNS
resolution and on every redirect hop, and the policy decides:

* link-local addresses and cloud metadata endpoints are always refused;
* private, shared (CGNAT), loopback and "this host" addresses are refused when the server
  listens beyond loopback, unless ``--allow-private-urls``;
* multicast, broadcast and reserved addresses are refused (nothing downloads from them).

An IPv6 address that carries an IPv4 address (mapped ``::ffff:a.b.c.d``, the NAT64 prefix
``64:ff9b::/96``, 6to4 ``2002::/16``) is judged by that IPv4 address, since that is where the
packets go.  Pure: no resolver here, the caller passes the addresses.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

__all__ = [
    "METADATA_ADDRESSES",
    "METADATA_NAMES",
    "AddressClass",
    "DestinationPolicy",
    "classify_address",
    "is_metadata_name",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressClass(enum.Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    METADATA = "cloud metadata"
    RESERVED = "reserved"


# Instance metadata services: AWS/GCP/Azure/OpenStack/Oracle (169.254.169.254), AWS IMDS over
# IPv6 (fd00:ec2::254), AWS ECS task metadata (169.254.170.2), Alibaba Cloud (100.100.100.200),
# Azure's WireServer (168.63.129.16, a public address that answers only inside Azure).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
    )
)
# Names that reach a metadata service whatever they resolve to here (GCE resolves them itself).
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)

_V4 = ipaddress.ip_network
_LOOPBACK = (_V4("127.0.0.0/8"), _V4("0.0.0.0/8"), _V4("::1/128"), _V4("::/128"))
_LINK_LOCAL = (_V4("169.254.0.0/16"), _V4("fe80::/10"))
_PRIVATE = (
    _V4("10.0.0.0/8"),
    _V4("172.16.0.0/12"),
    _V4("192.168.0.0/16"),
    _V4("100.64.0.0/10"),  # shared address space (carrier-grade NAT), RFC 6598
    _V4("192.0.0.0/24"),  # IETF protocol assignments (e.g. DS-Lite), RFC 6890
    _V4("198.18.0.0/15"),  # benchmarking networks, RFC 2544
    _V4("fc00::/7"),  # unique local, RFC 4193
    _V4("fec0::/10"),  # deprecated site-local, RFC 3879
)
_RESERVED = (
    _V4("224.0.0.0/4"),  # multicast
    _V4("240.0.0.0/4"),  # reserved, and 255.255.255.255
    _V4("ff00::/8"),  # multicast
)
_NAT64 = _V4("64:ff9b::/96")
_SIX_TO_FOUR = _V4("2002::/16")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return None


def classify_address(address: IPAddress | str) -> AddressClass:
    """The class of an IP address (a string may carry an IPv6 zone, ``fe80::1%eth0``)."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            return classify_address(inner)
    if address in METADATA_ADDRESSES:
        return AddressClass.METADATA
    for networks, kind in (
        (_LOOPBACK, AddressClass.LOOPBACK),
        (_LINK_LOCAL, AddressClass.LINK_LOCAL),
        (_PRIVATE, AddressClass.PRIVATE),
        (_RESERVED, AddressClass.RESERVED),
    ):
        if any(address.version == n.version and address in n for n in networks):
            return kind
    return AddressClass.PUBLIC


def is_metadata_name(host: str) -> bool:
    return host.lower().rstrip(".") in METADATA_NAMES


_ALWAYS_REFUSED = frozenset({AddressClass.LINK_LOCAL, AddressClass.METADATA, AddressClass.RESERVED})
_INTERNAL = frozenset({AddressClass.PRIVATE, AddressClass.LOOPBACK})


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationPolicy:
    """Which destinations a download may connect to.

    ``allow_internal``: private and loopback addresses are allowed (a server on loopback, or
    ``--allow-private-urls``).  Link-local, metadata and reserved addresses never are.
    """

    allow_internal: bool = False

    @classmethod
    def for_server(
        cls, *, listens_beyond_loopback: bool, allow_private_urls: bool
    ) -> DestinationPolicy:
        return cls(allow_internal=allow_private_urls or not listens_beyond_loopback)

    def refusal(self, address: IPAddress | str) -> AddressClass | None:
        """The class that makes *address* refused, or None when it is allowed."""
        kind = classify_address(address)
        if kind in _ALWAYS_REFUSED:
            return kind
        if kind in _INTERNAL and not self.allow_internal:
            return kind
        return None

    def refuses_name(self, host: str) -> bool:
        """Is *host* a metadata service's name (refused before any lookup)?"""
        return is_metadata_name(host)

    def explain(self, host: str, address: str, kind: AddressClass) -> str:
        """One line for the user: what was refused and why (and how to allow it, if one may)."""
        where = host if host == address else f"{host} ({address})"
        if kind in _INTERNAL:
            return (
                f"refused to download from {where}: a {kind.value} address, and this server "
                "listens beyond loopback (start it with --allow-private-urls to allow)"
            )
        return f"refused to download from {where}: a {kind.value} address is never fetched"
