"""Helpers for the agent tests: configs, a recording MQTT subscriber, a durable broker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.daemon import Agent
from edgefleet.simulators.models import TrainedModel
from tests.support.mosquitto import MosquittoBroker

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    @property
    def doc(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.payload)
        return document


class Subscriber:
    """A plain paho subscriber that records everything it receives.

    With ``session`` set it connects with a persistent session (clean_session False)
    under that client id, so a broker with persistence queues QoS-1 messages for it
    across its own restart and across the subscriber's reconnects.
    """

    def __init__(self, port: int, topics: list[str], *, session: str | None = None) -> None:
        self.received: list[Received] = []
        self._cond = threading.Condition()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=session or "",
            clean_session=session is None,
        )
        self._client.reconnect_delay_set(0.05, 0.3)  # type: ignore[arg-type]  # floats work
        self._subscribed = threading.Event()
        topics_qos = [(t, 1) for t in topics]
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topics_qos)
        self._client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port, keepalive=5)
        self._client.loop_start()
        assert self._subscribed.wait(5), "subscriber never got its SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.received.append(Received(message.topic, bytes(message.payload), message.retain))
            self._cond.notify_all()

    def on(self, channel: str) -> list[Received]:
        with self._cond:
            return [r for r in self.received if r.topic.endswith("/" + channel)]

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout_s: float = 10.0
    ) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = [(r.topic.rsplit("/", 1)[-1], r.retain) for r in self.received]
                    raise AssertionError(f"condition not met in {timeout_s}s; got {kinds}")
                self._cond.wait(left)
            return list(self.received)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def channel_subscribers(
    broker: MosquittoBroker, channel: str
) -> Iterator[Callable[[str], Subscriber]]:
    """Body of a fixture that opens subscribers to one channel of given devices."""
    opened: list[Subscriber] = []

    def subscribe(device_id: str) -> Subscriber:
        sub = Subscriber(broker.port, [f"edgefleet/v1/devices/{device_id}/{channel}"])
        opened.append(sub)
        return sub

    yield subscribe
    for sub in opened:
        sub.close()


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    """Subscribers a test opens are closed after it."""
    opened: list[Subscriber] = []
    yield opened
    for s in opened:
        s.close()


def agent_config(
    tmp_path: Path, server: MosquittoBroker, device_id: str, **fields: Any
) -> AgentConfig:
    """A test agent's config: fast reconnects and telemetry, API on a free port."""
    broker_fields = {"url": server.url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.3}
    broker_fields.update(fields.pop("broker", {}))
    document: dict[str, Any] = {
        "device_id": device_id,
        "data_dir": str(tmp_path / f"data-{device_id}"),
        "broker": broker_fields,
        "api": {"port": 0},
        "telemetry_interval_s": 60,
        **fields,
    }
    return AgentConfig.model_validate(document)


def toml_config(
    path: Path,
    broker: MosquittoBroker,
    device_id: str,
    *,
    model: Path | None,
    model_version: str = "1.0.0",
    api_port: int = 0,
    api_enabled: bool = True,
    data_dir: Path | None = None,
    update: dict[str, Any] | None = None,
    **top: Any,
) -> Path:
    """Write a TOML config for an agent process and return its path.

    Fast reconnects, the API on ``api_port`` (0: a free one; no API if not ``api_enabled``),
    ``model`` as the factory model (name ``wine``), state in ``data_dir`` (default:
    ``data-<device_id>`` beside the file); ``update`` becomes the ``[update]`` table (a
    nested ``policy`` dict its ``[update.policy]``), updates off when it is None; ``top``
    adds top-level keys.
    """
    document: dict[str, Any] = {
        "device_id": device_id,
        "data_dir": str(data_dir or path.parent / f"data-{device_id}"),
        "hardware": "test-rig",
        "tags": ["test"],
        **top,
        "broker": {
            "url": broker.url,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.3,
            "keepalive_s": 5,
        },
        "api": {"port": api_port, "enabled": api_enabled},
    }
    if model is not None:
        document["model"] = {"path": str(model), "name": "wine", "version": model_version}
    if update is not None:
        document["update"] = update
    path.write_text(_toml(document))
    return path


def _toml(table: dict[str, Any], prefix: str = "") -> str:
    """``table`` as TOML: scalars and lists first, then each sub-table under its header.

    Values are written as JSON, which TOML reads the same for the strings, numbers,
    booleans and lists a config holds.
    """
    lines = [f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines += [f"[{prefix}{key}]", _toml(value, f"{prefix}{key}.").rstrip("\n")]
    return "\n".join(line for line in lines if line) + "\n"


def infer_until(agent: Agent, wine_model: TrainedModel, stop: threading.Event) -> None:
    """Keep ``agent`` inferring (as an app on the device would) until ``stop`` is set."""
    while not stop.wait(0.01):
        try:
            agent.infer({"input": wine_model.x_test[:2]})
        except Exception:  # a swap in progress may refuse one call
            continue
