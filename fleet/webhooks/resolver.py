"""Names to addresses for webhook deliveries: the interface and the system resolver.

Delivery resolves a webhook's host once per attempt through a `Resolver`, checks every
address it got, and connects to one of those checked addresses; nothing else in the
delivery path resolves names. Tests pass a fake resolver here to prove that a name
resolving to an internal address is refused without a packet being sent.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Protocol

from edgefleet.fleet.webhooks.policy import IPAddress

MAX_ADDRESSES = 32


class ResolveError(Exception):
    """The name has no address (or the resolver failed); a transport failure, retried."""


class Resolver(Protocol):
    """Turns a host name into the addresses to connect to."""

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address of ``host`` for TCP to ``port``, in preference order.

        Raises `ResolveError` when there is none.
        """


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``)."""

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address of ``host``; raises `ResolveError`."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            raise ResolveError(f"cannot resolve {host!r}: {e}") from None
        out: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            # Strip an IPv6 zone ("fe80::1%eth0"): the address is what the policy judges.
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in out:
                out.append(address)
        if not out:
            raise ResolveError(f"{host!r} has no address")
        return out[:MAX_ADDRESSES]
