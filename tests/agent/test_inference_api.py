from __future__ import annotations

import http.client
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
