"""Two fleet replicas, tested as production runs them, and killed as nodes die.

Real parts throughout: one PostgreSQL (a fresh database), one Mosquitto on the closed
configuration `fleet broker-config` writes (device mTLS listener, fleet listener), two
``fleet serve`` processes started with the compose file's own command and environment
(`tests.support.compose`, after its ``migrate`` step) in one ``$share`` group, a TCP
balancer in front of them (devices and the operator know only its address), and
``edgefleet sim`` running 200 real agents that enroll, connect with their own
certificates and take signed updates.

Mid-rollout (after the first wave passed, before the last) the replica holding the
orchestrator lease is SIGKILLed. The test proves: the other takes the lease over within
the lease time; the rollout completes with every wave passed in order; no device was
assigned twice (neither in the rollout's history nor in what the broker delivered on
the desired topics); and every message the agents put in their outboxes (journaled by a
trigger in each outbox, `tests.support.outbox_journal`) is stored exactly once, counted
by (device, seq). Then the killed replica is started again and the other one SIGKILLed
while it starts: the fleet still ingests and still rolls out.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from edgefleet.agent.daemon import OUTBOX_FILE
from edgefleet.fleet.identity.broker_config import BrokerMode
from edgefleet.fleet.identity.ca import DeviceCA
from edgefleet.fleet.identity.service import ca_directory
from edgefleet.fleet.keys import create_lab_setup
from edgefleet.fleet.rollout_service.lease import current_holder
from edgefleet.fleet.rollout_service.orchestrator import LEASE_NAME
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store import make_engine
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.shared.signing import keys, tuf_metadata
from edgefleet.shared.signing.director import SignedDesiredState
from edgefleet.shared.topics import PREFIX
from edgefleet.simulators.enrollment import IdentityPlan, enroll_device
from edgefleet.simulators.models import TrainedModel
from tests.support import pg
from tests.support.balancer import Balancer
from tests.support.closed_broker import ClosedBroker, MqttTestClient, write_closed_setup
from tests.support.compose import fleet_replica_run, migration_run
from tests.support.fleet_fixtures import FAST_PROBATION
from tests.support.mosquitto import free_port
from tests.support.outbox_journal import dropped, journal_outbox, journaled
from tests.support.replica_process import ReplicaProcess, SimProcess, process_env
from tests.support.rollouts import approve_version, history

pytestmark = pytest.mark.slow

DEVICES = 200
# Four simulator workers: starting an agent waits on disk (fsync) as much as on a core.
PER_PROCESS = 50
TELEMETRY_S = 3.0
PASSPHRASE = "two-replicas-passphrase-0123456789"
ADMIN_TOKEN = "two-replicas-admin-token-0123456789"
# What compose interpolates from the operator's shell.
VARIABLES = {"EDGEFLEET_KEY_PASSPHRASE": PASSPHRASE, "EDGEFLEET_ADMIN_TOKEN": ADMIN_TOKEN}
# The compose file sets neither, so the replicas run the product's defaults.
LEASE_S = float(FleetSettings.model_fields["rollout_lease_s"].default)
TICK_S = float(FleetSettings.model_fields["rollout_tick_interval_s"].default)
TABLES = ("telemetry", "device_event", "drift_window")
STOPPED = ("paused", "aborted", "rolling_back", "rolled_back", "failed")
WAVES: list[dict[str, Any]] = [
    {"count": 20, "gate": {"soak_s": 1, "timeout_s": 120}},
    {"fraction": 0.5, "gate": {"soak_s": 1, "timeout_s": 120}},
    {"fraction": 1.0},
]


def wait_for(
    condition: Callable[[], object], timeout_s: float, what: str, *, poll_s: float = 0.1
) -> float:
    """Seconds until ``condition`` held; fails naming ``what`` after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - started


