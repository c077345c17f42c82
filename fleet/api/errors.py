"""The API's one error format, and the handlers that give every 4xx and 5xx that body.

Every error answer is ``{"error": {"code": ..., "message": ..., "details": [...]}}``
(`ErrorBody`; ``details`` only for validation errors): domain errors
(`edgefleet.fleet.errors.FleetError`), validation errors (422), Starlette's own HTTP
errors (404 unknown route, 405 method, 413 body too large, ...) and, from
`edgefleet.fleet.api.guard`, the unexpected exception (500, internals only in the log).

`document_errors` writes the error statuses each route can return into its OpenAPI
``responses``, derived from what the route depends on, so no route lists them by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from edgefleet.fleet.api.deps import PUBLIC, permission_of

# The most validation problems one answer lists: a fuzzed body can have thousands.
MAX_DETAILS = 50
MAX_MESSAGE_CHARS = 2000

# Stable codes of Starlette's HTTP errors, for statuses no domain error produces.
HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    500: "internal_error",
    503: "unavailable",
}


class ErrorDetail(BaseModel):
    """One validation problem: where (``loc``: body, query, path, header, then keys)."""

    loc: list[str | int] = Field(max_length=64)
    message: str = Field(max_length=MAX_MESSAGE_CHARS)
    type: str = Field(max_length=200)


class ErrorInfo(BaseModel):
    """What went wrong: ``code`` is stable for scripts, ``message`` is for people."""

    code: str = Field(max_length=100)
    message: str = Field(max_length=MAX_MESSAGE_CHARS)
    details: list[ErrorDetail] | None = Field(default=None, max_length=MAX_DETAILS)


class ErrorBody(BaseModel):
    """The body of every 4xx and 5xx answer of the API."""

    error: ErrorInfo


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON response with an `ErrorBody`."""
    body = ErrorBody(error=ErrorInfo(code=code, message=_clip(message), details=details or None))
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers
    )


def error_bytes(status: int, code: str, message: str) -> bytes:
    """An `ErrorBody` as bytes, for code that answers with raw ASGI messages."""
    return bytes(error_response(status, code, message).body)


async def validation_error(_request: Request, error: Exception) -> JSONResponse:
    """422 for a request whose parameters or body do not match the route's schema."""
    assert isinstance(error, RequestValidationError)
    problems = list(error.errors())
    details = [
        ErrorDetail(
            loc=[part if isinstance(part, int) else str(part)[:200] for part in p["loc"]][:64],
            message=_clip(str(p["msg"])),
            type=str(p["type"])[:200],
        )
        for p in problems[:MAX_DETAILS]
    ]
    first = details[0] if details else None
    where = ".".join(str(part) for part in first.loc) if first else "request"
    summary = f"invalid {where}: {first.message}" if first else "invalid request"
    if len(problems) > 1:
        summary += f" (and {len(problems) - 1} more problem(s))"
    return error_response(422, "invalid_request", summary, details=details)


async def http_error(_request: Request, error: Exception) -> JSONResponse:
    """Starlette's HTTP errors (unknown route, wrong method, ...) in the API's format."""
    assert isinstance(error, HTTPException)
    status = error.status_code
    code = HTTP_CODES.get(status, f"http_{status}")
    message = error.detail if isinstance(error.detail, str) else _phrase(status)
    return error_response(status, code, message, headers=dict(error.headers or {}))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


# --- OpenAPI ------------------------------------------------------------------------------

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "a body that does not parse",
    401: "no bearer token, or one that matches no API token",
    403: "the token's role does not allow this",
    404: "the named thing does not exist",
    409: "conflicts with the current state",
    413: "request body larger than the fleet accepts",
    422: "invalid parameters or body",
    500: "unexpected server error (details only in the server's log)",
    503: "signed updates are off, or the broker did not acknowledge",
}


def document_errors(router: APIRouter, *, domain_statuses: Iterable[int] = ()) -> APIRouter:
    """Add each route's error statuses and permission to its OpenAPI operation.

    Call it before ``app.include_router(router)`` (FastAPI builds a route's response
    schemas when the route is copied into the app). Every route can answer 500, and
    413 (any request may carry a body); 404 and 422 if it has parameters or a body, 400
    if it has a body, 401 and 403 if it needs a permission, and ``domain_statuses``
    (e.g. 409, 503: the domain errors its service raises; 422 for a route that reads its
    body itself). Statuses a route documents itself are kept. The permission its
    dependencies declare (`edgefleet.fleet.api.deps.require`) is written as
    ``x-required-permission`` (``none`` for a public route).
    """
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        statuses = {413, 500, *domain_statuses}
        if _has_inputs(route.dependant):
            # A named thing may not exist (a path id, or a model named in a query or body).
            statuses.update((404, 422))
        if _has_body(route.dependant):
            statuses.add(400)  # a body that is not JSON (or not UTF-8) at all
        permission = permission_of(route.dependant)
        if permission is not None and permission != PUBLIC:
            statuses.update((401, 403))
        if permission is not None:
            route.openapi_extra = (route.openapi_extra or {}) | {
                "x-required-permission": permission
            }
        errors: dict[int | str, dict[str, Any]] = {
            s: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS.get(s, _phrase(s))}
            for s in sorted(statuses)
        }
        route.responses = errors | route.responses
    return router


def _has_body(dependant: Dependant) -> bool:
    return bool(dependant.body_params) or any(_has_body(sub) for sub in dependant.dependencies)


def _has_inputs(dependant: Dependant) -> bool:
    if dependant.path_params or dependant.query_params or dependant.header_params:
        return True
    if dependant.cookie_params or dependant.body_params:
        return True
    return any(_has_inputs(sub) for sub in dependant.dependencies)
