"""`RequestGuard`: what every request passes before the app reads a byte of its body.

A pure ASGI middleware, outside FastAPI's routing, so it acts on headers alone:

- a request with a body (``Content-Length`` > 0 or ``Transfer-Encoding``) to ``/v1/``
  must carry a valid API token, checked before the body is read (401 otherwise): an
  unauthenticated client cannot make the fleet buffer or parse anything. The one
  exception is `PUBLIC_BODY_ROUTES`, the device identity routes whose body *is* the
  credential (an enrollment token, a certificate plus a CSR): a device has no API token
  before it enrolls. They are still capped below, and their fields are bounded;
- a body is capped at ``max_request_body_bytes``: a declared ``Content-Length`` above
  it is refused at once (413), and a body without one (chunked) is counted while the
  app reads it and cut off with a 413 at the limit. Routes in ``own_limits`` (uploads,
  which stream to disk with their own larger cap) are not capped here;
- every request gets an id (the client's ``X-Request-ID`` if it is 1-64 safe characters,
  else a new one), echoed in the response's ``X-Request-ID``, written to the audit
  entries the request makes and, as ``request_id``, to its JSON log lines
  (`edgefleet.shared.logs`);
- an exception nothing else handled is logged with its traceback and answered 500 with
  an `edgefleet.fleet.api.errors.ErrorBody` that names no internals.

Refusals before the body is read close the connection (``Connection: close``), so the
server does not read and discard a body it already refused.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Collection

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.fleet.api.auth import bearer_token
from edgefleet.fleet.api.errors import error_response
from edgefleet.fleet.api.principals import PrincipalResolver
from edgefleet.fleet.errors import AuthenticationError
from edgefleet.shared.logs import DEVICE_ID, REQUEST_ID

logger = logging.getLogger(__name__)

AUTHENTICATED_PREFIX = "/v1/"
# Longer than any Content-Length the limit could allow: compared as text, never parsed.
MAX_LENGTH_DIGITS = 18
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Routes that take a body without an API token: the body authenticates them
# (edgefleet.fleet.api.identity). Exact (method, path) pairs, nothing by prefix.
PUBLIC_BODY_ROUTES = frozenset({("POST", "/v1/enroll"), ("POST", "/v1/identity/renew")})


class RequestGuard:
    """Authentication before the body, a body size limit, and the catch-all 500."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        principals: PrincipalResolver,
        max_body_bytes: int,
        own_limits: Collection[tuple[str, str]],
    ) -> None:
        self.app = app
        self.principals = principals
        self.max_body_bytes = max_body_bytes
        self.own_limits = frozenset(own_limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        request_id = _request_id(Headers(scope=scope).get("x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        # For the log lines of this request (JSON logs carry it); worker threads that
        # serve it get a copy of this context. The device id is set by the repository's
        # device check (`edgefleet.fleet.api.update_deps`) once a signature proves it.
        request_id_token = REQUEST_ID.set(request_id)
        device_id_token = DEVICE_ID.set(None)

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            refusal = await self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            if (scope["method"], scope["path"]) not in self.own_limits:
                receive = _capped(receive, self.max_body_bytes)
            await self.app(scope, receive, tracked_send)
        except Exception:
            logger.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            if started:
                raise  # too late for a 500: the server drops the connection
            await error_response(
                500, "internal_error", "internal server error; the fleet's log has the details"
            )(scope, receive, send)
        finally:
            REQUEST_ID.reset(request_id_token)
            DEVICE_ID.reset(device_id_token)

    async def _refusal(self, scope: Scope) -> JSONResponse | None:
        """The answer to a request refused on its headers alone, or None."""
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "").strip()
        has_body = (declared not in ("", "0")) or "transfer-encoding" in headers
        if not has_body:
            return None
        public = (scope["method"], scope["path"]) in PUBLIC_BODY_ROUTES
        if scope["path"].startswith(AUTHENTICATED_PREFIX) and not public:
            token = bearer_token(headers.get("authorization"))
            try:
                await run_in_threadpool(self.principals.check, token)
            except AuthenticationError as e:
                return error_response(
                    401,
                    e.code,
                    str(e),
                    headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
                )
        own = (scope["method"], scope["path"]) in self.own_limits
        if not own and declared.isdigit() and _above(declared, self.max_body_bytes):
            return error_response(
                413,
                "payload_too_large",
                f"request body is {declared} bytes, at most {self.max_body_bytes} accepted",
                headers={"Connection": "close"},
            )
        return None


def _request_id(given: str | None) -> str:
    """The client's ``X-Request-ID`` when it is a sane one, else a new id."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def _above(declared: str, limit: int) -> bool:
    digits = declared.lstrip("0")
    return len(digits) > MAX_LENGTH_DIGITS or int(digits or "0") > limit


def _capped(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises a 413 `HTTPException` once the body passes ``limit``.

    FastAPI lets an `HTTPException` raised while it reads the body through, so the app's
    handler answers it in the usual error format.
    """
    received = 0

    async def capped() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(
                    413, f"request body exceeds {limit} bytes", headers={"Connection": "close"}
                )
        return message

    return capped
