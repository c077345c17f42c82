"""The local HTTP inference API, on the standard library (no web framework on a device).

``POST /v1/predict`` with ``{"inputs": {"input": [[...]]}, "request_id": "..."}``
returns ``{"request_id", "model": {"name", "version"}, "outputs": {...}, "latency_ms"}``.
The request id is generated when the client sends none. A batch of N > 1 rows also
returns ``"request_ids"``: one per row, ``"<request_id>/<row>"``, which is what feedback
for a single row names.

A body sent as ``Content-Type: application/x-npy`` (any case, parameters ignored) to
``POST /v1/predict`` is one NumPy ``.npy`` array (`numpy.lib.format`, read with
``allow_pickle=False``): the model's single input, batch axis first, so a caller with an
image or tensor pays no JSON numbers. The request id is the optional ``X-Request-Id``
header (at most ``MAX_REQUEST_ID_CHARS``); the answer is the same JSON, and the request
goes through the same `ModelHost.infer` (metrics, drift, request ids for feedback,
model switches) as its JSON twin. 400 ``bad_npy``: the body is not exactly one .npy
array (truncated, bytes after it, a bad header, an object dtype, version 3.0); 400
``bad_inputs``:
a wrong shape or dtype (the same conversion rules as JSON lists) or a model with
several inputs; the body bound (413) is ``max_body_bytes`` as for JSON. Any other
Content-Type (or none) is JSON, as before.

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

The API listens on TCP (``bind_host``, ``port``) and, when ``unix_socket`` is given, on
that Unix socket too (same handler, same answers; the socket file is replaced at start
and removed at stop).

Why the request path is as it is (a keep-alive round trip was ~300-450 us for a 7 us
model, most of it the standard library's HTTP machinery):

- The fast head: a request whose head (request line and headers) is already whole in
  the connection's read buffer, and is exactly ``POST /v1/predict`` or
  ``/v1/feedback`` over HTTP/1.1 with one plain ``Content-Length``, no
  ``Transfer-Encoding`` or ``Expect``, no folded or malformed header line and at most
  ``Connection: close|keep-alive`` (`parse_fast_head`; it also reads one
  ``Content-Type`` and one ``X-Request-Id``), is parsed here with a few byte
  splits. Anything else, however slightly unusual, is left unread and goes to
  `BaseHTTPRequestHandler` as before (its email-based header parser cost ~40 us a
  request), so every error answer and bound of the slow path is unchanged. The fast
  head answers what the slow path would for the same bytes: the same route, the same
  body bound (413 and close), the same keep-alive rule.
- Every answer goes out in one write (status line, headers, body), with the same
  headers as before (``Server``, ``Date`` (formatted once a second), ``Content-Type``,
  ``Content-Length``, ``Connection: close`` when closing). The base class wrote
  headers and body separately and formatted the date on every request.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import json
import logging
import os
import socketserver
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
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

# orjson's loads once imported (None: not installed); empty before the first body.
_ORJSON: list[Callable[[bytes], Any] | None] = []


def _orjson_loads() -> Callable[[bytes], Any] | None:
    """orjson's ``loads``, imported at the first request body rather than at start:
    it adds ~4 MB of RSS that an agent whose API serves nothing need not pay. A race
    imports it twice, harmlessly."""
    if not _ORJSON:
        loads: Callable[[bytes], Any] | None
        try:
            from orjson import loads
        except ImportError:  # pragma: no cover - orjson is in the agent extra, but optional
            loads = None
        _ORJSON.append(loads)
    return _ORJSON[0]


_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19

log = logging.getLogger(__name__)

JSON = "application/json"
NPY = "application/x-npy"


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
    """The body's JSON document; raises `ApiError` (400 bad_json) when it is not JSON.

    orjson first when installed: it reads numbers several times faster (a 32x32x3 image
    is 3,072 of them: ~100 us instead of ~650 here). It accepts a strict subset of what
    `json.loads` accepts (RFC 8259 UTF-8 only: no NaN or Infinity, no lone surrogates,
    integers of at most 64 bits, 1,024 levels at most) and reads it to the same values,
    so whatever it refuses goes to `json.loads`, whose answer or error stands: the API
    accepts and refuses exactly what it did without orjson. One exception: orjson reads
    an integer beyond 64 bits as a float (`json.loads`: an int, which the model host
    then refuses), so a body with a run of 19 or more digits skips orjson.
    """
    fast = _orjson_loads()
    if fast is not None and _LONG_DIGITS not in body.translate(_DIGITS_AS_ZERO):
        with contextlib.suppress(ValueError):
            return fast(body)
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
    return _run(host, inputs, request_id, len(first) if isinstance(first, list) else 1)


def _run(host: ModelHost, inputs: dict[str, Any], request_id: str, rows: int) -> dict[str, Any]:
    """Infer ``inputs`` and the answer's document; raises `ApiError` as `predict`."""
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


