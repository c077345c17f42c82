"""The migrations against the models, on SQLite and PostgreSQL: the revisions build the
models' schema exactly, a database holding data upgrades with nothing lost, a failed
upgrade keeps nothing, two migrators queue, and a service refuses a database that is
not at head."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, inspect, select, text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from edgefleet.fleet.service import FleetService
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store import DeadLetter, Device, TelemetryRow, make_engine
from edgefleet.fleet.store.migrate import (
    BASELINE_REVISION,
    SchemaNotCurrent,
    create_all,
    head_revision,
    history,
    require_current,
    schema_status,
    upgrade,
)
from edgefleet.shared.messages import utcnow


@pytest.fixture
def store(database_url: str) -> Any:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def schema_drift(engine: Engine) -> list[Any]:
    from edgefleet.fleet.store.migrate import target_metadata

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, target_metadata()))


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but alembic_version, in a stable order."""
    metadata = MetaData()
    metadata.reflect(engine)
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as connection:
        for name, table in metadata.tables.items():
            if name == "alembic_version":
                continue
            result = connection.execute(select(table)).all()
            rows[name] = sorted((tuple(row) for row in result), key=repr)
    return rows


def fill(engine: Engine) -> None:
    """Rows an operator's baseline database would hold: devices, telemetry, dead letters."""
    now = utcnow()
    with Session(engine) as session:
        for n in range(3):
            device_id = f"dev-{n}"
            session.add(
                Device(device_id=device_id, first_seen=now, tags=["lab", f"n{n}"], online=True)
            )
            for seq in range(1, 4):
                session.add(
                    TelemetryRow(
                        device_id=device_id,
                        seq=seq,
                        ts=now,
                        received_at=now,
                        interval_s=1.0,
                        inferences=seq * 10,
                        errors=0,
                        inferences_total=seq * 10,
                        errors_total=0,
                        cpu_percent=12.5,
                        rss_bytes=50_000_000,
                        disk_free_bytes=10**9,
                        outbox_depth=0,
                    )
                )
        session.add(
            DeadLetter(
                received_at=now,
                topic="edgefleet/v1/devices/x/state",
                payload_prefix=b"{",
                payload_bytes=1,
                payload_sha256="0" * 64,
                error="not JSON",
                stored_bytes=1,
            )
        )
        session.commit()


def test_the_revisions_build_exactly_the_models_schema(database_url: str, store: Engine) -> None:
    assert upgrade(database_url) == [r.revision for r in history()]
    assert schema_drift(store) == []
    assert schema_status(store).is_current


def test_create_all_is_the_same_schema_stamped_at_head(store: Engine) -> None:
    create_all(store)
    assert schema_drift(store) == []
    assert schema_status(store).current == head_revision()
    create_all(store)  # a database at head is left alone


def test_a_baseline_database_holding_data_upgrades_to_head_with_nothing_lost(
    database_url: str, store: Engine
) -> None:
    upgrade(database_url, BASELINE_REVISION)
    fill(store)
    before = snapshot(store)
    assert before["telemetry"], "the baseline holds data"

    applied = upgrade(database_url)

    assert applied == [r.revision for r in history()][1:]
    after = snapshot(store)
    assert {name: after[name] for name in before} == before
    assert schema_drift(store) == []


@pytest.mark.parametrize("made_by", ["baseline", "create_all with broker_passwords"])
def test_a_database_made_before_migrations_is_adopted_and_upgraded(
    database_url: str, store: Engine, made_by: str
) -> None:
    # What create_all made before migrations existed: the tables, no alembic_version.
    if made_by == "baseline":
        upgrade(database_url, BASELINE_REVISION)
    else:
        create_all(store)
    with store.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
        # The retired dead-letter table of those releases, which 0003 drops.
        connection.execute(text("CREATE TABLE dead_letter (id INTEGER PRIMARY KEY, payload TEXT)"))
        connection.execute(text("INSERT INTO dead_letter VALUES (1, 'whole payload')"))
    fill(store)
    before = snapshot(store)
    del before["dead_letter"]
    assert schema_status(store).legacy
    with pytest.raises(SchemaNotCurrent, match="made before edgefleet had migrations"):
        require_current(store)

    upgrade(database_url)

    assert schema_status(store).is_current
    assert "dead_letter" not in inspect(store).get_table_names()
    after = snapshot(store)
    assert {name: after[name] for name in before} == before
    assert schema_drift(store) == []


def test_a_failing_upgrade_keeps_nothing_of_itself(database_url: str, store: Engine) -> None:
    # A table in the way of the baseline's last CREATE: every table made before it in
    # the same upgrade must be gone again, and no revision recorded.
    with store.begin() as connection:
        connection.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY)"))

    with pytest.raises(Exception, match="users"):
        upgrade(database_url)

    assert set(inspect(store).get_table_names()) == {"users"}
    assert schema_status(store).current is None


def test_two_migrators_at_once_apply_each_revision_once(database_url: str, store: Engine) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            results.append(upgrade(database_url))
        except BaseException as e:  # the assertion below shows it
            errors.append(e)

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(results, key=len) == [[], [r.revision for r in history()]]
    assert schema_status(store).is_current


def test_a_database_newer_than_the_code_is_refused(database_url: str, store: Engine) -> None:
    upgrade(database_url)
    with store.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))

    with pytest.raises(SchemaNotCurrent, match="ffff, which this edgefleet"):
        require_current(store)
    with pytest.raises(SchemaNotCurrent, match="newer release"):
        upgrade(database_url)


@pytest.mark.parametrize("at", ["empty", BASELINE_REVISION])
def test_a_service_on_a_database_that_is_behind_refuses_naming_the_command(
    database_url: str, tmp_path: Path, at: str
) -> None:
    if at != "empty":
        upgrade(database_url, at)
    settings = FleetSettings(
        database_url=database_url, data_dir=tmp_path / "fleet", api_port=0
    )  # migrate_at_start is off by default

    with pytest.raises(SchemaNotCurrent) as refused:
        FleetService(settings, ingest=False).start()

    message = str(refused.value)
    assert "edgefleet fleet migrate upgrade --database-url" in message
    assert "--migrate" in message
    if at != "empty":
        assert f"at revision {at}, behind" in message
    with make_engine(database_url).connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == (
            None if at == "empty" else at
        )


def test_a_refusal_never_shows_the_database_password() -> None:
    engine = make_engine("postgresql://fleet:s3cret-pw@127.0.0.1:1/none")
    try:
        with pytest.raises(OperationalError) as failed:
            require_current(engine)
    finally:
        engine.dispose()
    assert "s3cret-pw" not in str(failed.value)
