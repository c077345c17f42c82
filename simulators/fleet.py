"""A simulated fleet: N real agents in one process, each with its own MQTT connection,
state directory and identity, fed synthetic sensor readings.

The agents are `agent.daemon.Agent` itself, not a copy: what the simulator exercises is
what a device runs. Readings are scored through `Agent.infer`, the same path the local
inference API uses. One feeder thread drives every device so a thousand simulated
devices do not need a thousand feeder threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import AgentConfig
from agent.daemon import Agent
from simulators.models import SensorFeed, TrainedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceProfile:
    """What a simulated device looks like to the fleet."""

    hardware: str = "sim-gateway"
    tags: tuple[str, ...] = ("sim",)
    inferences_per_s: float = 2.0


@dataclass
class SimulatedDevice:
    """One real agent plus the feed that stands in for its sensors."""

    agent: Agent
    feed: SensorFeed
    profile: DeviceProfile
    next_due: float = 0.0
    inferences: int = 0
    errors: int = 0


@dataclass(frozen=True)
class FleetPlan:
    """How to build a simulated fleet."""

    count: int
    broker_url: str
    data_dir: Path
    model: TrainedModel
    model_name: str = "wine-classifier"
    model_version: str = "1.0.0"
    telemetry_interval_s: float = 5.0
    profiles: Sequence[DeviceProfile] = field(default_factory=lambda: (DeviceProfile(),))
    id_prefix: str = "sim"
    mqtt_protocol: str = "3.1.1"
    seed: int = 0


class SimulatedFleet:
    """Start, feed and stop a fleet of simulated devices."""

    def __init__(self, plan: FleetPlan) -> None:
        self.plan = plan
        self.devices: list[SimulatedDevice] = []
        self._stop = threading.Event()
        self._feeder: threading.Thread | None = None

    def device_config(self, index: int) -> AgentConfig:
        """The config of device ``index``: its id, profile, state dir and the shared model."""
        plan = self.plan
        profile = plan.profiles[index % len(plan.profiles)]
        device_id = f"{plan.id_prefix}-{index:04d}"
        return AgentConfig.model_validate(
            {
                "device_id": device_id,
                "hardware": profile.hardware,
                "tags": list(profile.tags),
                "data_dir": plan.data_dir / device_id,
                "telemetry_interval_s": plan.telemetry_interval_s,
                "broker": {"url": plan.broker_url, "protocol": plan.mqtt_protocol},
                "model": {
                    "path": plan.model.path,
                    "name": plan.model_name,
                    "version": plan.model_version,
                },
                "api": {"enabled": False},
            }
        )

    def start(self) -> None:
        """Start every agent (their MQTT connections come up in the background) and the feeder."""
        for index in range(self.plan.count):
            config = self.device_config(index)
            agent = Agent(config)
            agent.start()
            feed = SensorFeed(self.plan.model.x_train, seed=self.plan.seed + index)
            profile = self.plan.profiles[index % len(self.plan.profiles)]
            self.devices.append(SimulatedDevice(agent=agent, feed=feed, profile=profile))
        self._feeder = threading.Thread(target=self._feed_loop, name="sim-feeder", daemon=True)
        self._feeder.start()
        log.info("simulated fleet of %d devices started", len(self.devices))

    def connected(self) -> int:
        """How many agents have a live MQTT connection now."""
        return sum(1 for d in self.devices if d.agent.connected)

    def set_shift(self, shift: float, devices: Sequence[SimulatedDevice] | None = None) -> None:
        """Shift the sensor readings of ``devices`` (default: all) by ``shift`` std devs."""
        for device in devices if devices is not None else self.devices:
            device.feed.shift = shift

    def _feed_loop(self) -> None:
        input_name = "input"
        while not self._stop.is_set():
            now = time.monotonic()
            soonest = now + 0.5
            for device in self.devices:
                if device.next_due <= now:
                    try:
                        device.agent.infer({input_name: device.feed.sample(1)})
                        device.inferences += 1
                    except Exception as e:  # a simulated app logs and keeps sending
                        device.errors += 1
                        log.debug("%s: inference failed: %s", device.agent.device_id, e)
                    device.next_due = now + 1.0 / device.profile.inferences_per_s
                soonest = min(soonest, device.next_due)
            self._stop.wait(max(0.0, soonest - time.monotonic()))

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the feeder, then every agent (each publishes online=false)."""
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join(timeout_s)
        for device in self.devices:
            device.agent.stop(timeout_s)
        log.info("simulated fleet stopped")