def predict_npy(host: ModelHost, body: bytes, request_id: str | None) -> dict[str, Any]:
    """Answer one ``application/x-npy`` predict body: a single .npy array, the model's one
    input (batch axis first). ``request_id`` is the ``X-Request-Id`` header (made up when
    absent). Raises `ApiError`: 400 bad_npy for a body that is not exactly one .npy
    array without objects (truncated, trailing bytes, object dtype, bad header), 400
    bad_request for a too long request id, 400 bad_inputs for a model with several
    inputs or an array of the wrong shape or dtype (the same rules as JSON lists), and
    the statuses of `predict`.
    """
    if request_id is not None and len(request_id) > MAX_REQUEST_ID_CHARS:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            "bad_request",
            f"X-Request-Id must be at most {MAX_REQUEST_ID_CHARS} characters",
        )
    array = _load_npy(body)
    active = host.active
    if active is None:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "no_model", "no model is loaded yet")
    specs = active.runtime.inputs
    if len(specs) != 1:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            "bad_inputs",
            f"an {NPY} body is the model's one input; this model takes "
            f"{sorted(s.name for s in specs)}: send JSON",
        )
    rows = array.shape[0] if array.ndim else 1
    return _run(host, {specs[0].name: array}, request_id or uuid.uuid4().hex, rows)


# Parsed .npy headers by their bytes (magic to the end of the header): a caller sends
# the same header on every request, and numpy's parser (`ast.literal_eval`) costs
# ~20 us. Cleared when full, so a client cycling headers costs only the parse.
_NPY_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype[Any]]] = {}
_MAX_NPY_HEADERS = 64
_NPY_MAGIC = b"\x93NUMPY"


def _npy_header(body: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """(shape, Fortran order, dtype, data offset) of ``body``'s .npy header; raises
    ValueError or SyntaxError for a bad one (numpy's parser's errors)."""
    header_end = -1
    if body[:6] == _NPY_MAGIC and len(body) >= 12:
        size = body[8] | body[9] << 8 if body[6] == 1 else int.from_bytes(body[8:12], "little")
        header_end = (10 if body[6] == 1 else 12) + size
        cached = _NPY_HEADERS.get(body[:header_end]) if header_end <= len(body) else None
        if cached is not None:
            return (*cached, header_end)
    # numpy.lib.format is a submodule numpy imports anyway: no start-up cost.
    from numpy.lib import format as npy_format

    stream = io.BytesIO(body)
    version = npy_format.read_magic(stream)
    if version == (1, 0):
        parsed = npy_format.read_array_header_1_0(stream)
    elif version == (2, 0):
        parsed = npy_format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"format version {version[0]}.{version[1]} is not read here")
    if stream.tell() != header_end:  # pragma: no cover - numpy read what the size said
        raise ValueError("the header is not where its size says")
    if len(_NPY_HEADERS) >= _MAX_NPY_HEADERS:
        _NPY_HEADERS.clear()
    _NPY_HEADERS[body[:header_end]] = parsed
    return (*parsed, header_end)


