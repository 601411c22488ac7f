"""The client's address: the peer's, unless the peer is a configured trusted proxy.

``X-Forwarded-For`` and ``Forwarded`` are believed only when the TCP peer is inside a trusted proxy
network; then the address list is walked from the right (the entries our own proxies appended),
skipping trusted proxies, and the first untrusted address is the client. Anything an untrusted client
writes into these headers is ignored, so it cannot choose its region, its rate-limit bucket or its
audit address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_FOR_RE = re.compile(r'(?:^|[;,\s])for\s*=\s*(?:"([^"]*)"|([^;,\s]*))', re.IGNORECASE)


@dataclass(frozen=True)
class TrustedProxies:
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, networks: Iterable[str]) -> TrustedProxies:
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in networks))

    def trusts(self, address: str | None) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in net for net in self.networks)


@functools.lru_cache(maxsize=4096)  # every request parses its peer's address: the same few, over and over
def _ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not value:
        return None
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _strip_port(node: str) -> str:
    """RFC 7239 node: ``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]`` or ``[2001:db8::1]:80``."""
    if node.startswith("["):
        return node[1:].split("]", 1)[0]
    return node.split(":", 1)[0] if node.count(":") == 1 else node


def _forwarded_chain(headers: Mapping[str, str]) -> list[str]:
    """Addresses from ``Forwarded`` (RFC 7239) if present, else ``X-Forwarded-For``, leftmost first."""
    forwarded = headers.get("Forwarded")
    if forwarded:
        return [_strip_port(m.group(1) if m.group(1) is not None else m.group(2)) for m in _FOR_RE.finditer(forwarded)]
    xff = headers.get("X-Forwarded-For", "")
    return [part.strip() for part in xff.split(",") if part.strip()]


def client_address(remote: str | None, headers: Mapping[str, str], proxies: TrustedProxies) -> str | None:
    """The address to attribute a request to (see the module docstring)."""
    peer = _ip(remote)
    if peer is None or not proxies.networks or not proxies.trusts(str(peer)):
        return str(peer) if peer is not None else remote
    for hop in reversed(_forwarded_chain(headers)):
        ip = _ip(hop)
        if ip is None:
            return str(peer)  # a garbled hop: stop believing the chain at the last proxy we trust
        if not proxies.trusts(str(ip)):
            return str(ip)
    return str(peer)
