"""The director: signs each device's desired state with a growing sequence number.

`Director.assign` is what the API (``PUT /v1/devices/{id}/desired``) and the rollout
orchestrator call. It allocates the next per-device ``seq``, builds and signs the
`DesiredBody`, stores it, and publishes the envelope *retained* at QoS 1 on the device's
``desired`` topic, so a device that is offline now converges when it reconnects.

Invariants:
- ``seq`` only grows per device, across restarts and replicas: it is allocated by an
  ``UPDATE ... SET seq = seq + 1 ... RETURNING`` in the same transaction that stores the
  envelope signed with it (the row lock serialises replicas on PostgreSQL, the write lock
  does on SQLite), so no two envelopes ever share a seq;
- publishing happens after the commit, so nothing is published that is not stored;
- the retained message ends up as the newest stored envelope even when two replicas
  publish for one device at once: after its publish is acknowledged, a publisher re-reads
  the row and publishes the newer envelope if there is one (see `_publish_converged`).

`assign_many` / `republish_many` do the same for a batch of devices (a rollout wave):
one transaction for every seq and envelope, then all publishes in flight together, so
a wave costs a few database round trips and about one broker round trip, not one of
each per device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, Engine, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from edgefleet.fleet.audit.entry import AuditRecord
from edgefleet.fleet.audit.log import append
from edgefleet.fleet.errors import FleetError, InvalidRequestError, NotFoundError, PublishError
from edgefleet.fleet.store.tables import DesiredStateRow
from edgefleet.shared.messages import utcnow
from edgefleet.shared.signing.director import (
    DesiredBody,
    DesiredTarget,
    SignedDesiredState,
    sign_desired,
)
from edgefleet.shared.signing.tufapi import Signer
from edgefleet.shared.topics import Channel, TopicError, device_topic, validate_device_id

if TYPE_CHECKING:
    from edgefleet.fleet.observability.metrics import DirectorMetrics

logger = logging.getLogger(__name__)

MAX_CONVERGE_ROUNDS = 5
CHUNK = 500  # device ids per IN (...) list: well under SQLite's bound-parameter limit


class DesiredPublisher(Protocol):
    """Publishes retained QoS 1 messages and returns once the broker acknowledged them."""

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """Raises `PublishError` if the broker did not acknowledge in time."""
        ...

    def publish_retained_many(
        self, messages: Sequence[tuple[str, bytes]]
    ) -> list[PublishError | None]:
        """Publish every message at once, then wait for their acknowledgements.

        Returns one entry per message: None when acknowledged, the error otherwise.
        """
        ...


Outcome = SignedDesiredState | FleetError
"""Per device: the envelope stored and published, or why it was not."""


class Director:
    """Per-device desired states, signed with the director key ``signer``."""

    def __init__(
        self,
        engine: Engine,
        signer: Signer,
        publisher: DesiredPublisher,
        *,
        default_expires_s: int,
        clock: Callable[[], datetime] = utcnow,
        metrics: DirectorMetrics | None = None,
    ) -> None:
        """``metrics`` counts the publishes and times each batch (none recorded if None)."""
        self._metrics = metrics
        self._engine = engine
        self._signer = signer
        self._publisher = publisher
        self._default_expires_s = default_expires_s
        self._clock = clock

    def assign(
        self,
        device_id: str,
        target: DesiredTarget,
        *,
        rollout_id: str | None = None,
        rollback: bool = False,
        expires_in_s: int | None = None,
        audit: AuditRecord | None = None,
    ) -> SignedDesiredState:
        """Sign, store and publish (retained) a new desired state for ``device_id``.

        Raises `InvalidRequestError` for a bad device id, `PublishError` if the
        broker does not acknowledge (the state is stored with its seq; `republish` or a
        later assign delivers it). ``audit`` is appended in the transaction that stores
        the state, with its seq.
        """
        outcome = self.assign_many(
            [device_id],
            target,
            rollout_id=rollout_id,
            rollback=rollback,
            expires_in_s=expires_in_s,
            audit=audit,
        )[device_id]
        if isinstance(outcome, FleetError):
            raise outcome
        return outcome

    def assign_many(
        self,
        device_ids: Sequence[str],
        target: DesiredTarget,
        *,
        rollout_id: str | None = None,
        rollback: bool = False,
        expires_in_s: int | None = None,
        audit: AuditRecord | None = None,
    ) -> dict[str, Outcome]:
        """`assign` for many devices: one transaction, then every publish in flight at once.

        A rollout wave assigns hundreds of devices; one at a time, each paid its own
        transaction and a broker round trip. Returns an outcome per distinct device id:
        `InvalidRequestError` for a bad id (nothing stored for it), `PublishError` for a
        state that is stored but not acknowledged by the broker.
        """
        outcomes: dict[str, Outcome] = {}
        valid: list[str] = []
        for device_id in dict.fromkeys(device_ids):
            try:
                validate_device_id(device_id)
            except TopicError as e:
                outcomes[device_id] = InvalidRequestError(str(e))
            else:
                valid.append(device_id)
        if not valid:
            return outcomes
        now = self._clock()
        expires = timedelta(seconds=expires_in_s or self._default_expires_s)
        envelopes: dict[str, SignedDesiredState] = {}
        with self._engine.begin() as conn:
            # Sorted: the inserts lock rows in list order and the UPDATE's primary-key scan
            # in id order, so two batches take their row locks in one order (no deadlock).
            seqs = _next_seqs(conn, sorted(valid), now)
            for device_id in valid:
                body = DesiredBody(
                    device_id=device_id,
                    seq=seqs[device_id],
                    target=target,
                    expires_at=now + expires,
                    rollout_id=rollout_id,
                    rollback=rollback,
                    issued_at=now,
                )
                envelopes[device_id] = sign_desired(body, self._signer)
            _store(conn, envelopes, rollout_id, now)
            if audit is not None:
                after: dict[str, Any] = {
                    "target": target.name,
                    "rollback": rollback,
                    "rollout_id": rollout_id,
                    "seqs": {d: e.signed.seq for d, e in envelopes.items()},
                }
                append(conn, audit.model_copy(update={"after": after}))
        for device_id, envelope in envelopes.items():
            logger.info(
                "desired seq %s for %s: %s%s",
                envelope.signed.seq,
                device_id,
                target.name,
                " (rollback)" * rollback,
            )
        for device_id, published in self._publish_converged(envelopes).items():
            if isinstance(published, PublishError):
                seq = envelopes[device_id].signed.seq
                outcomes[device_id] = PublishError(
                    f"desired seq {seq} for {device_id} is stored but not published "
                    f"({published}); it is delivered by the next assign or republish"
                )
            else:
                outcomes[device_id] = published
        return outcomes

    def current(self, device_id: str) -> SignedDesiredState:
        """The device's stored desired state; raises `NotFoundError` if it has none."""
        found = self.current_many([device_id])
        if device_id not in found:
            raise NotFoundError(f"device {device_id!r} has no desired state")
        return found[device_id]

    def current_many(self, device_ids: Sequence[str]) -> dict[str, SignedDesiredState]:
        """The stored desired states of those of ``device_ids`` that have one."""
        table = _table()
        found: dict[str, SignedDesiredState] = {}
        with self._engine.connect() as conn:
            for chunk in _chunks(list(dict.fromkeys(device_ids))):
                rows = conn.execute(
                    select(table.c.device_id, table.c.envelope).where(table.c.device_id.in_(chunk))
                )
                for device_id, envelope in rows:
                    if envelope:
                        found[device_id] = SignedDesiredState.model_validate(envelope)
        return found

    def republish(self, device_id: str) -> SignedDesiredState:
        """Publish the stored desired state again; raises `NotFoundError`, `PublishError`."""
        outcome = self.republish_many([device_id])[device_id]
        if isinstance(outcome, FleetError):
            raise outcome
        return outcome

    def republish_many(self, device_ids: Sequence[str]) -> dict[str, Outcome]:
        """`republish` for many devices, every publish in flight at once.

        Per device: the envelope, `NotFoundError` (no stored state) or `PublishError`.
        """
        stored = self.current_many(device_ids)
        outcomes: dict[str, Outcome] = {
            d: NotFoundError(f"device {d!r} has no desired state")
            for d in device_ids
            if d not in stored
        }
        outcomes.update(self._publish_converged(stored))
        return outcomes

    def _publish_converged(self, envelopes: Mapping[str, SignedDesiredState]) -> dict[str, Outcome]:
        """Publish each device's envelope, then make sure the retained one is the newest.

        Another replica may store a newer state for a device meanwhile, and its publish
        may reach the broker before ours: after the acknowledgements, re-read the seqs
        and publish the newer envelopes again, for a few rounds.
        """
        outcomes: dict[str, Outcome] = dict(envelopes)
        pending = dict(envelopes)
        for _ in range(MAX_CONVERGE_ROUNDS):
            ids = list(pending)
            started = time.perf_counter()
            errors = self._publisher.publish_retained_many(
                [(device_topic(d, Channel.DESIRED), pending[d].to_bytes()) for d in ids]
            )
            if self._metrics is not None:
                failed = sum(e is not None for e in errors)
                self._metrics.record(time.perf_counter() - started, len(ids) - failed, failed)
            acknowledged = []
            for device_id, error in zip(ids, errors, strict=True):
                if error is None:
                    acknowledged.append(device_id)
                else:
                    outcomes[device_id] = error
            latest = self.current_many(acknowledged)
            pending = {
                d: latest[d]
                for d in acknowledged
                if d in latest and latest[d].signed.seq > pending[d].signed.seq
            }
            if not pending:
                return outcomes
        logger.warning("desired states of %s kept changing while publishing", sorted(pending))
        return outcomes


