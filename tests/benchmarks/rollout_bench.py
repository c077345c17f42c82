"""Rollout benchmark: N real agents, a 1 MB signed model, 4 waves, no soak.

    .venv/bin/python -m tests.benchmarks.rollout_bench [--devices 1000] [--broker URL]

Starts Mosquitto (tests/support/mosquitto.py) unless ``--broker`` is given, the fleet
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
from pathlib import Path
from typing import Any

import httpx
import psutil

from edgefleet.fleet.keys import create_lab_setup
from edgefleet.fleet.store.engine import make_engine
from edgefleet.shared.manifest import ProbationBudget
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.simulators.fleet import DeviceProfile, FleetPlan, UpdatePlan, raise_open_file_limit
from edgefleet.simulators.models import train_wine_classifier
from edgefleet.simulators.shards import ShardedFleet
from tests.e2e.updates.support import padded_model
from tests.support.mosquitto import MosquittoBroker, free_port, wait_for_port
from tests.support.rollouts import publish_and_approve

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


def _serve_fleet(base: Path, broker_url: str, lab_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "EDGEFLEET_FLEET_DATABASE_URL": f"sqlite:///{base / 'fleet.db'}",
        "EDGEFLEET_FLEET_BROKER_URL": broker_url,
        "EDGEFLEET_FLEET_API_PORT": str(port),
        "EDGEFLEET_FLEET_DATA_DIR": str(base / "fleet"),
        "EDGEFLEET_FLEET_KEYS_DIR": str(lab_dir),
        "EDGEFLEET_FLEET_LAB_MODE": "true",
        "EDGEFLEET_FLEET_ADMIN_TOKEN": TOKEN,
        "EDGEFLEET_FLEET_REPOSITORY_DEVICE_TOKEN": DEVICE_TOKEN,
        "EDGEFLEET_FLEET_ROLLOUT_TICK_INTERVAL_S": "0.5",
        "EDGEFLEET_FLEET_ROLLOUT_LEASE_S": "5",
    }
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--broker", help="use this MQTT broker instead of starting Mosquitto")
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
        help="instead of a rollout, ramp idle devices up to this many (steps of 500)",
    )
    args = parser.parse_args(argv)
    raise_open_file_limit()
    base = Path(tempfile.mkdtemp(prefix="edgefleet-rollout-bench-"))
    broker = None
    broker_url = args.broker
    if broker_url is None:
        broker = MosquittoBroker(base / "mosquitto", extra_config="max_connections -1\n")
        broker.start()
        broker_url = broker.url
    lab = create_lab_setup(base / "lab")
    model = train_wine_classifier(base / "wine.onnx")
    # A thousand agents on two cores answer slowly; the default latency budget (250 ms
    # p95) would roll back healthy models, and latency is not what this measures.
    probation = ProbationBudget(min_inferences=3, duration_s=1.0, max_latency_p95_ms=10_000)
    factory = build_package(
        model.path, name="wine", version="1.0.0", out_dir=base / "pk", probation=probation
    )
    big = padded_model(model.path, base / "wine-big.onnx", args.model_bytes)
    upgrade = build_package(
        big, name="wine", version="1.1.0", out_dir=base / "pk", probation=probation
    )
    port = free_port()
    fleet = _serve_fleet(base, broker_url, lab.keys_dir, port)
    sim: ShardedFleet | None = None
    try:
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        approvals = make_engine(f"sqlite:///{base / 'fleet.db'}")
        for version, package in (("1.0.0", factory), ("1.1.0", upgrade)):
            r = api.post(
                "/v1/models",
                content=package.read_bytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert r.status_code in (200, 201), r.text
            # Publishing does not approve: a second person (a user made in the
            # fleet's database) approves, or the rollout stops after its first wave.
            publish_and_approve(api, approvals, "wine", version)
        print(f"model 1.1.0 package: {upgrade.stat().st_size} bytes (signed TUF target)")
        plan = FleetPlan(
            count=args.devices,
            broker_url=broker_url,
            data_dir=base / "devices",
            model=model,
            model_name="wine",
            factory_package=factory,
            updates=UpdatePlan(
                repository_url=f"http://127.0.0.1:{port}/v1/repository",
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
        )
        if args.capacity:
            idle_plan = dataclasses.replace(
                plan,
                updates=None,
                profiles=(DeviceProfile(hardware="rpi4", tags=("idle",), inferences_per_s=0.0),),
            )
            _ramp(idle_plan, fleet.pid, step=500, limit=args.capacity, budget_s=300, nice=args.nice)
            return 0
        sim = ShardedFleet(plan, per_process=args.per_process, nice=args.nice)
        started = time.monotonic()
        sim.start()
        fleet_meter, sim_meter = Meter([fleet.pid]), Meter(sim.pids)
        meters = [fleet_meter, sim_meter]

        def registered() -> bool:
            page = api.get(
                "/v1/devices", params={"tag": "bench", "online": True, "limit": 1}
            ).json()
            return bool(int(page["total"]) == args.devices)

        _wait(registered, 600, "every device to register online", meters)
        print(
            f"{args.devices} agents in {len(sim.pids)} processes started and registered in "
            f"{time.monotonic() - started:.1f} s"
        )
        fleet_meter, sim_meter = Meter([fleet.pid]), Meter(sim.pids)
        broker_pid = broker.pid if broker is not None else None
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
            verdict = "met" if total_s < TARGET_S else "NOT met"
            print(
                f"creation -> 100 % healthy: {total_s:.1f} s "
                f"(target < {TARGET_S:.0f} s: {verdict}, {total_s / TARGET_S:.2f} x the target)"
            )
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
        idle = Meter([fleet.pid])
        time.sleep(args.idle_s)
        idle.sample()
        print(
            f"idle with {sim.connected()} connected devices reporting every 10 s: fleet CPU "
            f"{100 * idle.used() / args.idle_s:.1f} % of one core, RSS "
            f"{idle.peak_rss / 2**20:.0f} MiB"
        )
    finally:
        if sim is not None:
            sim.stop()
        fleet.terminate()
        fleet.wait(30)
        if broker is not None:
            broker.stop()
        if args.keep:
            print(f"kept the fleet database, logs and device directories in {base}")
        else:
            # A thousand devices leave over a gigabyte of state directories behind.
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
