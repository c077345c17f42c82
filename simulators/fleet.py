"""A simulated fleet: N real agents in one process, each with its own MQTT connection,
state directory and identity, fed synthetic sensor readings, with faults injected.

The agents are `edgefleet.agent.daemon.Agent` itself, not a copy: what the simulator exercises is
what a device runs, including signed updates when `FleetPlan.updates` is set (the
repository URL, the provisioning bundle and the device token) and device identities
when `FleetPlan.identities` is set (each device enrolls through the fleet's REST API
before its agent starts, then uses only its certificate: mTLS to the broker's device
listener, signed repository requests, renewal). Readings are scored
through `Agent.infer`, the same path the local inference API uses. One feeder thread
drives every device, and one chaos thread switches ``offline`` devices off and on, so a
thousand simulated devices do not need a thousand extra threads.

Faults (`edgefleet.simulators.faults`): model faults go in through the agent's ``runtime_loader``
seam; ``offline`` stops the agent and later starts a new one on the same state
directory (a reboot after a power cut: the update runner resumes, the retained desired
state converges it); ``flaky`` routes the device through a `FlakyProxy`.

Invariant: a device's state directory and id never change, whichever agent object
serves it; `SimulatedDevice.agent` is None while the device is off.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.daemon import Agent
from edgefleet.simulators.enrollment import IdentityPlan, enroll_device
from edgefleet.simulators.faults import Fault, FaultKind, loader_for
from edgefleet.simulators.models import INPUT_NAME, SensorFeed, TrainedModel
from edgefleet.simulators.proxy import FlakyProxy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceProfile:
    """What a group of simulated devices looks like to the fleet, and what goes wrong.

    ``count`` devices get this profile (see `expand_profiles`); ``shift`` moves their
    sensor readings by that many standard deviations (input drift).
    """

    hardware: str = "sim-gateway"
    tags: tuple[str, ...] = ("sim",)
    inferences_per_s: float = 2.0
    shift: float = 0.0
    count: int | None = None
    faults: tuple[Fault, ...] = ()

    def fault(self, kind: FaultKind) -> Fault | None:
        return next((f for f in self.faults if f.kind is kind), None)


@dataclass(frozen=True)
class UpdatePlan:
    """Signed updates for every simulated device: where the repository is, what it trusts."""

    repository_url: str
    trust_dir: Path
    device_token: str | None = None
    tick_s: float = 1.0
    retry_base_s: float = 0.5
    retry_max_s: float = 5.0


@dataclass(frozen=True)
class FleetPlan:
    """How to build a simulated fleet.

    ``factory_package`` (a ``.efpkg``) is the model each device ships with; without it the
    bare ``model.path`` is served as ``model_name`` ``model_version``.
    """

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
    factory_package: Path | None = None
    updates: UpdatePlan | None = None
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0
    keepalive_s: int = 30
    connect_timeout_s: float = 15.0
    drift: bool = True
    # Every agent thread that wakes on a timer costs a GIL hand-off; a thousand agents in
    # one process need slower timers than a real device's defaults.
    drift_tick_s: float = 1.0
    drift_window_s: float = 300.0
    # How many agents of one process may run a heavy update step (download, verify,
    # stage, activate, golden check) at once; 0 = no limit. Each real device has its own
    # CPU; a hundred agents in one process share one GIL, and when all of them install
    # at once they spend more CPU handing it over than installing.
    update_slots: int = 0
    # Identities on: devices enroll and then use their certificates (broker_url stays
    # what the fleet service uses; devices connect to identities.device_broker_url).
    identities: IdentityPlan | None = None


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the limit.

    Each agent holds a few descriptors (its MQTT socket, its outbox's SQLite files), so
    the common soft limit of 1024 stops a simulated fleet near 200 devices. Child
    processes started afterwards (a broker) inherit the raised limit.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


def expand_profiles(profiles: Sequence[DeviceProfile], count: int) -> list[DeviceProfile]:
    """The profile of each of ``count`` devices, in device order.

    Profiles with a ``count`` take that many devices, in the order given; the devices left
    over cycle through the profiles without one (or through all of them when every
    profile has a count). Raises ValueError when there are no profiles or the counts
    add up to more than ``count``.
    """
    if not profiles:
        raise ValueError("a simulated fleet needs at least one device profile")
    counted = sum(p.count or 0 for p in profiles)
    if counted > count:
        raise ValueError(f"the profiles' counts add up to {counted}, more than {count} devices")
    out = [p for p in profiles for _ in range(p.count or 0)]
    rest = [p for p in profiles if p.count is None] or list(profiles)
    out += [rest[i % len(rest)] for i in range(count - counted)]
    return out


@dataclass
class SimulatedDevice:
    """One device: its config and profile, the agent serving it now (None while off)."""

    config: AgentConfig
    feed: SensorFeed
    profile: DeviceProfile
    agent: Agent | None = None
    next_due: float = 0.0
    inferences: int = 0
    errors: int = 0
    restarts: int = 0
    next_switch: float = float("inf")

    @property
    def device_id(self) -> str:
        return self.config.device_id

    @property
    def online(self) -> bool:
        return self.agent is not None


class SimulatedFleet:
    """Start, feed, disturb and stop a fleet of simulated devices in this process.

    ``indices`` (default: all of ``plan.count``) selects the devices this process runs,
    so `edgefleet.simulators.shards.ShardedFleet` can split one plan over processes: the agents
    of one process share one GIL, so a process uses at most one core.
    """

    def __init__(self, plan: FleetPlan, indices: range | None = None) -> None:
        self.plan = plan
        self.devices: list[SimulatedDevice] = []
        self.proxies: list[FlakyProxy] = []
        profiles = expand_profiles(plan.profiles, plan.count)
        self._indices = indices if indices is not None else range(plan.count)
        self._profiles = {i: profiles[i] for i in self._indices}
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards SimulatedDevice.agent against the chaos thread
        self._rng = random.Random(plan.seed)
        self._feeder: threading.Thread | None = None
        self._chaos: threading.Thread | None = None
        self._update_gate = (
            threading.BoundedSemaphore(plan.update_slots) if plan.update_slots > 0 else None
        )

    def device_id(self, index: int) -> str:
        return f"{self.plan.id_prefix}-{index:04d}"

    @property
    def device_broker_url(self) -> str:
        """Where the devices connect: the device listener when identities are on."""
        identities = self.plan.identities
        return identities.device_broker_url if identities is not None else self.plan.broker_url

    def device_config(self, index: int, broker_url: str | None = None) -> AgentConfig:
        """The config of device ``index``: its id, profile, state dir, model, updates and
        identity."""
        plan = self.plan
        profile = self._profiles[index]
        device_id = self.device_id(index)
        document: dict[str, Any] = {
            "device_id": device_id,
            "hardware": profile.hardware,
            "tags": list(profile.tags),
            "data_dir": plan.data_dir / device_id,
            "telemetry_interval_s": plan.telemetry_interval_s,
            "broker": {
                "url": broker_url or self.device_broker_url,
                "protocol": plan.mqtt_protocol,
                "reconnect_min_s": plan.reconnect_min_s,
                "reconnect_max_s": plan.reconnect_max_s,
                "keepalive_s": plan.keepalive_s,
                "connect_timeout_s": plan.connect_timeout_s,
            },
            "model": {
                "path": plan.factory_package or plan.model.path,
                "name": plan.model_name,
                "version": plan.model_version,
            },
            "api": {"enabled": False},
            "drift": {
                "enabled": plan.drift,
                "tick_s": plan.drift_tick_s,
                "window_s": plan.drift_window_s,
            },
        }
        if plan.updates is not None:
            u = plan.updates
            document["update"] = {
                "enabled": True,
                "repository_url": u.repository_url,
                "trust_dir": u.trust_dir,
                # An enrolled device signs its requests; no shared token.
                "device_token": u.device_token if plan.identities is None else None,
                "tick_s": u.tick_s,
                "policy": {"retry_base_s": u.retry_base_s, "retry_max_s": u.retry_max_s},
            }
        if plan.identities is not None:
            document["identity"] = {"use": "on", "fleet_url": plan.identities.fleet_url}
            document["fleet_ca_file"] = plan.identities.fleet_ca_file
        return AgentConfig.model_validate(document)

    def start(self) -> None:
        """Start every agent (their MQTT connections come up in the background), the
        feeder, and the chaos thread when a profile has an ``offline`` fault. With
        identities on, each device not enrolled yet enrolls first.

        Raises `edgefleet.simulators.enrollment.EnrollmentError` when a device cannot
        enroll.
        """
        limit = raise_open_file_limit()
        if limit < 8 * len(self._profiles):
            log.warning("open-file limit %d is low for %d agents", limit, len(self._profiles))
        proxy_for: dict[float, FlakyProxy] = {}
        now = time.monotonic()
        for index, profile in self._profiles.items():
            flaky = profile.fault(FaultKind.FLAKY)
            broker_url = None
            if flaky is not None:
                if flaky.period_s not in proxy_for:
                    proxy_for[flaky.period_s] = self._start_proxy(flaky.period_s)
                # The proxy relays bytes, TLS or not: the scheme stays the listener's.
                scheme = urlsplit(self.device_broker_url).scheme
                broker_url = f"{scheme}://127.0.0.1:{proxy_for[flaky.period_s].port}"
            config = self.device_config(index, broker_url)
            if self.plan.identities is not None:
                enroll_device(self.plan.identities, config.device_id, config.identity_dir)
            device = SimulatedDevice(
                config=config,
                feed=SensorFeed(self.plan.model.x_train, seed=self.plan.seed + index),
                profile=profile,
            )
            device.feed.shift = profile.shift
            offline = profile.fault(FaultKind.OFFLINE)
            if offline is not None:
                device.next_switch = now + self._rng.uniform(0, offline.period_s)
            self._power_on(device)
            self.devices.append(device)
        self._feeder = threading.Thread(target=self._feed_loop, name="sim-feeder", daemon=True)
        self._feeder.start()
        if any(d.profile.fault(FaultKind.OFFLINE) for d in self.devices):
            self._chaos = threading.Thread(target=self._chaos_loop, name="sim-chaos", daemon=True)
            self._chaos.start()
        log.info("simulated fleet of %d devices started", len(self.devices))

    def connected(self) -> int:
        """How many agents have a live MQTT connection now."""
        return sum(1 for d in self.devices if d.agent is not None and d.agent.connected)

    def find(self, device_ids: Iterable[str]) -> list[SimulatedDevice]:
        """The devices of this process among ``device_ids``."""
        wanted = set(device_ids)
        return [d for d in self.devices if d.device_id in wanted]

    def active_versions(self) -> dict[str, str | None]:
        """Each running device's active model version (devices that are off are left out)."""
        out: dict[str, str | None] = {}
        for device in self.devices:
            agent = device.agent
            if agent is not None:
                ref = agent.status.active_model
                out[device.device_id] = ref.version if ref else None
        return out

    def set_shift(self, shift: float, devices: Sequence[SimulatedDevice] | None = None) -> None:
        """Shift the sensor readings of ``devices`` (default: all) by ``shift`` std devs."""
        for device in devices if devices is not None else self.devices:
            device.feed.shift = shift

    def take_offline(self, devices: Iterable[SimulatedDevice], timeout_s: float = 5.0) -> None:
        """Switch ``devices`` off now: each agent stops (``online: false``)."""
        for device in devices:
            self._power_off(device, timeout_s)

    def bring_online(self, devices: Iterable[SimulatedDevice]) -> None:
        """Switch ``devices`` on again: a new agent on the same state directory."""
        for device in devices:
            self._power_on(device)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the feeder and chaos threads, then every agent (each publishes online=false)."""
        self._stop.set()
        for thread in (self._feeder, self._chaos):
            if thread is not None:
                thread.join(timeout_s)
        for device in self.devices:
            self._power_off(device, timeout_s)
        for proxy in self.proxies:
            proxy.stop()
        log.info("simulated fleet stopped")

    def _start_proxy(self, mean_lifetime_s: float) -> FlakyProxy:
        parts = urlsplit(self.device_broker_url)
        proxy = FlakyProxy(
            parts.hostname or "127.0.0.1",
            parts.port or 1883,
            mean_lifetime_s=mean_lifetime_s,
            seed=self.plan.seed + len(self.proxies),
        )
        proxy.start()
        self.proxies.append(proxy)
        return proxy

    def _power_on(self, device: SimulatedDevice) -> None:
        with self._lock:
            if device.agent is not None:
                return
            agent = Agent(
                device.config,
                runtime_loader=loader_for(device.profile.faults, self.plan.model_version),
                update_gate=self._update_gate,
            )
            agent.start()
            device.agent = agent

    def _power_off(self, device: SimulatedDevice, timeout_s: float) -> None:
        with self._lock:
            agent, device.agent = device.agent, None
        if agent is not None:
            agent.stop(timeout_s)
            device.restarts += 1

    def _feed_loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            soonest = now + 0.5
            for device in self.devices:
                rate = device.profile.inferences_per_s
                if rate <= 0:
                    continue
                if device.next_due <= now:
                    agent = device.agent
                    if agent is not None:
                        try:
                            agent.infer({INPUT_NAME: device.feed.sample(1)})
                            device.inferences += 1
                        except Exception as e:  # a simulated app logs and keeps sending
                            device.errors += 1
                            log.debug("%s: inference failed: %s", device.device_id, e)
                    device.next_due = now + 1.0 / rate
                soonest = min(soonest, device.next_due)
            self._stop.wait(max(0.0, soonest - time.monotonic()))

    def _chaos_loop(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            for device in self.devices:
                fault = device.profile.fault(FaultKind.OFFLINE)
                if fault is None or device.next_switch > now:
                    continue
                if device.online:
                    self._power_off(device, 2.0)
                    device.next_switch = now + fault.down_s
                else:
                    self._power_on(device)
                    device.next_switch = now + fault.period_s
