"""Which host names and addresses always mean this machine."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x), nothing else.

    Plain http:// (the key would cross the wire unencrypted) and a key-less `rpq serve` are
    allowed only for these. Other names that often mean this machine (`localhost.localdomain`,
    `x.localhost`, `localhost.`) depend on /etc/hosts or a resolver that may send them elsewhere.
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
