"""``/v1/drift``, ``/v1/alerts`` and ``/v1/webhooks``: drift of any slice, alerts, hooks.

Reading needs any API token; changing thresholds, references and webhooks needs an
operator. Errors are domain errors mapped by the app's handler: an unknown model is
404, a bad time range or bad thresholds 422.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from edgefleet.fleet.api.deps import Caller, SessionDep, SettingsDep, require
from edgefleet.fleet.audit.log import append
from edgefleet.fleet.drift.alerts import AlertKind
from edgefleet.fleet.drift.analysis import (
    SliceMetrics,
    SliceScores,
    TimeSeries,
    slice_metrics,
    slice_scores,
    time_series,
)
from edgefleet.fleet.drift.rollup import SliceFilter, WindowRecord
from edgefleet.fleet.drift.store import (
    get_reference,
    get_thresholds,
    known_model,
    load_windows,
    new_id,
    profile_feature_names,
    put_reference,
    put_thresholds,
)
from edgefleet.fleet.errors import InvalidRequestError, NotFoundError
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.store.drift_tables import (
    AlertAck,
    DriftAlert,
    DriftAlertPublic,
    Webhook,
    WebhookDelivery,
    WebhookDeliveryPublic,
    WebhookPublic,
    WebhookSecret,
)
from edgefleet.fleet.webhooks.policy import DestinationRefusedError
from edgefleet.fleet.webhooks.signing import new_secret
from edgefleet.fleet.webhooks.transport import destination_policy
from edgefleet.shared.drift import DriftThresholds, ReferenceProfile
from edgefleet.shared.manifest import NAME_PATTERN
from edgefleet.shared.messages import utcnow
from edgefleet.shared.topics import DEVICE_ID_PATTERN

router = APIRouter(prefix="/v1", tags=["drift"])

AlertReader = Annotated[Caller, Depends(require(Permission.ALERT_READ))]
DriftManager = Annotated[Caller, Depends(require(Permission.DRIFT_MANAGE))]
WebhookManager = Annotated[Caller, Depends(require(Permission.WEBHOOK_MANAGE))]
AlertAcker = Annotated[Caller, Depends(require(Permission.ALERT_ACK))]

ModelName = Annotated[str, Query(pattern=NAME_PATTERN, description="model name")]
Version = Annotated[str, Query(min_length=1, max_length=64, description="model version")]
Since = Annotated[
    datetime | None, Query(description="ISO 8601 (UTC without an offset); windows ending after it")
]
Until = Annotated[
    datetime | None,
    Query(description="ISO 8601 (UTC without an offset); windows starting before it"),
]


def slice_filter(  # noqa: PLR0917  (FastAPI passes query parameters by keyword)
    model: ModelName,
    version: Version,
    device: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    tag: Annotated[str | None, Query(max_length=200)] = None,
    hardware: Annotated[str | None, Query(max_length=200)] = None,
    since: Since = None,
    until: Until = None,
) -> SliceFilter:
    """The slice the query names; raises `InvalidRequestError` for since >= until."""
    try:
        return SliceFilter(
            model=model,
            version=version,
            device=device,
            tag=tag,
            hardware=hardware,
            since=since,
            until=until,
        )
    except ValidationError as e:
        raise InvalidRequestError(e.errors()[0]["msg"].removeprefix("Value error, ")) from e


SliceDep = Annotated[SliceFilter, Depends(slice_filter)]


def _slice_inputs(
    session: SessionDep, where: SliceFilter
) -> tuple[ReferenceProfile, DriftThresholds, list[WindowRecord]]:
    assert where.model is not None
    assert where.version is not None
    if not known_model(session, where.model):
        raise NotFoundError(f"model {where.model!r} has no reference profile and no drift windows")
    profile = get_reference(session, where.model, where.version)
    return profile, get_thresholds(session, where.model), load_windows(session, where)


def _described(where: SliceFilter) -> dict[str, str]:
    return {k: v for k, v in where.describe().items() if k not in ("model", "version")}


@router.get("/drift/scores", response_model=SliceScores)
def drift_scores(session: SessionDep, where: SliceDep, _caller: AlertReader) -> SliceScores:
    """Per-feature drift scores and data/prediction drift verdicts of the merged slice."""
    profile, thresholds, records = _slice_inputs(session, where)
    return slice_scores(
        records,
        profile,
        thresholds,
        model=where.model or "",
        version=where.version or "",
        where=_described(where),
    )


@router.get("/drift/metrics", response_model=SliceMetrics)
def drift_metrics(session: SessionDep, where: SliceDep, _caller: AlertReader) -> SliceMetrics:
    """Label metrics (accuracy, F1, ROC-AUC, MAE, ...) of the slice against the baseline."""
    profile, thresholds, records = _slice_inputs(session, where)
    return slice_metrics(
        records,
        profile,
        thresholds,
        model=where.model or "",
        version=where.version or "",
        where=_described(where),
    )


@router.get("/drift/timeseries", response_model=TimeSeries)
def drift_timeseries(
    session: SessionDep,
    where: SliceDep,
    _caller: AlertReader,
    bucket_s: Annotated[int, Query(ge=1, le=31 * 86400)] = 3600,
) -> TimeSeries:
    """The slice per time bucket (epoch-aligned, by window start), each judged alone."""
    profile, thresholds, records = _slice_inputs(session, where)
    return time_series(
        records,
        profile,
        thresholds,
        bucket_s=bucket_s,
        model=where.model or "",
        version=where.version or "",
        where=_described(where),
    )


class Acknowledgement(BaseModel):
    """Who acknowledged an alert."""

    by: str = Field(max_length=200)
    at: datetime
    remark: str | None = Field(default=None, max_length=2000)


class AlertView(DriftAlertPublic):
    """An alert, with its acknowledgement if it has one."""

    acknowledged: Acknowledgement | None = None


class AlertPage(BaseModel):
    """Alerts, newest first."""

    items: list[AlertView]


class AckRequest(BaseModel):
    """An acknowledgement's remark."""

    model_config = ConfigDict(extra="forbid")

    remark: str | None = Field(default=None, max_length=2000)


