"""Device identity over REST: enrollment tokens, enrollment, renewal, revocation, CA, CRL.

Who may call what:

- ``POST /v1/enrollment-tokens`` needs ``device:enroll``; the token is in this answer
  only. Naming a device id (and a key fingerprint) pre-authorises that device;
- ``GET /v1/identities[/{id}]`` needs ``device:read``;
- ``POST /v1/identities/{id}/revoke`` needs ``device:enroll``: who may let a device in
  may shut it out, so an operator answers a stolen device without waiting for an admin;
- ``POST /v1/enroll`` is public: the enrollment token in the body is its credential;
- ``POST /v1/identity/renew`` is public: the device's current certificate (this CA's,
  valid, its current serial, not revoked) and a CSR signed by that certificate's key are
  its credential. A renewal keeps the key; a new key needs a new enrollment token;
- ``GET /v1/identity/ca.pem`` and ``GET /v1/identity/crl`` are public: a CA certificate
  and a CRL are meant to be read by anyone (brokers, devices).

The request guard (`edgefleet.fleet.api.guard`) lets the two public POSTs through without
an API token; their bodies are still capped and every field is bounded.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlmodel import col, select

from edgefleet.fleet.api.bounds import Offset
from edgefleet.fleet.api.deps import Caller, SessionDep, context_of, public_route, require
from edgefleet.fleet.errors import NotFoundError
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.identity.enrollment import IdentityState
from edgefleet.fleet.identity.service import IdentityService, identity_service_for
from edgefleet.fleet.store.identity_tables import DeviceIdentityRow
from edgefleet.shared.identity import (
    FINGERPRINT_PATTERN,
    SERIAL_PATTERN,
    EnrollRequest,
    IssuedIdentity,
    RenewRequest,
)
from edgefleet.shared.topics import DEVICE_ID_PATTERN

router = APIRouter(prefix="/v1", tags=["identity"])

Enroller = Annotated[Caller, Depends(require(Permission.DEVICE_ENROLL))]
DeviceReader = Annotated[Caller, Depends(require(Permission.DEVICE_READ))]
Public = Depends(public_route)
DeviceId = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, description="the device's id")]

MIN_TOKEN_TTL_S = 60
MAX_TOKEN_TTL_S = 30 * 86_400
PEM_MEDIA_TYPE = "application/x-pem-file"

_SERVICE_LOCK = threading.Lock()


def identity_service(request: Request) -> IdentityService:
    """The app's `IdentityService`, made on first use (the CA opens lazily inside it)."""
    state = request.app.state
    with _SERVICE_LOCK:
        service: IdentityService | None = getattr(state, "identity", None)
        if service is None:
            context = context_of(request)
            service = identity_service_for(context.settings, context.engine)
            state.identity = service
    return service


ServiceDep = Annotated[IdentityService, Depends(identity_service)]


class TokenCreate(BaseModel):
    """An enrollment token to make; a device id and key fingerprint pre-authorise."""

    model_config = ConfigDict(extra="forbid")

    device_id: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)
    key_fingerprint: str | None = Field(
        default=None,
        pattern=FINGERPRINT_PATTERN,
        description="sha256:<hex of the DER public key>; only this key may enroll",
    )
    expires_in_s: int = Field(default=86_400, ge=MIN_TOKEN_TTL_S, le=MAX_TOKEN_TTL_S)

    @model_validator(mode="after")
    def _fingerprint_needs_device(self) -> TokenCreate:
        if self.key_fingerprint is not None and self.device_id is None:
            raise ValueError("key_fingerprint pre-authorises a device: name its device_id")
        return self


class TokenCreated(BaseModel):
    """A new enrollment token: the only answer that ever shows it."""

    token: str = Field(max_length=128)
    prefix: str = Field(max_length=32)
    expires_at: datetime
    device_id: str | None = Field(default=None, max_length=128)
    key_fingerprint: str | None = Field(default=None, max_length=80)


class IdentityPublic(BaseModel):
    """A device's identity as REST shows it."""

    device_id: str = Field(max_length=128)
    state: IdentityState
    cert_serial: str | None = Field(default=None, pattern=SERIAL_PATTERN)
    not_after: datetime | None = None
    key_fingerprint: str | None = Field(default=None, max_length=80)
    created_at: datetime
    enrolled_at: datetime | None = None
    renewed_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = Field(default=None, max_length=200)
    revoke_reason: str | None = Field(default=None, max_length=500)


