"""The local HTTP inference API, on the standard library (no web framework on a device).

``POST /v1/predict`` with ``{"inputs": {"input": [[...]]}, "request_id": "..."}``
returns ``{"request_id", "model": {"name", "version"}, "outputs": {...}, "latency_ms"}``.
The request id is generated when the client sends none. A batch of N > 1 rows also
returns ``"request_ids"``: one per row, ``"<request_id>/<row>"``, which is what feedback
for a single row names.

``POST /v1/feedback`` joins late labels to those predictions by request id; its body and
answers are described in `edgefleet.agent.feedback`.

``GET /v1/health`` returns 200 with whether a model is loaded. ``GET /metrics`` returns
the agent's own metrics in Prometheus text format (`edgefleet.agent.exposition`; 404
when the agent gave the API none). Errors are JSON
``{"error": {"code", "message"}}``: 400 bad JSON or inputs (or a malformed request line,
header or Content-Length), 404 unknown path (or an unknown request id in feedback), 405
an unknown method, 409 feedback for an unmonitored model, 411 no Content-Length, 413 a
body over ``max_body_bytes``, 503 no model loaded, 500 the runtime failed on valid
inputs (or a bug: answered, logged, the connection closed).

Invariant: whatever a client sends, it gets a complete JSON answer, and bad input of any
kind is a 4xx; nothing a request carries changes the model that serves.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from pydantic import ValidationError

from edgefleet.agent.exposition import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edgefleet.agent.feedback import (
    MAX_REQUEST_ID_CHARS,
    FeedbackBatch,
    FeedbackError,
    FeedbackItem,
    record_batch,
    record_one,
    usable_monitor,
)
from edgefleet.agent.model_host import InputError, ModelHost, NoModelLoadedError
from edgefleet.shared.runtime import InferenceError

log = logging.getLogger(__name__)

JSON = "application/json"


class ApiError(Exception):
    """A request the API answers with an error status."""

    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    # RecursionError: the decoder recurses once per level of nesting.
    except (ValueError, RecursionError) as e:
        raise ApiError(HTTPStatus.BAD_REQUEST, "bad_json", f"the body is not JSON: {e}") from e


def predict(host: ModelHost, body: bytes) -> dict[str, Any]:
    """Answer one predict request body; raises `ApiError` for every failure."""
    request = _load_json(body)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), dict):
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            "bad_request",
            'expected {"inputs": {"<name>": [[...]]}, "request_id": optional string}',
        )
    request_id = request.get("request_id") or uuid.uuid4().hex
    if not isinstance(request_id, str) or len(request_id) > MAX_REQUEST_ID_CHARS:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            "bad_request",
            f"request_id must be a string of at most {MAX_REQUEST_ID_CHARS} characters",
        )
    inputs = request["inputs"]
    first = next(iter(inputs.values()), None)
    rows = len(first) if isinstance(first, list) else 1
    row_ids = [request_id] if rows == 1 else [f"{request_id}/{row}" for row in range(rows)]
    started = time.perf_counter()
    try:
        model, outputs = host.infer(inputs, row_ids)
    except NoModelLoadedError as e:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "no_model", str(e)) from e
    except InputError as e:
        raise ApiError(HTTPStatus.BAD_REQUEST, "bad_inputs", str(e)) from e
    except InferenceError as e:
        raise ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, "inference_failed", str(e)) from e
    answer: dict[str, Any] = {
        "request_id": request_id,
        "model": {"name": model.name, "version": model.version},
        "outputs": outputs,
        "latency_ms": (time.perf_counter() - started) * 1000.0,
    }
    if rows > 1:
        answer["request_ids"] = row_ids
    return answer


def feedback(host: ModelHost, body: bytes) -> dict[str, Any]:
    """Answer one feedback request body (see `edgefleet.agent.feedback`); raises `ApiError`."""
    request = _load_json(body)
    try:
        parsed: FeedbackItem | FeedbackBatch
        if isinstance(request, dict) and "items" in request:
            parsed = FeedbackBatch.model_validate(request)
        else:
            parsed = FeedbackItem.model_validate(request)
    except ValidationError as e:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            "bad_request",
            'expected {"request_id": "<id from /v1/predict>", "label": <string, number or '
            f'boolean>}} or {{"items": [...]}}; {_describe(e)}',
        ) from e
    if host.active is None:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "no_model", "no model is loaded yet")
    try:
        monitor = usable_monitor(host.drift_monitor)
        if isinstance(parsed, FeedbackBatch):
            return record_batch(monitor, parsed)
        return record_one(monitor, parsed)
    except FeedbackError as e:
        raise ApiError(e.status, e.code, str(e)) from e


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


_POST_ROUTES = {"/v1/predict": predict, "/v1/feedback": feedback}
REQUEST_TIMEOUT_S = 60.0
MAX_QUOTE_CHARS = 200


def _clip(text: str) -> str:
    """``text`` as an error message may quote it (a path or header can be 64 KiB)."""
    return text if len(text) <= MAX_QUOTE_CHARS else f"{text[:MAX_QUOTE_CHARS]}..."


def _handler_class(
    host: ModelHost,
    max_body_bytes: int,
    health: Callable[[], dict[str, Any]],
    metrics: Callable[[], bytes] | None,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: local apps call in tight loops
        server_version = "edgefleet-agent"
        # Headers and body go out in two writes; without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every keep-alive request.
        disable_nagle_algorithm = True
        # A client that declares more body than it sends (or goes quiet mid-request)
        # would otherwise hold its thread forever; the base class closes on this.
        timeout = REQUEST_TIMEOUT_S

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/v1/health":
                self._reply(HTTPStatus.OK, health())
            elif path == "/metrics" and metrics is not None:
                self._send(HTTPStatus.OK, metrics(), METRICS_CONTENT_TYPE)
            else:
                self._error(ApiError(HTTPStatus.NOT_FOUND, "not_found", f"no {_clip(self.path)}"))

        def do_POST(self) -> None:
            route = _POST_ROUTES.get(self.path.split("?")[0])
            if route is None:
                self.close_connection = True
                self._error(ApiError(HTTPStatus.NOT_FOUND, "not_found", f"no {_clip(self.path)}"))
                return
            try:
                self._reply(HTTPStatus.OK, route(host, self._body()))
            except ApiError as e:
                self._error(e)
            except Exception:
                # A bug, not the client's fault: answer (rather than drop the connection)
                # and log it; the request may have been half read, so close.
                log.exception("local API: %s %s failed", self.command, _clip(self.path))
                self.close_connection = True
                self._error(
                    ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal", "the agent failed")
                )

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            # The base class answers what it cannot parse (request line, headers,
            # method) with an HTML page; answer in the API's JSON instead, and as the
            # client's error it is: 405 for an unknown method, 400 for a bad request.
            status = HTTPStatus(code)
            if status is HTTPStatus.NOT_IMPLEMENTED:
                status = HTTPStatus.METHOD_NOT_ALLOWED
            elif status >= HTTPStatus.INTERNAL_SERVER_ERROR:
                status = HTTPStatus.BAD_REQUEST
            self.close_connection = True
            text = message or status.phrase
            self._error(ApiError(status, status.name.lower(), _clip(text)))

        def _body(self) -> bytes:
            declared = self.headers.get("Content-Length", "")
            try:
                length = int(declared)
            except ValueError:
                self.close_connection = True
                raise ApiError(
                    HTTPStatus.LENGTH_REQUIRED, "length_required", "send a Content-Length"
                ) from None
            if length < 0:
                self.close_connection = True
                raise ApiError(
                    HTTPStatus.BAD_REQUEST,
                    "bad_length",
                    f"Content-Length {_clip(declared)} is negative",
                )
            if length > max_body_bytes:
                # The body stays unread, so this connection cannot carry another request.
                self.close_connection = True
                raise ApiError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "too_large",
                    f"the body is {length} bytes; the limit is {max_body_bytes}",
                )
            return self.rfile.read(length)

        def _error(self, error: ApiError) -> None:
            self._reply(error.status, {"error": {"code": error.code, "message": str(error)}})

        def _reply(self, status: HTTPStatus, document: dict[str, Any]) -> None:
            self._send(status, json.dumps(document, default=_jsonable).encode(), JSON)

        def _send(self, status: HTTPStatus, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":  # a HEAD answer has headers only
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


class InferenceApi:
    """The HTTP server on its own thread; `port` is the bound port (useful with port 0)."""

    def __init__(
        self,
        host: ModelHost,
        *,
        bind_host: str,
        port: int,
        max_body_bytes: int,
        health: Callable[[], dict[str, Any]],
        metrics: Callable[[], bytes] | None = None,
        name: str = "edgefleet-api",
    ) -> None:
        """Bind the socket now (so the port is known); raises OSError if it cannot.

        ``metrics`` renders ``GET /metrics`` (Prometheus text); without it that is a 404.
        """
        self._server = ThreadingHTTPServer(
            (bind_host, port), _handler_class(host, max_body_bytes, health, metrics)
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        # The poll interval bounds how long `stop` waits; 0.2 s keeps idle wake-ups rare.
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop accepting requests and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
