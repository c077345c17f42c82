from __future__ import annotations

import http.client
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.inference_api import InferenceApi
from edgefleet.agent.metrics import InferenceMetrics
from edgefleet.agent.model_host import ActiveModel, ModelHost
from edgefleet.shared.messages import ModelRef
from edgefleet.shared.runtime import load_runtime
from edgefleet.simulators.models import TrainedModel

MAX_BODY = 4096


@pytest.fixture
def host(wine_model: TrainedModel) -> ModelHost:
    active = ActiveModel(load_runtime(wine_model.path), ModelRef(name="wine", version="1.2.0"))
    return ModelHost(InferenceMetrics(), active)


def serve(host: ModelHost) -> InferenceApi:
    api = InferenceApi(
        host,
        bind_host="127.0.0.1",
        port=0,
        max_body_bytes=MAX_BODY,
        health=lambda: {"status": "ok", "model_loaded": host.active is not None},
    )
    api.start()
    return api


@pytest.fixture
def api(host: ModelHost) -> Iterator[InferenceApi]:
    api = serve(host)
    yield api
    api.stop()


def call(
    api: InferenceApi, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def predict(api: InferenceApi, document: Any) -> tuple[int, dict[str, Any]]:
    return call(api, "POST", "/v1/predict", json.dumps(document).encode())


def test_predict_returns_the_model_outputs(
    api: InferenceApi, host: ModelHost, wine_model: TrainedModel
) -> None:
    rows = wine_model.x_test[:4]
    status, body = predict(api, {"inputs": {"input": rows.tolist()}, "request_id": "req-42"})
    assert status == 200
    assert body["request_id"] == "req-42"
    assert body["model"] == {"name": "wine", "version": "1.2.0"}
    active = host.active
    assert active is not None
    direct = active.runtime.predict({"input": rows})
    assert body["outputs"]["label"] == direct["label"].tolist()
    np.testing.assert_allclose(
        body["outputs"]["probabilities"],
        np.asarray(direct["probabilities"], dtype=np.float32),
        rtol=1e-6,
    )
    assert body["latency_ms"] > 0
    assert host.metrics.interval().inferences == 1


def test_a_request_id_is_made_up_when_absent(api: InferenceApi) -> None:
    status, body = predict(api, {"inputs": {"input": [[13.0] * 13]}})
    assert status == 200
    assert len(body["request_id"]) == 32


def test_keep_alive_connection_serves_many_requests(api: InferenceApi) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    body = json.dumps({"inputs": {"input": [[1.0] * 13]}}).encode()
    for _ in range(20):
        conn.request("POST", "/v1/predict", body=body)
        response = conn.getresponse()
        assert response.status == 200
        response.read()
    conn.close()


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        (b"{not json", "bad_json", "not JSON"),
        (b'["inputs"]', "bad_request", "expected"),
        (b'{"inputs": {"x": [[1.0]]}}', "bad_inputs", "unknown inputs ['x']"),
        (b'{"inputs": {"input": [[1.0, 2.0]]}}', "bad_inputs", "shape ['N', 13], found [1, 2]"),
        (
            json.dumps({"inputs": {"input": [["a"] * 13]}}).encode(),
            "bad_inputs",
            "must be float32",
        ),
        (
            json.dumps({"inputs": {"input": [[1.0] * 13]}, "request_id": 7}).encode(),
            "bad_request",
            "request_id",
        ),
    ],
)
def test_bad_requests_get_400_with_a_clear_json_error(
    api: InferenceApi, host: ModelHost, body: bytes, code: str, fragment: str
) -> None:
    status, document = call(api, "POST", "/v1/predict", body)
    assert status == 400
    assert document["error"]["code"] == code
    assert fragment in document["error"]["message"]
    assert host.metrics.interval().errors == 0


