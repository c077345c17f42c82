"""Enrollment tokens, enrollment, renewal and revocation over the database and the CA.

The I/O shell of `edgefleet.fleet.identity.enrollment`: each operation loads the rows,
asks the pure rules, signs with the `edgefleet.fleet.identity.ca.DeviceCA`, writes the
rows and appends one audit entry, last, in the same transaction. The operator's
`Caller` is the actor of token creation and revocation; the device itself (actor kind
``device``) of its enrollment and renewals.

A token is used by a conditional UPDATE (``used_at IS NULL``), so of two requests racing
with one token exactly one enrolls. In password mode (``broker_passwords``) enrollment
also makes the device's broker password, returned once and stored as its Mosquitto hash;
revocation deletes it. The CRL file is rewritten after each revocation
commits and when the CA is first opened; ``GET /v1/identity/crl`` builds it afresh.

Errors, mapped to HTTP by the app: `IdentityRefusedError` (401: unknown, used or
expired token; not the current certificate), `IdentityKeyMismatchError` (403: the key
or device id is not the one pre-authorised), `IdentityConflictError` (409: the state
does not allow it), `InvalidRequestError` (422: a bad CSR or certificate),
`NotFoundError` (404), `IdentityUnavailableError` (503: the CA cannot be opened).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography.x509.oid import NameOID
from sqlalchemy import CursorResult, Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from edgefleet.fleet.audit.entry import AuditActor, AuditObject, AuditRecord
from edgefleet.fleet.audit.log import append
from edgefleet.fleet.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from edgefleet.fleet.identity import enrollment as rules
from edgefleet.fleet.identity.broker_passwords import mosquitto_hash, new_broker_password
from edgefleet.fleet.identity.ca import (
    CaUnavailableError,
    CsrInfo,
    CsrRejectedError,
    DeviceCA,
    IssuedCertificate,
    new_serial,
    not_after,
    parse_csr,
    serial_hex,
)
from edgefleet.fleet.identity.enrollment import EnrollmentRefused, Identity, IdentityState
from edgefleet.fleet.registry import ConflictError, UpdatesDisabledError
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.identity_tables import (
    BrokerPasswordRow,
    DeviceIdentityRow,
    EnrollmentTokenRow,
)
from edgefleet.shared.identity import EnrollRequest, IssuedIdentity, RenewRequest, key_fingerprint
from edgefleet.shared.messages import utcnow

logger = logging.getLogger(__name__)

TOKEN_SCHEME = "efe_"  # noqa: S105  (the enrollment tokens' visible scheme)
CA_DIR_NAME = "device-ca"


class IdentityRefusedError(AuthenticationError):
    """The enrollment token or the presented certificate does not let the device in."""

    code = "enrollment_refused"


class IdentityKeyMismatchError(PermissionDeniedError):
    """The CSR's key or device id is not the one the token or identity pre-authorised."""

    code = "key_mismatch"


class IdentityConflictError(ConflictError):
    """The device's identity state does not allow the operation."""

    code = "identity_conflict"


class IdentityUnavailableError(UpdatesDisabledError):
    """The device CA cannot be opened or created (no or wrong passphrase, bad file)."""

    code = "identity_unavailable"


