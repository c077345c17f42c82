"""Sending one webhook POST to a checked address.

`post_checked` checks the URL, resolves its host once through the `Resolver`, checks
every address it got, and connects to the first of them: the request goes to the IP
that was checked, with the name in the Host header and, for https, as the TLS server
name (SNI), so the certificate is still verified against the name. A resolver answer
that changes between check and connect (DNS rebinding) cannot redirect it.

Use one ``httpx.Client`` per webhook: the pool keys connections by address, so a
client shared by two https names on one address could reuse a TLS session made for the
other name.
"""

from __future__ import annotations

import httpx

from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.webhooks.policy import DestinationPolicy
from edgefleet.fleet.webhooks.resolver import Resolver


def destination_policy(settings: FleetSettings) -> DestinationPolicy:
    """The destination policy the settings describe."""
    return DestinationPolicy.of(settings.webhook_allowed_hosts, settings.webhook_allowed_networks)


def webhook_client() -> httpx.Client:
    """A client for one webhook: no redirects (a 3xx could point anywhere), no proxies
    from the environment (the proxy, not us, would pick the address)."""
    return httpx.Client(follow_redirects=False, trust_env=False)


def post_checked(
    client: httpx.Client,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    destinations: DestinationPolicy,
    resolver: Resolver,
    timeout_s: float,
) -> int:
    """POST ``body`` to ``url`` at an address the policy allows; return the status code.

    The response body is never read: a receiver cannot make the fleet buffer anything.

    Raises `edgefleet.fleet.webhooks.policy.DestinationRefusedError` (before anything is
    sent) when the URL or any address its host resolves to is refused,
    `edgefleet.fleet.webhooks.resolver.ResolveError` when the host does not resolve, and
    ``httpx.HTTPError`` for a transport failure.
    """
    destination = destinations.check_url(url)
    if destination.address is not None:
        addresses = [destination.address]
    else:
        addresses = resolver.resolve(destination.host, destination.port)
    for address in addresses:
        destinations.check_address(address)
    extensions: dict[str, str] = {}
    if destination.scheme == "https" and destination.address is None:
        extensions["sni_hostname"] = destination.host
    with client.stream(
        "POST",
        destination.url_for(addresses[0]),
        content=body,
        headers={**headers, "Host": destination.host_header},
        timeout=timeout_s,
        extensions=extensions,
    ) as response:
        return response.status_code