class Operator:
    """The REST API through the balancer. A read is retried across a replica's death (a
    request in flight on a killed replica breaks, as behind any load balancer); a write
    is not, since it may have been done."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        attempts = 20 if method == "GET" else 1
        for attempt in range(attempts):
            try:
                with httpx.Client(
                    base_url=self.base_url, headers=self._headers, timeout=20
                ) as client:
                    return client.request(method, path, **kw)
            except httpx.TransportError:
                time.sleep(0.25 * (attempt + 1))
        raise AssertionError(f"{method} {path}: no replica answered")

    def json(self, path: str, **params: Any) -> Any:
        response = self.request("GET", path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self._headers, timeout=20)


@dataclass
class Fleet:
    """Everything the test started."""

    replicas: dict[str, ReplicaProcess]
    engine: Engine
    operator: Operator
    balancer: Balancer
    broker: ClosedBroker
    offline_release_key: Path
    bundle: Path  # what devices are provisioned with: trusted root, director key
    witness: MqttTestClient


def holder_replica(fleet: Fleet) -> ReplicaProcess | None:
    """The replica whose process holds the orchestrator lease now (the holder id is
    ``<host>-<pid>-<random>``), or None while nobody does."""
    holder = current_holder(fleet.engine, LEASE_NAME)
    if holder is None:
        return None
    for replica in fleet.replicas.values():
        if replica.running and f"-{replica.pid}-" in holder:
            return replica
    return None


def release(fleet: Fleet, package: Path, version: str) -> None:
    """Upload ``package``, sign it offline with the release key (what ``edgefleet model
    sign`` does) and upload the targets, then approve it as a second person."""
    op = fleet.operator
    uploaded = op.request(
        "POST",
        "/v1/models",
        content=package.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert uploaded.status_code in (200, 201), uploaded.text
    current = op.request("GET", "/v1/repository/metadata/targets.json")
    assert current.status_code == 200, current.text
    md = tuf_metadata.sign_targets_offline(
        current.content,
        package,
        name=package.name,
        custom={"name": "wine", "version": version, "runtime": "onnx"},
        release_signer=keys.load_signer(fleet.offline_release_key, PASSPHRASE.encode()),
        now=datetime.now(UTC),
        expiries=tuf_metadata.Expiries(),
    )
    signed = op.request("PUT", "/v1/repository/targets-metadata", content=tuf_metadata.to_bytes(md))
    assert signed.status_code == 200, signed.text
    with op.client() as api:
        approve_version(api, fleet.engine, "wine", version)


def start_rollout(
    fleet: Fleet, tag: str, version: str, waves: list[dict[str, Any]], *, fraction: float = 1.0
) -> str:
    created = fleet.operator.request(
        "POST",
        "/v1/rollouts",
        json={
            "model": "wine",
            "version": version,
            "selector": {"tags": [tag], "fraction": fraction},
            "waves": waves,
            "gate": {"soak_s": 0, "timeout_s": 120},
        },
    )
    assert created.status_code == 201, created.text
    rollout_id: str = created.json()["id"]
    return rollout_id


def rollout(fleet: Fleet, rollout_id: str) -> dict[str, Any]:
    detail: dict[str, Any] = fleet.operator.json(f"/v1/rollouts/{rollout_id}")
    return detail


def wait_completed(fleet: Fleet, rollout_id: str, timeout_s: float) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(rollout(fleet, rollout_id))
        assert seen["status"] not in STOPPED, seen
        return bool(seen["status"] == "completed")

    wait_for(done, timeout_s, f"rollout {rollout_id} to complete")
    return seen


def stored_messages(engine: Engine, prefix: str) -> Counter[tuple[str, int]]:
    """How often each (device, seq) is stored, over every table of device messages."""
    counts: Counter[tuple[str, int]] = Counter()
    with engine.connect() as conn:
        for table in TABLES:
            query = text(f"SELECT device_id, seq FROM {table} WHERE device_id LIKE :p")
            counts.update((r[0], int(r[1])) for r in conn.execute(query, {"p": f"{prefix}-%"}))
    return counts


def produced_messages(devices_dir: Path, prefix: str) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for i in range(DEVICES):
        device_id = f"{prefix}-{i:04d}"
        out |= {(device_id, seq) for seq in journaled(outbox_of(devices_dir, device_id))}
    return out


def outbox_of(devices_dir: Path, device_id: str) -> Path:
    return devices_dir / device_id / OUTBOX_FILE


def provision(fleet: Fleet, devices_dir: Path, device_ids: list[str]) -> None:
    """Enroll every device through the balancer, eight at a time, as a factory line
    would before shipping (the simulator then finds each identity and keeps it), and
    journal each outbox before its agent first opens it."""
    plan = IdentityPlan(
        fleet_url=fleet.balancer.url,
        admin_token=ADMIN_TOKEN,
        device_broker_url=fleet.broker.device_url,
    )
    for device_id in device_ids:
        journal_outbox(devices_dir / device_id)
    with ThreadPoolExecutor(8) as pool:
        done = pool.map(lambda d: enroll_device(plan, d, devices_dir / d / "identity"), device_ids)
        assert all(done)


def desired_seqs(witness: MqttTestClient, rollout_id: str) -> dict[str, set[int]]:
    """Per device, the distinct desired seqs of ``rollout_id`` the broker delivered."""
    seqs: dict[str, set[int]] = defaultdict(set)
    for message in list(witness.received):
        if not message.payload:
            continue
        body = SignedDesiredState.model_validate_json(message.payload).signed
        if body.rollout_id == rollout_id and not body.rollback:
            seqs[body.device_id].add(body.seq)
    return seqs


def assert_each_device_assigned_once(fleet: Fleet, rollout_id: str, devices: int) -> None:
    with fleet.operator.client() as api:
        lines = history(api, rollout_id)
    published: dict[str, set[int]] = defaultdict(set)
    for line in lines:
        if line["kind"] in ("desired_published", "desired_republished"):
            published[line["device_id"]].add(line["detail"]["seq"])
    twice = {d: s for d, s in published.items() if len(s) != 1}
    assert len(published) == devices, sorted(published)
    assert not twice, f"assigned twice: {twice}"
    delivered = desired_seqs(fleet.witness, rollout_id)
    assert {d: s for d, s in delivered.items() if len(s) != 1} == {}, "delivered twice"
    assert {d: next(iter(s)) for d, s in delivered.items()} == {
        d: next(iter(s)) for d, s in published.items()
    }, "the broker delivered other desired states than the rollout's history records"


def assert_waves_in_order(detail: dict[str, Any]) -> None:
    decisions = [(g["wave"], g["passed"]) for g in detail["gate_decisions"]]
    assert decisions == [(i, True) for i in range(len(WAVES))], decisions
    ends = [w["end"] for w in detail["waves"]]
    assert ends == [20, DEVICES // 2, DEVICES], ends
    assert all(w["started"] for w in detail["waves"])


@pytest.fixture
def fleet(tmp_path: Path, unique_id: str) -> Iterator[Fleet]:
    reason = pg.unavailable_reason()
    if reason:
        pytest.skip(reason)
    # The keys dir an operator makes with `edgefleet keys init`, passphrase-protected,
    # with the release key taken offline (the replicas run without lab mode).
    lab = create_lab_setup(tmp_path / "keys", PASSPHRASE.encode())
    offline = tmp_path / "offline"
    offline.mkdir()
    release_key = offline / "targets.key.pem"
    shutil.move(keys.private_key_path(lab.keys_dir, "targets"), release_key)
    data_dir = tmp_path / "fleet-data"  # compose's fleet-data volume, shared by both
    data_dir.mkdir()
    ca = DeviceCA.open_or_create(
        ca_directory(lab.keys_dir, data_dir), PASSPHRASE.encode(), now=datetime.now(UTC)
    )
    setup = write_closed_setup(tmp_path / "broker", ca, BrokerMode.MTLS)
    broker = ClosedBroker(tmp_path / "mosquitto", setup)
    broker.start()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(broker.stop)
        database_url = cleanup.enter_context(pg.fresh_database())
        engine = make_engine(database_url)
        migrate = migration_run(database_url=database_url)
        upgraded = subprocess.run(
            list(migrate.argv),
            env=process_env(migrate),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert upgraded.returncode == 0, upgraded.stderr
        replicas = {}
        for name in ("a", "b"):
            run = fleet_replica_run(
                database_url=database_url,
                broker_url=f"mqtts://127.0.0.1:{setup.fleet.port}",
                mounts={
                    "/var/lib/edgefleet": data_dir,
                    "/var/lib/edgefleet-keys": lab.keys_dir,
                    "/etc/edgefleet/broker": setup.layout.directory,
                },
                variables=VARIABLES,
                api_port=free_port(),
            )
            replicas[name] = ReplicaProcess(name, run, tmp_path / f"replica-{name}.log")
        balancer = Balancer([("127.0.0.1", r.port) for r in replicas.values()])
        witness = MqttTestClient(
            setup.fleet.port,
            ca=setup.layout.ca,
            client_id=f"witness-{unique_id}",
            cert=setup.layout.fleet_cert,
            key=setup.layout.fleet_key,
        )
        try:
            for replica in replicas.values():
                replica.start()
            for replica in replicas.values():
                replica.wait_ready()
            balancer.start()
            assert witness.connect(), broker.log()
            assert witness.subscribe(f"{PREFIX}/devices/+/desired")[0] in (0, 1)
            yield Fleet(
                replicas=replicas,
                engine=engine,
                operator=Operator(balancer.url),
                balancer=balancer,
                broker=broker,
                offline_release_key=release_key,
                bundle=lab.bundle_dir,
                witness=witness,
            )
        finally:
            witness.close()
            for replica in replicas.values():
                replica.stop()
            balancer.stop()
            engine.dispose()
            for replica in replicas.values():
                print(f"--- replica {replica.name} log tail ---\n{replica.log_tail(1500)}")


def test_killing_the_lease_holder_mid_rollout_skips_no_wave_and_loses_no_message(
    fleet: Fleet,
    fast_wine_packages: dict[str, Path],
    wine_model: TrainedModel,
    tmp_path: Path,
    unique_id: str,
) -> None:
    prefix, tag = f"r{unique_id[:6]}", f"t-{unique_id}"
    started_at = time.monotonic()
    devices_dir = tmp_path / "devices"
    provision(fleet, devices_dir, [f"{prefix}-{i:04d}" for i in range(DEVICES)])
    enrolled_s = time.monotonic() - started_at
    release(fleet, fast_wine_packages["1.1.0"], "1.1.0")
    sim = SimProcess(
        [
            f"--devices={DEVICES}",
            f"--per-process={PER_PROCESS}",
            f"--broker={fleet.broker.device_url}",
            f"--enroll-at={fleet.balancer.url}",
            f"--data-dir={devices_dir}",
            f"--prefix={prefix}",
            f"--tag={tag}",
            f"--telemetry-interval={TELEMETRY_S}",
            "--rate=1",
            f"--factory-package={fast_wine_packages['1.0.0']}",
            "--model-name=wine",
            "--model-version=1.0.0",
            f"--repository-url={fleet.balancer.url}/v1/repository",
            f"--trust-dir={fleet.bundle}",
        ],
        {"EDGEFLEET_SIM_ADMIN_TOKEN": ADMIN_TOKEN},
        tmp_path / "sim.log",
    )
    try:

        def registered() -> bool:
            page = fleet.operator.json("/v1/devices", limit=1000)
            ours = [d for d in page["items"] if d["device_id"].startswith(prefix)]
            return len(ours) == DEVICES and all(d.get("online") for d in ours)

        up_s = wait_for(registered, 150, f"{DEVICES} devices online", poll_s=1.0)
        rollout_id = start_rollout(fleet, tag, "1.1.0", WAVES)
        wait_for(lambda: rollout(fleet, rollout_id)["current_wave"] >= 1, 90, "wave 1 to start")
        victim = holder_replica(fleet)
        assert victim is not None, "nobody holds the orchestrator lease"
        survivor = next(r for r in fleet.replicas.values() if r is not victim)
        assert rollout(fleet, rollout_id)["current_wave"] < len(WAVES) - 1
        victim.kill()
        killed_at = time.monotonic()
        wait_for(lambda: holder_replica(fleet) is survivor, LEASE_S + 5, "the lease taken over")
        takeover_s = time.monotonic() - killed_at
        # The holder renews every third of the lease, so the lease lapses at most LEASE_S
        # after the kill; the survivor tries again every tick.
        assert takeover_s <= LEASE_S + TICK_S + 0.5, takeover_s
        detail = wait_completed(fleet, rollout_id, 120)
        assert_waves_in_order(detail)
        assert detail["counts"]["healthy"] == DEVICES, detail["counts"]
        assert_each_device_assigned_once(fleet, rollout_id, DEVICES)
        rollout_s = time.monotonic() - started_at

        # The killed replica comes back; the survivor dies while it starts.
        victim.start()
        time.sleep(0.5)
        assert not victim.ready(), "the other must die while this one is still starting"
        survivor.kill()
        second_killed_at = time.monotonic()
        victim.wait_ready()
        wait_for(lambda: holder_replica(fleet) is victim, LEASE_S + 30, "the lease again")
        second_takeover_s = time.monotonic() - second_killed_at
        before = sum(stored_messages(fleet.engine, prefix).values())
        wait_for(
            lambda: sum(stored_messages(fleet.engine, prefix).values()) > before + DEVICES,
            30,
            "the restarted replica to ingest",
        )
        package = build_package(
            wine_model.path,
            name="wine",
            version="1.2.0",
            out_dir=tmp_path / "packages",
            golden_count=8,
            probation=FAST_PROBATION,
        )
        release(fleet, package, "1.2.0")
        # A tenth of the fleet is enough to show the restarted replica drives rollouts.
        second = start_rollout(fleet, tag, "1.2.0", [{"fraction": 1.0}], fraction=0.1)
        assert wait_completed(fleet, second, 90)["counts"]["healthy"] == DEVICES // 10
        assert_each_device_assigned_once(fleet, second, DEVICES // 10)
    finally:
        exit_code = sim.stop()
    assert exit_code == 0, sim.log_tail()
    produced = produced_messages(devices_dir, prefix)
    assert not [d for d in range(DEVICES) if dropped(outbox_of(devices_dir, f"{prefix}-{d:04d}"))]
    wait_for(
        lambda: produced <= set(stored_messages(fleet.engine, prefix)),
        30,
        "every message the devices made stored",
    )
    stored = stored_messages(fleet.engine, prefix)
    assert [m for m, n in stored.items() if n != 1] == [], "a message is stored twice"
    assert set(stored) == produced, (
        f"missing {sorted(produced - set(stored))[:5]}, extra {sorted(set(stored) - produced)[:5]}"
    )
    print(
        f"two replicas, {DEVICES} devices: enrolled {enrolled_s:.0f}s, online {up_s:.0f}s"
        f" later; lease taken over {takeover_s:.1f}s"
        f" after SIGKILL of its holder (lease {LEASE_S:.0f}s, tick {TICK_S:.0f}s); rollout"
        f" done {rollout_s:.0f}s after start; second takeover {second_takeover_s:.1f}s;"
        f" {len(produced)} messages, each stored once; total {time.monotonic() - started_at:.0f}s"
    )
