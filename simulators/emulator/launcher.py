"""An emulated fleet: a few niced worker processes, each one asyncio loop of devices.

The parent splits ``plan.count`` devices over ``processes`` workers (``spawn``, daemonic)
and talks to each over a pipe, one request and one reply at a time: ``status`` and
``stop``. Device ids are ``{id_prefix}-{index:05d}``, the same whatever the split.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing as mp
import os
import random
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from edgefleet.agent.update.types import Budget
from edgefleet.shared.messages import ModelRef
from edgefleet.shared.signing.bundle import DIRECTOR_KEYS_FILE, load_director_keys
from edgefleet.simulators.emulator.connection import EmulatorLoop, LinkSettings
from edgefleet.simulators.emulator.device import DeviceSpec, EmulatedDevice
from edgefleet.simulators.fleet import raise_open_file_limit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmulatorPlan:
    """What an emulated fleet is: how many devices, who they are, where they connect."""

    count: int
    link: LinkSettings
    trust_dir: Path  # the provisioning bundle: the director keys every device pins
    id_prefix: str = "emu"
    hardware: str = "rpi4"
    tags: tuple[str, ...] = ()
    factory: ModelRef | None = None
    telemetry_interval_s: float = 10.0
    probation_s: float = 1.0


@dataclass(frozen=True)
class EmulatorStatus:
    """What one worker reports."""

    pid: int
    devices: int
    connected: int
    downloads: int
    download_failures: int
    versions: dict[str, int] = field(default_factory=dict)  # active version -> devices


def device_id(plan: EmulatorPlan, index: int) -> str:
    return f"{plan.id_prefix}-{index:05d}"


def make_devices(plan: EmulatorPlan, indices: range, now_s: float) -> list[EmulatedDevice]:
    """The devices of ``indices``, their telemetry spread evenly over the interval.

    Raises `KeyFileError` if the plan's director keys cannot be read.
    """
    keys = load_director_keys(plan.trust_dir / DIRECTOR_KEYS_FILE)
    budget = Budget(min_inferences=0, duration_s=plan.probation_s)
    rng = random.Random(indices.start)
    return [
        EmulatedDevice(
            DeviceSpec(
                device_id=device_id(plan, i),
                hardware=plan.hardware,
                tags=plan.tags,
                factory=plan.factory,
            ),
            director_keys=keys,
            now_s=now_s,
            telemetry_interval_s=plan.telemetry_interval_s,
            telemetry_phase_s=rng.uniform(0, plan.telemetry_interval_s),
            budget=budget,
        )
        for i in indices
    ]


def _status(loop: EmulatorLoop) -> EmulatorStatus:
    versions: dict[str, int] = {}
    for device in loop.devices:
        version = device.active.version if device.active is not None else "none"
        versions[version] = versions.get(version, 0) + 1
    return EmulatorStatus(
        pid=os.getpid(),
        devices=len(loop.devices),
        connected=loop.connected(),
        downloads=loop.downloads_total,
        download_failures=loop.download_failures_total,
        versions=versions,
    )


async def _serve(plan: EmulatorPlan, indices: range, conn: Connection) -> None:
    loop = EmulatorLoop(make_devices(plan, indices, time.time()), plan.link)
    await loop.start()
    # Thousands of long-lived clients and messages: full collections would walk them
    # again and again for nothing.
    gc.freeze()
    conn.send(("started", os.getpid()))
    stopped = asyncio.get_running_loop().create_future()

    def on_command() -> None:
        try:
            command, _ = conn.recv()
        except EOFError:
            command = "stop"
        if command == "status":
            conn.send(_status(loop))
        elif command == "stop" and not stopped.done():
            stopped.set_result(None)

    asyncio.get_running_loop().add_reader(conn.fileno(), on_command)
    await stopped
    asyncio.get_running_loop().remove_reader(conn.fileno())
    await loop.stop()


def _worker(plan: EmulatorPlan, indices: range, conn: Connection, nice: int, level: int) -> None:
    if nice:
        # The emulated devices stand for other machines' CPUs: they must not starve
        # the fleet and the broker they load.
        os.nice(nice)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    raise_open_file_limit()
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop has no Windows build
        runner = asyncio.run
    try:
        runner(_serve(plan, indices, conn))
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()


class EmulatedFleet:
    """An `EmulatorPlan` run by ``processes`` worker processes."""

    def __init__(
        self, plan: EmulatorPlan, *, processes: int = 2, nice: int = 10, log_level: int = 30
    ) -> None:
        """Raises ValueError for fewer than one process or a ``nice`` outside 0..19."""
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be within 0..19, got {nice}")
        self.plan = plan
        per = -(-plan.count // processes)
        self._slices = [
            range(s, min(s + per, plan.count)) for s in range(0, plan.count, per) if per
        ]
        self._nice = nice
        self._level = log_level
        self._workers: list[tuple[Any, Connection, range]] = []
        self.pids: list[int] = []

    def start(self, timeout_s: float = 300.0) -> None:
        """Start the workers; returns once each has started connecting its devices.

        Raises RuntimeError naming a worker that did not report in time.
        """
        raise_open_file_limit()
        context = mp.get_context("spawn")
        for indices in self._slices:
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker,
                args=(self.plan, indices, child, self._nice, self._level),
                name=f"emulator-{indices.start}",
                daemon=True,
            )
            process.start()
            child.close()
            self._workers.append((process, parent, indices))
        for process, conn, indices in self._workers:
            if not conn.poll(timeout_s):
                raise RuntimeError(
                    f"emulator worker for devices {indices.start}..{indices.stop - 1} did not "
                    f"start in {timeout_s}s (exit code {process.exitcode})"
                )
            _, pid = conn.recv()
            self.pids.append(pid)

    def status(self) -> list[EmulatorStatus]:
        out = []
        for _, conn, _ in self._workers:
            conn.send(("status", None))
            out.append(conn.recv())
        return out

    def connected(self) -> int:
        return sum(s.connected for s in self.status())

    def versions(self) -> dict[str, int]:
        """How many devices run each active model version."""
        total: dict[str, int] = {}
        for s in self.status():
            for version, n in s.versions.items():
                total[version] = total.get(version, 0) + n
        return total

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask every worker to stop its devices, then wait (killing one that hangs)."""
        for _, conn, _ in self._workers:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(("stop", None))
        for process, conn, _ in self._workers:
            process.join(timeout_s)
            if process.is_alive():
                log.warning("emulator worker %s did not stop; killing it", process.pid)
                process.kill()
                process.join(5)
            conn.close()
        self._workers.clear()
