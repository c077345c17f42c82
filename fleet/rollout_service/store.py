"""Rollouts in the database: create, load, compare-and-set save, commands, history.

Invariants:
- every write of a rollout is a compare-and-set on ``Rollout.version`` (`save`), in the
  same transaction as the history lines it explains, so the history never shows a change
  that was not stored nor misses one that was;
- creating rollouts is serialised (`lease.lock_row` on ``rollout-create``), so two
  concurrent requests can never both take one device: the overlap check and the insert
  happen under one lock;
- operator commands go through the pure `apply_command` and the same compare-and-set,
  retried when the orchestrator wrote in between;
- the history lines about no single device and the gate decisions (what the rollout's
  detail shows beside its state) are written only with a new version (`create`,
  `save`); `append` takes only device lines. So ``(id, version)`` names the state *and*
  those lines, and a view of them can be cached by it (`edgefleet.fleet.api.rollouts`);
- a parsed state is cached by ``(database, id, version)``, put there when it is read or
  once the transaction that saved it has committed (`committed`);
- a stored state whose gate durations an older schema let past today's bounds is read
  with them at `MAX_DURATION_S` (`_parse_state`);
- a stored state that no longer parses (written by an older schema, or by hand) never
  hides the others: `load_active_checked` returns it apart as an `UnreadableRollout`,
  which the orchestrator pauses with the error (`pause_unreadable`) and `create` counts
  as holding the targets its JSON names. The API lists it (`list_rollouts`), refuses
  anything else with `UnreadableRolloutError` (`load`) but lets an operator abort it
  (`abort`, by its status column like `pause_unreadable`), which frees those targets.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, Engine, Text, cast, insert, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session, col

from edgefleet.fleet.audit.entry import AuditRecord
from edgefleet.fleet.audit.log import append as append_audit
from edgefleet.fleet.errors import NotFoundError
from edgefleet.fleet.governance.lifecycle import ModelState
from edgefleet.fleet.model_lifecycle import state_of
from edgefleet.fleet.rollout_service.lease import lock_row
from edgefleet.fleet.rollouts.approval import ApprovalRules, decide_approval
from edgefleet.fleet.rollouts.model import (
    MAX_DURATION_S,
    TERMINAL_STATUSES,
    Candidate,
    Decision,
    OperatorCommand,
    RolloutCommandError,
    RolloutConflictError,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    TimelineEntry,
    UnreadableRolloutError,
)
from edgefleet.fleet.rollouts.patch import RolloutChange, change_rollout
from edgefleet.fleet.rollouts.policy import apply_command, held_devices, new_rollout
from edgefleet.fleet.store.rollout_tables import Rollout, RolloutEvent
from edgefleet.fleet.store.tables import Device

logger = logging.getLogger(__name__)

CREATE_LOCK = "rollout-create"
COMMAND_ATTEMPTS = 10
_ROLLOUT: Any = Rollout.__table__  # type: ignore[attr-defined]
_EVENT: Any = RolloutEvent.__table__  # type: ignore[attr-defined]
ACTIVE_STATUSES = tuple(sorted(s.value for s in RolloutStatus if s not in TERMINAL_STATUSES))
_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL_STATUSES)
MAX_PARSE_ERROR_CHARS = 300
# What a state that does not parse is read as (any of them is why; see `_load_many`).
_UNPARSEABLE = (ValidationError, ValueError, TypeError)


# Checks a route makes on the model (its name) and devices (ids and tags) a write touches,
# inside the write's transaction, so a refusal (it raises) leaves nothing written.
DeviceCheck = Callable[[str, Sequence[Candidate]], None]


class StaleRolloutError(RolloutConflictError):
    """The rollout changed since it was read (its version moved on)."""

    code = "rollout_changed"


@dataclass(frozen=True)
class StoredRollout:
    """A rollout as read: its state and the version a write must compare against."""

    id: str
    version: int
    state: RolloutState
    created_by: str


@dataclass(frozen=True)
class UnreadableRollout:
    """A rollout row whose stored state does not parse as a `RolloutState`: what its
    columns (and its JSON, as far as it goes) still say."""

    id: str
    version: int
    status: str
    status_reason: str | None
    error: Exception
    targets: frozenset[str]
    model_name: str
    model_version: str
    created_by: str
    created_at: datetime
    updated_at: datetime

    @property
    def problem(self) -> str:
        """Why it cannot be shown, for an operator: the parse error, clipped."""
        return f"stored state is unreadable: {parse_error_text(self.error)}"


def parse_error_text(error: Exception) -> str:
    """``error`` on one line, at most `MAX_PARSE_ERROR_CHARS` characters."""
    if isinstance(error, ValidationError):
        found = "; ".join(
            f"{'.'.join(map(str, d['loc'])) or 'state'}: {d['msg']}"
            for d in error.errors(include_url=False, include_input=False)
        )
        text = f"{type(error).__name__}: {found}"
    else:
        text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    if len(text) <= MAX_PARSE_ERROR_CHARS:
        return text
    return text[: MAX_PARSE_ERROR_CHARS - 1] + "…"


@dataclass(frozen=True)
class HistoryLine:
    """One history line to append (see `RolloutEvent`)."""

    kind: str
    ts: datetime
    message: str = ""
    device_id: str | None = None
    wave: int | None = None
    detail: dict[str, Any] | None = None

    @classmethod
    def of(cls, entry: TimelineEntry) -> HistoryLine:
        return cls(
            kind=entry.event,
            ts=entry.at,
            message=entry.message,
            device_id=entry.device_id,
            wave=entry.wave,
        )


class _ParsedStates:
    """Parsed rollout states by ``(database, id, version)``, the most recent ``size``.

    A version is written once (`save` is a compare-and-set that bumps it), so the pair
    names one state of a database for good. Parsing a 1,000-device state takes
    milliseconds, and the orchestrator's every tick and every status request parsed it
    again. The database (its URL) is part of the key because one process may talk to
    several (the tests do), each with its own rollouts.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._states: OrderedDict[tuple[str, str, int], RolloutState] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, database: str, rollout_id: str, version: int) -> RolloutState | None:
        key = (database, rollout_id, version)
        with self._lock:
            state = self._states.get(key)
            if state is not None:
                self._states.move_to_end(key)
            return state

    def put(self, database: str, rollout_id: str, version: int, state: RolloutState) -> None:
        key = (database, rollout_id, version)
        with self._lock:
            self._states[key] = state
            self._states.move_to_end(key)
            while len(self._states) > self._size:
                self._states.popitem(last=False)

    def parse(self, database: str, rollout_id: str, version: int, raw: Any) -> RolloutState:
        state = self.get(database, rollout_id, version)
        if state is None:
            state = _parse_state(rollout_id, version, raw)
            self.put(database, rollout_id, version, state)
        return state


