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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from fleet.errors import FleetError, InvalidRequestError, NotFoundError
from fleet.store.tables import DesiredStateRow
from shared.messages import utcnow
from shared.signing.director import DesiredBody, DesiredTarget, SignedDesiredState, sign_desired
from shared.signing.tufapi import Signer
from shared.topics import Channel, TopicError, device_topic, validate_device_id

logger = logging.getLogger(__name__)

MAX_CONVERGE_ROUNDS = 5


class PublishError(FleetError):
    """The desired state is stored but the broker did not acknowledge it."""

    code = "publish_failed"


class DesiredPublisher(Protocol):
    """Publishes a retained QoS 1 message and returns once the broker acknowledged it."""

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """Raises `PublishError` if the broker did not acknowledge in time."""
        ...


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
    ) -> None:
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
    ) -> SignedDesiredState:
        """Sign, store and publish (retained) a new desired state for ``device_id``.

        Raises `InvalidRequestError` for a bad device id, `PublishError` if the
        broker does not acknowledge (the state is stored with its seq; `republish` or a
        later assign delivers it).
        """
        try:
            validate_device_id(device_id)
        except TopicError as e:
            raise InvalidRequestError(str(e)) from e
        now = self._clock()
        expires = timedelta(seconds=expires_in_s or self._default_expires_s)
        with self._engine.begin() as conn:
            seq = _next_seq(conn, device_id, now)
            body = DesiredBody(
                device_id=device_id,
                seq=seq,
                target=target,
                expires_at=now + expires,
                rollout_id=rollout_id,
                rollback=rollback,
                issued_at=now,
            )
            envelope = sign_desired(body, self._signer)
            conn.execute(
                update(DesiredStateRow)
                .where(DesiredStateRow.device_id == device_id)  # type: ignore[arg-type]
                .values(
                    body=body.model_dump(mode="json", by_alias=True),
                    envelope=envelope.to_dict(),
                    rollout_id=rollout_id,
                    updated_at=now,
                )
            )
        logger.info(
            "desired seq %s for %s: %s%s", seq, device_id, target.name, " (rollback)" * rollback
        )
        try:
            self._publish_converged(device_id, envelope)
        except PublishError as e:
            raise PublishError(
                f"desired seq {seq} for {device_id} is stored but not published ({e});"
                " it is delivered by the next assign or republish"
            ) from e
        return envelope

    def current(self, device_id: str) -> SignedDesiredState:
        """The device's stored desired state; raises `NotFoundError` if it has none."""
        with Session(self._engine) as session:
            row = session.get(DesiredStateRow, device_id)
            if row is None or not row.envelope:
                raise NotFoundError(f"device {device_id!r} has no desired state")
            return SignedDesiredState.model_validate(row.envelope)

    def republish(self, device_id: str) -> SignedDesiredState:
        """Publish the stored desired state again; raises `NotFoundError`, `PublishError`."""
        envelope = self.current(device_id)
        self._publish_converged(device_id, envelope)
        return envelope

    def _publish_converged(self, device_id: str, envelope: SignedDesiredState) -> None:
        topic = device_topic(device_id, Channel.DESIRED)
        for _ in range(MAX_CONVERGE_ROUNDS):
            self._publisher.publish_retained(topic, envelope.to_bytes())
            latest = self.current(device_id)
            if latest.signed.seq <= envelope.signed.seq:
                return
            # A newer state was stored meanwhile; its publish may have reached the broker
            # before ours, so make sure the retained message is the newest.
            envelope = latest
        logger.warning("desired state of %s kept changing while publishing", device_id)


def _next_seq(conn: Connection, device_id: str, now: datetime) -> int:
    table: Any = DesiredStateRow.__table__  # type: ignore[attr-defined]
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    # The insert takes the write lock first, so the read-increment below cannot race.
    conn.execute(
        insert(table)
        .values(device_id=device_id, seq=0, body={}, envelope={}, updated_at=now)
        .on_conflict_do_nothing(index_elements=["device_id"])
    )
    seq: int = conn.execute(
        update(table)
        .where(table.c.device_id == device_id)
        .values(seq=table.c.seq + 1)
        .returning(table.c.seq)
    ).scalar_one()
    return seq
