"""Orchestrator tick benchmark: one active rollout over 1,000 devices, mid-rollout.

    .venv/bin/python -m tests.benchmarks.orchestrator_bench [--devices 1000] [--ticks 40]
        [--baseline DIR] [--profile out.html|out.txt]

Sets up what the fleet holds during the rollout benchmark (tests/benchmarks/
rollout_bench.py) without its thousand agents: a real Mosquitto, a fleet replica
(`edgefleet.fleet.service.FleetService`, lab keys, SQLite, no ingester, its own orchestrator off),
wine 1.0.0 and 1.1.0 uploaded and published, and ``--devices`` devices registered with
birth states written by the real ingest writer (`edgefleet.fleet.ingest.writer.BatchWriter`). A
rollout of 1.1.0 in 4 waves (5 %, 25 %, 50 %, 100 %) is created through the API and
driven by an `Orchestrator` of the benchmark's own (the real one, with the replica's
director and registry), every device of a wave reporting its whole deployment at once,
until the last wave has started and its devices are assigned (signed and published).

After ``--settle-s`` (10 s: the events of the earlier waves age as they would have),
for ``--ticks`` ticks at the rollout benchmark's tick interval (0.5 s), what
arrives meanwhile is written through the ingest writer (deployment events of the last
wave's devices, a step each in turn, the birth state after ``committed``, and every
device's telemetry every 10 s), and one `Orchestrator.tick` and one
``GET /v1/rollouts/{id}`` are timed. Printed: the median and mean CPU seconds (the
tick's thread; the whole process for the GET, client included) and wall seconds.

``--baseline DIR`` runs the same scenario twice at once, each in a process of its own:
on the code in DIR (for instance an export of an earlier commit: ``git archive HEAD |
tar -x -C DIR``) and on this tree's code. Their timed ticks take turns, half a tick
interval apart (never timed at once, and each under the machine's load of the same
moment: this machine's speed drifts by a factor of two over minutes), and both are
printed with the ratio.
``--profile out.html`` (or ``.txt``) writes a pyinstrument profile of the timed ticks
(they run on one thread).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bench-admin-token-0123456789abcdef"
DEVICE_TOKEN = "bench-device-token-0123456789abcdef"
WAVES = [{"fraction": 0.05}, {"fraction": 0.25}, {"fraction": 0.5}, {"fraction": 1.0}]
TELEMETRY_INTERVAL_S = 10.0
# The steps a device reports after its assignment, in order; a birth state follows
# ``committed`` (the agent re-publishes it when its active model changed).
STEPS = ("downloading", "verified", "staged", "activated", "healthy", "committed", "state")


@dataclass
class Timings:
    """Per-tick CPU and wall seconds of the tick and of the GET."""

    tick_cpu: list[float] = field(default_factory=list)
    tick_wall: list[float] = field(default_factory=list)
    get_cpu: list[float] = field(default_factory=list)
    get_wall: list[float] = field(default_factory=list)
    code: str = ""


class Devices:
    """The simulated devices: their per-device seq and how far each deployment got."""

    def __init__(self, count: int, writer: Any, sha256: str) -> None:
        self.ids = [f"bench-{i:04d}" for i in range(count)]
        self._writer = writer
        self._sha256 = sha256
        self._seq = dict.fromkeys(self.ids, 0)
        self.step: dict[str, int] = {}
        self.version = dict.fromkeys(self.ids, "1.0.0")
        self._telemetry_next = 0

    def _next_seq(self, device_id: str) -> int:
        self._seq[device_id] += 1
        return self._seq[device_id]

    def _state(self, device_id: str) -> Any:
        from edgefleet.shared.messages import ModelRef, StateMessage

        return StateMessage(
            device_id=device_id,
            seq=self._next_seq(device_id),
            online=True,
            agent_version="0.1.0",
            hardware="rpi4",
            tags=["bench"],
            runtimes=["onnx"],
            active_model=ModelRef(name="wine", version=self.version[device_id]),
        )

    def write(self, messages: list[Any]) -> None:
        from edgefleet.fleet.ingest.decode import Accepted
        from edgefleet.shared.messages import (
            EventMessage,
            StateMessage,
            TelemetryMessage,
            utcnow,
        )
        from edgefleet.shared.topics import Channel

        channels: dict[type[Any], Channel] = {
            StateMessage: Channel.STATE,
            EventMessage: Channel.EVENTS,
            TelemetryMessage: Channel.TELEMETRY,
        }
        now = utcnow()
        self._writer.write(
            [
                Accepted(channels[type(m)], m, now, retained=isinstance(m, StateMessage))
                for m in messages
            ]
        )

    def births(self) -> None:
        self.write([self._state(d) for d in self.ids])

    def advance(self, device_id: str, rollout_id: str) -> Any:
        """The next message of ``device_id``'s deployment."""
        from edgefleet.shared.messages import EventKind, EventMessage, ModelRef

        index = self.step.get(device_id, 0)
        self.step[device_id] = index + 1
        kind = STEPS[index]
        if kind == "state":
            return self._state(device_id)
        if kind == "committed":
            self.version[device_id] = "1.1.0"
        return EventMessage(
            device_id=device_id,
            seq=self._next_seq(device_id),
            kind=EventKind(kind),
            model=ModelRef(name="wine", version="1.1.0", sha256=self._sha256),
            desired_seq=1,
            rollout_id=rollout_id,
        )

    def telemetry(self, count: int) -> list[Any]:
        """The next ``count`` devices' telemetry, round robin."""
        from edgefleet.shared.messages import LatencyPercentiles, ModelRef, TelemetryMessage

        out = []
        for _ in range(count):
            device_id = self.ids[self._telemetry_next % len(self.ids)]
            self._telemetry_next += 1
            out.append(
                TelemetryMessage(
                    device_id=device_id,
                    seq=self._next_seq(device_id),
                    interval_s=TELEMETRY_INTERVAL_S,
                    inferences=20,
                    errors=0,
                    inferences_total=1000,
                    errors_total=0,
                    latency=LatencyPercentiles(p50_ms=1.0, p95_ms=2.0, p99_ms=3.0),
                    cpu_percent=5.0,
                    rss_bytes=50_000_000,
                    disk_free_bytes=10**9,
                    outbox_depth=0,
                    active_model=ModelRef(name="wine", version=self.version[device_id]),
                )
            )
        return out


