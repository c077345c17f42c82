"""`audit verify` catches each kind of tampering and names the first bad entry.

The pure core is tested on entries built in memory; the attacks run against a real store
(SQLite and PostgreSQL) tampered with raw SQL, as someone with database access would.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from edgefleet.fleet.audit.chain import entry_hash
from edgefleet.fleet.audit.check import verify_database
from edgefleet.fleet.audit.entry import AuditEntry, AuditRecord
from edgefleet.fleet.audit.log import AUDIT_TABLE
from edgefleet.fleet.audit.read import iter_entries, read_head
from edgefleet.fleet.audit.verify import (
    GENESIS_HASH,
    ChainHead,
    CheckpointClaim,
    Problem,
    Unreadable,
    verify_chain,
)
from tests.fleet.audit.conftest import T0, fill, record, sql

COLUMNS = [
    *("ts", "actor_kind", "actor_id", "actor_name", "actor_token_prefix", "action"),
    *("object_kind", "object_id", "request_id", "source", "outcome", "before", "after"),
]


def chain(count: int) -> list[AuditEntry]:
    """``count`` well-formed entries, in memory."""
    out: list[AuditEntry] = []
    prev = GENESIS_HASH
    for n in range(1, count + 1):
        rec, ts = record(n), T0 + timedelta(minutes=n)
        digest = entry_hash(prev, rec, seq=n, ts=ts)
        out.append(AuditEntry(**rec.model_dump(), seq=n, ts=ts, prev_hash=prev, hash=digest))
        prev = digest
    return out


def claim(entries: list[AuditEntry], count: int) -> CheckpointClaim:
    head = entries[count - 1].hash if count else GENESIS_HASH
    return CheckpointClaim(count=count, head_hash=head, signed_at=T0)


def stored_claim(engine: Engine) -> CheckpointClaim:
    head = read_head(engine)
    assert head is not None
    return CheckpointClaim(count=head.seq, head_hash=head.hash, signed_at=T0)


# --- the pure core -----------------------------------------------------------------


def test_a_sound_chain_verifies_with_its_checkpoints_and_head() -> None:
    entries = chain(5)
    result = verify_chain(
        entries,
        [claim(entries, 0), claim(entries, 3), claim(entries, 5)],
        ChainHead(5, entries[-1].hash),
    )
    assert result.ok, result.describe()
    assert (result.count, result.head_hash, result.checkpoints) == (5, entries[-1].hash, 3)
    assert result.describe().startswith("OK: 5 entries")


def test_an_empty_log_verifies() -> None:
    result = verify_chain([], [claim([], 0)], ChainHead(0, GENESIS_HASH))
    assert result.ok
    assert result.count == 0


def test_a_changed_field_is_named() -> None:
    entries = chain(5)
    entries[2] = entries[2].model_copy(update={"action": "rollout.abort"})
    result = verify_chain(entries)
    assert (result.problem, result.seq) == (Problem.HASH, 3)
    assert result.count == 2  # the log is good up to entry 2


def test_a_missing_entry_is_named() -> None:
    entries = chain(5)
    del entries[1]
    result = verify_chain(entries)
    assert (result.problem, result.seq) == (Problem.SEQ_GAP, 2)
    assert "entry 2 missing" in result.detail


def test_several_missing_entries_are_named_as_a_range() -> None:
    entries = chain(6)
    del entries[1:4]
    result = verify_chain(entries)
    assert (result.problem, result.seq) == (Problem.SEQ_GAP, 2)
    assert "entries 2..4" in result.detail


def test_a_repeated_seq_is_named() -> None:
    entries = chain(3)
    result = verify_chain([*entries, entries[2]])
    assert (result.problem, result.seq) == (Problem.SEQ_ORDER, 3)


def test_an_inserted_entry_breaks_the_link() -> None:
    entries = chain(4)
    # An entry 3 that hashes correctly but hangs off another chain.
    forged = entries[2].model_copy(update={"prev_hash": "f" * 64})
    forged = forged.model_copy(
        update={"hash": entry_hash(forged.prev_hash, forged, seq=3, ts=forged.ts)}
    )
    result = verify_chain([entries[0], entries[1], forged, entries[3]])
    assert (result.problem, result.seq) == (Problem.PREV_HASH, 3)


def test_a_rewritten_chain_is_caught_by_the_checkpoint_only() -> None:
    good = chain(4)
    forged_first = record(1).model_copy(update={"action": "model.approve"})
    rewritten: list[AuditEntry] = []
    prev = GENESIS_HASH
    for entry in good:
        rec = forged_first if entry.seq == 1 else entry
        digest = entry_hash(prev, rec, seq=entry.seq, ts=entry.ts)
        rewritten.append(
            AuditEntry(
                **rec.model_dump(include=set(AuditRecord.model_fields)),
                seq=entry.seq,
                ts=entry.ts,
                prev_hash=prev,
                hash=digest,
            )
        )
        prev = digest
    assert verify_chain(rewritten, [], ChainHead(4, prev)).ok  # consistent in itself
    result = verify_chain(rewritten, [claim(good, 4)], ChainHead(4, prev))
    assert (result.problem, result.seq) == (Problem.CHECKPOINT, 4)


def test_a_cut_tail_is_caught_by_the_checkpoint_and_names_the_first_missing() -> None:
    entries = chain(6)
    result = verify_chain(entries[:4], [claim(entries, 6)], ChainHead(4, entries[3].hash))
    assert (result.problem, result.seq) == (Problem.TAIL_MISSING, 5)


def test_a_head_that_counts_more_than_the_log_names_the_first_missing() -> None:
    entries = chain(5)
    result = verify_chain(entries[:3], [], ChainHead(5, entries[4].hash))
    assert (result.problem, result.seq) == (Problem.HEAD, 4)


def test_a_head_behind_the_log_names_the_first_entry_past_it() -> None:
    entries = chain(5)
    result = verify_chain(entries, [], ChainHead(3, entries[2].hash))
    assert (result.problem, result.seq) == (Problem.HEAD, 4)


def test_a_head_with_another_hash_is_named() -> None:
    entries = chain(2)
    result = verify_chain(entries, [], ChainHead(2, "e" * 64))
    assert (result.problem, result.seq) == (Problem.HEAD, 2)


def test_an_unreadable_row_is_named() -> None:
    entries = chain(3)
    result = verify_chain([entries[0], Unreadable(2, "outcome 'weird'"), entries[2]])
    assert (result.problem, result.seq) == (Problem.UNREADABLE, 2)


def test_verifying_from_a_checkpoint_checks_only_what_follows() -> None:
    entries = chain(6)
    after = ChainHead(3, entries[2].hash)
    assert verify_chain(
        entries[3:], [claim(entries, 6)], ChainHead(6, entries[5].hash), after=after
    ).ok
    wrong = ChainHead(3, "d" * 64)
    result = verify_chain(entries[3:], after=wrong)
    assert (result.problem, result.seq) == (Problem.PREV_HASH, 4)


# --- attacks on a real store ---------------------------------------------------------


def test_a_sound_store_verifies(engine: Engine) -> None:
    fill(engine, 10)
    result = verify_database(engine, [stored_claim(engine)], chunk_rows=3)
    assert result.ok, result.describe()
    assert result.count == 10


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("action", "model.approve"),
        ("actor_name", "mallory"),
        ("outcome", "denied"),
        ("source", "192.0.2.66"),
        ("ts", "2026-05-01 13:00:00"),
    ],
)
def test_one_changed_field_is_named(engine: Engine, column: str, value: str) -> None:
    fill(engine, 6)
    if column == "ts" and engine.dialect.name == "postgresql":
        value = "2026-05-01 13:00:00+00"
    sql(engine, f"UPDATE audit_log SET {column} = :v WHERE seq = 4", v=value)
    result = verify_database(engine)
    assert (result.problem, result.seq) == (Problem.HASH, 4), result.describe()


def test_a_changed_json_value_is_named(engine: Engine) -> None:
    fill(engine, 4)
    with engine.begin() as connection:
        connection.execute(
            AUDIT_TABLE.update().where(AUDIT_TABLE.c.seq == 2).values(after={"n": 99})
        )
    result = verify_database(engine)
    assert (result.problem, result.seq) == (Problem.HASH, 2)


def test_a_deleted_row_is_named(engine: Engine) -> None:
    fill(engine, 6)
    sql(engine, "DELETE FROM audit_log WHERE seq = 3")
    result = verify_database(engine)
    assert (result.problem, result.seq) == (Problem.SEQ_GAP, 3), result.describe()


def test_a_deleted_newest_row_is_caught_by_the_head(engine: Engine) -> None:
    fill(engine, 6)
    sql(engine, "DELETE FROM audit_log WHERE seq = 6")
    result = verify_database(engine)
    assert (result.problem, result.seq) == (Problem.HEAD, 6), result.describe()


def _swap(engine: Engine, a: int, b: int, columns: list[str]) -> None:
    """Swap ``columns`` of rows ``a`` and ``b`` (read and written through the table, so
    values keep their types on either engine)."""
    with engine.begin() as connection:
        rows = {
            r.seq: r
            for r in connection.execute(select(AUDIT_TABLE).where(AUDIT_TABLE.c.seq.in_([a, b])))
        }
        for seq, other in ((a, b), (b, a)):
            values = {c: getattr(rows[other], c) for c in columns}
            connection.execute(
                AUDIT_TABLE.update().where(AUDIT_TABLE.c.seq == seq).values(**values)
            )


def test_two_rows_swapped_with_their_hashes_are_named_at_the_first(engine: Engine) -> None:
    fill(engine, 8)
    _swap(engine, 3, 6, [*COLUMNS, "prev_hash", "hash"])
    result = verify_database(engine)
    assert (result.problem, result.seq) == (Problem.PREV_HASH, 3), result.describe()


def test_two_rows_swapped_without_their_hashes_are_named_at_the_first(engine: Engine) -> None:
    fill(engine, 8)
    _swap(engine, 3, 6, list(COLUMNS))
    result = verify_database(engine)
    assert (result.problem, result.seq) == (Problem.HASH, 3), result.describe()


def test_two_rows_renumbered_are_named_at_the_first(engine: Engine) -> None:
    # Swapping the seqs of two rows reorders the log: entry 2 now holds what was 4.
    fill(engine, 5)
    sql(engine, "UPDATE audit_log SET seq = -2 WHERE seq = 2")
    sql(engine, "UPDATE audit_log SET seq = 2 WHERE seq = 4")
    sql(engine, "UPDATE audit_log SET seq = 4 WHERE seq = -2")
    result = verify_database(engine)
    assert (result.problem, result.seq) == (Problem.PREV_HASH, 2), result.describe()


def _cut_tail(engine: Engine, keep: int) -> None:
    sql(engine, "DELETE FROM audit_log WHERE seq > :keep", keep=keep)
    sql(
        engine,
        "UPDATE audit_head SET seq = :keep,"
        " hash = (SELECT hash FROM audit_log WHERE seq = :keep) WHERE id = 1",
        keep=keep,
    )


def test_a_cut_tail_with_the_head_fixed_is_caught_by_the_checkpoint(engine: Engine) -> None:
    fill(engine, 10)
    checkpoint = stored_claim(engine)
    _cut_tail(engine, 7)
    assert verify_database(engine).ok  # without a checkpoint, nothing shows
    result = verify_database(engine, [checkpoint])
    assert (result.problem, result.seq) == (Problem.TAIL_MISSING, 8), result.describe()


def test_a_chain_rewritten_consistently_is_caught_by_the_checkpoint(engine: Engine) -> None:
    fill(engine, 6)
    checkpoint = stored_claim(engine)
    sql(engine, "UPDATE audit_log SET actor_name = 'mallory' WHERE seq = 2")
    # Rehash from entry 2 on, as an attacker who read the code would, and fix the head.
    prev = GENESIS_HASH
    for entry in list(iter_entries(engine)):
        digest = entry_hash(prev, entry, seq=entry.seq, ts=entry.ts)
        sql(
            engine,
            "UPDATE audit_log SET prev_hash = :p, hash = :h WHERE seq = :s",
            p=prev,
            h=digest,
            s=entry.seq,
        )
        prev = digest
    sql(engine, "UPDATE audit_head SET hash = :h WHERE id = 1", h=prev)
    assert verify_database(engine).ok  # consistent in itself
    result = verify_database(engine, [checkpoint])
    assert (result.problem, result.seq) == (Problem.CHECKPOINT, 6), result.describe()


def test_a_row_added_past_the_head_is_caught(engine: Engine) -> None:
    fill(engine, 3)
    sql(
        engine,
        "INSERT INTO audit_log (seq, ts, actor_kind, actor_id, actor_name, action,"
        " object_kind, object_id, outcome, prev_hash, hash)"
        " SELECT 4, ts, actor_kind, actor_id, actor_name, action, object_kind, object_id,"
        " outcome, hash, hash FROM audit_log WHERE seq = 3",
    )
    result = verify_database(engine)
    assert (result.problem, result.seq) == (Problem.HEAD, 4), result.describe()


def test_a_missing_head_row_is_reported(engine: Engine) -> None:
    fill(engine, 2)
    sql(engine, "DELETE FROM audit_head")
    result = verify_database(engine)
    assert result.problem is Problem.HEAD


def test_a_row_that_is_not_an_entry_is_named(engine: Engine) -> None:
    fill(engine, 3)
    sql(engine, "UPDATE audit_log SET outcome = 'weird' WHERE seq = 2")
    result = verify_database(engine)
    assert (result.problem, result.seq) == (Problem.UNREADABLE, 2), result.describe()
