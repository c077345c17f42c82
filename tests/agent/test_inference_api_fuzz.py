"""Hypothesis against the real local HTTP API: bad input is a 4xx with a JSON reason.

Requests are written as raw bytes on a fresh loopback connection each (so a method,
path, header or Content-Length that a client library would refuse to send still gets
through), against the real `InferenceApi` serving the real wine ONNX model. Whatever
arrives, the answer is a complete HTTP response, never a 5xx and never a dropped
connection; a 4xx carries ``{"error": {"code", "message"}}``; and the model serves what
it served before.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgefleet.agent.inference_api import InferenceApi
from edgefleet.agent.metrics import InferenceMetrics
from edgefleet.agent.model_host import ActiveModel, ModelHost
from edgefleet.shared.messages import ModelRef
from edgefleet.shared.runtime import load_runtime
from edgefleet.simulators.models import TrainedModel

MAX_BODY = 16 * 1024
PROBE = [[13.0, 2.0, 2.4, 19.0, 100.0, 2.5, 2.5, 0.3, 1.6, 5.0, 1.0, 3.0, 1000.0]]

_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
)
_json = st.recursive(
    _numbers,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)
_rows = st.one_of(
    st.lists(st.lists(st.floats(width=32, allow_nan=False), min_size=13, max_size=13), max_size=8),
    st.lists(st.lists(_numbers, min_size=12, max_size=14), max_size=3),
    st.lists(st.floats(), max_size=13),
    _json,
)
_predict = st.fixed_dictionaries(
    {"inputs": st.dictionaries(st.sampled_from(["input", "x", ""]), _rows, max_size=2) | _json},
    optional={"request_id": st.text(max_size=210) | _json, "extra": _json},
)
# The model's own input with hostile numbers: the inference path, not only the parser.
_hostile_rows = st.lists(
    st.lists(
        st.floats(allow_nan=True, allow_infinity=True)
        | st.integers(min_value=-(2**80), max_value=2**80)
        | st.booleans(),
        min_size=13,
        max_size=13,
    ),
    min_size=1,
    max_size=50,
)
_predict_hostile = st.fixed_dictionaries(
    {"inputs": st.fixed_dictionaries({"input": _hostile_rows})},
    optional={"request_id": st.text(max_size=210)},
)
_feedback = st.one_of(
    st.fixed_dictionaries({"request_id": st.text(max_size=210) | _json, "label": _json}),
    st.fixed_dictionaries({"items": st.lists(_json, max_size=4) | _json}),
)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    _json.map(_dumps),
    _predict.map(_dumps),
    _predict_hostile.map(_dumps),
    _predict_hostile.map(_dumps),
    _feedback.map(_dumps),
    st.integers(min_value=100, max_value=8000).map(lambda d: b"[" * d + b"]" * d),
    st.integers(min_value=100, max_value=4000).map(
        lambda d: b'{"inputs":{"input":' + b"[" * d + b"]" * d + b"}}"
    ),
    st.sampled_from([b"\xff\xfe\x00{", b'{"inputs":{"input":[[NaN]]}}', b"\x00" * 32]),
)
_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789",
    min_size=1,
    max_size=12,
)
_header_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
# Few methods but many bodies: hypothesis spreads its examples over distinct values, and
# every method but POST and GET is refused before the body is read.
methods = st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW"])
_any_path = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60)
_paths = ["/v1/predict", "/v1/feedback", "/v1/health", "/", "/v1/predict?x=1", "*"]
paths = st.one_of(st.sampled_from(_paths), _any_path.map(lambda p: "/" + p))
lengths = st.one_of(
    st.just("exact"),
    st.just("exact"),
    st.just("none"),
    st.sampled_from(["-1", "-99999", "abc", "", " 3", "1e3", "0x10", "99999999999999999999999"]),
    st.integers(min_value=0, max_value=10**9).map(str),
)


def _request(method: str, path: str, headers: dict[str, str], length: str, body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [
        f"{k}: {v}"
        for k, v in headers.items()
        if k.lower() not in ("content-length", "host", "connection", "transfer-encoding", "expect")
    ]
    if length == "exact":
        lines.append(f"Content-Length: {len(body)}")
    elif length != "none":
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(port: int, raw: bytes, method: str) -> tuple[int, bytes]:
    """Send ``raw`` on a new connection; the response status and body (raises if none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # The server may answer (413, 400) and close before it took all of the request.
        with contextlib.suppress(OSError):
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)  # a declared length beyond the body never arrives
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response.status, response.read()