_STATES = _ParsedStates()
_DURATIONS = ("soak_s", "timeout_s", "metrics_timeout_s")


def _parse_state(rollout_id: str, version: int, raw: Any) -> RolloutState:
    """``raw`` as a state; one stored before the schema bounded gate durations (1e15 was
    accepted, infinity was stored as null) is read with them at `MAX_DURATION_S`, so
    the rollout can still be shown, commanded and decided.

    Raises `pydantic.ValidationError` (the original one) when that does not help.
    """
    try:
        return RolloutState.model_validate(raw)
    except ValidationError as e:
        repaired = _bounded_durations(raw)
        if repaired is None:
            raise
        try:
            state = RolloutState.model_validate(repaired)
        except ValidationError:
            raise e from None
    logger.warning(
        "rollout %s (version %s): gate durations beyond %s s or not finite are read as %s s",
        rollout_id,
        version,
        MAX_DURATION_S,
        MAX_DURATION_S,
    )
    return state


def _bounded_durations(raw: Any) -> dict[str, Any] | None:
    """A copy of ``raw`` with every gate duration over `MAX_DURATION_S` (or null, NaN)
    set to it; None when there was none to change."""
    if not isinstance(raw, dict):
        return None
    fixed = copy.deepcopy(raw)
    found = fixed.get("spec")
    spec: dict[str, Any] = found if isinstance(found, dict) else {}
    gates: list[Any] = [spec.get("gate")]
    for waves in (spec.get("waves"), fixed.get("waves")):
        if isinstance(waves, list):
            gates += [w.get("gate") for w in waves if isinstance(w, dict)]
    changed = False
    for gate in gates:
        if not isinstance(gate, dict):
            continue
        for name in _DURATIONS:
            value = gate.get(name, 0.0)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if value is None or (number and not value <= MAX_DURATION_S):  # NaN too
                gate[name] = MAX_DURATION_S
                changed = True
    return fixed if changed else None


def _database(bind: Connection | Engine) -> str:
    """Which database ``bind`` talks to, as the state cache's key."""
    return str(bind.engine.url)