def test_oversized_body_gets_413(api: InferenceApi) -> None:
    rows = [[1.0] * 13] * 100
    status, document = predict(api, {"inputs": {"input": rows}})
    assert status == 413
    assert document["error"]["code"] == "too_large"
    assert str(MAX_BODY) in document["error"]["message"]
    # the server still answers afterwards
    assert predict(api, {"inputs": {"input": [[1.0] * 13]}})[0] == 200


def test_no_model_gets_503_and_health_says_so() -> None:
    host = ModelHost(InferenceMetrics())
    api = serve(host)
    try:
        status, document = predict(api, {"inputs": {"input": [[1.0] * 13]}})
        assert status == 503
        assert document["error"]["code"] == "no_model"
        assert call(api, "GET", "/v1/health") == (200, {"status": "ok", "model_loaded": False})
    finally:
        api.stop()


def test_health_and_unknown_paths(api: InferenceApi) -> None:
    assert call(api, "GET", "/v1/health") == (200, {"status": "ok", "model_loaded": True})
    status, document = call(api, "GET", "/v1/nothing")
    assert status == 404
    assert document["error"]["code"] == "not_found"
    assert call(api, "POST", "/v2/predict", b"{}")[0] == 404


# --- application/x-npy bodies ---------------------------------------------------------

NPY = {"Content-Type": "application/x-npy"}


def npy(array: Any) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=True)
    return stream.getvalue()


def test_an_npy_body_answers_as_its_json_twin(
    api: InferenceApi, host: ModelHost, wine_model: TrainedModel
) -> None:
    rows = np.ascontiguousarray(wine_model.x_test[:4], dtype=np.float32)
    status, binary = call(api, "POST", "/v1/predict", npy(rows), **NPY, **{"X-Request-Id": "bin-7"})
    assert status == 200, binary
    status, twin = predict(api, {"inputs": {"input": rows.tolist()}, "request_id": "bin-7"})
    assert status == 200
    assert binary["request_id"] == "bin-7"
    assert binary["request_ids"] == [f"bin-7/{row}" for row in range(4)]
    assert binary["model"] == twin["model"] == {"name": "wine", "version": "1.2.0"}
    assert binary["outputs"] == twin["outputs"]
    assert binary["latency_ms"] > 0
    assert host.metrics.interval().inferences == 2


def test_an_npy_body_follows_the_json_dtype_rules_and_makes_up_a_request_id(
    api: InferenceApi, wine_model: TrainedModel
) -> None:
    # float64 (and big-endian) converts to the model's float32, as JSON numbers do.
    row = wine_model.x_test[:1].astype(">f8")
    status, answer = call(
        api, "POST", "/v1/predict", npy(row), **{"Content-Type": "Application/X-NPY; v=1"}
    )
    assert status == 200, answer
    assert len(answer["request_id"]) == 32
    assert "request_ids" not in answer
    fortran = np.asfortranarray(wine_model.x_test[:3].astype(np.float32))
    status, answer = call(api, "POST", "/v1/predict", npy(fortran), **NPY)
    assert status == 200, answer
    assert len(answer["outputs"]["label"]) == 3


def npy_claiming(shape: tuple[int, ...]) -> bytes:
    """A float32 .npy header that claims ``shape``, without its data."""
    stream = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(stream, header)
    return stream.getvalue()


GOOD_ROW = npy(np.ones((1, 13), dtype=np.float32))