def _load_npy(body: bytes) -> np.ndarray[Any, Any]:
    """The one .npy array ``body`` is (read-only, on the body's bytes: no copy); raises
    `ApiError` (400 bad_npy) for anything else.

    The header is read and checked before any array exists: `numpy.lib.format.read_array`
    would allocate whatever shape a 100-byte header claims. Versions 1.0 and 2.0 only
    (3.0 differs in allowing non-latin-1 field names, i.e. structured dtypes).
    """
    try:
        shape, fortran, dtype, offset = _npy_header(body)
    # ValueError (magic, header, EOF) and SyntaxError (a header that is not a literal).
    except (ValueError, SyntaxError) as e:
        raise ApiError(
            HTTPStatus.BAD_REQUEST, "bad_npy", f"the body is not a .npy array: {e}"
        ) from e
    if dtype.hasobject:
        raise ApiError(
            HTTPStatus.BAD_REQUEST, "bad_npy", "object arrays (pickles) are not accepted"
        )
    count = 1
    for dim in shape:
        count *= dim
    expected = count * dtype.itemsize
    if len(body) - offset != expected:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            "bad_npy",
            f"the header says {expected} bytes of {dtype} data, the body has {len(body) - offset}",
        )
    try:
        flat = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    except ValueError as e:  # e.g. a zero-size item dtype
        raise ApiError(
            HTTPStatus.BAD_REQUEST, "bad_npy", f"the body is not a .npy array: {e}"
        ) from e
    return flat.reshape(shape, order="F" if fortran else "C")


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


Route = Callable[[ModelHost, bytes], dict[str, Any]]
_POST_ROUTES: dict[str, Route] = {"/v1/predict": predict, "/v1/feedback": feedback}
# Routes that also take an application/x-npy body (and the X-Request-Id header).
NpyRoute = Callable[[ModelHost, bytes, str | None], dict[str, Any]]
_NPY_ROUTES: dict[str, NpyRoute] = {"/v1/predict": predict_npy}


def is_npy(content_type: str | None) -> bool:
    """Whether a Content-Type names an .npy body (media type only, any case)."""
    return content_type is not None and content_type.partition(";")[0].strip(" \t").lower() == NPY


REQUEST_TIMEOUT_S = 60.0
MAX_QUOTE_CHARS = 200
# The base class refuses more header lines than this (431); the fast head leaves them to it.
_MAX_FAST_HEADER_LINES = 100


@dataclass(frozen=True, slots=True)
class FastHead:
    """A request head `parse_fast_head` took: where it goes and how long its body is."""

    path: str
    content_length: int
    close: bool  # the client sent Connection: close
    size: int  # bytes of the head, blank line included
    content_type: str | None = None
    request_id: str | None = None  # the X-Request-Id header


def parse_fast_head(data: bytes, paths: frozenset[bytes]) -> FastHead | None:
    """The head at the start of ``data`` when it is a plain POST to one of ``paths``.

    None for anything else (the head is not whole in ``data``, another method, path,
    version or query string, a missing, repeated or non-decimal Content-Length, a
    Transfer-Encoding or Expect header, a header line that is folded, has no colon or
    whitespace in its name, an unknown Connection value, too many lines): the caller
    then leaves the bytes to the standard parser. Never raises.
    """
    end = data.find(b"\r\n\r\n")
    lines = data[:end].split(b"\r\n") if end >= 0 else []
    parts = lines[0].split(b" ") if lines else []
    if (
        len(lines) > _MAX_FAST_HEADER_LINES + 1
        or len(parts) != 3
        or parts[0] != b"POST"
        or parts[2] != b"HTTP/1.1"
        or parts[1] not in paths
    ):
        return None
    framing = _fast_headers(lines[1:])
    if framing is None:
        return None
    length, close, content_type, request_id = framing
    return FastHead(parts[1].decode("ascii"), length, close, end + 4, content_type, request_id)


