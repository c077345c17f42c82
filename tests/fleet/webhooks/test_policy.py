"""The destination policy: which URLs and addresses may receive alerts (pure, no network)."""

from __future__ import annotations

import ipaddress

import pytest

from edgefleet.fleet.webhooks.policy import DestinationPolicy, DestinationRefusedError

STRICT = DestinationPolicy()

INTERNAL = [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.9", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "not a globally routable"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.10.10", "link-local"),
    ("fe80::1", "link-local"),
    ("fd00:ec2::254", "unique-local"),
    ("fc00::1", "unique-local"),
    ("224.0.1.1", "multicast"),
    ("ff0e::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("255.255.255.255", "private"),
    ("192.0.2.7", "private"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::ffff:10.0.0.1", "private"),
    ("::10.0.0.1", "private"),
    ("2002:a00:1::", "private"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata"),
]


@pytest.mark.parametrize(("address", "why"), INTERNAL)
def test_internal_addresses_are_refused_with_the_reason(address: str, why: str) -> None:
    with pytest.raises(DestinationRefusedError, match=why):
        STRICT.check_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    STRICT.check_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::ffff:a9fe:a9fe]/", "cloud metadata"),
        ("http://localhost:9000/", "loopback"),
        ("http://LOCALHOST./", "loopback"),
        ("http://api.localhost/", "loopback"),
        ("http://2130706433/", "loopback"),  # 127.0.0.1 as one number
        ("http://0x7f.1/", "loopback"),
        ("http://0177.0.0.1/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("ftp://hooks.example.org/", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://127.0.0.1/", "http or https"),
        ("https://user:pw@hooks.example.org/", "credentials"),
        ("https:///nohost", "no host"),
        ("https://hooks.example.org:0/", "1..65535"),
        ("https://hooks.example.org:99999/", "malformed"),
    ],
)
def test_urls_pointing_inside_or_off_http_are_refused(url: str, why: str) -> None:
    with pytest.raises(DestinationRefusedError, match=why):
        STRICT.check_url(url)


def test_a_public_name_passes_the_url_check_and_keeps_its_parts() -> None:
    checked = STRICT.check_url("https://Hooks.Example.org:8443/a/b?x=1")
    assert (checked.scheme, checked.host, checked.port, checked.target) == (
        "https",
        "hooks.example.org",
        8443,
        "/a/b?x=1",
    )
    assert checked.address is None  # a name: checked again when resolved
    assert checked.host_header == "hooks.example.org:8443"
    assert checked.url_for(ipaddress.ip_address("2606:4700::1")) == (
        "https://[2606:4700::1]:8443/a/b?x=1"
    )


def test_an_allowed_network_opens_exactly_that_network() -> None:
    policy = DestinationPolicy.of([], ["127.0.0.0/8", "10.20.0.0/16"])
    policy.check_url("http://127.0.0.1:8080/hook")
    policy.check_url("http://localhost/hook")
    policy.check_address(ipaddress.ip_address("10.20.3.4"))
    with pytest.raises(DestinationRefusedError, match="private"):
        policy.check_address(ipaddress.ip_address("10.21.0.1"))
    with pytest.raises(DestinationRefusedError, match="cloud metadata"):
        policy.check_url("http://169.254.169.254/")
    with pytest.raises(DestinationRefusedError, match="loopback"):
        policy.check_address(ipaddress.ip_address("::1"))  # only the IPv4 loopback was allowed


def test_an_allowed_host_list_admits_only_its_hosts_and_still_checks_addresses() -> None:
    policy = DestinationPolicy.of(["hooks.example.org", "*.corp.example", "10.0.0.5"], [])
    policy.check_url("https://hooks.example.org/x")
    policy.check_url("https://a.b.corp.example/x")
    for url in (
        "https://evil.example.org/",
        "https://corp.example.evil/",
        "https://xcorp.example/",
    ):
        with pytest.raises(DestinationRefusedError, match="not in webhook_allowed_hosts"):
            policy.check_url(url)
    # Listing a host does not open internal address space: only a network does.
    with pytest.raises(DestinationRefusedError, match="private"):
        policy.check_url("http://10.0.0.5/")