@pytest.mark.parametrize(
    ("body", "headers", "code", "fragment"),
    [
        (npy(np.array([[1.0] * 13], dtype=object)), {}, "bad_npy", "object arrays"),
        (GOOD_ROW[:-4], {}, "bad_npy", "says 52 bytes of float32 data, the body has 48"),
        (GOOD_ROW[:20], {}, "bad_npy", "not a .npy array"),
        (GOOD_ROW + b"\0\0\0\0", {}, "bad_npy", "the body has 56"),
        # A header claiming a huge array is refused before anything is allocated.
        (npy_claiming((10**10, 13)) + GOOD_ROW[-52:], {}, "bad_npy", "says 520000000000 bytes"),
        (GOOD_ROW.replace(b"\x01\x00", b"\x03\x00", 1), {}, "bad_npy", "version 3.0"),
        (b'{"inputs": {"input": [[1.0]]}}', {}, "bad_npy", "not a .npy array"),
        (b"", {}, "bad_npy", "not a .npy array"),
        (npy(np.ones((1, 12), np.float32)), {}, "bad_inputs", "shape ['N', 13], found [1, 12]"),
        (npy(np.ones(13, np.float32)), {}, "bad_inputs", "shape ['N', 13], found [13]"),
        (npy(np.ones((1, 13), np.complex64)), {}, "bad_inputs", "must be float32"),
        (npy(np.array([["a"] * 13])), {}, "bad_inputs", "must be float32"),
        (GOOD_ROW, {"X-Request-Id": "r" * 300}, "bad_request", "X-Request-Id"),
    ],
)
def test_bad_npy_bodies_get_400_and_count_no_inference(
    api: InferenceApi,
    host: ModelHost,
    body: bytes,
    headers: dict[str, str],
    code: str,
    fragment: str,
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        conn.request("POST", "/v1/predict", body=body, headers=NPY | headers)
        response = conn.getresponse()
        status, document = response.status, json.loads(response.read())
        assert status == 400, document
        assert document["error"]["code"] == code
        assert fragment in document["error"]["message"]
        interval = host.metrics.interval()
        assert (interval.inferences, interval.errors) == (0, 0)
        # The same keep-alive connection serves the next request: the body was all read.
        conn.request("POST", "/v1/predict", body=GOOD_ROW, headers=NPY)
        response = conn.getresponse()
        assert (response.status, response.getheader("Connection")) == (200, None)
        response.read()
    finally:
        conn.close()


def test_an_oversized_npy_body_gets_413(api: InferenceApi) -> None:
    body = npy(np.ones((100, 13), np.float32))
    assert len(body) > MAX_BODY
    status, document = call(api, "POST", "/v1/predict", body, **NPY)
    assert status == 413
    assert document["error"]["code"] == "too_large"
    assert str(MAX_BODY) in document["error"]["message"]
    assert call(api, "POST", "/v1/predict", GOOD_ROW, **NPY)[0] == 200


def test_the_standard_parser_takes_npy_bodies_as_the_fast_head_does(
    api: InferenceApi, wine_model: TrainedModel
) -> None:
    # A query string leaves the request to BaseHTTPRequestHandler (not the fast head).
    row = np.ascontiguousarray(wine_model.x_test[:1], dtype=np.float32)
    for path in ("/v1/predict?slow=1", "/v1/predict"):
        status, answer = call(api, "POST", path, npy(row), **NPY, **{"X-Request-Id": "s-1"})
        assert (status, answer["request_id"]) == (200, "s-1"), (path, answer)
        status, error = call(api, "POST", path, npy(np.ones((1, 2), np.float32)), **NPY)
        assert (status, error["error"]["code"]) == (400, "bad_inputs"), path


def test_an_npy_body_without_a_model_gets_503() -> None:
    host = ModelHost(InferenceMetrics())
    api = serve(host)
    try:
        status, document = call(api, "POST", "/v1/predict", GOOD_ROW, **NPY)
        assert (status, document["error"]["code"]) == (503, "no_model")
    finally:
        api.stop()


def test_npy_requests_follow_a_model_switch(
    api: InferenceApi, host: ModelHost, wine_model: TrainedModel
) -> None:
    assert call(api, "POST", "/v1/predict", GOOD_ROW, **NPY)[1]["model"]["version"] == "1.2.0"
    new = ActiveModel(load_runtime(wine_model.path), ModelRef(name="wine", version="1.3.0"))
    assert host.swap(new) is not None
    status, answer = call(api, "POST", "/v1/predict", GOOD_ROW, **NPY)
    assert (status, answer["model"]) == (200, {"name": "wine", "version": "1.3.0"})