def _fast_headers(lines: list[bytes]) -> tuple[int, bool, str | None, str | None] | None:
    """(Content-Length, Connection: close, Content-Type, X-Request-Id) of plain header
    lines; None as in `parse_fast_head` (and for a repeated Content-Type or X-Request-Id,
    which the standard parser answers by its first value)."""
    length: int | None = None
    close: bool | None = None
    content_type: str | None = None
    request_id: str | None = None
    for line in lines:
        name, colon, value = line.partition(b":")
        key = name.lower()
        if not colon or not name or b" " in name or b"\t" in name:
            length = None
            break
        if key == b"content-length":
            value = value.strip(b" \t")
            if length is not None or not value.isdigit():
                length = None
                break
            length = int(value)
        elif key == b"connection":
            token = value.strip(b" \t").lower()
            if close is not None or token not in (b"close", b"keep-alive"):
                length = None
                break
            close = token == b"close"
        elif key in (b"transfer-encoding", b"expect"):
            length = None
            break
        elif key in (b"content-type", b"x-request-id"):
            # Decoded and stripped as the standard parser does (latin-1).
            text = value.strip(b" \t").decode("latin-1")
            if key == b"content-type":
                if content_type is not None:
                    length = None
                    break
                content_type = text
            else:
                if request_id is not None:
                    length = None
                    break
                request_id = text
    return None if length is None else (length, bool(close), content_type, request_id)


class _HttpDate:
    """The ``Date`` header's value, formatted at most once a second (thread-safe enough:
    a race formats the same second twice)."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._text = email.utils.formatdate(second, usegmt=True)
            self._second = second
        return self._text


_DATE = _HttpDate()


def _clip(text: str) -> str:
    """``text`` as an error message may quote it (a path or header can be 64 KiB)."""
    return text if len(text) <= MAX_QUOTE_CHARS else f"{text[:MAX_QUOTE_CHARS]}..."


def _handler_class(
    host: ModelHost,
    max_body_bytes: int,
    health: Callable[[], dict[str, Any]],
    metrics: Callable[[], bytes] | None,
    routes: dict[str, Route] | None = None,
) -> type[BaseHTTPRequestHandler]:
    """The request handler; ``routes`` replaces the POST routes (benchmarks only)."""
    post_routes = _POST_ROUTES if routes is None else routes
    # With replaced routes (the floor benchmark), an .npy body goes to them too.
    npy_routes = _NPY_ROUTES if routes is None else {}
    fast_paths = frozenset(path.encode("ascii") for path in post_routes)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: local apps call in tight loops
        server_version = "edgefleet-agent"
        # `version_string()`, formatted once.
        server_header = f"{server_version} {BaseHTTPRequestHandler.sys_version}"
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

        def handle_one_request(self) -> None:
            """The fast head when the request has one, else the base class's parser."""
            try:
                data = self.rfile.peek(1)  # type: ignore[attr-defined]
            except TimeoutError as e:
                self.log_error("Request timed out: %r", e)
                self.close_connection = True
                return
            if not data:
                self.close_connection = True
                return
            head = parse_fast_head(data, fast_paths)
            if head is None:
                super().handle_one_request()
                return
            self.rfile.read(head.size)
            self.command, self.path, self.request_version = "POST", head.path, "HTTP/1.1"
            self.requestline = f"POST {head.path} HTTP/1.1"
            self.close_connection = head.close
            length = head.content_length

            def body() -> bytes:
                if length > max_body_bytes:
                    self.close_connection = True  # the body stays unread
                    raise ApiError(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        "too_large",
                        f"the body is {length} bytes; the limit is {max_body_bytes}",
                    )
                return self.rfile.read(length)

            try:
                npy_route = npy_routes.get(head.path) if is_npy(head.content_type) else None
                if npy_route is None:
                    self._post(post_routes[head.path], body)
                else:
                    request_id = head.request_id
                    self._post(lambda host, raw: npy_route(host, raw, request_id), body)
            except TimeoutError as e:
                self.log_error("Request timed out: %r", e)
                self.close_connection = True

        def do_POST(self) -> None:
            route = post_routes.get(self.path.split("?")[0])
            if route is None:
                self.close_connection = True
                self._error(ApiError(HTTPStatus.NOT_FOUND, "not_found", f"no {_clip(self.path)}"))
                return
            npy_route = npy_routes.get(self.path.split("?")[0])
            if npy_route is not None and is_npy(self.headers.get("Content-Type")):
                request_id = self.headers.get("X-Request-Id")
                self._post(lambda host, raw: npy_route(host, raw, request_id), self._body)
                return
            self._post(route, self._body)

        def _post(self, route: Route, body: Callable[[], bytes]) -> None:
            try:
                self._reply(HTTPStatus.OK, route(host, body()))
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
            if self.request_version == "HTTP/0.9":  # no status line or headers at all
                self.wfile.write(payload)
                return
            if log.isEnabledFor(logging.DEBUG):
                self.log_request(status.value)
            head = (
                f"{self.protocol_version} {status.value} {status.phrase}\r\n"
                f"Server: {self.server_header}\r\nDate: {_DATE.now()}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
                f"{'Connection: close' + chr(13) + chr(10) if self.close_connection else ''}\r\n"
            ).encode("latin-1")
            # One write: a HEAD answer has headers only.
            self.wfile.write(head if self.command == "HEAD" else head + payload)

        def address_string(self) -> str:
            # A Unix socket's peer has no address (the server gives an empty string).
            address = self.client_address
            return str(address[0]) if isinstance(address, tuple) and address else "unix"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


