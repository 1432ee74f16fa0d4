"""Which addresses media URLs may reach: public ones only, unless private ones are allowed.

A server that fetches URLs for its clients must not become their way into its own network
(SSRF): a web page could make a browser ask the local server to fetch http://192.168.1.1/.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# host, port -> the addresses it resolves to (getaddrinfo in production, a table in tests)
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def non_public_reason(address: str) -> str | None:
    """Why `address` is not a public unicast address ("loopback", "private", ...), or None."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    inner = _embedded_ipv4(ip)
    if inner is not None:  # the IPv4 address decides; the IPv6 wrapper is only transport
        reason = non_public_reason(str(inner))
        return None if reason is None else f"{reason} (as {ip})"
    for name in (
        "unspecified",
        "loopback",
        "link_local",  # 169.254.169.254, the cloud metadata address, is one
        "multicast",
        "private",
        "reserved",
    ):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    if not ip.is_global:  # shared address space (100.64/10), benchmarking nets and the like
        return "non-public"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the system resolver's order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for *_, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


def literal_address(host: str) -> str | None:
    """`host` as a normalised IP address when it is an IP literal, else None."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None
