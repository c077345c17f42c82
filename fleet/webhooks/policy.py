"""Where a webhook may point: a pure check of URLs and addresses, no network.

Invariants:
- only ``http`` and ``https`` URLs with a host, no user info (credentials in a URL end up
  in logs), and a port in 1..65535;
- when ``allowed_hosts`` is non-empty, the URL's host must match one of its entries (a
  name, ``*.suffix`` for any name under suffix, or an IP literal); empty means any host;
- every address a webhook is sent to must be globally routable, or inside one of
  ``allowed_networks``. Refused otherwise: loopback, private (RFC 1918 and friends),
  shared (100.64/10), link-local (169.254/16 with the cloud metadata address, fe80::/10),
  unique-local (fc00::/7), multicast, unspecified, reserved and documentation ranges,
  and IPv6 forms that carry such an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4,
  NAT64). The address check applies to allowed hosts too: naming a host does not open
  internal address space, only ``allowed_networks`` does.

The REST API checks the URL when a webhook is created (literal addresses, ``localhost``
and numeric IPv4 spellings such as ``2130706433`` included); the delivery checks every
address the name resolves to, right before connecting to one of them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = {"http": 80, "https": 443}
# Names that are loopback by definition (RFC 6761), whatever a resolver says.
LOOPBACK_NAMES = ("localhost", "localhost.localdomain")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
METADATA = ipaddress.ip_address("169.254.169.254")


class DestinationRefusedError(ValueError):
    """A webhook URL or address the policy does not allow; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Destination:
    """A checked webhook URL, split into what a connection needs."""

    scheme: str
    host: str  # lower-case name or IP literal (IPv6 without brackets)
    port: int
    target: str  # path and query, at least "/"
    address: IPAddress | None  # set when the host is an IP literal: nothing to resolve

    @property
    def host_header(self) -> str:
        """The Host header: the name (bracketed for IPv6), with the port if not default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == SCHEMES[self.scheme] else f"{host}:{self.port}"

    def url_for(self, address: IPAddress) -> str:
        """The URL that connects to ``address`` (the checked one) instead of the name."""
        host = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{host}:{self.port}{self.target}"


UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")

# In order: the first that applies names the problem.
_PROBLEMS: tuple[tuple[Callable[[IPAddress], bool], str], ...] = (
    (lambda a: a.is_unspecified, "the unspecified address"),
    (lambda a: a.is_loopback, "a loopback address"),
    (lambda a: a == METADATA, "the cloud metadata address (link-local)"),
    (lambda a: a.is_link_local, "a link-local address"),
    (lambda a: a.is_multicast, "a multicast address"),
    (lambda a: a.version == 6 and a in UNIQUE_LOCAL, "a unique-local address"),
    (lambda a: a.is_private, "a private address"),
    (lambda a: not a.is_global, "not a globally routable address"),
)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64, IPv4-compatible)."""
    embedded = address.ipv4_mapped or address.sixtofour
    if embedded is None and address in NAT64:
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if embedded is None and int(address) >> 32 == 0 and int(address) > 1:
        embedded = ipaddress.IPv4Address(int(address))  # IPv4-compatible ::a.b.c.d
    return embedded


def address_problem(address: IPAddress) -> str | None:
    """Why ``address`` is not a public destination, or None if it is globally routable."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = address_problem(embedded)
            return f"{inner} (carried in IPv6 {address})" if inner else None
    for applies, what in _PROBLEMS:
        if applies(address):
            return f"{address} is {what}"
    return None


def _literal(host: str) -> IPAddress | None:
    """The address a host spells, including legacy IPv4 forms (``0x7f.1``, ``2130706433``)
    that resolvers accept too."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))  # parses only, never resolves
    except OSError:
        return None


@dataclass(frozen=True)
class DestinationPolicy:
    """The allow-lists; the default (both empty) allows any public host and address."""

    allowed_hosts: tuple[str, ...] = ()
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, hosts: Iterable[str], networks: Iterable[IPNetwork | str]) -> DestinationPolicy:
        """Build from settings values; raises `ValueError` for a malformed network."""
        return cls(
            allowed_hosts=tuple(h.strip().lower().rstrip(".") for h in hosts if h.strip()),
            allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in networks),
        )

    def check_url(self, url: str) -> Destination:
        """Split and check ``url``; raises `DestinationRefusedError` with the reason.

        A host that is an address (or a loopback name) is checked here; a name is
        checked again, address by address, when it is resolved for a delivery.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise DestinationRefusedError(f"webhook url {url!r} is malformed: {e}") from None
        if parts.scheme not in SCHEMES:
            raise DestinationRefusedError(
                f"webhook url must be http or https, got {parts.scheme!r}"
            )
        if not parts.hostname:
            raise DestinationRefusedError(f"webhook url {url!r} has no host")
        if parts.username is not None or parts.password is not None:
            raise DestinationRefusedError("webhook url must not carry credentials (user:password@)")
        if port == 0:
            raise DestinationRefusedError("webhook url port must be in 1..65535")
        host = parts.hostname.lower().rstrip(".")
        self._check_host(host)
        address = _literal(host)
        checked = address
        if address is None and (host in LOOPBACK_NAMES or host.endswith(".localhost")):
            checked = ipaddress.IPv4Address("127.0.0.1")
        if checked is not None:
            self.check_address(checked)
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        return Destination(
            scheme=parts.scheme,
            host=host,
            port=port or SCHEMES[parts.scheme],
            target=target,
            address=address,
        )

    def check_address(self, address: IPAddress) -> None:
        """Raise `DestinationRefusedError` unless ``address`` is public or in an allowed network."""
        if any(address in net for net in self.allowed_networks if net.version == address.version):
            return
        problem = address_problem(address)
        if problem is not None:
            raise DestinationRefusedError(
                f"webhook destination refused: {problem}; allow its network in"
                " webhook_allowed_networks if it is meant to receive alerts"
            )

    def _check_host(self, host: str) -> None:
        if not self.allowed_hosts:
            return
        for entry in self.allowed_hosts:
            if entry.startswith("*.") and host.endswith(entry[1:]):
                return
            if host == entry:
                return
        raise DestinationRefusedError(
            f"webhook host {host!r} is not in webhook_allowed_hosts {list(self.allowed_hosts)}"
        )
