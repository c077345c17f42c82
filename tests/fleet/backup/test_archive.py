"""Backups of a fleet's files and SQLite database: consistent while written to, checked
before a restore, and never mistaken for complete when unfinished."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from edgefleet.fleet.backup.archive import (
    BackupError,
    RestoreTarget,
    read_manifest,
    restore_backup,
    take_backup,
)
from edgefleet.fleet.backup.manifest import MANIFEST_NAME, Part
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store import Device, make_engine
from edgefleet.fleet.store.migrate import create_all, head_revision, schema_status
from edgefleet.shared.messages import utcnow
from tests.support import pg


def fleet_dirs(root: Path) -> FleetSettings:
    """A fleet's state as `fleet serve` leaves it: a database, keys with the repository
    and device CA in them, models and audit files in the data dir."""
    data, keys = root / "data", root / "keys"
    for path, body in {
        keys / "director.json": b'{"key": "director"}',
        keys / "repository" / "metadata" / "1.root.json": b'{"signed": {}}',
        keys / "repository" / ".timestamp.json.0a0a0a.tmp": b"half-written",
        keys / "device-ca" / "ca.pem": b"-----BEGIN CERTIFICATE-----",
        data / "models" / ("ab" * 32 + ".efpkg"): b"package bytes" * 1000,
        data / "models" / ".incoming" / "upload-7": b"being uploaded",
        data / "audit-keys" / "audit.pub.json": b"{}",
        data / "audit-checkpoints.jsonl": b'{"n": 1}\n{"n": 2}\n{"n": 3, "half',
    }.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    settings = FleetSettings(data_dir=data, keys_dir=keys)
    engine = make_engine(settings.database_url)
    create_all(engine)
    engine.dispose()
    return settings


def add_devices(settings: FleetSettings, start: int, count: int) -> None:
    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session:
            for n in range(start, start + count):
                session.add(Device(device_id=f"dev-{n}", first_seen=utcnow()))
            session.commit()
    finally:
        engine.dispose()


def device_ids(database: Path) -> set[str]:
    engine = make_engine(f"sqlite:///{database}")
    try:
        with Session(engine) as session:
            return set(session.exec(select(Device.device_id)).all())
    finally:
        engine.dispose()


def test_a_backup_restores_every_part_into_new_directories(tmp_path: Path) -> None:
    settings = fleet_dirs(tmp_path / "old")
    add_devices(settings, 0, 5)

    manifest = take_backup(settings, tmp_path / "backup")
    restored = restore_backup(tmp_path / "backup", RestoreTarget(data_dir=tmp_path / "new"))

    new = tmp_path / "new"
    assert restored.serve_options == ["--data-dir", str(new), "--keys-dir", str(new / "keys")]
    assert {p.part for p in manifest.parts} == {Part.DATA, Part.KEYS}
    assert (new / "keys" / "repository" / "metadata" / "1.root.json").read_bytes() == (
        b'{"signed": {}}'
    )
    assert (new / "keys" / "device-ca" / "ca.pem").exists()
    assert (new / "models" / ("ab" * 32 + ".efpkg")).read_bytes() == b"package bytes" * 1000
    # The checkpoint line being appended is not part of the file yet.
    assert (new / "audit-checkpoints.jsonl").read_bytes() == b'{"n": 1}\n{"n": 2}\n'
    # Temp files and spooled uploads are not state.
    assert not list(new.rglob("*.tmp"))
    assert not (new / "models" / ".incoming").exists()
    assert device_ids(new / "fleet.db") == {f"dev-{n}" for n in range(5)}
    assert manifest.database is not None
    assert manifest.database.schema_revision == head_revision()
    assert oct((tmp_path / "backup").stat().st_mode & 0o777) == "0o700"


def test_a_backup_taken_while_the_database_is_written_is_one_consistent_snapshot(
    tmp_path: Path,
) -> None:
    settings = fleet_dirs(tmp_path / "old")
    add_devices(settings, 0, 200)
    stop = threading.Event()
    written = [200]

    def writer() -> None:
        while not stop.is_set():
            add_devices(settings, written[0], 50)
            written[0] += 50

    thread = threading.Thread(target=writer)
    thread.start()
    while written[0] < 400:  # writes in flight before the backup starts
        time.sleep(0.01)
    try:
        take_backup(settings, tmp_path / "backup")
    finally:
        stop.set()
        thread.join()

    copy = tmp_path / "backup" / "database.sqlite"
    with sqlite3.connect(copy) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ids = device_ids(copy)
    # Whole transactions only: every batch of 50 is there entirely or not at all.
    assert len(ids) % 50 == 0
    assert {f"dev-{n}" for n in range(len(ids))} == ids
    assert 200 <= len(ids) <= written[0]


def test_a_changed_file_is_refused_before_anything_is_restored(tmp_path: Path) -> None:
    take_backup(fleet_dirs(tmp_path / "old"), tmp_path / "backup")
    key = tmp_path / "backup" / "keys" / "director.json"
    key.write_bytes(b'{"key": "attacker"}')

    with pytest.raises(BackupError, match=r"director\.json changed since the backup"):
        restore_backup(tmp_path / "backup", RestoreTarget(data_dir=tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_a_manifest_pointing_outside_the_target_is_refused(tmp_path: Path) -> None:
    take_backup(fleet_dirs(tmp_path / "old"), tmp_path / "backup")
    path = tmp_path / "backup" / MANIFEST_NAME
    body = json.loads(path.read_text())
    body["parts"][0]["files"][0]["path"] = "../../outside"
    path.write_text(json.dumps(body))

    with pytest.raises(BackupError, match="not a valid backup manifest"):
        read_manifest(tmp_path / "backup")


def test_an_unfinished_backup_is_not_taken_for_one(tmp_path: Path) -> None:
    settings = fleet_dirs(tmp_path / "old")
    Path(settings.database_url.removeprefix("sqlite:///")).unlink()  # fails half-way

    with pytest.raises(BackupError, match="does not exist"):
        take_backup(settings, tmp_path / "backup")

    assert list(tmp_path.iterdir()) == [tmp_path / "old"]  # no partial directory left
    (tmp_path / "half").mkdir()
    with pytest.raises(BackupError, match="not a complete backup"):
        restore_backup(tmp_path / "half", RestoreTarget(data_dir=tmp_path / "new"))


def test_a_backup_or_restore_never_writes_into_a_directory_in_use(tmp_path: Path) -> None:
    settings = fleet_dirs(tmp_path / "old")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(BackupError, match="not empty"):
        take_backup(settings, tmp_path / "taken")
    take_backup(settings, tmp_path / "backup")
    with pytest.raises(BackupError, match=r"fleet\.db exists"):
        restore_backup(tmp_path / "backup", RestoreTarget(data_dir=tmp_path / "old" / "data"))
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(
            tmp_path / "backup",
            RestoreTarget(
                data_dir=tmp_path / "old" / "data",
                database_url="sqlite:///" + str(tmp_path / "x.db"),
            ),
        )


def test_postgresql_goes_through_pg_dump_and_pg_restore(tmp_path: Path) -> None:
    reason = pg.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with pg.fresh_database() as url, pg.fresh_database() as new_url:
        engine = make_engine(url)
        create_all(engine)
        engine.dispose()
        settings = FleetSettings(data_dir=tmp_path / "data", database_url=url)
        add_devices(settings, 0, 30)

        manifest = take_backup(settings, tmp_path / "backup")
        assert manifest.database is not None
        assert manifest.database.kind.value == "postgresql"
        with pytest.raises(BackupError, match="give a postgresql --database-url"):
            restore_backup(tmp_path / "backup", RestoreTarget(data_dir=tmp_path / "n1"))
        with pytest.raises(BackupError, match="not empty"):
            restore_backup(tmp_path / "backup", RestoreTarget(tmp_path / "n2", database_url=url))

        restored = restore_backup(
            tmp_path / "backup", RestoreTarget(data_dir=tmp_path / "new", database_url=new_url)
        )

        assert "--database-url" in restored.serve_options
        engine = make_engine(new_url)
        try:
            assert schema_status(engine).is_current
            with Session(engine) as session:
                assert len(session.exec(select(Device.device_id)).all()) == 30
        finally:
            engine.dispose()


def test_the_database_can_be_left_out(tmp_path: Path) -> None:
    settings = fleet_dirs(tmp_path / "old")
    manifest = take_backup(settings, tmp_path / "backup", include_database=False)
    assert manifest.database is None
    restore_backup(tmp_path / "backup", RestoreTarget(data_dir=tmp_path / "new"))
    assert (tmp_path / "new" / "audit-keys" / "audit.pub.json").exists()
    assert not (tmp_path / "new" / "fleet.db").exists()


def test_audit_state_outside_the_data_dir_is_named(tmp_path: Path) -> None:
    settings = FleetSettings(
        data_dir=tmp_path / "data", audit_checkpoint_file=tmp_path / "elsewhere.jsonl"
    )
    with pytest.raises(BackupError, match="audit_checkpoint_file"):
        take_backup(settings, tmp_path / "backup")