class IdentityPage(BaseModel):
    items: list[IdentityPublic]


class RevokeRequest(BaseModel):
    """Why a device is revoked (kept on the identity and in the audit log)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


def _public(row: DeviceIdentityRow) -> IdentityPublic:
    return IdentityPublic.model_validate(row.model_dump())


@router.post("/enrollment-tokens", response_model=TokenCreated, status_code=201)
def create_enrollment_token(
    session: SessionDep, service: ServiceDep, caller: Enroller, body: TokenCreate
) -> TokenCreated:
    """A one-time enrollment token (shown only here); 409 for an id active or revoked."""
    created = service.create_token(
        session,
        caller.record,
        created_by=caller.principal.name,
        ttl=timedelta(seconds=body.expires_in_s),
        device_id=body.device_id,
        key_fingerprint=body.key_fingerprint,
    )
    row = created.row
    return TokenCreated(
        token=created.token,
        prefix=row.prefix,
        expires_at=row.expires_at,
        device_id=row.device_id,
        key_fingerprint=row.key_fingerprint,
    )


@router.get("/identities", response_model=IdentityPage)
def list_identities(
    session: SessionDep,
    _caller: DeviceReader,
    state: IdentityState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> IdentityPage:
    """Device identities ordered by device id, of one state if given."""
    query = select(DeviceIdentityRow)
    if state is not None:
        query = query.where(col(DeviceIdentityRow.state) == state.value)
    rows = session.exec(
        query.order_by(col(DeviceIdentityRow.device_id)).offset(offset).limit(limit)
    )
    return IdentityPage(items=[_public(r) for r in rows.all()])


@router.get("/identities/{device_id}", response_model=IdentityPublic)
def get_identity(session: SessionDep, _caller: DeviceReader, device_id: DeviceId) -> IdentityPublic:
    """One device's identity; 404 if it was never named nor enrolled."""
    row = session.get(DeviceIdentityRow, device_id)
    if row is None:
        raise NotFoundError(f"no identity for device {device_id!r}")
    return _public(row)


@router.post("/identities/{device_id}/revoke", response_model=IdentityPublic)
def revoke_identity(
    session: SessionDep,
    service: ServiceDep,
    caller: Enroller,
    device_id: DeviceId,
    body: RevokeRequest,
) -> IdentityPublic:
    """Revoke the device for good; its certificate goes on the CRL. 409 if revoked."""
    row = service.revoke(
        session, device_id, caller.record, by=caller.principal.name, reason=body.reason
    )
    return _public(row)


@router.post("/enroll", response_model=IssuedIdentity, dependencies=[Public])
def enroll(
    request: Request, session: SessionDep, service: ServiceDep, body: EnrollRequest
) -> IssuedIdentity:
    """Enroll a device: its CSR (CN = device id) signed, the one-time token consumed."""
    return service.enroll(session, body, **_origin(request))


@router.post("/identity/renew", response_model=IssuedIdentity, dependencies=[Public])
def renew(
    request: Request, session: SessionDep, service: ServiceDep, body: RenewRequest
) -> IssuedIdentity:
    """A new certificate for the same key, proven by the current certificate and a CSR."""
    return service.renew(session, body, **_origin(request))


@router.get(
    "/identity/ca.pem",
    dependencies=[Public],
    response_class=Response,
    responses={200: {"content": {PEM_MEDIA_TYPE: {}}, "description": "PEM certificate"}},
)
def ca_certificate(service: ServiceDep) -> Response:
    """The device CA's certificate (PEM)."""
    return Response(service.ca().certificate_pem, media_type=PEM_MEDIA_TYPE)


@router.get(
    "/identity/crl",
    dependencies=[Public],
    response_class=Response,
    responses={200: {"content": {PEM_MEDIA_TYPE: {}}, "description": "PEM CRL"}},
)
def crl(session: SessionDep, service: ServiceDep) -> Response:
    """The CRL of revoked device certificates (PEM), built now."""
    return Response(service.crl_pem(session), media_type=PEM_MEDIA_TYPE)


def _origin(request: Request) -> dict[str, str | None]:
    client = request.client
    return {
        "request_id": getattr(request.state, "request_id", None),
        "source": client.host[:64] if client else None,
    }
