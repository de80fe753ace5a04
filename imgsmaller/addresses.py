"""Which IP addresses file_url may connect to: public unicast only, and never link-local or metadata.

Imports only the stdlib. fetch.py asks `address_is_public` about every address a
name resolves to, before any connection is made.
"""

import ipaddress

# Belt and braces around ipaddress.is_global, whose tables changed across Python
# releases (3.11.10, 3.12.4, 3.13): every special-purpose block from the IANA
# registries that is not a public unicast destination. Sources: RFC 6890 and the
# IANA IPv4/IPv6 Special-Purpose Address Registries.
_BLOCKED_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches localhost on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",
        "192.31.196.0/24",  # AS112-v4
        "192.52.193.0/24",  # AMT
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",
        "192.175.48.0/24",  # AS112 direct delegation
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
    )
)
_BLOCKED_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        # Teredo (2001::/32, inside this block) and 6to4 are refused even when the
        # IPv4 addresses they carry are public: deprecated (RFC 7526), relayed by
        # anycast boxes nobody vouches for, and no image host needs them.
        "2001::/23",  # IETF protocol assignments
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4
        "2620:4f:8000::/48",  # AS112 direct delegation
        "3fff::/20",  # documentation (RFC 9637)
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
# Outside 2000::/3 nothing is global unicast (IPv4-compatible ::a.b.c.d included);
# the mapped and NAT64 forms are let through only to be judged by their IPv4 part.
# Never connected to, even with allow_private: link-local, where every cloud serves
# its instance metadata (and credentials), and the metadata addresses outside it.
# Sources: the providers' instance-metadata documentation.
_NEVER_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "169.254.0.0/16",  # link-local: AWS, GCP, Azure, Oracle, DigitalOcean... 169.254.169.254, ECS 169.254.170.2
        "100.100.100.200/32",  # Alibaba Cloud metadata (inside carrier-grade NAT space)
        "192.0.0.192/32",  # Oracle Cloud metadata (legacy address)
        "168.63.129.16/32",  # Azure WireServer (a public-range address, host-only)
    )
)
_NEVER_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "fe80::/10",  # link-local
        "fd00:ec2::254/128",  # AWS instance metadata over IPv6 (unique local space)
        "fd20:ce::254/128",  # Google Cloud metadata over IPv6
        # IPv4-compatible ::a.b.c.d (deprecated, RFC 4291) would otherwise hide an
        # IPv4 address from _embedded_ipv4; :: and ::1 are judged on their own.
        "::/96",
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def address_is_public(address, *, allow_private=False):
    """Whether `address` (an ipaddress object) may be connected to.

    Wrapped IPv4 forms are judged by every IPv4 address they carry.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded and not all(
            address_is_public(v4, allow_private=allow_private) for v4 in embedded
        ):
            return False
        if address.ipv4_mapped is not None or address in _NAT64:
            return True  # the packets go to (or are translated to) that IPv4 address
    if address.is_unspecified or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address(
        "255.255.255.255"
    ):
        return False
    if isinstance(address, ipaddress.IPv4Address) and address in _BLOCKED_V4[0]:
        return False  # 0.0.0.0/8 is "this host" even on a private network
    if _is_never_allowed(address):
        return False
    if allow_private:
        return True
    if not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return not any(address in net for net in _BLOCKED_V4)
    if address not in _GLOBAL_UNICAST_V6:
        return False
    return not any(address in net for net in _BLOCKED_V6)


def _is_never_allowed(address):
    """Link-local and metadata addresses: refused whatever FETCH_ALLOW_PRIVATE says."""
    if isinstance(address, ipaddress.IPv4Address):
        return any(address in net for net in _NEVER_V4)
    if address == ipaddress.IPv6Address("::1"):
        return False  # loopback, allowed on a private network like 127.0.0.1
    return any(address in net for net in _NEVER_V6)


def _embedded_ipv4(address):
    """The IPv4 addresses an IPv6 address carries (mapped, NAT64, 6to4, Teredo), if any."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address in _TEREDO:
        server, client = address.teredo
        return [server, client]
    return []
