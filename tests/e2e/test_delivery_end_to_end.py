"""End-to-end delivery, tried as an operator would: Mosquitto with persistence off (its
default), an agent process reporting every second, and a real fleet.

Every message the agent ever put in its outbox is journaled by a trigger in the outbox's
own SQLite file (`tests.support.outbox_journal`), so "nothing lost" is checked against
what the agent really produced, not against what some subscriber happened to see.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import text

from edgefleet.fleet.service import FleetService
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store import make_engine
from tests.support import pg
from tests.support.agent import toml_config
from tests.support.agent_process import AgentProcess
from tests.support.mosquitto import MosquittoBroker
from tests.support.outbox_journal import fleet_acknowledges, journal_outbox, journaled

pytestmark = pytest.mark.slow

OUTAGE_S = 20.0
TABLES = ("telemetry", "device_event", "drift_window")


class Store:
    """Reads one device's messages back from the fleet's database."""

    def __init__(self, database_url: str, device_id: str) -> None:
        self._engine = make_engine(database_url)
        self._device_id = device_id

    def rows(self) -> list[tuple[int, str]]:
        """(seq, table) of every stored message, duplicates included."""
        out: list[tuple[int, str]] = []
        with self._engine.connect() as conn:
            for table in TABLES:
                query = text(f"SELECT seq FROM {table} WHERE device_id = :d")
                out += [(int(r[0]), table) for r in conn.execute(query, {"d": self._device_id})]
        return out

    def seqs(self) -> set[int]:
        return {seq for seq, _ in self.rows()}

    def holds(self, seqs: set[int]) -> bool:
        return seqs <= self.seqs()

    def telemetry_in_seq_order(self) -> list[tuple[int, str]]:
        with self._engine.connect() as conn:
            query = text("SELECT seq, ts FROM telemetry WHERE device_id = :d ORDER BY seq")
            return [(int(r[0]), str(r[1])) for r in conn.execute(query, {"d": self._device_id})]

    def close(self) -> None:
        self._engine.dispose()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``condition`` held; fails naming ``what`` after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def assert_exactly_once_in_order(store: Store, produced: set[int]) -> None:
    rows = store.rows()
    seqs = [seq for seq, _ in rows]
    assert len(seqs) == len(set(seqs)), "a seq is stored twice"
    assert set(seqs) == produced, (
        f"missing {sorted(produced - set(seqs))[:10]}, extra {sorted(set(seqs) - produced)[:10]}"
    )
    telemetry = store.telemetry_in_seq_order()
    stamps = [ts for _, ts in telemetry]
    assert stamps == sorted(stamps), "telemetry by seq is not in the order it was made"


def fleet_settings(
    tmp_path: Path, database_url: str, broker: MosquittoBroker, name: str
) -> dict[str, object]:
    return {
        "database_url": database_url,
        "broker_url": broker.url,
        "data_dir": tmp_path / name,
        "api_port": 0,
        "ingest_flush_interval_s": 0.05,
        "migrate_at_start": True,
    }


@contextmanager
def running_fleet(**values: object) -> Iterator[FleetService]:
    service = FleetService(FleetSettings(**values))  # type: ignore[arg-type]
    service.start()
    try:
        assert service.ingester is not None
        assert service.ingester.wait_connected(10), "ingester did not connect"
        yield service
    finally:
        service.stop()


def start_agent(tmp_path: Path, broker: MosquittoBroker, device: str) -> tuple[Path, Path]:
    config = toml_config(
        tmp_path / "agent.toml",
        broker,
        device,
        model=None,
        telemetry_interval_s=1.0,
        outbox={"fleet_ack_grace_s": 2.0},
    )
    return config, journal_outbox(tmp_path / f"data-{device}")


def test_broker_restarts_without_persistence_during_agent_restarts_lose_nothing(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    unique_id: str,
    processes: list[AgentProcess],
) -> None:
    database_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    device = f"outage-{unique_id}"
    store = Store(database_url, device)
    config, outbox = start_agent(tmp_path, mosquitto, device)
    log = tmp_path / "agent.log"
    figures = []
    with running_fleet(**fleet_settings(tmp_path, database_url, mosquitto, "fleet")) as fleet:
        ingester = fleet.ingester
        assert ingester is not None
        agent = AgentProcess(config, log)
        processes.append(agent)
        wait_for(lambda: fleet_acknowledges(outbox) and len(store.seqs()) >= 2, 20, "acks")
        for _run in range(3):
            mosquitto.stop()
            down_at = time.monotonic()
            time.sleep(OUTAGE_S / 3)
            agent.process.kill()  # no goodbye: whatever it had not sent stays in its outbox
            agent.wait()
            time.sleep(1.0)
            agent = AgentProcess(config, log)
            processes.append(agent)
            time.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))
            produced = journaled(outbox)
            backlog = len(produced - store.seqs())
            mosquitto.start()
            reconnect_s = wait_for(lambda: ingester.connected, 5, "the ingester")
            recover_s = wait_for(partial(store.holds, produced), 30, "the backlog stored")
            figures.append((backlog, round(reconnect_s, 1), round(recover_s, 1)))
            assert backlog >= 10, "the outage must have queued messages in the outbox"
            assert reconnect_s < 3.0, "the ingester must be back within a couple of seconds"
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0, agent.output()
        produced = journaled(outbox)
        wait_for(lambda: produced <= store.seqs(), 10, "the last messages stored")
    assert_exactly_once_in_order(store, produced)
    store.close()
    # Figures for the README: (messages waiting at broker start, ingester back after s,
    # all of them stored after s), per run.
    print(f"broker outages (backlog, ingester reconnect s, backlog stored s): {figures}")


def test_both_fleet_replicas_down_together_lose_nothing(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    unique_id: str,
    processes: list[AgentProcess],
) -> None:
    reason = pg.unavailable_reason()
    if reason:
        pytest.skip(reason)
    device = f"replicas-{unique_id}"
    config, outbox = start_agent(tmp_path, mosquitto, device)
    with pg.fresh_database() as database_url:
        store = Store(database_url, device)
        settings = [fleet_settings(tmp_path, database_url, mosquitto, f"fleet-{n}") for n in "ab"]
        with running_fleet(**settings[0]), running_fleet(**settings[1]):
            agent = AgentProcess(config, tmp_path / "agent.log")
            processes.append(agent)
            wait_for(lambda: fleet_acknowledges(outbox) and len(store.seqs()) >= 3, 20, "acks")
        # Both replicas are gone: the broker takes the agent's messages and drops them.
        time.sleep(OUTAGE_S)
        produced = journaled(outbox)
        backlog = len(produced - store.seqs())
        assert backlog >= 10, "the outage must have queued messages in the outbox"
        restarted_at = time.monotonic()
        with running_fleet(**settings[0]), running_fleet(**settings[1]):
            wait_for(lambda: produced <= store.seqs(), 30, "the backlog stored")
            recover_s = time.monotonic() - restarted_at  # from starting the two replicas
            agent.signal(signal.SIGTERM)
            assert agent.wait() == 0, agent.output()
            produced = journaled(outbox)
            wait_for(lambda: produced <= store.seqs(), 10, "the last messages stored")
        assert_exactly_once_in_order(store, produced)
        store.close()
    print(f"replicas down: backlog of {backlog} stored {recover_s:.1f}s after restarting them")