def _alert_view(session: Session, row: DriftAlert) -> AlertView:
    ack = session.get(AlertAck, row.id)
    acknowledged = (
        Acknowledgement(by=ack.acked_by, at=ack.acked_at, remark=ack.remark) if ack else None
    )
    return AlertView.model_validate({**row.model_dump(), "acknowledged": acknowledged})


@router.get("/alerts", response_model=AlertPage)
def list_alerts(
    session: SessionDep,
    _caller: AlertReader,
    since: Since = None,
    kind: AlertKind | None = None,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AlertPage:
    """Alerts raised at or after ``since``, of one kind and model if given."""
    query = select(DriftAlert)
    if since is not None:
        query = query.where(col(DriftAlert.created_at) >= since)
    if kind is not None:
        query = query.where(col(DriftAlert.kind) == kind.value)
    if model is not None:
        query = query.where(col(DriftAlert.model_name) == model)
    rows = session.exec(query.order_by(col(DriftAlert.created_at).desc()).limit(limit)).all()
    return AlertPage(items=[_alert_view(session, r) for r in rows])


@router.post("/alerts/{alert_id}/ack", response_model=AlertView)
def acknowledge_alert(
    session: SessionDep,
    caller: AlertAcker,
    alert_id: Annotated[str, Path(max_length=32)],
    body: AckRequest | None = None,
) -> AlertView:
    """Acknowledge an alert (again: the newest acknowledgement stands); 404 if unknown."""
    row = session.get(DriftAlert, alert_id)
    if row is None:
        raise NotFoundError(f"no alert {alert_id!r}")
    caller.principal.require(
        Permission.ALERT_ACK, model=row.model_name, what=f"model {row.model_name!r}"
    )
    ack = session.get(AlertAck, alert_id)
    before = {"by": ack.acked_by} if ack else None
    ack = ack or AlertAck(alert_id=alert_id, acked_by="", acked_at=utcnow())
    ack.acked_by, ack.acked_at = caller.principal.name, utcnow()
    ack.remark = body.remark if body else None
    session.add(ack)
    append(
        session,
        caller.record("alert.ack", "alert", alert_id, before=before, after={"remark": ack.remark}),
    )
    session.commit()
    return _alert_view(session, row)


def check_thresholds(thresholds: DriftThresholds, features: set[str]) -> None:
    """Raise `InvalidRequestError` for an override of a feature that no reference profile
    of the model has (the schema itself bounds every limit and p-value)."""
    unknown = sorted(set(thresholds.features) - features) if features else []
    if unknown:
        raise InvalidRequestError(
            f"bad thresholds: no such feature in the model's profiles: {unknown}"
        )


@router.get("/drift/thresholds/{model}", response_model=DriftThresholds)
def get_model_thresholds(
    session: SessionDep, _caller: AlertReader, model: Annotated[str, Path(pattern=NAME_PATTERN)]
) -> DriftThresholds:
    """The model's thresholds (library defaults where it has no overrides)."""
    if not known_model(session, model):
        raise NotFoundError(f"model {model!r} has no reference profile and no drift windows")
    return get_thresholds(session, model)


@router.put("/drift/thresholds/{model}", response_model=DriftThresholds)
def put_model_thresholds(
    session: SessionDep,
    caller: DriftManager,
    model: Annotated[str, Path(pattern=NAME_PATTERN)],
    thresholds: DriftThresholds,
) -> DriftThresholds:
    """Replace the model's thresholds (all versions); per-feature overrides included."""
    if not known_model(session, model):
        raise NotFoundError(f"model {model!r} has no reference profile and no drift windows")
    check_thresholds(thresholds, profile_feature_names(session, model))
    caller.principal.require(Permission.DRIFT_MANAGE, model=model, what=f"model {model!r}")
    put_thresholds(
        session,
        model,
        thresholds,
        by=caller.principal.name,
        audit=caller.record("drift.thresholds.put", "model", model),
    )
    return get_thresholds(session, model)


class ReferenceStored(BaseModel):
    """The answer to registering a reference profile."""

    model: str
    version: str
    profile_id: str


@router.put("/drift/reference/{model}/{version}", response_model=ReferenceStored)
def put_reference_route(  # noqa: PLR0917  (FastAPI passes parameters by keyword)
    session: SessionDep,
    response: Response,
    caller: DriftManager,
    model: Annotated[str, Path(pattern=NAME_PATTERN)],
    version: Annotated[str, Path(min_length=1, max_length=64)],
    profile: ReferenceProfile,
) -> ReferenceStored:
    """Register (201) or replace (200) a model version's reference profile."""
    caller.principal.require(Permission.DRIFT_MANAGE, model=model, what=f"model {model!r}")
    created = put_reference(
        session,
        model,
        version,
        profile,
        audit=caller.record("drift.reference.put", "model_version", f"{model}/{version}"),
    )
    response.status_code = 201 if created else 200
    return ReferenceStored(model=model, version=version, profile_id=profile.profile_id)


MAX_WEBHOOKS = 100


class WebhookCreate(BaseModel):
    """A webhook to add."""

    url: str = Field(min_length=8, max_length=2000)
    kinds: list[AlertKind] = Field(
        default_factory=list, max_length=20, description="empty: every kind"
    )


class WebhookUpdate(BaseModel):
    """Changes to a webhook; what is left out stays as it is."""

    url: str | None = Field(default=None, min_length=8, max_length=2000)
    kinds: list[AlertKind] | None = Field(default=None, max_length=20)


class WebhookCreated(WebhookPublic):
    """A new webhook with its signing secret: the only answer that ever shows it."""

    secret: str = Field(
        max_length=100,
        description="HMAC-SHA256 key of the X-Edgefleet-Signature header; shown once",
    )


class WebhookSecretRotated(BaseModel):
    """A webhook's new signing secret (the old one stops signing at once)."""

    webhook_id: str = Field(max_length=32)
    secret: str = Field(max_length=100, description="shown once")


class WebhookPage(BaseModel):
    items: list[WebhookPublic]


class DeliveryPage(BaseModel):
    items: list[WebhookDeliveryPublic]


@router.post("/webhooks", response_model=WebhookCreated, status_code=201)
def create_webhook(
    session: SessionDep, settings: SettingsDep, caller: WebhookManager, body: WebhookCreate
) -> WebhookCreated:
    """Add a webhook; raises `InvalidRequestError` (422, with the reason) for a URL the
    destination policy refuses: not http(s), a host outside ``webhook_allowed_hosts``, or
    an internal address outside ``webhook_allowed_networks``. A name is checked again,
    address by address, at every delivery. The answer carries the signing secret, once."""
    try:
        destination_policy(settings).check_url(body.url)
    except DestinationRefusedError as e:
        raise InvalidRequestError(e.reason) from None
    count = session.scalar(sa_select(func.count()).select_from(Webhook)) or 0
    if count >= MAX_WEBHOOKS:
        # Each webhook gets a delivery thread while it has work: keep their number bounded.
        raise InvalidRequestError(f"at most {MAX_WEBHOOKS} webhooks; delete one first")
    row = Webhook(
        id=new_id(),
        url=body.url,
        kinds=[k.value for k in body.kinds],
        created_at=utcnow(),
        created_by=caller.principal.name,
    )
    secret = WebhookSecret(webhook_id=row.id, secret=new_secret(), created_at=row.created_at)
    session.add(row)
    session.add(secret)
    append(
        session,
        caller.record(
            "webhook.create", "webhook", row.id, after={"url": row.url, "kinds": row.kinds}
        ),
    )
    session.commit()
    session.refresh(row)
    return WebhookCreated.model_validate({**row.model_dump(), "secret": secret.secret})


@router.patch("/webhooks/{webhook_id}", response_model=WebhookPublic)
def update_webhook(
    session: SessionDep,
    settings: SettingsDep,
    caller: WebhookManager,
    webhook_id: Annotated[str, Path(max_length=32)],
    body: WebhookUpdate,
) -> WebhookPublic:
    """Change a webhook's URL or kinds (its secret stays); raises `NotFoundError` (404)
    and, for a URL the destination policy refuses, `InvalidRequestError` (422)."""
    row = session.get(Webhook, webhook_id)
    if row is None:
        raise NotFoundError(f"no webhook {webhook_id!r}")
    before = {"url": row.url, "kinds": list(row.kinds)}
    if body.url is not None:
        try:
            destination_policy(settings).check_url(body.url)
        except DestinationRefusedError as e:
            raise InvalidRequestError(e.reason) from None
        row.url = body.url
    if body.kinds is not None:
        row.kinds = [k.value for k in body.kinds]
    session.add(row)
    append(
        session,
        caller.record(
            "webhook.update",
            "webhook",
            row.id,
            before=before,
            after={"url": row.url, "kinds": row.kinds},
        ),
    )
    session.commit()
    session.refresh(row)
    return WebhookPublic.model_validate(row.model_dump())


@router.post("/webhooks/{webhook_id}/secret", response_model=WebhookSecretRotated)
def rotate_webhook_secret(
    session: SessionDep, caller: WebhookManager, webhook_id: Annotated[str, Path(max_length=32)]
) -> WebhookSecretRotated:
    """Give the webhook a new signing secret, shown once; raises `NotFoundError` (404)."""
    if session.get(Webhook, webhook_id) is None:
        raise NotFoundError(f"no webhook {webhook_id!r}")
    secret = session.get(WebhookSecret, webhook_id) or WebhookSecret(
        webhook_id=webhook_id, secret="", created_at=utcnow()
    )
    secret.secret = new_secret()
    secret.created_at = utcnow()
    session.add(secret)
    append(session, caller.record("webhook.rotate_secret", "webhook", webhook_id))
    session.commit()
    return WebhookSecretRotated(webhook_id=webhook_id, secret=secret.secret)


@router.get("/webhooks", response_model=WebhookPage)
def list_webhooks(session: SessionDep, _caller: WebhookManager) -> WebhookPage:
    rows = session.exec(select(Webhook).order_by(col(Webhook.created_at))).all()
    return WebhookPage(items=[WebhookPublic.model_validate(r.model_dump()) for r in rows])


@router.delete("/webhooks/{webhook_id}", status_code=204)
def delete_webhook(
    session: SessionDep, caller: WebhookManager, webhook_id: Annotated[str, Path(max_length=32)]
) -> Response:
    """Remove a webhook (its delivery log stays); 404 if there is none."""
    row = session.get(Webhook, webhook_id)
    if row is None:
        raise NotFoundError(f"no webhook {webhook_id!r}")
    secret = session.get(WebhookSecret, webhook_id)
    if secret is not None:
        session.delete(secret)
    session.delete(row)
    append(
        session,
        caller.record(
            "webhook.delete", "webhook", webhook_id, before={"url": row.url, "kinds": row.kinds}
        ),
    )
    session.commit()
    return Response(status_code=204)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=DeliveryPage)
def list_deliveries(
    session: SessionDep,
    _caller: WebhookManager,
    webhook_id: Annotated[str, Path(max_length=32)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveryPage:
    """The webhook's deliveries, newest first, with every attempt."""
    rows = session.exec(
        select(WebhookDelivery)
        .where(col(WebhookDelivery.webhook_id) == webhook_id)
        .order_by(col(WebhookDelivery.created_at).desc())
        .limit(limit)
    ).all()
    return DeliveryPage(items=[WebhookDeliveryPublic.model_validate(r.model_dump()) for r in rows])