@pytest.fixture(scope="module")
def served(wine_model: TrainedModel) -> Iterator[tuple[InferenceApi, ModelHost]]:
    active = ActiveModel(load_runtime(wine_model.path), ModelRef(name="wine", version="1.2.0"))
    host = ModelHost(InferenceMetrics(), active)
    api = InferenceApi(
        host,
        bind_host="127.0.0.1",
        port=0,
        max_body_bytes=MAX_BODY,
        health=lambda: {"status": "ok", "model_loaded": host.active is not None},
    )
    api.start()
    yield api, host
    api.stop()


def _probe(host: ModelHost) -> Any:
    ref, outputs = host.infer({"input": PROBE})
    return ref, {k: np.asarray(v).tolist() for k, v in outputs.items()}


FUZZ = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


def check_answer(
    served: tuple[InferenceApi, ModelHost], method: str, raw: bytes
) -> tuple[int, dict[str, Any] | None]:
    """Send ``raw``; assert a complete, non-5xx answer with a JSON reason for a 4xx."""
    api, host = served
    before = _probe(host)
    status, answer = exchange(api.port, raw, method)
    assert status < 500, f"{status} for {raw[:300]!r}: {answer[:300]!r}"
    document = None
    if method != "HEAD":
        document = json.loads(answer)
        if status >= 400:
            error = document["error"]
            assert isinstance(error["code"], str)
            assert error["code"]
            assert isinstance(error["message"], str)
            assert error["message"]
    assert _probe(host) == before, "the model serves what it served before"
    return status, document


@settings(FUZZ, max_examples=350)
@given(
    path=st.sampled_from(["/v1/predict", "/v1/feedback"]),
    headers=st.dictionaries(_token, _header_value, max_size=3),
    length=st.one_of(st.just("exact"), lengths),
    body=bodies,
)
def test_any_body_posted_gets_an_answer_and_bad_ones_a_4xx(
    served: tuple[InferenceApi, ModelHost],
    path: str,
    headers: dict[str, str],
    length: str,
    body: bytes,
) -> None:
    status, _ = check_answer(served, "POST", _request("POST", path, headers, length, body))
    event(f"HTTP {status}")


@settings(FUZZ, max_examples=150)
@given(
    method=methods,
    path=paths,
    headers=st.dictionaries(_token, _header_value, max_size=6),
    length=lengths,
    body=st.binary(max_size=64) | _predict.map(_dumps),
)
def test_any_request_line_and_headers_get_an_answer_never_a_5xx(
    served: tuple[InferenceApi, ModelHost],
    method: str,
    path: str,
    headers: dict[str, str],
    length: str,
    body: bytes,
) -> None:
    status, _ = check_answer(served, method, _request(method, path, headers, length, body))
    event(f"HTTP {status}")


def test_a_good_request_after_the_fuzz_is_answered(served: tuple[InferenceApi, ModelHost]) -> None:
    body = _dumps({"inputs": {"input": PROBE}, "request_id": "after"})
    status, document = check_answer(
        served, "POST", _request("POST", "/v1/predict", {}, "exact", body)
    )
    assert status == 200
    assert document is not None
    assert document["request_id"] == "after"
    assert document["model"] == {"name": "wine", "version": "1.2.0"}
