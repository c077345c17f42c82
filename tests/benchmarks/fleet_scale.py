"""The fleet at 10,000 devices: emulated devices, a real fleet and a real Mosquitto.

    .venv/bin/python -m tests.benchmarks.fleet_scale [--sizes 1000,3000,10000] [--idle-s 60]

For each size: a fresh Mosquitto (``max_connections -1``, the benchmark's raised open
file limit), the fleet service as its own process (``edgefleet fleet serve``, lab keys,
SQLite: `tests.benchmarks.rollout_bench`'s harness) and ``--processes`` niced worker
processes of `edgefleet.simulators.emulator` (one MQTT connection, client id, will and
seq per device; desired states verified with the agent's code; the artifact fetched
from the fleet's repository and checked against the signed hash and length; events
and telemetry as the agent sends them; no model run). Then:

1. idle: every device reports telemetry every 10 s; after ``--settle-s`` the fleet's
   CPU is metered over ``--idle-s`` (CPU % of one core, CPU seconds per device and
   minute) with its RSS (total and per device);
2. a rollout of wine 1.1.0 (padded to ``--model-bytes``) in 4 waves (5 %, 25 %, 50 %,
   100 %, no soak): the time from creation to 100 % healthy, the fleet's CPU seconds
   (and per device installed) and peak RSS meanwhile.

Each figure is printed with its target, the ratio and the verdict; the targets are the
issue's for 10,000 devices (idle fleet CPU <= 10 % of a core, rollout <= 120 s, fleet
RSS <= 500 MiB) and its per-device-installed one (<= 5 ms of fleet CPU); at smaller
sizes the same absolute targets are shown for the trend. ``--py-spy DIR`` records the
fleet process with py-spy (raw folded stacks) during the idle window and the rollout.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgefleet.fleet.keys import create_lab_setup
from edgefleet.fleet.store.engine import make_engine
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.messages import ModelRef
from edgefleet.simulators.emulator.connection import LinkSettings
from edgefleet.simulators.emulator.launcher import EmulatedFleet, EmulatorPlan
from edgefleet.simulators.fleet import raise_open_file_limit
from tests.benchmarks.rollout_bench import (
    DEVICE_TOKEN,
    TOKEN,
    WAVES,
    Meter,
    Packages,
    _open_security,
    _packages,
    _serve_fleet,
)
from tests.support.mosquitto import free_port
from tests.support.rollouts import publish_and_approve

TARGET_IDLE_CPU_PERCENT = 10.0  # of one core, at 10,000 devices
TARGET_ROLLOUT_S = 120.0
TARGET_RSS_MIB = 500.0
TARGET_MS_PER_INSTALL = 5.0
TAG = "bench"


@dataclass
class SizeResult:
    """What one size measured."""

    devices: int
    connect_s: float = 0.0
    idle_cpu_percent: float = 0.0
    idle_cpu_s_per_device_min: float = 0.0
    idle_rss_mib: float = 0.0
    rollout_s: float | None = None
    rollout_cpu_s: float = 0.0
    rollout_rss_mib: float = 0.0
    emulator_cpu_percent: float = 0.0
    broker_cpu_percent: float = 0.0
    waves: dict[int, float] = field(default_factory=dict)
    load: str = ""


def verdict(measured: float | None, target: float, unit: str, what: str) -> str:
    if measured is None:
        return f"  {what}: not measured (the rollout did not complete): NOT met"
    ratio = measured / target
    ok = "met" if measured <= target else "NOT met"
    return (
        f"  {what}: {measured:.2f} {unit} (target <= {target:g} {unit}): "
        f"{ratio:.2f} x the target, {ok}"
    )


def _py_spy(
    out: Path | None, pid: int, seconds: float, name: str
) -> subprocess.Popen[bytes] | None:
    if out is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [
            str(spy),
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "50",
            "--format",
            "raw",
            "-o",
            str(out / f"{name}.txt"),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _online(api: httpx.Client) -> int:
    page = api.get("/v1/devices", params={"tag": TAG, "online": True, "limit": 1}).json()
    return int(page["total"])


def run_size(args: argparse.Namespace, base: Path, packages: Packages, count: int) -> SizeResult:
    """One fresh broker, fleet and emulated fleet of ``count`` devices."""
    result = SizeResult(devices=count)
    base.mkdir(parents=True)
    lab = create_lab_setup(base / "lab")
    security = _open_security(base, None)
    port = free_port()
    fleet = _serve_fleet(base, security, lab.keys_dir, port)
    emulated: EmulatedFleet | None = None
    try:
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        approvals = make_engine(f"sqlite:///{base / 'fleet.db'}")
        for version, package in (("1.0.0", packages.factory), ("1.1.0", packages.upgrade)):
            r = api.post(
                "/v1/models",
                content=package.read_bytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert r.status_code in (200, 201), r.text
            publish_and_approve(api, approvals, "wine", version)
        plan = EmulatorPlan(
            count=count,
            link=LinkSettings(
                broker_url=security.broker_url,
                repository_url=f"http://127.0.0.1:{port}/v1/repository",
                device_token=DEVICE_TOKEN,
            ),
            trust_dir=lab.bundle_dir,
            id_prefix="emu",
            tags=(TAG,),
            factory=ModelRef(name="wine", version="1.0.0", sha256=sha256_file(packages.factory)),
            telemetry_interval_s=10.0,
            probation_s=1.0,
        )
        emulated = EmulatedFleet(plan, processes=args.processes, nice=args.nice)
        started = time.monotonic()
        emulated.start()
        deadline = started + 600
        while _online(api) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {_online(api)} of {count} devices registered in 600 s")
            time.sleep(1.0)
        result.connect_s = time.monotonic() - started
        print(
            f"{count} emulated devices in {len(emulated.pids)} processes registered online "
            f"in {result.connect_s:.1f} s",
            flush=True,
        )
        time.sleep(args.settle_s)

        # 1. idle
        idle = Meter([fleet.pid])
        sims = Meter(emulated.pids)
        broker = Meter([security.broker_pid] if security.broker_pid else [])
        spy = _py_spy(args.py_spy, fleet.pid, args.idle_s, f"idle-{count}")
        end = time.monotonic() + args.idle_s
        while time.monotonic() < end:
            idle.sample()
            time.sleep(1.0)
        idle.sample()
        if spy is not None:
            spy.wait(30)
        result.idle_cpu_percent = 100 * idle.used() / args.idle_s
        result.idle_cpu_s_per_device_min = idle.used() / count * (60.0 / args.idle_s)
        result.idle_rss_mib = idle.peak_rss / 2**20
        result.emulator_cpu_percent = 100 * sims.used() / args.idle_s
        result.broker_cpu_percent = 100 * broker.used() / args.idle_s
        print(
            f"idle {args.idle_s:.0f} s: fleet CPU {result.idle_cpu_percent:.1f} % of a core "
            f"({1000 * result.idle_cpu_s_per_device_min:.3f} ms per device per minute), RSS "
            f"{result.idle_rss_mib:.0f} MiB ({1024 * result.idle_rss_mib / count:.1f} KiB per "
            f"device) | emulator {result.emulator_cpu_percent:.0f} %, Mosquitto "
            f"{result.broker_cpu_percent:.1f} %",
            flush=True,
        )

        # 2. rollout
        meter = Meter([fleet.pid])
        created_at = time.monotonic()
        created = api.post(
            "/v1/rollouts",
            json={
                "model": "wine",
                "version": "1.1.0",
                "selector": {"tags": [TAG]},
                "waves": WAVES,
                "gate": {"soak_s": 0, "timeout_s": 600},
            },
        )
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
        spy = _py_spy(args.py_spy, fleet.pid, args.rollout_timeout_s, f"rollout-{count}")
        detail: dict[str, Any] = {}
        deadline = created_at + args.rollout_timeout_s
        while True:
            meter.sample()
            detail = api.get(f"/v1/rollouts/{rollout_id}").json()
            for wave in detail["waves"]:
                healthy = wave["counts"].get("healthy") == wave["size"]
                if healthy and wave["index"] not in result.waves:
                    result.waves[wave["index"]] = time.monotonic() - created_at
            if detail["status"] in ("completed", "paused", "rolled_back", "failed"):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        total_s = time.monotonic() - created_at
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on an interrupt
            spy.wait(30)
        result.rollout_cpu_s = meter.used()
        result.rollout_rss_mib = meter.peak_rss / 2**20
        if detail["status"] == "completed":
            result.rollout_s = total_s
        waves = ", ".join(f"wave {i} at {t:.1f} s" for i, t in sorted(result.waves.items()))
        print(
            f"rollout {detail['status']} after {total_s:.1f} s ({waves}): {detail['counts']}; "
            f"fleet CPU {result.rollout_cpu_s:.1f} s ({1000 * result.rollout_cpu_s / count:.2f} "
            f"ms per device installed), peak RSS {result.rollout_rss_mib:.0f} MiB",
            flush=True,
        )
        status = emulated.status()
        print(
            f"emulator: {sum(s.downloads for s in status)} downloads, "
            f"{sum(s.download_failures for s in status)} failed; versions {emulated.versions()}"
        )
        result.load = _load()
        return result
    finally:
        if emulated is not None:
            emulated.stop()
        fleet.terminate()
        fleet.wait(30)
        if security.stop is not None:
            security.stop()


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def report(results: list[SizeResult]) -> None:
    print("\n== fleet at scale (targets are the issue's, for 10,000 devices)")
    for r in results:
        print(f"{r.devices} devices (load average {r.load}):")
        print(verdict(r.idle_cpu_percent, TARGET_IDLE_CPU_PERCENT, "% of a core", "idle fleet CPU"))
        print(verdict(max(r.idle_rss_mib, r.rollout_rss_mib), TARGET_RSS_MIB, "MiB", "fleet RSS"))
        print(verdict(r.rollout_s, TARGET_ROLLOUT_S, "s", "rollout to 100 % healthy"))
        per_install = 1000 * r.rollout_cpu_s / r.devices
        print(verdict(per_install, TARGET_MS_PER_INSTALL, "ms", "fleet CPU per device installed"))
        print(
            f"  per device: idle {1000 * r.idle_cpu_s_per_device_min:.3f} ms CPU a minute, "
            f"{1024 * max(r.idle_rss_mib, r.rollout_rss_mib) / r.devices:.1f} KiB RSS"
        )
    if len(results) > 1:
        first, last = results[0], results[-1]
        scale = last.devices / first.devices
        print(f"\n{first.devices} -> {last.devices} devices ({scale:.0f} x):")
        for name, a, b in (
            ("idle fleet CPU", first.idle_cpu_percent, last.idle_cpu_percent),
            ("rollout fleet CPU", first.rollout_cpu_s, last.rollout_cpu_s),
            ("fleet RSS", first.idle_rss_mib, last.idle_rss_mib),
            ("rollout time", first.rollout_s or 0.0, last.rollout_s or 0.0),
        ):
            grown = b / a if a else float("nan")
            print(f"  {name}: {grown:.2f} x ({grown / scale:.2f} x linear)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,3000,10000")
    parser.add_argument("--processes", type=int, default=4, help="emulator worker processes")
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--settle-s", type=float, default=20.0)
    parser.add_argument("--rollout-timeout-s", type=float, default=900.0)
    parser.add_argument("--model-bytes", type=int, default=1 << 20)
    parser.add_argument("--py-spy", type=Path, help="record the fleet with py-spy into DIR")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    raise_open_file_limit()  # Mosquitto inherits it: one descriptor per device
    base = Path(tempfile.mkdtemp(prefix="edgefleet-fleet-scale-"))
    results = []
    try:
        packages = _packages(base, args.model_bytes)
        print(
            f"model 1.1.0 package: {packages.upgrade.stat().st_size} bytes; load average {_load()}"
        )
        for size in (int(s) for s in args.sizes.split(",")):
            print(f"\n== {size} devices")
            results.append(run_size(args, base / str(size), packages, size))
        report(results)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
