"""Feedback over the local API: late labels join predictions by request id; bad ones are 4xx."""

from __future__ import annotations

import http.client
import io
import json
import re
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from edgefleet.shared.cli import main
from edgefleet.shared.drift import evaluate
from tests.agent.drift.conftest import (
    Packages,
    post,
    post_json,
    profiled_config,
    wait_drift,
)
from tests.e2e.updates.support import Pkg


def test_feedback_labels_join_by_request_id_and_accuracy_matches_scikit_learn(
    tmp_path, mosquitto, packages: Packages, start_agent, drift_of, unique_id, wine_model
) -> None:
    device = f"fb-{unique_id}"
    sub = drift_of(device)
    agent = start_agent(profiled_config(tmp_path, mosquitto, device, packages.profiled))
    port = agent.api_port
    assert port is not None
    request_ids, predicted = [], []
    for i, row in enumerate(wine_model.x_test):
        document: dict[str, Any] = {"inputs": {"input": [row.tolist()]}}
        if i % 2:
            document["request_id"] = f"client-{unique_id}-{i}"
        status, answer = post_json(port, "/v1/predict", document)
        assert status == 200, answer
        if i % 2:
            assert answer["request_id"] == f"client-{unique_id}-{i}"
        request_ids.append(answer["request_id"])
        predicted.append(answer["outputs"]["label"][0])
    assert len(set(request_ids)) == len(request_ids), "generated request ids are unique"
    truth = [int(y) for y in wine_model.y_test]
    # Half one by one, the rest (plus an unknown id) as one batch.
    half = len(truth) // 2
    for request_id, label in zip(request_ids[:half], truth[:half], strict=True):
        status, answer = post_json(port, "/v1/feedback", {"request_id": request_id, "label": label})
        assert (status, answer) == (200, {"request_id": request_id, "joined": True})
    items = [
        {"request_id": r, "label": y} for r, y in zip(request_ids[half:], truth[half:], strict=True)
    ]
    items.append({"request_id": "never-predicted", "label": 1})
    status, answer = post_json(port, "/v1/feedback", {"items": items})
    assert status == 200
    assert (answer["joined"], answer["unknown"]) == (len(truth) - half, 1)
    assert answer["results"][-1] == {
        "request_id": "never-predicted",
        "joined": False,
        "error": "unknown_request_id",
    }
    agent.stop(5.0)
    [window] = wait_drift(sub, device, len(truth))
    assert window.sketch is not None
    assert window.sketch.labelled == len(truth)
    report = evaluate(packages.profile(packages.profiled), window.sketch)
    assert report.metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))


def test_batch_predictions_get_one_request_id_per_row_for_feedback(
    tmp_path, mosquitto, packages: Packages, start_agent, unique_id, wine_model
) -> None:
    agent = start_agent(
        profiled_config(tmp_path, mosquitto, f"rows-{unique_id}", packages.profiled)
    )
    port = agent.api_port
    assert port is not None
    status, answer = post_json(
        port, "/v1/predict", {"inputs": {"input": wine_model.x_test[:3].tolist()}}
    )
    assert status == 200
    assert answer["request_ids"] == [f"{answer['request_id']}/{row}" for row in range(3)]
    status, joined = post_json(
        port, "/v1/feedback", {"request_id": answer["request_ids"][2], "label": 0}
    )
    assert (status, joined["joined"]) == (200, True)
    # A label joins once: the same request id again is unknown.
    status, again = post_json(
        port, "/v1/feedback", {"request_id": answer["request_ids"][2], "label": 0}
    )
    assert (status, again["error"]["code"]) == (404, "unknown_request_id")


def post_npy(port: int, array: Any, request_id: str | None = None) -> tuple[int, dict[str, Any]]:
    stream = io.BytesIO()
    np.save(stream, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    headers = {"Content-Type": "application/x-npy"}
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/v1/predict", body=stream.getvalue(), headers=headers)
        response = conn.getresponse()
        document: dict[str, Any] = json.loads(response.read())
        return response.status, document
    finally:
        conn.close()


def inferences_total(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    found = re.search(r"^edgefleet_agent_inferences_total (\d+)", text, re.MULTILINE)
    assert found is not None, text
    return int(found.group(1))


def test_npy_predictions_are_counted_monitored_and_joined_by_request_id(
    tmp_path, mosquitto, packages: Packages, start_agent, drift_of, unique_id, wine_model
) -> None:
    device = f"npy-{unique_id}"
    sub = drift_of(device)
    agent = start_agent(profiled_config(tmp_path, mosquitto, device, packages.profiled))
    port = agent.api_port
    assert port is not None
    before = inferences_total(port)
    rows = wine_model.x_test[:12]
    request_ids, predicted = [], []
    for i, row in enumerate(rows[:9]):
        status, answer = post_npy(port, row[None, :], f"npy-{unique_id}-{i}" if i % 2 else None)
        assert status == 200, answer
        request_ids.append(answer["request_id"])
        predicted.append(answer["outputs"]["label"][0])
    status, answer = post_npy(port, rows[9:], f"npy-{unique_id}-batch")
    assert status == 200, answer
    request_ids += answer["request_ids"]
    predicted += answer["outputs"]["label"]
    assert request_ids[1] == f"npy-{unique_id}-1"
    assert request_ids[9:] == [f"npy-{unique_id}-batch/{row}" for row in range(3)]
    assert inferences_total(port) - before == 10  # nine single rows, one batch of three
    truth = [int(y) for y in wine_model.y_test[:12]]
    items = [{"request_id": r, "label": y} for r, y in zip(request_ids, truth, strict=True)]
    status, joined = post_json(port, "/v1/feedback", {"items": items})
    assert (status, joined["joined"], joined["unknown"]) == (200, 12, 0)
    agent.stop(5.0)
    [window] = wait_drift(sub, device, len(truth))
    assert window.count == len(truth)
    assert window.sketch is not None
    assert window.sketch.labelled == len(truth)
    report = evaluate(packages.profile(packages.profiled), window.sketch)
    assert report.metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "bad_json"),
        (b'{"label": 1}', "bad_request"),
        (b'{"request_id": "x"}', "bad_request"),
        (b'{"request_id": "x", "label": null}', "bad_request"),
        (b'{"request_id": "x", "label": [1, 2]}', "bad_request"),
        (b'{"request_id": 7, "label": 1}', "bad_request"),
        (b'{"request_id": "x", "label": 1, "extra": true}', "bad_request"),
        (b'{"items": []}', "bad_request"),
        (b'{"items": [{"request_id": "x"}]}', "bad_request"),
        (b"[1, 2]", "bad_request"),
    ],
)
def test_malformed_feedback_is_a_400_that_records_nothing(
    tmp_path, mosquitto, packages: Packages, start_agent, unique_id, wine_model, body, code
) -> None:
    agent = start_agent(profiled_config(tmp_path, mosquitto, f"bad-{unique_id}", packages.profiled))
    port = agent.api_port
    assert port is not None
    status, _ = post_json(
        port,
        "/v1/predict",
        {"inputs": {"input": wine_model.x_test[:1].tolist()}, "request_id": "x"},
    )
    assert status == 200
    status, error = post(port, "/v1/feedback", body)
    assert status == 400
    assert error["error"]["code"] == code
    assert error["error"]["message"]
    # Nothing was consumed: the prediction still takes its label.
    status, joined = post_json(port, "/v1/feedback", {"request_id": "x", "label": 1})
    assert (status, joined["joined"]) == (200, True)


