"""``/v1/audit``: reading and exporting the audit log (``audit:read``).

- ``GET /v1/audit``: a page of entries, oldest first, filtered by ``actor`` (id or
  name), ``action`` (exact, or a prefix ending in ``.``: ``rollout.``), ``object_kind``,
  ``object_id``, ``since`` (inclusive), ``until`` (exclusive), ``outcome``; paging by
  ``after_seq`` (the page's ``next_after_seq``; None on the last page).
- ``GET /v1/audit/export?format=jsonl|csv``: every matching entry, streamed.
- ``GET /v1/audit/checkpoints/latest``: the newest checkpoint this replica signed (404
  before the first), to compare with the copy kept elsewhere.

Times must carry a UTC offset (``2026-01-01T00:00:00Z``): a time without one is refused
with 422, since whose local time it was cannot be known.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime

from edgefleet.fleet.api.deps import Caller, ContextDep, SessionDep, SettingsDep, require
from edgefleet.fleet.audit.checkpoint import KEY_NAME, SignedCheckpoint, last_checkpoint
from edgefleet.fleet.audit.entry import AuditOutcome
from edgefleet.fleet.audit.read import (
    MAX_PAGE,
    AuditFilter,
    AuditPage,
    export_csv,
    export_jsonl,
    iter_entries,
    query_page,
)
from edgefleet.fleet.errors import NotFoundError
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.shared.limits import MAX_INT64
from edgefleet.shared.signing import keys
from edgefleet.shared.signing.errors import KeyFileError

router = APIRouter(prefix="/v1/audit", tags=["audit"])

AuditReader = Annotated[Caller, Depends(require(Permission.AUDIT_READ))]


def audit_filter(
    *,
    actor: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    action: Annotated[
        str | None, Query(min_length=1, max_length=64, description="exact, or a prefix ending in .")
    ] = None,
    object_kind: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    object_id: Annotated[str | None, Query(min_length=1, max_length=300)] = None,
    since: Annotated[
        AwareDatetime | None, Query(description="ISO 8601 with offset, inclusive")
    ] = None,
    until: Annotated[
        AwareDatetime | None, Query(description="ISO 8601 with offset, exclusive")
    ] = None,
    outcome: AuditOutcome | None = None,
) -> AuditFilter:
    """The filter the query parameters describe."""
    return AuditFilter(
        actor=actor,
        action=action,
        object_kind=object_kind,
        object_id=object_id,
        since=since,
        until=until,
        outcome=outcome,
    )


FilterDep = Annotated[AuditFilter, Depends(audit_filter)]


@router.get("", response_model=AuditPage)
def list_audit_route(
    *,
    session: SessionDep,
    _caller: AuditReader,
    where: FilterDep,
    after_seq: Annotated[int, Query(ge=0, le=MAX_INT64, description="the last seq seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> AuditPage:
    """Matching entries with seq above ``after_seq``, oldest first."""
    return query_page(session, where, after_seq=after_seq, limit=limit)


MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}},
)
def export_audit_route(
    *,
    context: ContextDep,
    _caller: AuditReader,
    where: FilterDep,
    format: Annotated[Literal["jsonl", "csv"], Query()] = "jsonl",
) -> StreamingResponse:
    """Every matching entry, oldest first, as JSON Lines or CSV (read and sent in chunks)."""
    entries = iter_entries(context.engine, where)
    body = export_jsonl(entries) if format == "jsonl" else export_csv(entries)
    return StreamingResponse(
        body,
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="audit.{format}"'},
    )


@router.get("/checkpoints/latest", response_model=SignedCheckpoint)
def latest_checkpoint_route(settings: SettingsDep, _caller: AuditReader) -> SignedCheckpoint:
    """The newest checkpoint in this replica's checkpoint file; 404 before the first."""
    try:
        public = keys.load_public_key(
            keys.public_key_path(settings.resolved_audit_key_dir, KEY_NAME)
        )
    except KeyFileError:  # no key yet: checkpoints off, or never started
        public = None
    checkpoint = (
        None if public is None else last_checkpoint(settings.resolved_audit_checkpoint_file, public)
    )
    if checkpoint is None:
        raise NotFoundError("no audit checkpoint has been signed here yet")
    return checkpoint