def _packages(base: Path) -> dict[str, Path]:
    from edgefleet.shared.manifest import ProbationBudget
    from edgefleet.shared.modeltools.builder import build_package
    from edgefleet.simulators.models import train_wine_classifier

    model = train_wine_classifier(base / "wine.onnx")
    probation = ProbationBudget(min_inferences=3, duration_s=1.0, max_latency_p95_ms=10_000)
    return {
        version: build_package(
            model.path,
            name="wine",
            version=version,
            out_dir=base / "pk",
            golden_count=8,
            probation=probation,
        )
        for version in ("1.0.0", "1.1.0")
    }


def measure(args: argparse.Namespace) -> Timings:
    """Run the scenario of the module docstring on the code importable here."""
    import httpx

    from edgefleet import fleet
    from edgefleet.fleet.ingest.writer import BatchWriter
    from edgefleet.fleet.keys import create_lab_setup
    from edgefleet.fleet.rollout_service import store
    from edgefleet.fleet.rollout_service.orchestrator import Orchestrator
    from edgefleet.fleet.service import FleetService
    from edgefleet.fleet.settings import FleetSettings
    from tests.support.mosquitto import MosquittoBroker
    from tests.support.rollouts import publish_and_approve

    base = Path(tempfile.mkdtemp(prefix="edgefleet-orchestrator-bench-"))
    broker = MosquittoBroker(base / "mosquitto")
    broker.start()
    lab = create_lab_setup(base / "lab")
    packages = _packages(base)
    settings = FleetSettings(
        database_url=f"sqlite:///{base / 'fleet.db'}",
        migrate_at_start=True,
        broker_url=broker.url,
        data_dir=base / "fleet",
        api_port=0,
        keys_dir=lab.keys_dir,
        lab_mode=True,
        admin_token=TOKEN,
        repository_device_token=DEVICE_TOKEN,
        rollout_orchestrator=False,
        drift_interval_s=3600.0,
    )
    service = FleetService(settings, ingest=False)
    service.start()
    timings = Timings(code=str(Path(fleet.__file__).resolve().parents[1]))
    try:
        api = httpx.Client(
            base_url=service.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        )
        sha256 = ""
        for version, package in packages.items():
            r = api.post(
                "/v1/models",
                content=package.read_bytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert r.status_code in (200, 201), r.text
            publish_and_approve(api, service.engine, "wine", version)
            sha256 = r.json()["sha256"]
        devices = Devices(args.devices, BatchWriter(service.engine), sha256)
        devices.births()
        created = api.post(
            "/v1/rollouts",
            json={
                "model": "wine",
                "version": "1.1.0",
                "selector": {"tags": ["bench"]},
                "waves": WAVES,
            },
        )
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
        assert service.updates is not None
        assert service.updates.director is not None
        orchestrator = Orchestrator(
            service.engine,
            service.updates.director,
            service.updates.registry,
            holder="bench",
            tick_interval_s=args.tick_interval_s,
            lease_s=5.0,
        )

        def state() -> Any:
            with service.engine.connect() as conn:
                return store.load(conn, rollout_id).state

        # Waves 0-2: every assigned device reports its whole deployment at once.
        last = len(WAVES) - 1
        started = time.monotonic()
        while state().current_wave < last:
            orchestrator.tick()
            now_state = state()
            fresh = [
                d
                for d, r in now_state.devices.items()
                if r.assigned_at is not None and r.wave < last and d not in devices.step
            ]
            devices.write(
                [devices.advance(d, rollout_id) for d in fresh for _ in STEPS]
                + devices.telemetry(len(devices.ids) // 10)
            )
            if time.monotonic() - started > 300:
                raise SystemExit("the rollout did not reach its last wave in 300 s")
        current = state()
        members = [r.device_id for r in current.wave_members(last)]
        assert all(current.devices[d].assigned_at is not None for d in members)
        print(
            f"[{timings.code}] wave {last} started: {len(members)} device(s) assigned, "
            f"{sum(devices.step.values())} deployment messages so far",
            file=sys.stderr,
        )

        # The earlier waves went by in seconds; in the rollout benchmark they took most of a
        # minute, so the events a tick re-lists (those of the last 10 s, see
        # `edgefleet.fleet.rollout_service.observe.EventCache`) are the last wave's. Let them
        # age as much.
        turns = _Turns(args.sync)
        turns.meet()
        time.sleep(args.settle_s)
        orchestrator.tick()

        # The timed phase: the last wave's devices report a step each in turn.
        # Staggered, as downloads are: a device starts a little after the one before it.
        # Two thirds of the wave's messages arrive while timed, so it stays mid-wave.
        order = [
            d
            for _, d in sorted(
                (step + 2 * i / len(members), d)
                for step in range(len(STEPS))
                for i, d in enumerate(members)
            )
        ]
        per_tick = math.ceil(len(order) / (args.ticks * 1.5))
        telemetry = round(len(devices.ids) * args.tick_interval_s / TELEMETRY_INTERVAL_S)
        profiler = None
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler()
        next_tick = time.monotonic() + args.phase * args.tick_interval_s
        for _ in range(args.ticks):
            batch = [devices.advance(d, rollout_id) for d in order[:per_tick]]
            del order[:per_tick]
            devices.write(batch + devices.telemetry(telemetry))
            next_tick += args.tick_interval_s
            time.sleep(max(0.0, next_tick - time.monotonic()))
            with turns.turn():
                if profiler is not None:
                    profiler.start()
                cpu, wall = time.thread_time(), time.perf_counter()
                orchestrator.tick()
                timings.tick_cpu.append(time.thread_time() - cpu)
                timings.tick_wall.append(time.perf_counter() - wall)
                if profiler is not None:
                    profiler.stop()
                cpu, wall = time.process_time(), time.perf_counter()
                response = api.get(f"/v1/rollouts/{rollout_id}")
                timings.get_cpu.append(time.process_time() - cpu)
                timings.get_wall.append(time.perf_counter() - wall)
            assert response.status_code == 200, response.text
        healthy = response.json()["counts"]["healthy"]
        print(
            f"[{timings.code}] after {args.ticks} ticks: {healthy} healthy, "
            f"status {response.json()['status']}",
            file=sys.stderr,
        )
        if profiler is not None:
            out = Path(args.profile)
            html = out.suffix == ".html"
            out.write_text(profiler.output_html() if html else profiler.output_text(show_all=True))
        orchestrator.stop()
        api.close()
    finally:
        service.stop()
        broker.stop()
        shutil.rmtree(base, ignore_errors=True)
    return timings


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.2f} {statistics.fmean(values) * 1000:8.2f}"


def report(results: list[Timings]) -> None:
    """Print medians and means (ms), and each run's ratio to the first one."""
    rows = [
        ("tick CPU", "tick_cpu"),
        ("tick wall", "tick_wall"),
        ("GET CPU", "get_cpu"),
        ("GET wall", "get_wall"),
    ]
    for t in results:
        print(f"code: {t.code}  ({len(t.tick_cpu)} ticks)")
        print(f"  {'':10} {'median':>8} {'mean':>8}   (ms)")
        for label, name in rows:
            print(f"  {label:10} {_ms(getattr(t, name))}")
    if len(results) == 2:
        before, after = results
        print("after / before (median):")
        for label, name in rows:
            b = statistics.median(getattr(before, name))
            a = statistics.median(getattr(after, name))
            print(f"  {label:10} {a / b:6.3f}  ({b * 1000:.2f} ms -> {a * 1000:.2f} ms)")


class _Turns:
    """Two runs side by side (``sync``: a directory they share; None: a run alone).

    They meet before their timed ticks (a file each in ``sync``), then take turns: a
    timed section holds an exclusive lock on ``sync/turn``, so the two are never timed
    at once, and each is timed under the machine's load of the same moment.
    """

    def __init__(self, sync: Path | None) -> None:
        self._sync = sync

    def meet(self, parties: int = 2, timeout_s: float = 600.0) -> None:
        if self._sync is None:
            return
        (self._sync / f"{os.getpid()}.ready").touch()
        deadline = time.monotonic() + timeout_s
        while len(list(self._sync.glob("*.ready"))) < parties:
            if time.monotonic() > deadline:
                raise SystemExit(f"the other run did not get ready within {timeout_s} s")
            time.sleep(0.05)

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        if self._sync is None:
            yield
            return
        with (self._sync / "turn").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _child(
    code_root: Path, args: argparse.Namespace, sync: Path, phase: float
) -> subprocess.Popen[str]:
    """Start the scenario in a new process whose ``fleet`` (and the rest) is
    ``code_root``'s, timed in turns with the other run sharing ``sync``, ``phase`` of
    a tick interval after it."""
    bootstrap = (
        "import runpy, sys; root = sys.argv.pop(1); "
        "sys.path[:0] = [root + '/packaging/python', root]; "
        "runpy.run_path(sys.argv.pop(1), run_name='__main__')"
    )
    command = [
        sys.executable,
        "-c",
        bootstrap,
        str(code_root),
        str(Path(__file__).resolve()),
        "--json",
        "--devices",
        str(args.devices),
        "--ticks",
        str(args.ticks),
        "--tick-interval-s",
        str(args.tick_interval_s),
        "--settle-s",
        str(args.settle_s),
        "--sync",
        str(sync),
        "--phase",
        str(phase),
    ]
    return subprocess.Popen(command, cwd=code_root, stdout=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen[str]) -> Timings:
    out, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"a run failed with exit status {process.returncode}")
    return Timings(**json.loads(out.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=40)
    parser.add_argument("--tick-interval-s", type=float, default=0.5)
    parser.add_argument(
        "--settle-s", type=float, default=10.0, help="idle time before the timed ticks"
    )
    parser.add_argument("--baseline", type=Path, help="also run on the code in this directory")
    parser.add_argument("--sync", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--phase", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--profile", help="write a pyinstrument profile of the timed ticks")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args).__dict__))
        return 0
    if args.baseline is not None:
        with tempfile.TemporaryDirectory(prefix="edgefleet-orchestrator-sync-") as sync:
            runs = [
                _child(root, args, Path(sync), phase)
                for root, phase in ((args.baseline.resolve(), 0.0), (ROOT, 0.5))
            ]
            report([_result(run) for run in runs])
    else:
        report([measure(args)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