def _stored(database: str, row: Any) -> StoredRollout:
    return StoredRollout(
        id=row.id,
        version=row.version,
        state=_STATES.parse(database, row.id, row.version, row.state),
        created_by=row.created_by,
    )


def _load_many(
    conn: Connection, *where: Any, unreadable: list[UnreadableRollout] | None = None
) -> list[StoredRollout]:
    """The rollouts matching ``where``, oldest first, reading a state only if the cache
    does not hold that version.

    Raises `pydantic.ValidationError` for a state that does not parse, unless
    ``unreadable`` is given: such rows are then appended there and left out.
    """
    database = _database(conn)
    heads = conn.execute(
        select(_ROLLOUT.c.id, _ROLLOUT.c.version, _ROLLOUT.c.created_by)
        .where(*where)
        .order_by(_ROLLOUT.c.created_at, _ROLLOUT.c.id)
    ).all()
    read: dict[str, Any] = {}
    cached = {h.id: _STATES.get(database, h.id, h.version) for h in heads}
    missing = [rollout_id for rollout_id, state in cached.items() if state is None]
    if missing:
        rows = conn.execute(
            select(
                _ROLLOUT.c.id,
                _ROLLOUT.c.version,
                _ROLLOUT.c.state,
                _ROLLOUT.c.created_by,
                _ROLLOUT.c.status,
                _ROLLOUT.c.model_name,
                _ROLLOUT.c.model_version,
                _ROLLOUT.c.created_at,
                _ROLLOUT.c.updated_at,
            ).where(_ROLLOUT.c.id.in_(missing))
        )
        read = {row.id: row for row in rows}
    found = []
    for head in heads:
        state = cached[head.id]
        if head.id in read:
            # A rollout saved between the two reads: the second read's version stands.
            row = read[head.id]
            try:
                found.append(_stored(database, row))
            except _UNPARSEABLE as e:
                if unreadable is None:
                    raise
                unreadable.append(_unreadable(row, e))
        else:
            assert state is not None
            found.append(StoredRollout(head.id, head.version, state, head.created_by))
    return found


def _without_inputs(error: Exception) -> Exception:
    """``error`` without the stored values it quotes, when it is a `ValidationError`.

    Its text quotes the state (abridged), ``status_reason`` included, which
    `pause_unreadable` writes: the orchestrator, seeing a new error at each tick, then
    paused and alerted again at each tick. A state is also no operator's to read.
    """
    if not isinstance(error, ValidationError):
        return error
    try:
        # An error's details are what it is built from, less what rebuilding ignores.
        details: Any = error.errors()
        return ValidationError.from_exception_data(error.title, details, hide_input=True)
    except (TypeError, ValueError, KeyError):  # an error type it cannot rebuild
        return error


