"""One simulated fleet split over worker processes, driven from the parent.

Why processes: the agents of one process share one GIL, so one process uses at most
one core, and a hundred agents that all install an update at once wait on each other
for it. (The agent's link waits with ``poll()``, so the ~8 descriptors each agent holds
no longer cap a process at ~150 agents the way paho's ``select()`` loop did.)

Each worker runs a `SimulatedFleet` over a slice of the plan's device indices, so ids,
profiles and state directories are the same as in one process. The parent talks to a
worker over a pipe, one request and one reply at a time: ``status``, ``offline`` /
``online`` with device ids, ``stop``. Workers are started with ``spawn`` (never fork a
process that runs threads) and are daemonic, so they die with the parent.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from edgefleet.simulators.fleet import FleetPlan, SimulatedFleet, raise_open_file_limit

log = logging.getLogger(__name__)

DEFAULT_PER_PROCESS = 125
THREAD_STACK_BYTES = 256 * 1024
GIL_SWITCH_INTERVAL_S = 0.05


@dataclass(frozen=True)
class ShardStatus:
    """What one worker reports."""

    pid: int
    devices: int
    connected: int
    online: int
    inferences: int
    versions: dict[str, str | None] = field(default_factory=dict)


def _worker(plan: FleetPlan, indices: range, conn: Connection, log_level: int, nice: int) -> None:
    import os

    if nice:
        # On a shared machine the simulated devices must not starve the broker and the
        # fleet they load: on a real fleet they are other machines' CPUs.
        os.nice(nice)
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(message)s")
    # Four threads per agent: small stacks keep a thousand of them cheap.
    threading.stack_size(THREAD_STACK_BYTES)
    # When a wave reaches a worker, dozens of its agents want the GIL at once; at the
    # default 5 ms switch interval each waiter times out and forces a hand-over every
    # 5 ms, and a 1,000-device rollout spent over half of the workers' CPU in the kernel
    # (futex wake-ups, context switches: perf, strace). Agents here are latency-tolerant.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    raise_open_file_limit()
    fleet = SimulatedFleet(plan, indices)
    try:
        fleet.start()
        # A hundred agents make a big heap of long-lived objects (models, sessions,
        # clients) that every full garbage collection walks again (gc_collect_main was
        # prominent in py-spy --native profiles of a worker); they live until the end.
        gc.freeze()
        conn.send(("started", os.getpid()))
        while True:
            command, arg = conn.recv()
            if command == "status":
                conn.send(
                    ShardStatus(
                        pid=os.getpid(),
                        devices=len(fleet.devices),
                        connected=fleet.connected(),
                        online=sum(1 for d in fleet.devices if d.online),
                        inferences=sum(d.inferences for d in fleet.devices),
                        versions=fleet.active_versions() if arg else {},
                    )
                )
            elif command == "offline":
                fleet.take_offline(fleet.find(arg))
                conn.send(("ok", None))
            elif command == "online":
                fleet.bring_online(fleet.find(arg))
                conn.send(("ok", None))
            elif command == "stop":
                break
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        fleet.stop(timeout_s=2.0)
        conn.close()


class ShardedFleet:
    """A `FleetPlan` run by ``ceil(count / per_process)`` worker processes."""

    def __init__(
        self,
        plan: FleetPlan,
        *,
        per_process: int = DEFAULT_PER_PROCESS,
        log_level: int = logging.WARNING,
        nice: int = 0,
    ) -> None:
        """``nice`` (0..19) lowers the workers' CPU priority. Raises ValueError for a
        ``per_process`` below 1 or a ``nice`` outside 0..19."""
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be within 0..19, got {nice}")
        if per_process < 1:
            raise ValueError(f"per_process must be at least 1, got {per_process}")
        self.plan = plan
        self._slices = [
            range(start, min(start + per_process, plan.count))
            for start in range(0, plan.count, per_process)
        ]
        self._log_level = log_level
        self._nice = nice
        self._workers: list[tuple[Any, Connection, range]] = []
        self.pids: list[int] = []

    def start(self, timeout_s: float = 300.0) -> None:
        """Start every worker and wait until each has started its agents.

        Raises RuntimeError naming the worker that died or did not report in time.
        """
        raise_open_file_limit()
        context = mp.get_context("spawn")
        for indices in self._slices:
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker,
                args=(self.plan, indices, child, self._log_level, self._nice),
                name=f"sim-shard-{indices.start}",
                daemon=True,
            )
            process.start()
            child.close()
            self._workers.append((process, parent, indices))
        for process, conn, indices in self._workers:
            if not conn.poll(timeout_s):
                raise RuntimeError(
                    f"simulator worker for devices {indices.start}..{indices.stop - 1} did not "
                    f"start its agents in {timeout_s}s (exit code {process.exitcode})"
                )
            _, pid = conn.recv()
            self.pids.append(pid)

    def _ask(self, conn: Connection, command: str, arg: Any) -> Any:
        conn.send((command, arg))
        return conn.recv()

    def status(self, *, versions: bool = False) -> list[ShardStatus]:
        """Each worker's status; ``versions`` adds every device's active model version."""
        return [self._ask(conn, "status", versions) for _, conn, _ in self._workers]

    def connected(self) -> int:
        return sum(s.connected for s in self.status())

    def active_versions(self) -> dict[str, str | None]:
        """Each running device's active model version."""
        out: dict[str, str | None] = {}
        for shard in self.status(versions=True):
            out.update(shard.versions)
        return out

    def take_offline(self, device_ids: Iterable[str]) -> None:
        """Switch these devices off (their agents stop and publish ``online: false``)."""
        ids = list(device_ids)
        for _, conn, _ in self._workers:
            self._ask(conn, "offline", ids)

    def bring_online(self, device_ids: Iterable[str]) -> None:
        """Switch these devices on again (new agents on the same state directories)."""
        ids = list(device_ids)
        for _, conn, _ in self._workers:
            self._ask(conn, "online", ids)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask every worker to stop its agents, then wait (killing a worker that hangs)."""
        for _, conn, _ in self._workers:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(("stop", None))
        for process, conn, _ in self._workers:
            process.join(timeout_s)
            if process.is_alive():
                log.warning("simulator worker %s did not stop; killing it", process.pid)
                process.kill()
                process.join(5)
            conn.close()
        self._workers.clear()
