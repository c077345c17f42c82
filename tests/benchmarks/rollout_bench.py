"""Rollout benchmark: N real agents, a 1 MB signed model, 4 waves, no soak.

    .venv/bin/python -m tests.benchmarks.rollout_bench [--devices 1000] [--security both]

``--security`` open runs the fleet and devices on a plain Mosquitto with the shared
repository token; mtls runs them the secured way: Mosquitto on the configuration
``broker-config`` writes (a device certificate required, per-device ACLs, the fleet on a
listener of its own), the fleet's API and repository over HTTPS, every device enrolled
through the REST API before it starts and then signing its repository requests; both
(the default) runs open, then mtls, and prints the two times side by side with their
ratio and each one's verdict against the target.

Starts Mosquitto (tests/support/mosquitto.py) unless ``--broker`` is given (open only), the fleet
service as its own PROCESS (``edgefleet fleet serve``, lab keys, SQLite) and the
simulated fleet in worker processes (`edgefleet.simulators.shards.ShardedFleet`: real agent code,
one MQTT connection per device). Uploads wine 1.0.0 (the factory model) and 1.1.0 padded
to 1 MB with an unused initializer, rolls 1.1.0 out in 4 waves (5 %, 25 %, 50 %, 100 %)
and prints the time from rollout creation to each wave healthy and to 100 % healthy,
with the CPU seconds and peak RSS of the fleet process and of the simulator processes.
Then it keeps the fleet idle for ``--idle-s`` with every device reporting telemetry
every 10 s and prints the fleet's CPU meanwhile.

The agents of one simulator process install in turns, ``--update-slots`` at a time
(default 1; 0 lets all of them at once, the way to measure what that costs): see
`edgefleet.simulators.fleet.FleetPlan.update_slots`. The working directory (over a gigabyte of
device state for 1,000 devices) is removed at the end unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from edgefleet.fleet.identity.broker_config import BrokerMode
from edgefleet.fleet.keys import create_lab_setup
from edgefleet.fleet.store.engine import make_engine
from edgefleet.shared.manifest import ProbationBudget
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.simulators.enrollment import IdentityPlan
from edgefleet.simulators.fleet import DeviceProfile, FleetPlan, UpdatePlan, raise_open_file_limit
from edgefleet.simulators.models import TrainedModel, train_wine_classifier
from edgefleet.simulators.shards import ShardedFleet
from tests.e2e.updates.support import padded_model
from tests.support.closed_broker import ClosedBroker, write_closed_setup
from tests.support.mosquitto import MosquittoBroker, free_port, wait_for_port
from tests.support.rollouts import publish_and_approve
from tests.support.tls_fleet import ServerFiles, device_ca, server_files

TOKEN = "bench-admin-token-0123456789abcdef"
DEVICE_TOKEN = "bench-device-token-0123456789abcdef"
TARGET_S = 60.0  # the target for 1,000 agents on a 2-core machine
WAVES = [{"fraction": 0.05}, {"fraction": 0.25}, {"fraction": 0.5}, {"fraction": 1.0}]


class Meter:
    """CPU seconds and peak RSS of a set of processes, sampled."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.peak_rss = 0
        self.start_split = self.cpu_split()
        self.start_cpu = sum(self.start_split)

    def cpu(self) -> float:
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """User and system CPU seconds so far."""
        user = system = 0.0
        for p in self.procs:
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            user += t.user
            system += t.system
        return user, system

    def sample(self) -> None:
        rss = 0
        for p in self.procs:
            try:
                rss += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        self.peak_rss = max(self.peak_rss, rss)

    def used(self) -> float:
        return self.cpu() - self.start_cpu

    def system_share(self) -> float:
        """The fraction of the CPU used since the start that was spent in the kernel."""
        user, system = self.cpu_split()
        used = (user - self.start_split[0]) + (system - self.start_split[1])
        return (system - self.start_split[1]) / used if used > 0 else 0.0