def _unreadable(row: Any, error: Exception) -> UnreadableRollout:
    error = _without_inputs(error)
    raw = row.state if isinstance(row.state, dict) else {}
    targets = raw.get("targets")
    reason = raw.get("status_reason")
    return UnreadableRollout(
        id=row.id,
        version=row.version,
        status=row.status,
        status_reason=reason if isinstance(reason, str) else None,
        error=error,
        # What a create must keep away from: every device id the JSON still names.
        targets=frozenset(d for d in targets if isinstance(d, str))
        if isinstance(targets, list)
        else frozenset(),
        model_name=row.model_name,
        model_version=row.model_version,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def load(conn: Connection, rollout_id: str) -> StoredRollout:
    """The rollout ``rollout_id``.

    Raises `NotFoundError`, and `UnreadableRolloutError` when its stored state does not
    parse (the message says so and that aborting it is what is left).
    """
    found = load_any(conn, rollout_id)
    if isinstance(found, UnreadableRollout):
        raise UnreadableRolloutError(
            f"rollout {rollout_id!r} cannot be shown or commanded: its {found.problem}; "
            f"abort it (POST /v1/rollouts/{rollout_id}/abort) to free its devices"
        ) from found.error
    return found


def load_any(conn: Connection, rollout_id: str) -> StoredRollout | UnreadableRollout:
    """The rollout ``rollout_id``, or what is left of it when its state does not parse.

    Raises `NotFoundError`.
    """
    unreadable: list[UnreadableRollout] = []
    found = _load_many(conn, _ROLLOUT.c.id == rollout_id, unreadable=unreadable)
    if unreadable:
        return unreadable[0]
    if not found:
        raise NotFoundError(f"rollout {rollout_id!r} does not exist")
    return found[0]


def load_active(conn: Connection) -> list[StoredRollout]:
    """Every rollout not in a terminal status, oldest first.

    Raises `pydantic.ValidationError` if a stored state does not parse (see
    `load_active_checked`)."""
    return _load_many(conn, _ROLLOUT.c.status.in_(ACTIVE_STATUSES))


def load_active_checked(
    conn: Connection,
) -> tuple[list[StoredRollout], list[UnreadableRollout]]:
    """Every rollout not in a terminal status, oldest first, and apart from them those
    whose stored state does not parse. Raises only `sqlalchemy.exc.SQLAlchemyError`."""
    unreadable: list[UnreadableRollout] = []
    found = _load_many(conn, _ROLLOUT.c.status.in_(ACTIVE_STATUSES), unreadable=unreadable)
    return found, unreadable


def pause_unreadable(
    conn: Connection, rollout: UnreadableRollout, reason: str, lines: Iterable[HistoryLine]
) -> bool:
    """Pause a rollout whose state does not parse, in the caller's transaction: the
    status column (and the JSON's ``status``/``status_reason``, when it is an object)
    say PAUSED with ``reason``, the version moves on, ``lines`` go into its history.

    Returns False (nothing written) when the version moved on since it was read.
    """
    raw = conn.execute(select(_ROLLOUT.c.state).where(_ROLLOUT.c.id == rollout.id)).scalar()
    values: dict[str, Any] = {
        "status": RolloutStatus.PAUSED.value,
        "version": rollout.version + 1,
    }
    if isinstance(raw, dict):
        values["state"] = {**raw, "status": RolloutStatus.PAUSED.value, "status_reason": reason}
    result = conn.execute(
        update(_ROLLOUT)
        .where(_ROLLOUT.c.id == rollout.id, _ROLLOUT.c.version == rollout.version)
        .values(**values)
    )
    if result.rowcount != 1:
        return False
    _append(conn, rollout.id, lines)
    return True


def abort_unreadable(
    conn: Connection, rollout: UnreadableRollout, *, by: str, now: datetime
) -> UnreadableRollout | None:
    """Abort a rollout whose state does not parse, in the caller's transaction, as
    `pause_unreadable` pauses one: the status column (and the JSON's
    ``status``/``status_reason``, when it is an object) say ABORTED, the version moves
    on, the command and ``aborted`` go into its history. Being terminal, it then holds
    no devices (`create` reads only active rows). An aborted one is left as it is.

    Returns the rollout as now stored, or None (nothing written) when its version moved
    on since it was read. Raises `RolloutCommandError` for another terminal status.
    """
    aborted = RolloutStatus.ABORTED.value
    if rollout.status == aborted:
        return rollout
    if rollout.status in _TERMINAL_VALUES:
        raise RolloutCommandError(
            f"cannot abort rollout {rollout.id!r}: it is {rollout.status}, expected one of "
            + ", ".join(sorted(s for s in ACTIVE_STATUSES))
        )
    reason = f"aborted by operator; its {rollout.problem}"
    raw = conn.execute(select(_ROLLOUT.c.state).where(_ROLLOUT.c.id == rollout.id)).scalar()
    values: dict[str, Any] = {"status": aborted, "version": rollout.version + 1, "updated_at": now}
    if isinstance(raw, dict):
        values["state"] = {**raw, "status": aborted, "status_reason": reason}
    result = conn.execute(
        update(_ROLLOUT)
        .where(_ROLLOUT.c.id == rollout.id, _ROLLOUT.c.version == rollout.version)
        .values(**values)
    )
    if result.rowcount != 1:
        return None
    lines = [
        HistoryLine(
            kind="command",
            ts=now,
            message=f"{OperatorCommand.ABORT.value} by {by}",
            detail={"command": OperatorCommand.ABORT.value, "by": by},
        ),
        HistoryLine(kind="aborted", ts=now, message=reason),
    ]
    _append(conn, rollout.id, lines)
    return replace(
        rollout, version=rollout.version + 1, status=aborted, status_reason=reason, updated_at=now
    )


def list_rollouts(
    engine: Engine, *, status: str | None = None, limit: int = 100, offset: int = 0
) -> tuple[list[StoredRollout | UnreadableRollout], int]:
    """Rollouts (of ``status``), newest first, and how many there are in all; one whose
    state does not parse as what is left of it (`UnreadableRollout`)."""
    with Session(engine) as session:
        query = select(Rollout)
        if status is not None:
            query = query.where(col(Rollout.status) == status)
        rows = session.execute(
            query.order_by(col(Rollout.created_at).desc(), col(Rollout.id))
            .limit(limit)
            .offset(offset)
        ).scalars()
        found = [_stored_or_unreadable(_database(engine), r) for r in rows]
        total_query = select(col(Rollout.id))
        if status is not None:
            total_query = total_query.where(col(Rollout.status) == status)
        total = len(session.execute(total_query).all())
    return found, total


def _stored_or_unreadable(database: str, row: Any) -> StoredRollout | UnreadableRollout:
    try:
        return _stored(database, row)
    except _UNPARSEABLE as e:
        return _unreadable(row, e)


def append(conn: Connection, rollout_id: str, lines: Iterable[HistoryLine]) -> None:
    """Append device history lines of ``rollout_id`` in the caller's transaction.

    Raises `ValueError` for a line about no single device or a gate decision: those go
    with a new version of the rollout (`save`), see the module docstring.
    """
    lines = list(lines)
    for line in lines:
        if line.device_id is None or line.kind == "gate_decision":
            raise ValueError(
                f"history line {line.kind!r} of rollout {rollout_id!r} is shown with the "
                "rollout's state: write it with a new version (save), not on its own"
            )
    _append(conn, rollout_id, lines)


def _append(conn: Connection, rollout_id: str, lines: Iterable[HistoryLine]) -> None:
    rows = [
        {
            "rollout_id": rollout_id,
            "device_id": line.device_id,
            "wave": line.wave,
            "ts": line.ts,
            "kind": line.kind,
            "message": line.message,
            "detail": line.detail or {},
        }
        for line in lines
    ]
    if rows:
        conn.execute(insert(_EVENT), rows)


def save(
    conn: Connection,
    stored: StoredRollout,
    state: RolloutState,
    lines: Iterable[HistoryLine],
    audit: Iterable[AuditRecord] = (),
) -> StoredRollout:
    """Write ``state`` over ``stored`` if nobody wrote since it was read, with ``lines``
    and then (last, see `edgefleet.fleet.audit.log`) the ``audit`` entries.

    Raises `StaleRolloutError` (nothing written) when the version moved on.
    """
    result = conn.execute(
        update(_ROLLOUT)
        .where(_ROLLOUT.c.id == stored.id, _ROLLOUT.c.version == stored.version)
        .values(
            state=_json(conn, state),
            status=state.status.value,
            updated_at=state.updated_at,
            version=stored.version + 1,
        )
    )
    if result.rowcount != 1:
        raise StaleRolloutError(
            f"rollout {stored.id!r} changed since version {stored.version} was read"
        )
    _append(conn, stored.id, lines)
    for record in audit:
        append_audit(conn, record, now=state.updated_at)
    # Not cached here: the caller's transaction may still roll back, and another
    # replica would then write this version with another state (see `committed`).
    return StoredRollout(stored.id, stored.version + 1, state, stored.created_by)


def _json(conn: Connection, value: BaseModel) -> Any:
    """``value`` for a JSON column, as the JSON text pydantic writes in one pass.

    The column's own serialiser (``json.dumps`` of ``model_dump``) took three times as
    long for a 1,000-device state, saved on most ticks. The text is stored as it is on
    SQLite (a JSON column is text there) and cast to JSONB on PostgreSQL; it reads back
    the same as the column's own serialisation would.
    """
    text = literal(value.model_dump_json(), Text())
    return cast(text, JSONB) if conn.dialect.name == "postgresql" else text


def committed(bind: Connection | Engine, saved: StoredRollout) -> None:
    """Note that ``saved`` (returned by `save` on ``bind``'s database) is committed, so
    that loading that version reuses its state rather than parsing the stored JSON again.

    Call it only once the transaction of `save` has committed: a version is then
    written for good (the next write is a compare-and-set that bumps it).
    """
    _STATES.put(_database(bind), saved.id, saved.version, saved.state)


def create(
    engine: Engine,
    rollout_id: str,
    spec: RolloutSpec,
    *,
    created_by: str,
    now: datetime,
    creator: str | None = None,
    approval: ApprovalRules | None = None,
    check: DeviceCheck | None = None,
    audit: AuditRecord | None = None,
) -> StoredRollout:
    """Plan and store a new rollout over the devices the registry knows.

    ``creator`` is the creating person's id (kept in the state for the four-eyes rule);
    ``approval`` the fleet's approval rules (the rollout waits for approval when they
    apply); ``check`` is called with the selected devices before anything is written,
    and ``audit`` appended last in the same transaction (its before/after filled in).

    Raises `edgefleet.fleet.rollouts.model.SelectionError` (nothing matches, unknown device ids)
    and `edgefleet.fleet.rollouts.model.RolloutOverlapError` naming the devices another active
    rollout holds, and whatever ``check`` raises. Nothing is stored when it raises.
    """
    with engine.begin() as conn:
        lock_row(conn, CREATE_LOCK, now)
        candidates = _candidates(conn)
        readable, unreadable = load_active_checked(conn)
        active = {s.id: held_devices(s.state) for s in readable}
        active.update({u.id: u.targets for u in unreadable})
        state = new_rollout(
            rollout_id, spec, candidates, active, now, creator=creator, approval=approval
        )
        if check is not None:
            by_id = {c.device_id: c for c in candidates}
            check(spec.model.name, [by_id[d] for d in state.targets])
        conn.execute(
            insert(_ROLLOUT).values(
                id=rollout_id,
                model_name=spec.model.name,
                model_version=spec.model.version,
                spec=spec.model_dump(mode="json"),
                state=state.model_dump(mode="json"),
                status=state.status.value,
                created_by=created_by,
                created_at=now,
                updated_at=now,
                version=1,
            )
        )
        sizes = wave_sizes(state)
        lines = [
            HistoryLine(
                kind="created",
                ts=now,
                message=f"created by {created_by}: {len(state.targets)} device(s) in "
                f"{len(sizes)} wave(s) {sizes}",
                detail={"by": created_by, "wave_sizes": sizes},
            )
        ]
        if state.approval is not None:
            lines.append(
                HistoryLine(
                    kind="approval_requested",
                    ts=now,
                    message=state.status_reason or "",
                    detail={"reasons": list(state.approval.reasons)},
                )
            )
        _append(conn, rollout_id, lines)
        if audit is not None:
            append_audit(conn, with_change(audit, None, state), now=now)
    logger.info(
        "rollout %s of %s %s created by %s: %s device(s)",
        rollout_id,
        spec.model.name,
        spec.model.version,
        created_by,
        len(state.targets),
    )
    return StoredRollout(rollout_id, 1, state, created_by)


def _candidates(conn: Connection, device_ids: Iterable[str] | None = None) -> list[Candidate]:
    """The registry's devices (those of ``device_ids``), as a selector sees them."""
    query = select(col(Device.device_id), col(Device.tags), col(Device.hardware)).order_by(
        col(Device.device_id)
    )
    if device_ids is not None:
        query = query.where(col(Device.device_id).in_(list(device_ids)))
    return [
        Candidate(device_id=r.device_id, tags=tuple(r.tags or ()), hardware=r.hardware or "")
        for r in conn.execute(query)
    ]


def targets_of(conn: Connection, device_ids: Iterable[str]) -> list[Candidate]:
    """The devices ``device_ids`` with their tags; one no longer registered has none."""
    wanted = list(device_ids)
    found = {c.device_id: c for c in _candidates(conn, wanted)}
    return [found.get(d, Candidate(device_id=d)) for d in wanted]


def model_state(conn: Connection, name: str, version: str) -> ModelState:
    """The lifecycle state of model ``name`` ``version`` (`state_of`), on ``conn``."""
    with Session(bind=conn) as session:
        return state_of(session, name, version)


def snapshot(state: RolloutState) -> dict[str, Any]:
    """What an audit entry shows of a rollout before or after a change."""
    out: dict[str, Any] = {
        "status": state.status.value,
        "status_reason": state.status_reason,
        "current_wave": state.current_wave,
        "model": state.spec.model.name,
        "version": state.spec.model.version,
        "targets": len(state.targets),
        "wave_sizes": wave_sizes(state),
    }
    if state.approval is not None:
        out["approval"] = state.approval.model_dump(mode="json")
    return out


def with_change(
    record: AuditRecord, before: RolloutState | None, after: RolloutState | None
) -> AuditRecord:
    """``record`` with the rollout's state before and after (over what it already says)."""
    return record.model_copy(
        update={
            "before": {**(snapshot(before) if before else {}), **(record.before or {})} or None,
            "after": {**(snapshot(after) if after else {}), **(record.after or {})} or None,
        }
    )


def wave_sizes(state: RolloutState) -> list[int]:
    """How many devices each wave adds."""
    ends = [w.end for w in state.waves]
    return [end - start for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def command(
    engine: Engine,
    rollout_id: str,
    operator_command: OperatorCommand,
    *,
    by: str,
    now: datetime,
    check: DeviceCheck | None = None,
    audit: AuditRecord | None = None,
) -> StoredRollout:
    """Apply an operator's command and store the result with its history, ``check``
    called with the rollout's targets first and ``audit`` appended last.

    Raises `NotFoundError`, `edgefleet.fleet.rollouts.model.RolloutCommandError` (the status
    or the version's lifecycle state forbids it; HTTP 409), `UnreadableRolloutError` (its
    state does not parse: only `abort` applies), `StaleRolloutError` if the orchestrator
    kept writing in between for every one of `COMMAND_ATTEMPTS` attempts, and whatever
    ``check`` raises.
    """
    for _ in range(COMMAND_ATTEMPTS):
        with engine.begin() as conn:
            stored = load(conn, rollout_id)
            if check is not None:
                check(stored.state.spec.model.name, targets_of(conn, stored.state.targets))
            model = stored.state.spec.model
            decision = apply_command(
                stored.state,
                operator_command,
                now,
                model_state=model_state(conn, model.name, model.version),
            )
            lines = [
                HistoryLine(
                    kind="command",
                    ts=now,
                    message=f"{operator_command.value} by {by}",
                    detail={"command": operator_command.value, "by": by},
                ),
                *decision_lines(decision, now),
            ]
            records = [with_change(audit, stored.state, decision.state)] if audit else []
            try:
                saved = save(conn, stored, decision.state, lines, records)
            except StaleRolloutError:
                continue
        committed(engine, saved)
        logger.info("rollout %s: %s by %s", rollout_id, operator_command.value, by)
        return saved
    raise StaleRolloutError(
        f"rollout {rollout_id!r} kept changing; {operator_command.value} not applied, retry"
    )


def change(
    engine: Engine,
    rollout_id: str,
    changes: RolloutChange,
    *,
    by: str,
    rules: ApprovalRules,
    now: datetime,
    check: DeviceCheck | None = None,
    audit: AuditRecord | None = None,
) -> StoredRollout:
    """Change a rollout's spec (`edgefleet.fleet.rollouts.patch`), under the create lock
    (the overlap check and the write are one step, as in `create`); ``check`` is called
    with its new targets, ``audit`` appended last.

    Raises what `change_rollout` raises, `NotFoundError`, `UnreadableRolloutError`,
    `StaleRolloutError` (the orchestrator kept writing) and whatever ``check`` raises.
    """
    for _ in range(COMMAND_ATTEMPTS):
        with engine.begin() as conn:
            lock_row(conn, CREATE_LOCK, now)
            stored = load(conn, rollout_id)
            candidates = _candidates(conn)
            readable, unreadable = load_active_checked(conn)
            active = {s.id: held_devices(s.state) for s in readable}
            active.update({u.id: u.targets for u in unreadable})
            state, timeline = change_rollout(
                stored.state, changes, candidates, active, rules=rules, now=now
            )
            if not timeline:
                return stored
            if check is not None:
                by_id = {c.device_id: c for c in candidates}
                check(state.spec.model.name, [by_id[d] for d in state.targets])
            lines = [
                HistoryLine(
                    kind="command",
                    ts=now,
                    message=f"change by {by}",
                    detail={"command": "change", "by": by},
                ),
                *(HistoryLine.of(t) for t in timeline),
            ]
            conn.execute(
                update(_ROLLOUT)
                .where(_ROLLOUT.c.id == rollout_id)
                .values(spec=state.spec.model_dump(mode="json"))
            )
            records = [with_change(audit, stored.state, state)] if audit else []
            try:
                saved = save(conn, stored, state, lines, records)
            except StaleRolloutError:
                continue
        committed(engine, saved)
        logger.info("rollout %s: changed by %s", rollout_id, by)
        return saved
    raise StaleRolloutError(f"rollout {rollout_id!r} kept changing; change not applied, retry")


def review(
    engine: Engine,
    rollout_id: str,
    *,
    approve: bool,
    reviewer: str,
    reviewer_name: str,
    remark: str | None,
    single_person_approval: bool,
    now: datetime,
    check: DeviceCheck | None = None,
    audit: AuditRecord | None = None,
) -> StoredRollout:
    """Approve or deny a rollout waiting for approval (`decide_approval`); ``check`` is
    called with its targets, ``audit`` appended last.

    Raises what `decide_approval` raises (`RolloutCommandError`, `FourEyesError`,
    `InvalidRequestError`), `NotFoundError`, `UnreadableRolloutError`, `StaleRolloutError` and
    whatever ``check`` raises.
    """
    for _ in range(COMMAND_ATTEMPTS):
        with engine.begin() as conn:
            stored = load(conn, rollout_id)
            if check is not None:
                check(stored.state.spec.model.name, targets_of(conn, stored.state.targets))
            state, line = decide_approval(
                stored.state,
                approve=approve,
                reviewer=reviewer,
                reviewer_name=reviewer_name,
                remark=remark,
                single_person_approval=single_person_approval,
                now=now,
            )
            history_line = replace(
                HistoryLine.of(line),
                detail={"by": reviewer_name, "person": reviewer, "remark": remark},
            )
            records = [with_change(audit, stored.state, state)] if audit else []
            try:
                saved = save(conn, stored, state, [history_line], records)
            except StaleRolloutError:
                continue
        committed(engine, saved)
        logger.info(
            "rollout %s: %s by %s", rollout_id, "approved" if approve else "denied", reviewer_name
        )
        return saved
    raise StaleRolloutError(f"rollout {rollout_id!r} kept changing; review not applied, retry")


def abort(
    engine: Engine,
    rollout_id: str,
    *,
    by: str,
    now: datetime,
    check: DeviceCheck | None = None,
    audit: AuditRecord | None = None,
) -> StoredRollout | UnreadableRollout:
    """The operator's abort: `command` for a rollout whose state parses, and for one
    that does not `abort_unreadable`, the one way left to free the devices it holds.
    ``check`` is called with its targets (those its JSON names, for an unreadable one)
    and ``audit`` appended last, in the abort's transaction.

    Raises what `command` raises (a rollout that is not there, or a finished one) and
    `StaleRolloutError` when an unreadable one kept changing for `COMMAND_ATTEMPTS`
    attempts.
    """
    for _ in range(COMMAND_ATTEMPTS):
        with engine.begin() as conn:
            found = load_any(conn, rollout_id)
            if isinstance(found, StoredRollout):
                break
            if check is not None:
                check(found.model_name, targets_of(conn, sorted(found.targets)))
            aborted = abort_unreadable(conn, found, by=by, now=now)
            if aborted is not None and audit is not None:
                change_of = {
                    "before": {"status": found.status},
                    "after": {"status": aborted.status},
                }
                append_audit(conn, audit.model_copy(update=change_of), now=now)
        if aborted is not None:
            logger.info("rollout %s: abort by %s (its stored state does not parse)", rollout_id, by)
            return aborted
    else:
        raise StaleRolloutError(f"rollout {rollout_id!r} kept changing; abort not applied, retry")
    return command(
        engine, rollout_id, OperatorCommand.ABORT, by=by, now=now, check=check, audit=audit
    )


def decision_lines(decision: Decision, now: datetime) -> list[HistoryLine]:
    """The history lines of a decision: its timeline, and its gate decisions in full."""
    lines = [HistoryLine.of(entry) for entry in decision.timeline]
    for action in decision.actions:
        if action.kind == "gate_decision":
            lines.append(
                HistoryLine(
                    kind="gate_decision",
                    ts=now,
                    message=("passed: " if action.passed else "failed: ")
                    + "; ".join(action.reasons),
                    wave=action.wave,
                    detail={"passed": action.passed, "reasons": list(action.reasons)},
                )
            )
    return lines


def history(
    engine: Engine,
    rollout_id: str,
    *,
    device_id: str | None = None,
    kinds: Sequence[str] = (),
    rollout_level: bool = False,
    after_id: int = 0,
    limit: int = 500,
) -> list[RolloutEvent]:
    """History lines of ``rollout_id`` after ``after_id``, oldest first: of one device,
    of some kinds, or (``rollout_level``) only those about no single device."""
    with Session(engine) as session:
        query = select(RolloutEvent).where(
            col(RolloutEvent.rollout_id) == rollout_id, col(RolloutEvent.id) > after_id
        )
        if device_id is not None:
            query = query.where(col(RolloutEvent.device_id) == device_id)
        if rollout_level:
            query = query.where(col(RolloutEvent.device_id).is_(None))
        if kinds:
            query = query.where(col(RolloutEvent.kind).in_(list(kinds)))
        rows = session.execute(query.order_by(col(RolloutEvent.id)).limit(limit)).scalars()
        return list(rows)
