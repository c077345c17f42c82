"""The one place that turns `FleetSettings` into a paho client.

Protocol version, credentials, TLS and reconnect backoff are set here for every fleet
connection (the ingester and each publisher), so they cannot drift apart.

Reconnects: every wait before a reconnect attempt is drawn anew, uniformly in
`RECONNECT_MIN_S`..`RECONNECT_MAX_S`. Short, because agents replay their outbox as soon
as the broker is back, and until the ingester has subscribed again those messages only
reach the broker (end-to-end delivery makes the agents send them again, but the sooner
the fleet is back the less they resend); random, so that replicas which lost the broker
together do not return in step. paho's own backoff has no jitter, so `on_pre_connect`
(called before every attempt) sets the next wait.
"""

from __future__ import annotations

import random
import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.fleet.settings import FleetSettings

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 2.0


def make_client(
    settings: FleetSettings, client_id: str, *, clean_session: bool | None = None
) -> mqtt.Client:
    """A paho client for the fleet's broker: protocol, credentials, TLS and backoff set.

    ``clean_session`` applies to MQTT 3.1.1 only (MQTT 5 sets clean start at connect).
    """
    s = settings
    v5 = s.broker_protocol == "5"
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else (True if clean_session is None else clean_session),
    )
    if s.broker_username is not None:
        password = s.broker_password.get_secret_value() if s.broker_password else None
        client.username_pw_set(s.broker_username, password)
    if s.broker_tls:
        client.tls_set(
            ca_certs=str(s.broker_ca_file) if s.broker_ca_file else None,
            certfile=str(s.broker_cert_file) if s.broker_cert_file else None,
            keyfile=str(s.broker_key_file) if s.broker_key_file else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    rng = random.Random()

    def draw_next_wait(client: mqtt.Client, _userdata: Any = None) -> None:
        # min == max: paho waits exactly this long before the next attempt (floats work).
        wait_s = rng.uniform(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.reconnect_delay_set(min_delay=wait_s, max_delay=wait_s)  # type: ignore[arg-type]

    draw_next_wait(client)
    client.on_pre_connect = draw_next_wait
    return client