@dataclass
class Security:
    """How the fleet and its devices reach each other in one run."""

    name: str
    broker_url: str  # the fleet's own connection
    fleet_env: dict[str, str]
    scheme: str = "http"
    https: ServerFiles | None = None
    device_broker_url: str | None = None  # None: the devices use broker_url
    broker_pid: int | None = None  # a broker this run started
    stop: Any = None


def _open_security(base: Path, broker_url: str | None) -> Security:
    if broker_url is not None:
        return Security("open", broker_url, {})
    broker = MosquittoBroker(base / "mosquitto", extra_config="max_connections -1\n")
    broker.start()
    return Security("open", broker.url, {}, broker_pid=broker.pid, stop=broker.stop)


def _mtls_security(base: Path, keys_dir: Path) -> Security:
    """The closed broker of `broker-config` (mTLS mode) and HTTPS, from the fleet's CA."""
    ca = device_ca(keys_dir, base / "fleet")  # the CA the fleet process opens
    setup = write_closed_setup(base / "broker", ca, BrokerMode.MTLS)
    broker = ClosedBroker(base / "mosquitto", setup)
    broker.start()
    https = server_files(ca, base / "pki", "fleet-https")
    env = setup.fleet_settings("127.0.0.1") | {
        "EDGEFLEET_FLEET_BROKER_RELOAD_COMMAND": broker.reload_command,
        "EDGEFLEET_FLEET_API_TLS_CERT_FILE": str(https.cert),
        "EDGEFLEET_FLEET_API_TLS_KEY_FILE": str(https.key),
    }
    return Security(
        "mtls",
        env.pop("EDGEFLEET_FLEET_BROKER_URL"),
        env,
        scheme="https",
        https=https,
        device_broker_url=broker.device_url,
        broker_pid=broker.pid,
        stop=broker.stop,
    )


def _serve_fleet(
    base: Path, security: Security, lab_dir: Path, port: int
) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "EDGEFLEET_FLEET_DATABASE_URL": f"sqlite:///{base / 'fleet.db'}",
        "EDGEFLEET_FLEET_BROKER_URL": security.broker_url,
        "EDGEFLEET_FLEET_API_PORT": str(port),
        "EDGEFLEET_FLEET_DATA_DIR": str(base / "fleet"),
        "EDGEFLEET_FLEET_KEYS_DIR": str(lab_dir),
        "EDGEFLEET_FLEET_LAB_MODE": "true",
        # A fresh database: the service refuses an empty one unless asked to migrate it.
        "EDGEFLEET_FLEET_MIGRATE_AT_START": "true",
        "EDGEFLEET_FLEET_ADMIN_TOKEN": TOKEN,
        "EDGEFLEET_FLEET_REPOSITORY_DEVICE_TOKEN": DEVICE_TOKEN,
        "EDGEFLEET_FLEET_ROLLOUT_TICK_INTERVAL_S": "0.5",
        "EDGEFLEET_FLEET_ROLLOUT_LEASE_S": "5",
    }
    env |= security.fleet_env
    log = (base / "fleet.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.shared.cli", "fleet", "serve"],
        env=env,
        stdout=log,
        stderr=log,
    )
    wait_for_port(port, timeout_s=60)
    return process


def _wait(condition: Any, timeout_s: float, what: str, meters: list[Meter]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for m in meters:
            m.sample()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.5)


