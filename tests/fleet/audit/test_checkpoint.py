"""Signed checkpoints: their key, their file, and the thread that writes them."""

from __future__ import annotations

import json
import logging
import socket
import stat
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.fleet.audit.check import verify_database
from edgefleet.fleet.audit.checkpoint import (
    KEY_NAME,
    CheckpointError,
    append_checkpoint,
    last_checkpoint,
    load_or_create_key,
    read_checkpoints,
    sign_checkpoint,
)
from edgefleet.fleet.audit.checkpointer import AuditCheckpointer
from edgefleet.fleet.audit.log import append
from edgefleet.fleet.audit.verify import GENESIS_HASH, Problem
from edgefleet.fleet.store.engine import make_engine
from edgefleet.shared.signing import keys
from edgefleet.shared.signing.errors import KeyFileError
from edgefleet.shared.signing.tufapi import SSlibKey
from tests.fleet.audit.conftest import BOB, T0, fill, record, sql
from tests.support.fleet_fixtures import MakeFleet
from tests.support.webhooks import WebhookReceiver


def test_the_key_is_made_once_encrypted_with_its_public_half(tmp_path: Path) -> None:
    signer = load_or_create_key(tmp_path / "k", b"pass phrase")
    private = keys.private_key_path(tmp_path / "k", KEY_NAME)
    assert b"ENCRYPTED" in private.read_bytes().split(b"\n", 1)[0]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    public = keys.load_public_key(keys.public_key_path(tmp_path / "k", KEY_NAME))
    assert public.keyid == signer.public_key.keyid
    again = load_or_create_key(tmp_path / "k", b"pass phrase")
    assert again.public_key.keyid == signer.public_key.keyid  # loaded, not made anew


def test_a_wrong_passphrase_is_refused(tmp_path: Path) -> None:
    load_or_create_key(tmp_path, b"right")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_or_create_key(tmp_path, b"wrong")


def test_the_public_key_file_is_rewritten_from_the_private_key(tmp_path: Path) -> None:
    signer = load_or_create_key(tmp_path, None)
    keys.save_public_key(
        keys.generate_signer().public_key, keys.public_key_path(tmp_path, KEY_NAME)
    )
    load_or_create_key(tmp_path, None)
    assert keys.load_public_key(keys.public_key_path(tmp_path, KEY_NAME)).keyid == (
        signer.public_key.keyid
    )


def test_checkpoints_round_trip_through_the_file(tmp_path: Path) -> None:
    signer = load_or_create_key(tmp_path, None)
    path = tmp_path / "cp" / "audit-checkpoints.jsonl"
    for count in (0, 3):
        append_checkpoint(
            path,
            sign_checkpoint(
                signer, fleet_id="lab", count=count, head_hash=GENESIS_HASH, signed_at=T0
            ),
        )
    read = read_checkpoints(path, [signer.public_key])
    assert [c.count for c in read] == [0, 3]
    assert json.loads(path.read_text().splitlines()[0])["schema"] == "edgefleet/v1/audit-checkpoint"
    last = last_checkpoint(path, signer.public_key)
    assert last is not None
    assert last.count == 3


def _line_changed(path: Path, number: int, **changes: object) -> None:
    lines = path.read_text().splitlines()
    doc = json.loads(lines[number - 1])
    doc.update(changes)
    lines[number - 1] = json.dumps(doc)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "change",
    [
        {"count": 99},
        {"head_hash": "a" * 64},
        {"signed_at": "2030-01-01T00:00:00Z"},
        {"signature": "0" * 128},
    ],
)
def test_a_checkpoint_line_with_a_bad_signature_is_refused(
    tmp_path: Path, change: dict[str, object]
) -> None:
    signer = load_or_create_key(tmp_path, None)
    path = tmp_path / "cp.jsonl"
    for count in (1, 2):
        append_checkpoint(
            path,
            sign_checkpoint(signer, fleet_id="lab", count=count, head_hash="b" * 64, signed_at=T0),
        )
    _line_changed(path, 2, **change)
    with pytest.raises(CheckpointError, match="line 2: the signature does not verify"):
        read_checkpoints(path, [signer.public_key])
    assert last_checkpoint(path, signer.public_key) is None  # not trusted to resume from


def test_a_checkpoint_of_another_key_is_refused(tmp_path: Path) -> None:
    ours, theirs = (
        load_or_create_key(tmp_path / "a", None),
        load_or_create_key(tmp_path / "b", None),
    )
    path = tmp_path / "cp.jsonl"
    append_checkpoint(
        path, sign_checkpoint(theirs, fleet_id="lab", count=1, head_hash="b" * 64, signed_at=T0)
    )
    with pytest.raises(CheckpointError, match=r"line 1: signed by key .* not trusted"):
        read_checkpoints(path, [ours.public_key])


def test_a_line_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    signer = load_or_create_key(tmp_path, None)
    path = tmp_path / "cp.jsonl"
    path.write_text('{"count": 1}\n')
    with pytest.raises(CheckpointError, match="line 1: not a checkpoint"):
        read_checkpoints(path, [signer.public_key])


