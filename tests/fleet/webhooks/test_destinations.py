"""Webhook destinations: refused at creation (422) and at delivery, after resolution.

Refusals are proven without sending anything: the names here resolve only through a
fake `Resolver` (the interface delivery resolves through), and a refused delivery
raises before a connection is opened. The only real network is the loopback receiver.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from edgefleet.fleet.webhooks.policy import DestinationPolicy, DestinationRefusedError, IPAddress
from edgefleet.fleet.webhooks.resolver import ResolveError, SystemResolver
from edgefleet.fleet.webhooks.transport import post_checked, webhook_client
from tests.fleet.webhooks.conftest import WebhookApi
from tests.support.webhooks import WebhookReceiver

LOOPBACK_ALLOWED = DestinationPolicy.of([], ["127.0.0.0/8"])


class FakeResolver:
    """Answers from a table, and records what it was asked."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        if host not in self.table:
            raise ResolveError(f"{host!r} has no address")
        return [ipaddress.ip_address(a) for a in self.table[host]]


class NoNetwork(httpx.BaseTransport):
    """A transport that fails the test if anything tries to send."""

    def handle_request(self, request: httpx.Request) -> int:
        raise AssertionError(f"a refused destination was contacted: {request.url}")


def post(url: str, resolver: FakeResolver, policy: DestinationPolicy) -> int:
    with webhook_client() as client:
        return post_checked(
            client, url, b"{}", {}, destinations=policy, resolver=resolver, timeout_s=5
        )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://localhost:9/",
        "http://2130706433/",
        "http://10.0.0.1/",
        "ftp://hooks.example.org/",
    ],
)
def test_creating_a_webhook_to_an_internal_or_non_http_url_is_422_with_the_reason(
    webhook_api: WebhookApi, url: str
) -> None:
    api = webhook_api()
    response = api.post("/v1/webhooks", json={"url": url})
    assert response.status_code == 422, response.text
    message = response.text
    assert "refused" in message or "http or https" in message
    assert api.get("/v1/webhooks").json()["items"] == []


def test_an_allowed_network_or_a_public_name_can_be_subscribed(webhook_api: WebhookApi) -> None:
    api = webhook_api(webhook_allowed_networks=["127.0.0.0/8"])
    assert api.post("/v1/webhooks", json={"url": "http://127.0.0.1:8080/x"}).status_code == 201
    # A name is not resolved at creation (the delivery checks what it resolves to then).
    assert api.post("/v1/webhooks", json={"url": "https://hooks.example/x"}).status_code == 201
    refused = api.post("/v1/webhooks", json={"url": "http://169.254.169.254/"})
    assert refused.status_code == 422
    assert "cloud metadata" in refused.text


def test_an_allowed_host_list_refuses_other_hosts_at_creation(webhook_api: WebhookApi) -> None:
    api = webhook_api(webhook_allowed_hosts=["hooks.example.org"])
    assert api.post("/v1/webhooks", json={"url": "https://hooks.example.org/a"}).status_code == 201
    other = api.post("/v1/webhooks", json={"url": "https://elsewhere.example.org/a"})
    assert other.status_code == 422
    assert "webhook_allowed_hosts" in other.text


@pytest.mark.parametrize(
    "answer",
    [
        ["169.254.169.254"],
        ["10.0.0.7"],
        ["::1"],
        ["::ffff:127.0.0.1"],
        ["fd00::5"],
        # Every address must pass: one internal address among public ones is refused.
        ["93.184.215.14", "127.0.0.1"],
    ],
)
def test_a_name_resolving_to_an_internal_address_is_refused_before_connecting(
    answer: list[str],
) -> None:
    resolver = FakeResolver({"hooks.example.org": answer})
    with httpx.Client(transport=NoNetwork()) as client, pytest.raises(DestinationRefusedError):
        post_checked(
            client,
            "https://hooks.example.org/alerts",
            b"{}",
            {},
            destinations=DestinationPolicy(),
            resolver=resolver,
            timeout_s=5,
        )
    assert resolver.asked == ["hooks.example.org"]


def test_delivery_connects_to_the_address_it_checked_with_the_name_as_host(
    webhook_receiver: WebhookReceiver,
) -> None:
    # "rebind.invalid" exists only in the fake resolver: if the request resolved the name
    # again (or let a second lookup pick the address), it could not reach the receiver.
    resolver = FakeResolver({"rebind.invalid": ["127.0.0.1"]})
    url = f"http://rebind.invalid:{webhook_receiver.port}/hooks/drift"
    assert post(url, resolver, LOOPBACK_ALLOWED) == 204
    assert resolver.asked == ["rebind.invalid"]
    headers, _body = webhook_receiver.received_requests()[0]
    assert headers["Host"] == f"rebind.invalid:{webhook_receiver.port}"


def test_a_loopback_receiver_is_reached_when_loopback_is_allowed_and_refused_otherwise(
    webhook_receiver: WebhookReceiver,
) -> None:
    resolver = FakeResolver({})
    assert post(webhook_receiver.url, resolver, LOOPBACK_ALLOWED) == 204
    with pytest.raises(DestinationRefusedError, match="loopback"):
        post(webhook_receiver.url, resolver, DestinationPolicy())
    assert len(webhook_receiver.received()) == 1
    assert resolver.asked == []  # an IP literal is not resolved


def test_the_system_resolver_answers_loopback_names_with_loopback() -> None:
    addresses = SystemResolver().resolve("localhost", 80)
    assert addresses
    assert all(a.is_loopback for a in addresses)


def test_changing_a_webhook_to_an_internal_url_is_422_and_changes_nothing(
    webhook_api: WebhookApi,
) -> None:
    api = webhook_api()
    hook = api.post("/v1/webhooks", json={"url": "https://hooks.example.org/a"}).json()
    refused = api.patch(f"/v1/webhooks/{hook['id']}", json={"url": "http://169.254.169.254/"})
    assert refused.status_code == 422, refused.text
    assert "cloud metadata" in refused.text
    assert api.get("/v1/webhooks").json()["items"][0]["url"] == "https://hooks.example.org/a"
    changed = api.patch(
        f"/v1/webhooks/{hook['id']}",
        json={"url": "https://hooks.example.org/b", "kinds": ["concept_drift"]},
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["url"], changed.json()["kinds"]) == (
        "https://hooks.example.org/b",
        ["concept_drift"],
    )
    assert api.patch("/v1/webhooks/nope", json={"kinds": []}).status_code == 404


def test_at_most_a_hundred_webhooks(webhook_api: WebhookApi) -> None:
    api = webhook_api()
    for n in range(100):
        url = f"https://hooks.example.org/{n}"
        assert api.post("/v1/webhooks", json={"url": url}).status_code == 201
    over = api.post("/v1/webhooks", json={"url": "https://hooks.example.org/x"})
    assert over.status_code == 422
    assert "at most 100 webhooks" in over.text


def test_a_receiver_answering_with_an_endless_body_is_not_read() -> None:
    done = threading.Event()

    class Endless(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 30))
            self.end_headers()
            self.wfile.write(b"x" * 65536)
            done.wait(10)  # and the rest never comes

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        url = f"http://127.0.0.1:{server.server_address[1]}/x"
        assert post(url, FakeResolver({}), LOOPBACK_ALLOWED) == 200
        assert time.monotonic() - started < 2.0  # the 5 s read timeout never came into it
    finally:
        done.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
