"""The farmer's address when the node sits behind reverse proxies it trusts.

The per-IP limits and the events' ``remote`` use the TCP peer's address; behind a proxy that
is the proxy's, shared by every farmer. For a peer among ``--trusted-proxy`` networks, the
``X-Forwarded-For`` hops are believed, read from the right, up to the first address that is
not a trusted proxy: that one is the farmer. A peer that is not trusted is its own address,
whatever headers it sends, so a farmer cannot choose the address it is counted under.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

Network = IPv4Network | IPv6Network


def parse_trusted(values: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or networks (``10.0.0.1``, ``10.0.0.0/8``, ``::1``); ``ValueError`` names a
    bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {value!r}") from None
    return tuple(networks)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str | None:
    """The farmer's address: ``peer``, unless it is a trusted proxy; then the nearest
    ``X-Forwarded-For`` hop (each proxy appends the address it saw) that is not one. A hop
    that is not an address ends the walk at the proxy that wrote it: nothing further left can
    be believed. If every hop is a trusted proxy, the leftmost."""
    if not trusted or not peer or not _is_trusted(peer, trusted):
        return peer
    current = peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        try:
            address = ip_address(hop)
        except ValueError:
            return current
        current = str(address)
        if not _among(address, trusted):
            return current
    return current


def _is_trusted(peer: str, trusted: Sequence[Network]) -> bool:
    try:
        return _among(ip_address(peer), trusted)
    except ValueError:
        return False


def _among(address: IPv4Address | IPv6Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)