def test_feedback_for_an_unknown_request_id_is_a_404_naming_it(
    tmp_path, mosquitto, packages: Packages, start_agent, unique_id
) -> None:
    agent = start_agent(profiled_config(tmp_path, mosquitto, f"unk-{unique_id}", packages.profiled))
    port = agent.api_port
    assert port is not None
    status, error = post_json(port, "/v1/feedback", {"request_id": "nope-123", "label": 2})
    assert status == 404
    assert error["error"]["code"] == "unknown_request_id"
    assert "nope-123" in error["error"]["message"]


def test_a_package_labelled_from_the_command_line_takes_feedback(
    tmp_path, mosquitto, start_agent, unique_id, wine_model
) -> None:
    """The README's ``edgefleet model package ... --labels``: feedback joins (it was a 409)."""
    reference, labels = tmp_path / "reference.npy", tmp_path / "labels.npy"
    np.save(reference, wine_model.x_train)
    np.save(labels, wine_model.y_train)
    argv = ["model", "package", str(wine_model.path), "--name", "wine", "--version", "1.0.0"]
    argv += ["--reference", str(reference), "--labels", str(labels), "--out", str(tmp_path)]
    assert main(argv) == 0
    package = Pkg(tmp_path / "wine-1.0.0.efpkg", "1.0.0")
    agent = start_agent(profiled_config(tmp_path, mosquitto, f"clilab-{unique_id}", package))
    port = agent.api_port
    assert port is not None
    status, answer = post_json(
        port, "/v1/predict", {"inputs": {"input": wine_model.x_test[:1].tolist()}}
    )
    assert status == 200
    feedback = {"request_id": answer["request_id"], "label": int(wine_model.y_test[0])}
    status, joined = post_json(port, "/v1/feedback", feedback)
    assert (status, joined) == (200, {"request_id": answer["request_id"], "joined": True})


def test_feedback_for_an_unmonitored_model_is_a_409(
    tmp_path, mosquitto, packages: Packages, start_agent, unique_id, wine_model
) -> None:
    agent = start_agent(profiled_config(tmp_path, mosquitto, f"unmon-{unique_id}", packages.bare))
    port = agent.api_port
    assert port is not None
    status, answer = post_json(
        port, "/v1/predict", {"inputs": {"input": wine_model.x_test[:1].tolist()}}
    )
    assert status == 200
    status, error = post_json(
        port, "/v1/feedback", {"request_id": answer["request_id"], "label": 1}
    )
    assert status == 409
    assert error["error"]["code"] == "not_monitored"


def test_reservoir_is_off_by_default_and_capped_when_on(
    tmp_path, mosquitto, packages: Packages, start_agent, unique_id, wine_model
) -> None:
    off = start_agent(profiled_config(tmp_path, mosquitto, f"roff-{unique_id}", packages.profiled))
    on = start_agent(
        profiled_config(
            tmp_path, mosquitto, f"ron-{unique_id}", packages.profiled, reservoir_size=5
        )
    )
    for agent in (off, on):
        for i in range(30):
            agent.infer({"input": wine_model.x_test[i : i + 1]})
    off_monitor, on_monitor = off.model_host.drift_monitor, on.model_host.drift_monitor
    assert off_monitor is not None
    assert on_monitor is not None
    assert off_monitor.reservoir_size == 0
    assert off_monitor.reservoir() == {}
    sample = on_monitor.reservoir()["input"]
    assert sample.shape == (5, wine_model.x_test.shape[1])
    # Every kept row is one the agent really saw.
    seen = {row.tobytes() for row in wine_model.x_test[:30]}
    assert all(row.tobytes() in seen for row in np.asarray(sample))