def _ramp(
    plan: FleetPlan, fleet_pid: int, *, step: int, limit: int, budget_s: float, nice: int
) -> None:
    """Add idle devices ``step`` at a time (each shard reporting every 10 s) until
    ``limit``, ``budget_s`` or a step whose devices take over a minute to connect; print
    each step's connect time, the simulator's RSS and the fleet's CPU meanwhile."""
    shards: list[ShardedFleet] = []
    deadline = time.monotonic() + budget_s
    total = 0
    try:
        while total < limit and time.monotonic() < deadline:
            count = min(step, limit - total)
            shard = ShardedFleet(
                dataclasses.replace(
                    plan, count=count, id_prefix=f"idle{len(shards)}", data_dir=plan.data_dir
                ),
                per_process=100,
                nice=nice,
            )
            started = time.monotonic()
            shard.start()
            shards.append(shard)
            total += count
            while sum(s.connected() for s in shards) < total:
                if time.monotonic() - started > 60:
                    break
                time.sleep(0.5)
            connect_s = time.monotonic() - started
            connected = sum(s.connected() for s in shards)
            idle = Meter([fleet_pid])
            sims = Meter([pid for s in shards for pid in s.pids])
            time.sleep(15)
            idle.sample()
            sims.sample()
            print(
                f"{connected}/{total} connected (step of {count} in {connect_s:.1f} s): fleet CPU "
                f"{100 * idle.used() / 15:.1f} % of a core, RSS {idle.peak_rss / 2**20:.0f} MiB"
                f" | simulator CPU {100 * sims.used() / 15:.0f} %, RSS "
                f"{sims.peak_rss / 2**20:.0f} MiB ({sims.peak_rss / 2**20 / total:.1f} MiB/device)",
                flush=True,
            )
            if connected < total:
                print("stopped: a step did not connect within 60 s")
                break
    finally:
        for shard in shards:
            shard.stop(timeout_s=10)


@dataclass(frozen=True)
class Packages:
    """What every run uploads: the factory model and the padded upgrade."""

    model: TrainedModel
    factory: Path
    upgrade: Path


def _packages(base: Path, model_bytes: int) -> Packages:
    model = train_wine_classifier(base / "wine.onnx")
    # A thousand agents on two cores answer slowly; the default latency budget (250 ms
    # p95) would roll back healthy models, and latency is not what this measures.
    probation = ProbationBudget(min_inferences=3, duration_s=1.0, max_latency_p95_ms=10_000)
    factory = build_package(
        model.path, name="wine", version="1.0.0", out_dir=base / "pk", probation=probation
    )
    big = padded_model(model.path, base / "wine-big.onnx", model_bytes)
    upgrade = build_package(
        big, name="wine", version="1.1.0", out_dir=base / "pk", probation=probation
    )
    return Packages(model, factory, upgrade)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument(
        "--security",
        choices=("open", "mtls", "both"),
        default="both",
        help="open broker and shared token, mTLS and enrolled devices, or both side by side",
    )
    parser.add_argument("--broker", help="(open only) use this MQTT broker instead of Mosquitto")
    parser.add_argument("--per-process", type=int, default=100, help="agents per sim process")
    parser.add_argument("--nice", type=int, default=10, help="CPU niceness of the sim processes")
    parser.add_argument("--model-bytes", type=int, default=1 << 20)
    parser.add_argument(
        "--inferences-per-s", type=float, default=1.0, help="each device's inference rate"
    )
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument(
        "--keep", action="store_true", help="keep the working directory (fleet.db, logs)"
    )
    parser.add_argument(
        "--update-slots",
        type=int,
        default=1,
        help="agents of one sim process that may run a heavy update step at once (0: all)",
    )
    parser.add_argument(
        "--capacity",
        type=int,
        default=0,
        help="instead of a rollout, ramp idle devices up to this many (steps of 500; open)",
    )
    args = parser.parse_args(argv)
    if args.broker is not None and args.security != "open":
        parser.error("--broker is for --security open: mtls starts its own closed Mosquitto")
    raise_open_file_limit()
    base = Path(tempfile.mkdtemp(prefix="edgefleet-rollout-bench-"))
    try:
        packages = _packages(base, args.model_bytes)
        print(f"model 1.1.0 package: {packages.upgrade.stat().st_size} bytes (signed TUF target)")
        if args.capacity:
            _run(args, base / "capacity", packages, "open")
            return 0
        names = ("open", "mtls") if args.security == "both" else (args.security,)
        times: dict[str, float | None] = {}
        for name in names:
            print(
                f"\n== {name}: "
                + (
                    "plain broker, shared repository token"
                    if name == "open"
                    else "closed broker (device certificates, ACLs), HTTPS, enrolled devices"
                )
            )
            times[name] = _run(args, base / name, packages, name)
        print()
        for name, total in times.items():
            if total is None:
                print(f"{name:>4}: the rollout did not complete: NOT met")
            else:
                verdict = "met" if total < TARGET_S else "NOT met"
                print(
                    f"{name:>4}: 100 % healthy {total:.1f} s after creation "
                    f"(target < {TARGET_S:.0f} s: {verdict}, {total / TARGET_S:.2f} x the target)"
                )
        open_s, mtls_s = times.get("open"), times.get("mtls")
        if open_s and mtls_s:
            print(f"mtls / open: {mtls_s / open_s:.2f} x")
    finally:
        if args.keep:
            print(f"kept the fleet databases, logs and device directories in {base}")
        else:
            # A thousand devices leave over a gigabyte of state directories behind.
            shutil.rmtree(base, ignore_errors=True)
    return 0


