"""Signed deliveries: receivers can tell a fleet's POST from a forged or replayed one."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session, select

from edgefleet.fleet.drift.notify import Notifier
from edgefleet.fleet.store.drift_tables import WebhookDelivery, WebhookSecret
from edgefleet.fleet.webhooks.dispatcher import RetryPolicy
from edgefleet.fleet.webhooks.policy import DestinationPolicy
from edgefleet.fleet.webhooks.signing import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    SignatureError,
    new_secret,
    signature_header,
    verify_signature,
)
from edgefleet.shared.messages import utcnow
from tests.fleet.publisher import wait_until
from tests.fleet.webhooks.conftest import LOOPBACK, WebhookApi, decision
from tests.support.webhooks import WebhookReceiver

SECRET = "whsec_test-secret-of-this-webhook"
BODY = b'{"schema":"edgefleet/v1/webhook","alert":{"id":"a1"}}'
NOW = 1_780_000_000


def test_a_signed_body_verifies_and_returns_its_timestamp() -> None:
    header = signature_header(SECRET, BODY, NOW)
    assert header.startswith(f"t={NOW},v1=")
    assert verify_signature(SECRET, BODY, header, now=NOW + 10) == NOW


def test_a_tampered_body_fails() -> None:
    header = signature_header(SECRET, BODY, NOW)
    tampered = BODY.replace(b"a1", b"a2")
    with pytest.raises(SignatureError, match="altered body"):
        verify_signature(SECRET, tampered, header, now=NOW)


def test_another_secret_fails() -> None:
    header = signature_header(new_secret(), BODY, NOW)
    with pytest.raises(SignatureError, match="wrong secret"):
        verify_signature(SECRET, BODY, header, now=NOW)


@pytest.mark.parametrize("skew_s", [301, -301, 86_400])
def test_an_old_or_future_timestamp_fails_even_with_a_valid_mac(skew_s: int) -> None:
    header = signature_header(SECRET, BODY, NOW)  # a correct signature, captured earlier
    with pytest.raises(SignatureError, match="tolerance"):
        verify_signature(SECRET, BODY, header, now=NOW + skew_s)


def test_a_fresh_timestamp_on_an_old_signature_fails() -> None:
    old = signature_header(SECRET, BODY, NOW - 3600)
    replayed = old.replace(f"t={NOW - 3600}", f"t={NOW}")
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_signature(SECRET, BODY, replayed, now=NOW)


def test_any_matching_v1_entry_is_accepted_for_rotation() -> None:
    other = signature_header("whsec_old", BODY, NOW).split(",")[1]
    header = f"{signature_header(SECRET, BODY, NOW)},{other}"
    assert verify_signature(SECRET, BODY, header, now=NOW) == NOW
    assert verify_signature("whsec_old", BODY, header, now=NOW) == NOW


@pytest.mark.parametrize(
    "header",
    ["", "t=1", "v1=abc", "t=abc,v1=00", "t=-5,v1=00", "garbage", "t=1,v1=é", "x" * 2000],
)
def test_malformed_headers_fail_as_signature_errors(header: str) -> None:
    with pytest.raises(SignatureError):
        verify_signature(SECRET, BODY, header, now=NOW)


@given(st.text(max_size=300), st.binary(max_size=200))
def test_any_header_fails_only_as_a_signature_error(header: str, body: bytes) -> None:
    with contextlib.suppress(SignatureError):
        verify_signature(SECRET, body, header, now=NOW)


def test_secrets_are_fresh_and_long() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(s.startswith("whsec_") and len(s) >= 40 for s in secrets)


def test_the_secret_is_shown_once_and_deliveries_are_signed_with_it(
    webhook_api: WebhookApi, engine: Engine, webhook_receiver: WebhookReceiver
) -> None:
    api = webhook_api(webhook_allowed_networks=LOOPBACK)
    created = api.post("/v1/webhooks", json={"url": webhook_receiver.url})
    assert created.status_code == 201, created.text
    hook = created.json()
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    listed = api.get("/v1/webhooks").json()["items"]
    assert [h["id"] for h in listed] == [hook["id"]]
    assert "secret" not in listed[0]
    assert secret not in api.get("/v1/webhooks").text

    notifier = Notifier(
        engine,
        publisher=None,
        policy=RetryPolicy(backoff_s=0.01, max_attempts=2),
        destinations=DestinationPolicy.of([], LOOPBACK),
    )
    try:
        (alert,) = notifier.raise_alerts([decision()], utcnow())
        wait_until(lambda: len(webhook_receiver.received()) == 1, what="the delivery")
    finally:
        notifier.close()
    headers, body = webhook_receiver.received_requests()[0]
    timestamp = verify_signature(secret, body, headers[SIGNATURE_HEADER], now=time.time())
    assert abs(timestamp - time.time()) < 60
    assert json.loads(body)["alert"]["id"] == alert.id
    with Session(engine) as session:
        (delivery,) = session.exec(select(WebhookDelivery)).all()
    assert headers[DELIVERY_HEADER] == str(delivery.id)
    with pytest.raises(SignatureError):
        verify_signature(secret, body + b" ", headers[SIGNATURE_HEADER], now=time.time())


def test_rotating_the_secret_replaces_it_and_deleting_the_webhook_drops_it(
    webhook_api: WebhookApi, engine: Engine
) -> None:
    api = webhook_api()
    hook = api.post("/v1/webhooks", json={"url": "https://hooks.example.org/x"}).json()
    rotated = api.post(f"/v1/webhooks/{hook['id']}/secret")
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["webhook_id"] == hook["id"]
    assert rotated.json()["secret"] not in (hook["secret"], "")
    with Session(engine) as session:
        stored = session.get(WebhookSecret, hook["id"])
        assert stored is not None
        assert stored.secret == rotated.json()["secret"]
    assert api.post("/v1/webhooks/nope/secret").status_code == 404
    assert api.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    with Session(engine) as session:
        assert session.get(WebhookSecret, hook["id"]) is None
