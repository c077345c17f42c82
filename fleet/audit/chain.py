"""The hash chain, pure: an entry's canonical JSON and its hash.

``hash = sha256(prev_hash + "\\n" + canonical_json(entry without its hashes))``. Canonical
JSON is sorted keys, no spaces, UTF-8, times as ISO 8601 in UTC with microseconds: the
same bytes whichever engine stored the row and whichever replica reads it.

Numbers in ``before``/``after`` are written as the stored value reads back: PostgreSQL's
JSONB keeps a number as a decimal, so ``1e16`` comes back as the integer
``10000000000000000`` and ``-0.0`` as ``0.0``. An integral float is therefore hashed as
the integer it equals (``2.0`` as ``2``); any other float's shortest repr survives the
decimal round trip unchanged. NaN and infinities have no JSON form: pydantic's JSON mode
writes them as null, in the hash and in the stored row alike.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from edgefleet.fleet.audit.entry import AuditEntry, AuditRecord


def canonical_time(ts: datetime) -> str:
    """``ts`` in UTC, ISO 8601 with microseconds (naive taken as UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(record: AuditRecord, *, seq: int, ts: datetime) -> bytes:
    """The bytes an entry's hash covers."""
    body: dict[str, Any] = record.model_dump(mode="json")
    for key in ("seq", "ts", "prev_hash", "hash"):
        body.pop(key, None)
    body["seq"] = seq
    body["ts"] = canonical_time(ts)
    return json.dumps(
        _integral_floats_as_ints(body),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


def _integral_floats_as_ints(value: Any) -> Any:
    """``value`` with every integral float replaced by the int it equals (see above)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    return value


def entry_hash(prev_hash: str, record: AuditRecord, *, seq: int, ts: datetime) -> str:
    """The hash of an entry appended after ``prev_hash``."""
    digest = hashlib.sha256(prev_hash.encode("ascii") + b"\n")
    digest.update(canonical_json(record, seq=seq, ts=ts))
    return digest.hexdigest()


def recomputed_hash(entry: AuditEntry) -> str:
    """What ``entry.hash`` should be, given its ``prev_hash`` and content."""
    return entry_hash(entry.prev_hash, entry, seq=entry.seq, ts=entry.ts)