def _run(args: argparse.Namespace, base: Path, packages: Packages, name: str) -> float | None:
    """One fleet, broker and simulated fleet; the time to 100 % healthy (None if the
    rollout did not complete)."""
    base.mkdir(parents=True)
    lab = create_lab_setup(base / "lab")
    security = (
        _mtls_security(base, lab.keys_dir) if name == "mtls" else _open_security(base, args.broker)
    )
    port = free_port()
    fleet = _serve_fleet(base, security, lab.keys_dir, port)
    sim: ShardedFleet | None = None
    fleet_url = f"{security.scheme}://127.0.0.1:{port}"
    try:
        verify = str(security.https.ca) if security.https is not None else True
        api = httpx.Client(
            base_url=fleet_url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
            verify=verify,
        )
        approvals = make_engine(f"sqlite:///{base / 'fleet.db'}")
        for version, package in (("1.0.0", packages.factory), ("1.1.0", packages.upgrade)):
            r = api.post(
                "/v1/models",
                content=package.read_bytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert r.status_code in (200, 201), r.text
            # Publishing does not approve: a second person (a user made in the
            # fleet's database) approves, or the rollout stops after its first wave.
            publish_and_approve(api, approvals, "wine", version, verify=verify)
        identities = None
        if security.device_broker_url is not None:
            identities = IdentityPlan(
                fleet_url=fleet_url,
                admin_token=TOKEN,
                device_broker_url=security.device_broker_url,
                fleet_ca_file=security.https.ca if security.https is not None else None,
            )
        plan = FleetPlan(
            count=args.devices,
            broker_url=security.broker_url,
            data_dir=base / "devices",
            model=packages.model,
            model_name="wine",
            factory_package=packages.factory,
            updates=UpdatePlan(
                repository_url=f"{fleet_url}/v1/repository",
                trust_dir=lab.bundle_dir,
                device_token=DEVICE_TOKEN,
                # The runner wakes on every desired state anyway; its tick only
                # paces retries, and a thousand 1 s ticks are a thousand GIL hand-offs.
                tick_s=5.0,
            ),
            profiles=(
                DeviceProfile(
                    hardware="rpi4", tags=("bench",), inferences_per_s=args.inferences_per_s
                ),
            ),
            telemetry_interval_s=10.0,
            # Drift monitoring is not what this benchmark measures.
            drift=False,
            drift_tick_s=30.0,
            update_slots=args.update_slots,
            identities=identities,
        )
        if args.capacity:
            idle_plan = dataclasses.replace(
                plan,
                updates=None,
                profiles=(DeviceProfile(hardware="rpi4", tags=("idle",), inferences_per_s=0.0),),
            )
            _ramp(idle_plan, fleet.pid, step=500, limit=args.capacity, budget_s=300, nice=args.nice)
            return None
        sim = ShardedFleet(plan, per_process=args.per_process, nice=args.nice)
        return _rollout(args, api, sim, fleet.pid, security.broker_pid)
    finally:
        if sim is not None:
            sim.stop()
        fleet.terminate()
        fleet.wait(30)
        if security.stop is not None:
            security.stop()


def _rollout(
    args: argparse.Namespace,
    api: httpx.Client,
    sim: ShardedFleet,
    fleet_pid: int,
    broker_pid: int | None,
) -> float | None:
    started = time.monotonic()
    sim.start()
    fleet_meter, sim_meter = Meter([fleet_pid]), Meter(sim.pids)
    meters = [fleet_meter, sim_meter]

    def registered() -> bool:
        page = api.get("/v1/devices", params={"tag": "bench", "online": True, "limit": 1}).json()
        return bool(int(page["total"]) == args.devices)

    _wait(registered, 600, "every device to register online", meters)
    print(
        f"{args.devices} agents in {len(sim.pids)} processes started and registered in "
        f"{time.monotonic() - started:.1f} s"
    )
    fleet_meter, sim_meter = Meter([fleet_pid]), Meter(sim.pids)
    broker_meter = Meter([broker_pid] if broker_pid is not None else [])
    meters = [fleet_meter, sim_meter, broker_meter]
    created_at = time.monotonic()
    created = api.post(
        "/v1/rollouts",
        json={
            "model": "wine",
            "version": "1.1.0",
            "selector": {"tags": ["bench"]},
            "waves": WAVES,
            "gate": {"soak_s": 0, "timeout_s": 600},
        },
    )
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    wave_done: dict[int, float] = {}
    detail: dict[str, Any] = {}

    def finished() -> bool:
        detail.clear()
        detail.update(api.get(f"/v1/rollouts/{rollout_id}").json())
        for wave in detail["waves"]:
            if wave["index"] not in wave_done and wave["counts"].get("healthy") == wave["size"]:
                wave_done[wave["index"]] = time.monotonic() - created_at
        return detail["status"] in ("completed", "paused", "rolled_back", "failed")

    _wait(finished, 900, "the rollout to finish", meters)
    total_s = time.monotonic() - created_at
    print(f"rollout {detail['status']}: {detail['counts']}")
    if detail["status"] == "completed":
        print(f"creation -> 100 % healthy: {total_s:.1f} s")
    else:
        print(f"the rollout ended {detail['status']} after {total_s:.1f} s: not 100 % healthy")
    for index, at in sorted(wave_done.items()):
        size = detail["waves"][index]["size"]
        print(f"  wave {index} ({size} devices) healthy at {at:.1f} s")
    print(
        f"during the rollout: fleet CPU {fleet_meter.used():.1f} s "
        f"({100 * fleet_meter.system_share():.0f} % system), peak RSS "
        f"{fleet_meter.peak_rss / 2**20:.0f} MiB | simulator CPU {sim_meter.used():.1f} s "
        f"({100 * sim_meter.system_share():.0f} % system), "
        f"peak RSS {sim_meter.peak_rss / 2**20:.0f} MiB ({len(sim.pids)} processes)"
        + (f" | Mosquitto CPU {broker_meter.used():.1f} s" if broker_pid is not None else "")
    )
    idle = Meter([fleet_pid])
    time.sleep(args.idle_s)
    idle.sample()
    print(
        f"idle with {sim.connected()} connected devices reporting every 10 s: fleet CPU "
        f"{100 * idle.used() / args.idle_s:.1f} % of one core, RSS "
        f"{idle.peak_rss / 2**20:.0f} MiB"
    )
    return total_s if detail["status"] == "completed" else None


if __name__ == "__main__":
    sys.exit(main())