def _checkpointer(engine: Engine, tmp_path: Path, **kwargs: object) -> AuditCheckpointer:
    return AuditCheckpointer(
        engine,
        load_or_create_key(tmp_path / "keys", None),
        path=tmp_path / "audit-checkpoints.jsonl",
        fleet_id="lab",
        interval_s=3600,
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_checkpoint_is_written_only_when_the_log_changed(engine: Engine, tmp_path: Path) -> None:
    fill(engine, 3)
    checkpointer = _checkpointer(engine, tmp_path)
    first = checkpointer.checkpoint_now()
    assert first is not None
    assert (first.count, first.fleet_id) == (3, "lab")
    assert checkpointer.checkpoint_now() is None  # nothing new
    fill(engine, 2, start=4)
    second = checkpointer.checkpoint_now()
    assert second is not None
    assert second.count == 5
    path = tmp_path / "audit-checkpoints.jsonl"
    assert len(path.read_text().splitlines()) == 2
    claims = [c.claim() for c in read_checkpoints(path, [_pub(tmp_path)])]
    assert verify_database(engine, claims).ok


def _pub(tmp_path: Path) -> SSlibKey:
    return keys.load_public_key(keys.public_key_path(tmp_path / "keys", KEY_NAME))


def test_a_restarted_checkpointer_resumes_from_its_file(engine: Engine, tmp_path: Path) -> None:
    fill(engine, 2)
    assert _checkpointer(engine, tmp_path).checkpoint_now() is not None
    assert _checkpointer(engine, tmp_path).checkpoint_now() is None  # read the last line


def test_a_tampered_log_gets_no_checkpoint(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fill(engine, 4)
    checkpointer = _checkpointer(engine, tmp_path)
    assert checkpointer.checkpoint_now() is not None
    sql(engine, "UPDATE audit_log SET actor_name = 'mallory' WHERE seq = 2")
    fill(engine, 1, start=5)
    # Entry 2 lies under the last checkpoint, so the incremental check does not read
    # it; a full verify does. A change after the checkpoint is caught at once:
    sql(engine, "UPDATE audit_log SET action = 'x.y' WHERE seq = 5")
    with caplog.at_level(logging.ERROR):
        assert checkpointer.checkpoint_now() is None
    assert checkpointer.last_problem is not None
    assert (checkpointer.last_problem.problem, checkpointer.last_problem.seq) == (Problem.HASH, 5)
    assert "no checkpoint signed" in caplog.text
    assert len((tmp_path / "audit-checkpoints.jsonl").read_text().splitlines()) == 1


def test_a_history_rewritten_under_a_checkpoint_is_not_signed_again(
    engine: Engine, tmp_path: Path
) -> None:
    fill(engine, 4)
    checkpointer = _checkpointer(engine, tmp_path)
    assert checkpointer.checkpoint_now() is not None
    # Cut the tail to 3 and fix the head: the log shrank below the checkpoint.
    sql(engine, "DELETE FROM audit_log WHERE seq = 4")
    sql(engine, "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_log WHERE seq = 3)")
    for n in (4, 5):  # and append others: seq 4 and 5 hang off the cut chain
        with Session(engine) as session:
            append(session, record(n, actor=BOB))
            session.commit()
    assert checkpointer.checkpoint_now() is None
    assert checkpointer.last_problem is not None
    assert checkpointer.last_problem.seq == 5  # entry 5's link is not to the signed entry 4


def test_stop_writes_a_last_checkpoint(engine: Engine, tmp_path: Path) -> None:
    checkpointer = _checkpointer(engine, tmp_path)
    checkpointer.start()
    fill(engine, 2)
    checkpointer.stop()
    last = last_checkpoint(tmp_path / "audit-checkpoints.jsonl", _pub(tmp_path))
    assert last is not None
    assert last.count == 2


def test_each_checkpoint_is_posted_to_the_webhook(
    sqlite_engine: Engine, tmp_path: Path, webhook_receiver: WebhookReceiver
) -> None:
    fill(sqlite_engine, 2)
    checkpoint = _checkpointer(
        sqlite_engine, tmp_path, webhook_url=webhook_receiver.url
    ).checkpoint_now()
    assert checkpoint is not None
    assert webhook_receiver.received() == [json.loads(checkpoint.line())]


def test_a_failing_webhook_is_logged_and_the_file_still_written(
    sqlite_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    fill(sqlite_engine, 1)
    checkpointer = _checkpointer(
        sqlite_engine, tmp_path, webhook_url=f"http://127.0.0.1:{port}/x", webhook_timeout_s=2.0
    )
    with caplog.at_level(logging.WARNING):
        assert checkpointer.checkpoint_now() is not None
    assert "webhook" in caplog.text
    assert len((tmp_path / "audit-checkpoints.jsonl").read_text().splitlines()) == 1


def test_a_fleet_service_signs_what_it_audited_when_it_stops(make_service: MakeFleet) -> None:
    service = make_service()
    settings = service.settings
    assert keys.private_key_path(settings.resolved_audit_key_dir, KEY_NAME).exists()
    service.stop()  # the bootstrap admin's creation is audited, then signed at stop
    public = keys.load_public_key(keys.public_key_path(settings.resolved_audit_key_dir, KEY_NAME))
    claims = [
        c.claim() for c in read_checkpoints(settings.resolved_audit_checkpoint_file, [public])
    ]
    assert claims
    assert claims[-1].count >= 1
    engine = make_engine(settings.database_url)
    try:
        assert verify_database(engine, claims).ok
    finally:
        engine.dispose()


def test_a_line_torn_by_a_crash_stays_apart_from_the_next(tmp_path: Path) -> None:
    signer = load_or_create_key(tmp_path, None)
    path = tmp_path / "cp.jsonl"
    path.write_bytes(b'{"schema": "edgefleet/v1/audit-ch')  # the write a crash cut short
    append_checkpoint(
        path, sign_checkpoint(signer, fleet_id="lab", count=1, head_hash="b" * 64, signed_at=T0)
    )
    last = last_checkpoint(path, signer.public_key)
    assert last is not None
    assert last.count == 1
    with pytest.raises(CheckpointError, match="line 1: not a checkpoint"):
        read_checkpoints(path, [signer.public_key])