class _UnixHttpServer(socketserver.ThreadingUnixStreamServer):
    """The API on a Unix socket: a thread per connection, as on TCP."""

    daemon_threads = True


def _bind_unix(path: Path, handler: type[BaseHTTPRequestHandler]) -> _UnixHttpServer:
    """Listen on ``path``, replacing a stale socket file; raises OSError if it cannot.

    A file there that is not a socket is left alone (OSError), so a typo in the config
    never deletes a regular file.
    """
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Nagle's algorithm is TCP's; setting TCP_NODELAY on a Unix socket fails.
    unix_handler = type("UnixHandler", (handler,), {"disable_nagle_algorithm": False})
    server = _UnixHttpServer(str(path), unix_handler)
    # Local apps in the agent's group may connect (the process umask would say 0600).
    os.chmod(path, 0o660)
    return server


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
        unix_socket: Path | None = None,
        routes: dict[str, Route] | None = None,
    ) -> None:
        """Bind the sockets now (so the port is known); raises OSError if it cannot.

        ``metrics`` renders ``GET /metrics`` (Prometheus text); without it that is a 404.
        ``unix_socket``: also listen there (see the module docstring). ``routes``
        replaces the POST routes, for the transport-floor benchmark only.
        """
        handler = _handler_class(host, max_body_bytes, health, metrics, routes)
        self._server = ThreadingHTTPServer((bind_host, port), handler)
        self._server.daemon_threads = True
        self._servers: list[socketserver.BaseServer] = [self._server]
        self._unix_socket = unix_socket
        if unix_socket is not None:
            try:
                self._servers.append(_bind_unix(unix_socket, handler))
            except OSError:
                self._server.server_close()
                raise
        self._threads = [
            threading.Thread(
                target=self._serve, args=(server,), name=f"{name}-{i}" if i else name, daemon=True
            )
            for i, server in enumerate(self._servers)
        ]

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def unix_socket(self) -> Path | None:
        """The Unix socket the API also listens on, if any."""
        return self._unix_socket

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _serve(server: socketserver.BaseServer) -> None:
        # The poll interval bounds how long `stop` waits; 0.2 s keeps idle wake-ups rare.
        server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop accepting requests and close the sockets (the Unix one's file removed)."""
        for server, thread in zip(self._servers, self._threads, strict=True):
            if thread.is_alive():
                server.shutdown()
            server.server_close()
        if self._unix_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unix_socket)
