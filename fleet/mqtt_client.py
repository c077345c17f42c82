"""The one place that turns `FleetSettings` into a paho client.

Protocol version, credentials, TLS and reconnect backoff are set here for every fleet
connection (the ingester and each publisher), so they cannot drift apart.
"""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.fleet.settings import FleetSettings


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
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client
