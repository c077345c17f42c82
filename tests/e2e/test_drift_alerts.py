"""Drift end to end: real agents → Mosquitto → fleet ingest → drift monitor → alerts.

In-process `edgefleet.agent.daemon.Agent`s serve a packaged wine model whose reference profile
carries a label spec; the same package is uploaded to the fleet's registry
(``POST /v1/models``), which is how the fleet learns the profile. The fleet's drift
monitor runs every 0.5 s; alerts are checked in the REST API, on the MQTT alerts topic
(a plain paho subscriber) and at a stdlib webhook receiver. Each test runs on SQLite
and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from edgefleet.agent.daemon import Agent
from edgefleet.fleet.drift.notify import WebhookPayload
from edgefleet.fleet.service import FleetService
from edgefleet.shared.drift import ReferenceProfile, build_profile
from edgefleet.shared.messages import AlertMessage
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.shared.package.read import read_package
from edgefleet.shared.topics import ALERTS_TOPIC
from edgefleet.simulators.models import SensorFeed, TrainedModel
from tests.e2e.conftest import Console, eventually
from tests.support.agent import Subscriber, agent_config
from tests.support.mosquitto import MosquittoBroker
from tests.support.webhooks import WebhookReceiver

pytestmark = pytest.mark.slow

MODEL, VERSION = "wine", "1.0.0"
WINDOW_ROWS = 200  # the fleet's default min_count: one window is enough to judge
FAST_DRIFT = {"window_count": WINDOW_ROWS, "window_s": 0.5, "tick_s": 0.05}


@pytest.fixture(scope="session")
def wine_package(tmp_path_factory: pytest.TempPathFactory, wine_model: TrainedModel) -> Path:
    """The wine model packaged with a reference profile (training rows + their labels)."""
    out = tmp_path_factory.mktemp("e2e-drift-package")
    reference = out / "reference.npy"
    np.save(reference, wine_model.x_train)

    def labelled(
        inputs: dict[str, NDArray[Any]],
        outputs: dict[str, NDArray[Any]],
        feature_names: list[str] | None,
    ) -> ReferenceProfile:
        return build_profile(
            inputs, outputs, feature_names=feature_names, labels=wine_model.y_train
        )

    return build_package(
        wine_model.path,
        name=MODEL,
        version=VERSION,
        out_dir=out,
        reference_data=reference,
        feature_names=wine_model.feature_names,
        golden_count=8,
        profile_builder=labelled,
    )


@pytest.fixture
def start_agent() -> Iterator[Callable[..., Agent]]:
    started: list[Agent] = []

    def start(
        tmp_path: Path, broker: MosquittoBroker, device_id: str, package: Path, tag: str
    ) -> Agent:
        config = agent_config(
            tmp_path,
            broker,
            device_id,
            model={"path": str(package)},
            drift=FAST_DRIFT,
            tags=[tag],
        )
        agent = Agent(config)
        agent.start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop(2.0)


@pytest.fixture
def alerts_topic(mosquitto: MosquittoBroker) -> Iterator[Subscriber]:
    subscriber = Subscriber(mosquitto.port, [ALERTS_TOPIC])
    yield subscriber
    subscriber.close()


def _fleet_with_model(
    start_fleet: Callable[..., FleetService], broker: MosquittoBroker, package: Path
) -> tuple[FleetService, Console]:
    """A fleet with a fast drift monitor that knows ``package``'s reference profile.

    The profile is registered with ``PUT /v1/drift/reference``: ``POST /v1/models`` of a
    profiled package answers 500 for now (see
    `test_uploading_a_profiled_package_registers_its_reference_profile`).
    """
    fleet = start_fleet(
        broker.url,
        drift_interval_s=0.5,
        drift_cooldown_s=3600,
        webhook_allowed_networks=["127.0.0.0/8"],  # the test's receiver is on loopback
    )
    console = Console(fleet)
    manifest = read_package(package)[0]
    response = console.client.put(
        f"/v1/drift/reference/{manifest.name}/{manifest.version}",
        json=manifest.reference_profile,
    )
    assert response.status_code == 201, response.text
    return fleet, console


def test_uploading_a_profiled_package_registers_its_reference_profile(
    mosquitto: MosquittoBroker,
    start_fleet: Callable[..., FleetService],
    wine_package: Path,
) -> None:
    console = Console(start_fleet(mosquitto.url))
    with wine_package.open("rb") as f:
        uploaded = console.client.post("/v1/models", files={"package": (wine_package.name, f)})
    assert uploaded.status_code == 201, uploaded.text
    thresholds = console.client.get(f"/v1/drift/thresholds/{MODEL}")
    assert thresholds.status_code == 200, "the model is known to drift monitoring"
    stored = console.client.put(
        f"/v1/drift/reference/{MODEL}/{VERSION}",
        json=read_package(wine_package)[0].reference_profile,
    )
    assert stored.status_code == 200, "the upload registered this very profile already"


def _subscribe_webhook(console: Console, receiver: WebhookReceiver, kinds: list[str]) -> None:
    response = console.client.post("/v1/webhooks", json={"url": receiver.url, "kinds": kinds})
    assert response.status_code == 201, response.text


def _slice_query(device_id: str) -> dict[str, str]:
    return {"model": MODEL, "version": VERSION, "device": device_id}


def _scores(console: Console, device_id: str) -> dict[str, Any]:
    response = console.client.get("/v1/drift/scores", params=_slice_query(device_id))
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def _metrics(console: Console, device_id: str) -> dict[str, Any]:
    response = console.client.get("/v1/drift/metrics", params=_slice_query(device_id))
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def _has_at_least(console: Console, path: str, device_id: str, field: str, n: int) -> bool:
    response = console.client.get(path, params=_slice_query(device_id))
    response.raise_for_status()
    value: int = response.json()[field]
    return value >= n


def _alerts(console: Console) -> list[dict[str, Any]]:
    response = console.client.get("/v1/alerts", params={"model": MODEL})
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _alert_slices(console: Console, kind: str) -> set[str]:
    return {a["slice_key"] for a in _alerts(console) if a["kind"] == kind}


def _mqtt_alerts(subscriber: Subscriber) -> list[AlertMessage]:
    return [AlertMessage.model_validate_json(r.payload) for r in subscriber.on("alerts")]


def test_shifted_devices_raise_data_drift_alerts_on_rest_mqtt_and_webhook_calm_ones_do_not(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    start_fleet: Callable[..., FleetService],
    start_agent: Callable[..., Agent],
    wine_model: TrainedModel,
    wine_package: Path,
    webhook_receiver: WebhookReceiver,
    alerts_topic: Subscriber,
    unique_id: str,
) -> None:
    fleet, console = _fleet_with_model(start_fleet, mosquitto, wine_package)
    _subscribe_webhook(console, webhook_receiver, ["data_drift"])
    shifted = [f"shifted{i}-{unique_id}" for i in range(2)]
    calm = f"calm-{unique_id}"
    rows = 2 * WINDOW_ROWS
    for i, device_id in enumerate([*shifted, calm]):
        agent = start_agent(
            tmp_path, mosquitto, device_id, wine_package, "shifted" if i < 2 else "calm"
        )
        feed = SensorFeed(wine_model.x_train, seed=i)
        feed.shift = 1.5 if device_id in shifted else 0.0
        for _ in range(rows // 50):
            agent.infer({"input": feed.sample(50)})

    for device_id in [*shifted, calm]:
        eventually(
            partial(_has_at_least, console, "/v1/drift/scores", device_id, "count", rows),
            what=f"{rows} rows of {device_id} stored by the fleet",
        )
    assert fleet.drift_monitor is not None
    fleet.drift_monitor.run_once()  # at least one evaluation sees every window

    for device_id in shifted:
        scores = _scores(console, device_id)
        assert (scores["judged"], scores["data_drift"]) == (True, True)
        assert len(scores["drifted_inputs"]) >= 5, scores["drifted_inputs"]
    calm_scores = _scores(console, calm)
    assert (calm_scores["judged"], calm_scores["data_drift"]) == (True, False)
    assert calm_scores["drifted_inputs"] == []

    def both_shifted_alerted() -> set[str] | None:
        slices = _alert_slices(console, "data_drift")
        return slices if slices >= {f"device:{d}" for d in shifted} else None

    drifted = eventually(both_shifted_alerted, what="data-drift alerts for both shifted devices")
    assert "tag:shifted" in drifted
    assert f"device:{calm}" not in drifted
    assert "tag:calm" not in drifted
    assert all(
        a["slice_key"] not in (f"device:{calm}", "tag:calm")
        for a in _alerts(console)
        if a["kind"] in ("data_drift", "prediction_drift")
    )

    # MQTT: a valid AlertMessage per shifted device on the fleet's alerts topic.
    def both_shifted_published() -> list[AlertMessage] | None:
        messages = _mqtt_alerts(alerts_topic)
        devices = {a.device_id for a in messages if a.kind == "data_drift"}
        return messages if devices >= set(shifted) else None

    published = eventually(
        both_shifted_published, what="data-drift AlertMessages on the alerts topic"
    )
    for message in published:
        assert message.device_id != calm
    device_alert = next(m for m in published if m.device_id == shifted[0])
    assert device_alert.severity == "warning"
    assert device_alert.evidence["model"] == {"name": MODEL, "version": VERSION}
    assert device_alert.evidence["drifted_inputs"]
    assert device_alert.id in {a["id"] for a in _alerts(console)}

    # Webhook: the alert plus a retraining trigger naming the model and the slice.
    def both_shifted_posted() -> list[dict[str, Any]] | None:
        bodies = webhook_receiver.received()
        devices = {b["alert"]["device_id"] for b in bodies}
        return bodies if devices >= set(shifted) else None

    hooked = eventually(both_shifted_posted, what="data-drift webhooks for both shifted devices")
    payloads = [WebhookPayload.model_validate(body) for body in hooked]
    assert {p.alert.kind for p in payloads} == {"data_drift"}
    trigger = next(p.retraining for p in payloads if p.alert.device_id == shifted[1])
    assert trigger.reason == "data_drift"
    assert (trigger.model.name, trigger.model.version) == (MODEL, VERSION)
    assert trigger.slice == {"device": shifted[1]}
    assert trigger.window_start is not None
    assert trigger.evidence["drifted_inputs"]
    assert calm not in {p.alert.device_id for p in payloads}


def _predict(port: int, rows: NDArray[np.float32]) -> tuple[list[str], list[int]]:
    response = httpx.post(
        f"http://127.0.0.1:{port}/v1/predict", json={"inputs": {"input": rows.tolist()}}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    return list(answer["request_ids"]), [int(v) for v in answer["outputs"]["label"]]


def _feedback(port: int, request_ids: list[str], labels: list[int]) -> None:
    items = [{"request_id": r, "label": y} for r, y in zip(request_ids, labels, strict=True)]
    response = httpx.post(f"http://127.0.0.1:{port}/v1/feedback", json={"items": items})
    assert response.status_code == 200, response.text
    assert response.json()["joined"] == len(items)


def test_permuted_feedback_labels_raise_concept_drift_with_a_retraining_webhook(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    start_fleet: Callable[..., FleetService],
    start_agent: Callable[..., Agent],
    wine_model: TrainedModel,
    wine_package: Path,
    webhook_receiver: WebhookReceiver,
    alerts_topic: Subscriber,
    unique_id: str,
) -> None:
    fleet, console = _fleet_with_model(start_fleet, mosquitto, wine_package)
    _subscribe_webhook(console, webhook_receiver, [])
    relabelled, honest = f"relabelled-{unique_id}", f"honest-{unique_id}"
    rng = np.random.default_rng(5)
    rows = 250
    for device_id in (relabelled, honest):
        agent = start_agent(tmp_path, mosquitto, device_id, wine_package, device_id)
        port = agent.api_port
        assert port is not None
        # Inputs from the reference itself: whatever happens to accuracy, not data drift.
        picked = rng.integers(0, len(wine_model.x_train), rows)
        truth = wine_model.y_train[picked]
        if device_id == relabelled:
            truth = (truth + 1) % 3  # the world now names every class differently
        for start in range(0, rows, 50):
            request_ids, _ = _predict(port, wine_model.x_train[picked[start : start + 50]])
            _feedback(port, request_ids, [int(y) for y in truth[start : start + 50]])

    for device_id in (relabelled, honest):
        eventually(
            partial(_has_at_least, console, "/v1/drift/metrics", device_id, "labelled", rows),
            what=f"{rows} labels of {device_id} stored by the fleet",
        )
    assert fleet.drift_monitor is not None
    fleet.drift_monitor.run_once()

    worse, fine = _metrics(console, relabelled), _metrics(console, honest)
    assert worse["performance_drop"] is True
    assert worse["metrics"]["accuracy"] < 0.1
    assert {d["metric"] for d in worse["metric_drops"] if d["dropped"]} >= {"accuracy"}
    assert fine["performance_drop"] is False
    assert fine["metrics"]["accuracy"] >= worse["baseline"]["accuracy"] - 0.05
    relabelled_scores = _scores(console, relabelled)
    assert (relabelled_scores["judged"], relabelled_scores["data_drift"]) == (True, False)

    eventually(
        lambda: f"device:{relabelled}" in _alert_slices(console, "concept_drift"),
        what="a concept-drift alert for the relabelled device",
    )
    for alert in _alerts(console):
        assert alert["slice_key"] not in (f"device:{honest}", f"tag:{honest}"), alert
        if alert["slice_key"] == f"device:{relabelled}":
            # Stable inputs: the rules call it concept drift, never a drop with drift.
            assert alert["kind"] == "concept_drift", alert
            assert alert["severity"] == "critical"
            assert alert["evidence"]["drifted_inputs"] == []

    message = eventually(
        lambda: next(
            (
                m
                for m in _mqtt_alerts(alerts_topic)
                if m.kind == "concept_drift" and m.device_id == relabelled
            ),
            None,
        ),
        what="the concept-drift AlertMessage on the alerts topic",
    )
    assert message.severity == "critical"
    accuracy_drop = next(d for d in message.evidence["metric_drops"] if d["metric"] == "accuracy")
    assert accuracy_drop["dropped"] is True

    payload = eventually(
        lambda: next(
            (
                WebhookPayload.model_validate(b)
                for b in webhook_receiver.received()
                if b["alert"]["kind"] == "concept_drift" and b["alert"]["device_id"] == relabelled
            ),
            None,
        ),
        what="the concept-drift webhook",
    )
    assert payload.retraining.reason == "concept_drift"
    assert payload.retraining.alert_id == payload.alert.id == message.id
    assert payload.retraining.slice == {"device": relabelled}
    assert (payload.retraining.model.name, payload.retraining.model.version) == (MODEL, VERSION)
