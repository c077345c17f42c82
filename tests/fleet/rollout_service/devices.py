"""Devices simulated at the protocol level (`edgefleet.shared.topics`, `edgefleet.shared.messages`).

Each `ProtocolFleet` device publishes a retained birth state, verifies every desired state
it receives with the director's public key exactly as an agent does
(`edgefleet.shared.signing.director.verify_desired`: signature, device id, growing seq, expiry),
and answers with the deployment events a real agent publishes: ``downloading``,
``verified``, ``staged``, ``activated``, then ``healthy`` + ``committed`` (it now runs
the target) or ``failed`` + ``rolled_back`` (it keeps what it ran), or ``info``
"already active" for a desired state naming the version it runs. Given a ``drift``
source, a device that has just committed a version also publishes one drift window
(`DriftMessage`) of that version, as an agent closes windows while it serves; tests can
publish more with `ProtocolFleet.publish_drift`. Real agents come in the simulator
scenarios; this fake stands at the MQTT protocol, an interface this project defines.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.shared.drift import WindowSketch
from edgefleet.shared.messages import (
    DriftMessage,
    EventKind,
    EventMessage,
    ModelRef,
    StateMessage,
    encode,
    utcnow,
)
from edgefleet.shared.signing.director import DesiredBody, trusted_keys, verify_desired
from edgefleet.shared.signing.errors import ReplayedOrOlder
from edgefleet.shared.signing.tufapi import SSlibKey
from edgefleet.shared.topics import Channel, device_filter, device_topic, parse_topic

# (device id, version it now runs) -> the window it sends, or None for no window.
DriftSource = Callable[[str, str], WindowSketch | None]


@dataclass
class SimDevice:
    device_id: str
    version: str
    tags: tuple[str, ...]
    hardware: str
    fails: set[str] = field(default_factory=set)
    seq: int = 0
    last_desired_seq: int | None = None
    accepted: list[DesiredBody] = field(default_factory=list)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class ProtocolFleet:
    """Many protocol-level devices on one MQTT connection."""

    def __init__(
        self,
        port: int,
        device_ids: Iterable[str],
        director_key: SSlibKey,
        *,
        model: str = "wine",
        version: str = "1.0.0",
        tags: tuple[str, ...] = (),
        hardware: str = "rpi4",
        drift: DriftSource | None = None,
        drift_window_s: float = 60.0,
    ) -> None:
        self.port = port
        self.model = model
        self.drift = drift
        self.drift_window_s = drift_window_s
        self.devices = {
            d: SimDevice(device_id=d, version=version, tags=tags, hardware=hardware)
            for d in device_ids
        }
        self._keys = trusted_keys([director_key])
        self._lock = threading.Lock()
        self._work: queue.Queue[tuple[str, DesiredBody] | None] = queue.Queue()
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self._client.max_inflight_messages_set(1000)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._worker = threading.Thread(target=self._run, name="protocol-fleet", daemon=True)
        self.rejected: list[str] = []

    def fail(self, device_id: str, version: str) -> None:
        """Make ``device_id`` fail installing ``version`` (it keeps what it runs)."""
        with self._lock:
            self.devices[device_id].fails.add(version)

    def accepted(self, device_id: str) -> list[DesiredBody]:
        """The desired states the device accepted (verified, newer than the last)."""
        with self._lock:
            return list(self.devices[device_id].accepted)

    def publish_drift(
        self, device_id: str, sketch: WindowSketch, *, version: str | None = None
    ) -> None:
        """Publish one drift window of ``device_id`` (ending now) with the next seq, for
        ``version`` (default: the version the device runs); waits for the broker's ack."""
        with self._lock:
            device = self.devices[device_id]
            message = self._drift_message(device, version or device.version, sketch)
        info = self._client.publish(device_topic(device_id, Channel.DRIFT), encode(message), qos=1)
        info.wait_for_publish(timeout=10)

    def _drift_message(self, device: SimDevice, version: str, sketch: WindowSketch) -> DriftMessage:
        end = utcnow()
        return DriftMessage(
            device_id=device.device_id,
            seq=device.next_seq(),
            ts=end,
            model=ModelRef(name=self.model, version=version),
            window_start=end - timedelta(seconds=self.drift_window_s),
            window_end=end,
            count=sketch.count,
            sketch=sketch,
        )

    def start(self) -> None:
        self._worker.start()
        self._client.connect("127.0.0.1", self.port)
        self._client.loop_start()
        infos = []
        for device in self.devices.values():
            birth = StateMessage(
                device_id=device.device_id,
                seq=device.next_seq(),
                online=True,
                agent_version="sim",
                hardware=device.hardware,
                tags=list(device.tags),
                runtimes=["onnx"],
                active_model=ModelRef(name=self.model, version=device.version),
            )
            infos.append(
                self._client.publish(
                    device_topic(device.device_id, Channel.STATE), encode(birth), qos=1, retain=True
                )
            )
        for info in infos:
            info.wait_for_publish(timeout=10)

    def stop(self) -> None:
        self._work.put(None)
        self._worker.join(timeout=10)
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        client.subscribe(device_filter(Channel.DESIRED), qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        device_id = parse_topic(msg.topic).device_id
        with self._lock:
            device = self.devices.get(device_id)
            if device is None:
                return
            try:
                body = verify_desired(
                    bytes(msg.payload),
                    trusted_director_keys=self._keys,
                    device_id=device_id,
                    last_seq=device.last_desired_seq,
                    now=utcnow(),
                )
            except ReplayedOrOlder:
                return  # the retained message again, or a re-publish of the same seq
            except Exception as e:  # an agent reports and ignores it too
                self.rejected.append(f"{device_id}: {e}")
                return
            device.last_desired_seq = body.seq
            device.accepted.append(body)
        self._work.put((device_id, body))

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            self._install(*item)

    def _install(self, device_id: str, body: DesiredBody) -> None:
        with self._lock:
            device = self.devices[device_id]
            target = body.target
            if target.version == device.version:
                kinds = [EventKind.INFO]
            elif target.version in device.fails:
                kinds = [
                    EventKind.DOWNLOADING,
                    EventKind.VERIFIED,
                    EventKind.STAGED,
                    EventKind.ACTIVATED,
                    EventKind.FAILED,
                    EventKind.ROLLED_BACK,
                ]
            else:
                kinds = [
                    EventKind.DOWNLOADING,
                    EventKind.VERIFIED,
                    EventKind.STAGED,
                    EventKind.ACTIVATED,
                    EventKind.HEALTHY,
                    EventKind.COMMITTED,
                ]
                device.version = target.version
            events = [
                EventMessage(
                    device_id=device_id,
                    seq=device.next_seq(),
                    kind=kind,
                    model=ModelRef(name=target.name, version=target.version, sha256=target.sha256),
                    desired_seq=body.seq,
                    rollout_id=body.rollout_id,
                    reason=_reason(kind),
                )
                for kind in kinds
            ]
            committed = EventKind.COMMITTED in kinds
            sketch = self.drift(device_id, target.version) if self.drift and committed else None
            window = self._drift_message(device, target.version, sketch) if sketch else None
        for event in events:
            self._client.publish(device_topic(device_id, Channel.EVENTS), encode(event), qos=1)
        if window is not None:
            self._client.publish(device_topic(device_id, Channel.DRIFT), encode(window), qos=1)


def _reason(kind: EventKind) -> str | None:
    return {
        EventKind.INFO: "already active",
        EventKind.FAILED: "probation: golden samples differ",
        EventKind.ROLLED_BACK: "restored the previous model",
    }.get(kind)