def _table() -> Any:
    return DesiredStateRow.__table__  # type: ignore[attr-defined]


def _chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _next_seqs(conn: Connection, device_ids: Sequence[str], now: datetime) -> dict[str, int]:
    table = _table()
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    # The insert takes the write lock (SQLite) or the row locks (PostgreSQL, by the
    # update below) first, so the read-increment cannot race another replica.
    conn.execute(
        insert(table).on_conflict_do_nothing(index_elements=["device_id"]),
        [
            {"device_id": d, "seq": 0, "body": {}, "envelope": {}, "updated_at": now}
            for d in device_ids
        ],
    )
    seqs: dict[str, int] = {}
    for chunk in _chunks(device_ids):
        rows = conn.execute(
            update(table)
            .where(table.c.device_id.in_(chunk))
            .values(seq=table.c.seq + 1)
            .returning(table.c.device_id, table.c.seq)
        )
        seqs.update({device_id: int(seq) for device_id, seq in rows})
    return seqs


def _store(
    conn: Connection,
    envelopes: Mapping[str, SignedDesiredState],
    rollout_id: str | None,
    now: datetime,
) -> None:
    table = _table()
    conn.execute(
        update(table)
        .where(table.c.device_id == bindparam("key"))
        .values(
            body=bindparam("new_body"),
            envelope=bindparam("new_envelope"),
            rollout_id=rollout_id,
            updated_at=now,
        ),
        [
            {
                "key": device_id,
                "new_body": envelope.signed.model_dump(mode="json", by_alias=True),
                "new_envelope": envelope.to_dict(),
            }
            for device_id, envelope in envelopes.items()
        ],
    )