class Recorder(Protocol):
    """Makes the audit record of an action (`edgefleet.fleet.api.deps.Caller.record`)."""

    def __call__(
        self,
        action: str,
        kind: str,
        object_id: str,
        *,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> AuditRecord: ...


def device_recorder(device_id: str, *, request_id: str | None, source: str | None) -> Recorder:
    """A `Recorder` whose actor is the device ``device_id`` itself."""
    actor = AuditActor(kind="device", id=device_id, name=device_id)

    def record(
        action: str,
        kind: str,
        object_id: str,
        *,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> AuditRecord:
        return AuditRecord(
            actor=actor,
            action=action,
            object=AuditObject(kind=kind, id=object_id),
            request_id=request_id,
            source=source,
            before=before,
            after=after,
        )

    return record


def identity_service_for(
    settings: FleetSettings, engine: Engine, *, on_change: Callable[[], None] | None = None
) -> IdentityService:
    """The `IdentityService` the settings describe (CA dir, passphrase from the
    environment, certificate lifetime, broker passwords in password mode)."""
    from edgefleet.fleet.keys import passphrase_from_env

    return IdentityService(
        engine,
        ca_directory(settings.keys_dir, settings.data_dir),
        passphrase=passphrase_from_env(),
        allow_unencrypted=settings.lab_mode,
        cert_lifetime=timedelta(days=settings.device_cert_lifetime_days),
        broker_passwords=settings.broker_device_auth == "password",
        on_change=on_change,
    )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ca_directory(keys_dir: Path | None, data_dir: Path) -> Path:
    """Where the device CA lives: beside the signing keys, else in the data dir."""
    return (keys_dir if keys_dir is not None else data_dir) / CA_DIR_NAME


@dataclass(frozen=True)
class NewToken:
    """A created token: its plaintext (shown once) and its row."""

    token: str
    row: EnrollmentTokenRow


class IdentityService:
    """Identity operations of one fleet replica; the CA is opened on first use."""

    def __init__(
        self,
        engine: Engine,
        ca_dir: Path,
        *,
        passphrase: bytes | None,
        allow_unencrypted: bool,
        cert_lifetime: timedelta,
        broker_passwords: bool = False,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """``broker_passwords``: enrollment also makes the device a broker password (the
        fleet's ``broker_device_auth`` ``password``); ``on_change`` is called after an
        enrollment or revocation commits (the broker files keeper wakes on it)."""
        self.engine = engine
        self.broker_passwords = broker_passwords
        self._on_change = on_change
        self.ca_dir = ca_dir
        self._passphrase = passphrase
        self._allow_unencrypted = allow_unencrypted
        self.cert_lifetime = cert_lifetime
        self.clock = clock
        self._ca: DeviceCA | None = None
        self._lock = threading.Lock()

    def ca(self) -> DeviceCA:
        """The device CA, created on first use; raises `IdentityUnavailableError`."""
        with self._lock:
            if self._ca is None:
                try:
                    ca = DeviceCA.open_or_create(
                        self.ca_dir,
                        self._passphrase,
                        allow_unencrypted=self._allow_unencrypted,
                        now=self.clock(),
                    )
                except (CaUnavailableError, OSError) as e:
                    raise IdentityUnavailableError(f"the device CA is unavailable: {e}") from e
                with Session(self.engine) as session:
                    ca.write_crl(revoked_serials(session), now=self.clock())
                self._ca = ca
            return self._ca

    # --- tokens ---------------------------------------------------------------------------

    def create_token(
        self,
        session: Session,
        record: Recorder,
        *,
        created_by: str,
        ttl: timedelta,
        device_id: str | None = None,
        key_fingerprint: str | None = None,
    ) -> NewToken:
        """A one-time token; naming ``device_id`` also makes (or updates) its pending
        identity, pre-authorising ``key_fingerprint`` when given.

        Raises `IdentityConflictError` for a device id that is active or revoked.
        """
        now = self.clock()
        token = f"{TOKEN_SCHEME}{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"
        row = EnrollmentTokenRow(
            id=secrets.token_hex(8),
            prefix=token[: len(TOKEN_SCHEME) + 8],
            token_sha256=hash_token(token),
            device_id=device_id,
            key_fingerprint=key_fingerprint,
            created_at=now,
            created_by=created_by,
            expires_at=now + ttl,
        )
        before = None
        if device_id is not None:
            identity_row = session.get(DeviceIdentityRow, device_id)
            current = _identity(identity_row) if identity_row else None
            before = _public(current)
            try:
                pending = rules.pre_authorise(current, device_id, key_fingerprint)
            except EnrollmentRefused as e:
                raise _converted(e) from None
            session.add(_store(identity_row, pending, now))
        session.add(row)
        append(
            session,
            record(
                "enrollment_token.create",
                "enrollment_token",
                row.id,
                before=before,
                after={
                    "prefix": row.prefix,
                    "device_id": device_id,
                    "key_fingerprint": key_fingerprint,
                    "expires_at": row.expires_at.isoformat(),
                },
            ),
        )
        session.commit()
        session.refresh(row)
        return NewToken(token=token, row=row)

    # --- enrollment and renewal -----------------------------------------------------------

    def enroll(
        self,
        session: Session,
        request: EnrollRequest,
        *,
        request_id: str | None,
        source: str | None,
    ) -> IssuedIdentity:
        """Issue the device named by the CSR its certificate, consuming the token.

        Raises `InvalidRequestError` for a bad CSR, `IdentityRefusedError`,
        `IdentityKeyMismatchError`, `IdentityConflictError` and `IdentityUnavailableError`.
        """
        csr = _parsed(request.csr_pem)
        ca = self.ca()
        now = self.clock()
        token_row = session.exec(
            select(EnrollmentTokenRow).where(
                col(EnrollmentTokenRow.token_sha256) == hash_token(request.token)
            )
        ).first()
        identity_row = session.get(DeviceIdentityRow, csr.device_id)
        current = _identity(identity_row) if identity_row else None
        # Decided before anything is signed: a refused request costs no signature.
        serial = new_serial()
        try:
            active = rules.enroll(
                _token_view(token_row) if token_row else None,
                current,
                device_id=csr.device_id,
                key_fingerprint=csr.key_fingerprint,
                serial=serial_hex(serial),
                not_after=not_after(now, self.cert_lifetime),
                now=now,
            )
        except EnrollmentRefused as e:
            logger.warning("enrollment of %s refused: %s", csr.device_id, e)
            raise _converted(e) from None
        assert token_row is not None  # rules.enroll refuses a missing token
        used: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            update(EnrollmentTokenRow)
            .where(col(EnrollmentTokenRow.id) == token_row.id)
            .where(col(EnrollmentTokenRow.used_at).is_(None))
            .values(used_at=now, used_by_device=csr.device_id)
        )
        if used.rowcount != 1:
            session.rollback()
            raise IdentityRefusedError("the enrollment token was used already")
        issued = ca.sign(csr, lifetime=self.cert_lifetime, now=now, serial=serial)
        session.add(_store(identity_row, active, now))
        password = self._new_broker_password(session, csr.device_id, now)
        record = device_recorder(csr.device_id, request_id=request_id, source=source)
        append(
            session,
            record(
                "identity.enroll",
                "device",
                csr.device_id,
                before=_public(current),
                after=_state(active)
                | {"token_prefix": token_row.prefix, "broker_password": password is not None},
            ),
        )
        self._commit(session, csr.device_id)
        logger.info("device %s enrolled (certificate %s)", csr.device_id, issued.serial)
        self._changed()
        return _issued(ca, csr.device_id, issued, broker_password=password)

    def renew(
        self, session: Session, request: RenewRequest, *, request_id: str | None, source: str | None
    ) -> IssuedIdentity:
        """A new certificate for the same key, over the device's current certificate.

        The proof: the certificate is this CA's, valid now and the identity's current
        one, and the CSR (self-signed, so signed by the key) is for that certificate's
        key. Raises as `enroll` does.
        """
        ca = self.ca()
        now = self.clock()
        try:
            presented = ca.check_issued(request.certificate_pem, now=now)
        except CsrRejectedError as e:
            raise IdentityRefusedError(f"bad current certificate: {e}") from None
        csr = _parsed(request.csr_pem)
        if key_fingerprint(presented.public_key()) != csr.key_fingerprint:
            raise IdentityKeyMismatchError("the CSR is not signed by the certificate's key")
        names = presented.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [csr.device_id]:
            raise IdentityKeyMismatchError("the CSR's CN is not the certificate's")
        identity_row = session.get(DeviceIdentityRow, csr.device_id)
        current = _identity(identity_row) if identity_row else None
        serial = new_serial()
        try:
            renewed = rules.renew(
                current,
                presented_serial=serial_hex(presented.serial_number),
                key_fingerprint=csr.key_fingerprint,
                serial=serial_hex(serial),
                not_after=not_after(now, self.cert_lifetime),
                now=now,
            )
        except EnrollmentRefused as e:
            logger.warning("renewal of %s refused: %s", csr.device_id, e)
            raise _converted(e) from None
        issued = ca.sign(csr, lifetime=self.cert_lifetime, now=now, serial=serial)
        row = _store(identity_row, renewed, now)
        row.renewed_at = now
        session.add(row)
        record = device_recorder(csr.device_id, request_id=request_id, source=source)
        append(
            session,
            record(
                "identity.renew",
                "device",
                csr.device_id,
                before=_public(current),
                after=_public(renewed),
            ),
        )
        self._commit(session, csr.device_id)
        logger.info("device %s renewed (certificate %s)", csr.device_id, issued.serial)
        return _issued(ca, csr.device_id, issued)

    # --- revocation and the CRL -----------------------------------------------------------

    def revoke(
        self, session: Session, device_id: str, record: Recorder, *, by: str, reason: str
    ) -> DeviceIdentityRow:
        """Revoke the device's identity for good and rewrite the CRL file.

        Raises `NotFoundError` for an unknown device id, `IdentityConflictError` for one
        revoked already.
        """
        now = self.clock()
        row = session.get(DeviceIdentityRow, device_id)
        if row is None:
            raise NotFoundError(f"no identity for device {device_id!r}")
        current = _identity(row)
        try:
            revoked = rules.revoke(current, by=by, reason=reason, now=now)
        except EnrollmentRefused as e:
            raise _converted(e) from None
        session.add(_store(row, revoked, now))
        password_row = session.get(BrokerPasswordRow, device_id)
        if password_row is not None:
            session.delete(password_row)
        append(
            session,
            record(
                "identity.revoke",
                "device",
                device_id,
                before=_public(current),
                after=_state(revoked) | {"reason": reason},
            ),
        )
        session.commit()
        session.refresh(row)
        logger.info("device %s revoked by %s: %s", device_id, by, reason)
        try:
            self.ca().write_crl(revoked_serials(session), now=now)
        except (IdentityUnavailableError, OSError) as e:  # the CRL route still serves it
            logger.warning("revoked %s but could not rewrite the CRL file: %s", device_id, e)
        self._changed()
        return row

    def crl_pem(self, session: Session) -> bytes:
        """The CRL as it stands now; raises `IdentityUnavailableError`."""
        return self.ca().crl(revoked_serials(session), now=self.clock())

    def _new_broker_password(self, session: Session, device_id: str, now: datetime) -> str | None:
        """In password mode, a fresh broker password for the device (its hash stored; a
        re-enrollment replaces the old one), else None."""
        if not self.broker_passwords:
            return None
        password = new_broker_password()
        row = session.get(BrokerPasswordRow, device_id) or BrokerPasswordRow(
            device_id=device_id, password_hash="", created_at=now
        )
        row.password_hash = mosquitto_hash(password)
        row.created_at = now
        session.add(row)
        return password

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:  # the change is committed; the keeper's timer catches up
                logger.exception("the identity change hook failed")

    def _commit(self, session: Session, device_id: str) -> None:
        try:
            session.commit()
        except IntegrityError:  # another request enrolled the same id at the same time
            session.rollback()
            raise IdentityConflictError(f"device {device_id!r} enrolled concurrently") from None


def _parsed(csr_pem: str) -> CsrInfo:
    try:
        return parse_csr(csr_pem)
    except CsrRejectedError as e:
        raise InvalidRequestError(f"bad CSR: {e}") from None


def _converted(error: EnrollmentRefused) -> Exception:
    message = f"{error} ({error.reason.value})"
    if error.reason in rules.CREDENTIAL_REFUSALS:
        return IdentityRefusedError(message)
    if error.reason in rules.KEY_REFUSALS:
        return IdentityKeyMismatchError(message)
    return IdentityConflictError(message)


def revoked_serials(session: Session) -> list[tuple[str, datetime]]:
    """(hex serial, revocation time) of every revoked certificate: what the CRL lists."""
    rows = session.exec(
        select(DeviceIdentityRow)
        .where(col(DeviceIdentityRow.state) == IdentityState.REVOKED.value)
        .where(col(DeviceIdentityRow.cert_serial).is_not(None))
    ).all()
    return [(r.cert_serial, r.revoked_at or r.created_at) for r in rows if r.cert_serial]


def _token_view(row: EnrollmentTokenRow) -> rules.TokenView:
    return rules.TokenView(
        expires_at=row.expires_at,
        used_at=row.used_at,
        device_id=row.device_id,
        key_fingerprint=row.key_fingerprint,
    )


def _identity(row: DeviceIdentityRow) -> Identity:
    return Identity(
        device_id=row.device_id,
        state=IdentityState(row.state),
        key_fingerprint=row.key_fingerprint,
        serial=row.cert_serial,
        not_after=row.not_after,
        enrolled_at=row.enrolled_at,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
        revoke_reason=row.revoke_reason,
    )


def _store(row: DeviceIdentityRow | None, identity: Identity, now: datetime) -> DeviceIdentityRow:
    row = row or DeviceIdentityRow(
        device_id=identity.device_id, state=identity.state.value, created_at=now
    )
    row.state = identity.state.value
    row.key_fingerprint = identity.key_fingerprint
    row.cert_serial = identity.serial
    row.not_after = identity.not_after
    row.enrolled_at = identity.enrolled_at
    row.revoked_at = identity.revoked_at
    row.revoked_by = identity.revoked_by
    row.revoke_reason = identity.revoke_reason
    return row


def _public(identity: Identity | None) -> dict[str, Any] | None:
    return None if identity is None else _state(identity)


def _state(identity: Identity) -> dict[str, Any]:
    return {
        "state": identity.state.value,
        "serial": identity.serial,
        "key_fingerprint": identity.key_fingerprint,
        "not_after": identity.not_after.isoformat() if identity.not_after else None,
    }


def _issued(
    ca: DeviceCA, device_id: str, issued: IssuedCertificate, *, broker_password: str | None = None
) -> IssuedIdentity:
    return IssuedIdentity(
        broker_password=broker_password,
        device_id=device_id,
        certificate_pem=issued.pem,
        ca_pem=ca.certificate_pem,
        serial=issued.serial,
        not_after=issued.not_after,
        key_fingerprint=issued.key_fingerprint,
    )
