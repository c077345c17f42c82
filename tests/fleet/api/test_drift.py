"""``/v1/drift``, ``/v1/alerts`` and ``/v1/webhooks`` over ingested windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from edgefleet.fleet.drift.monitor import DriftMonitorService
from edgefleet.fleet.drift.notify import Notifier
from edgefleet.shared.messages import utcnow
from tests.fleet.drift.conftest import MODEL, VERSION, Fleet, Window, WineData

HOUR = timedelta(hours=1)


def seed(fleet: Fleet, wine: WineData) -> datetime:
    """Two devices on rpi4/tag lab (calm) and jetson/tag edge (shifted), over two hours."""
    now = utcnow()
    t0 = datetime.fromtimestamp(int(now.timestamp()) // 3600 * 3600, UTC) - 2 * HOUR
    fleet.register(wine.profile)
    fleet.birth("calm", tags=["lab"], hardware="rpi4", ts=now)
    fleet.birth("hot", tags=["edge"], hardware="jetson", ts=now)
    fleet.send(
        [
            Window("calm", t0, wine.unlabelled(150, seed=1)),
            Window("calm", t0 + HOUR, wine.unlabelled(150, seed=2)),
            Window("hot", t0, wine.unlabelled(120, seed=3)),
            Window("hot", t0 + HOUR, wine.unlabelled(200, shift=1.0, seed=4)),
            Window("calm", t0 + 5 * timedelta(minutes=1), wine.labelled(120, wrong=0.3, seed=5)),
        ]
    )
    return t0


def test_scores_of_a_slice_merge_its_windows_and_judge_them(
    fleet: Fleet, wine: WineData, drift_api: TestClient
) -> None:
    t0 = seed(fleet, wine)
    q = {"model": MODEL, "version": VERSION}
    calm = drift_api.get("/v1/drift/scores", params=q | {"tag": "lab"}).json()
    assert (calm["windows"], calm["count"], calm["devices"]) == (3, 420, 1)
    assert calm["judged"] is True
    assert calm["data_drift"] is False
    names = [f["scores"]["name"] for f in calm["features"]]
    assert names[: wine.model.n_features] == wine.model.feature_names
    hot = drift_api.get("/v1/drift/scores", params=q | {"hardware": "jetson"}).json()
    assert (hot["count"], hot["data_drift"], hot["prediction_drift"]) == (320, True, True)
    assert calm["slice"] == {"tag": "lab"}
    # The first hour alone: the shifted window is outside it, the device is too small.
    early = drift_api.get(
        "/v1/drift/scores",
        params=q | {"device": "hot", "until": (t0 + HOUR).isoformat()},
    ).json()
    assert (early["count"], early["judged"], early["data_drift"]) == (120, False, False)
    # A slow sensor's slice says why it has no verdict (it used to say nothing).
    assert early["not_judged"].startswith("120 rows in the range, 200 needed for a verdict")
    assert calm["not_judged"] is None
    whole = drift_api.get("/v1/drift/scores", params=q).json()
    assert whole["count"] == 740
    assert whole["devices"] == 2


def test_metrics_of_a_slice_show_the_accuracy_drop(
    fleet: Fleet, wine: WineData, drift_api: TestClient
) -> None:
    seed(fleet, wine)
    body = drift_api.get(
        "/v1/drift/metrics", params={"model": MODEL, "version": VERSION, "device": "calm"}
    ).json()
    assert body["labelled"] == 120
    assert body["baseline"]["accuracy"] == 1.0
    assert 0.5 < body["metrics"]["accuracy"] < 0.85
    assert body["classification"]["count"] == 120
    assert body["performance_drop"] is True
    none = drift_api.get(
        "/v1/drift/metrics", params={"model": MODEL, "version": VERSION, "device": "hot"}
    ).json()
    assert (none["labelled"], none["metrics"], none["performance_drop"]) == (0, {}, False)


def test_timeseries_buckets_windows_by_start(
    fleet: Fleet, wine: WineData, drift_api: TestClient
) -> None:
    t0 = seed(fleet, wine)
    body = drift_api.get(
        "/v1/drift/timeseries", params={"model": MODEL, "version": VERSION, "bucket_s": 3600}
    ).json()
    points = [
        (datetime.fromisoformat(p["start"]), p["windows"], p["count"], p["data_drift"])
        for p in body["points"]
    ]
    assert points == [(t0, 3, 390, False), (t0 + HOUR, 2, 350, True)]
    assert set(body["points"][1]["psi"]) >= set(wine.model.feature_names)
    daily = drift_api.get(
        "/v1/drift/timeseries", params={"model": MODEL, "version": VERSION, "bucket_s": 86400}
    ).json()
    assert sum(p["count"] for p in daily["points"]) == 740
    # Below a minute too (it used to refuse under 60 s): windows of a short drift window.
    fine = drift_api.get(
        "/v1/drift/timeseries", params={"model": MODEL, "version": VERSION, "bucket_s": 10}
    ).json()
    starts = [(datetime.fromisoformat(p["start"]), p["windows"]) for p in fine["points"]]
    assert starts == [(t0, 2), (t0 + timedelta(minutes=5), 1), (t0 + HOUR, 2)]


def test_threshold_overrides_change_the_verdict(
    fleet: Fleet, wine: WineData, drift_api: TestClient
) -> None:
    seed(fleet, wine)
    q = {"model": MODEL, "version": VERSION, "device": "hot"}
    assert drift_api.get("/v1/drift/scores", params=q).json()["data_drift"] is True
    lenient = {"defaults": {"psi_alert": 100.0, "alert_on": ["psi"]}, "min_drifted_outputs": 99}
    put = drift_api.put(f"/v1/drift/thresholds/{MODEL}", json=lenient)
    assert put.status_code == 200, put.text
    assert put.json()["defaults"]["psi_alert"] == 100.0
    relaxed = drift_api.get("/v1/drift/scores", params=q).json()
    assert (relaxed["data_drift"], relaxed["prediction_drift"]) == (False, False)
    # One feature held to a strict limit is enough to flag the slice again.
    strict = lenient | {"features": {"alcohol": {"psi_alert": 0.2}}}
    assert drift_api.put(f"/v1/drift/thresholds/{MODEL}", json=strict).status_code == 200
    again = drift_api.get("/v1/drift/scores", params=q).json()
    assert (again["data_drift"], again["drifted_inputs"]) == (True, ["alcohol"])
    stored = drift_api.get(f"/v1/drift/thresholds/{MODEL}").json()
    assert stored["features"]["alcohol"]["psi_alert"] == 0.2


def test_alerts_are_listed_by_time_and_kind(
    fleet: Fleet, wine: WineData, drift_api: TestClient
) -> None:
    seed(fleet, wine)
    monitor = DriftMonitorService(
        fleet.engine, Notifier(fleet.engine, publisher=None), lookback_s=4 * 3600
    )
    now = utcnow()
    raised = monitor.run_once(now)
    assert raised
    listed = drift_api.get("/v1/alerts").json()["items"]
    assert {a["id"] for a in listed} == {a.id for a in raised}
    concept = drift_api.get("/v1/alerts", params={"kind": "concept_drift"}).json()["items"]
    assert {a["slice_key"] for a in concept} >= {"device:calm"}
    assert all(a["kind"] == "concept_drift" for a in concept)
    later = (now + timedelta(seconds=1)).isoformat()
    assert drift_api.get("/v1/alerts", params={"since": later}).json()["items"] == []


def test_webhooks_can_be_added_listed_and_removed(drift_api: TestClient) -> None:
    created = drift_api.post(
        "/v1/webhooks", json={"url": "https://hooks.example/drift", "kinds": ["concept_drift"]}
    )
    assert created.status_code == 201
    hook = created.json()
    assert hook["kinds"] == ["concept_drift"]
    assert [h["id"] for h in drift_api.get("/v1/webhooks").json()["items"]] == [hook["id"]]
    assert drift_api.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["items"] == []
    assert drift_api.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert drift_api.get("/v1/webhooks").json()["items"] == []
    gone = drift_api.delete(f"/v1/webhooks/{hook['id']}")
    assert gone.status_code == 404


def test_times_without_an_offset_are_utc_on_every_drift_read(
    fleet: Fleet, wine: WineData, drift_api: TestClient
) -> None:
    """A 500 once windows existed: the naive bound was compared with aware window times."""
    t0 = seed(fleet, wine)
    q = {"model": MODEL, "version": VERSION, "device": "hot"}
    naive = {"since": (t0 + HOUR).replace(tzinfo=None).isoformat()}
    aware = {"since": (t0 + HOUR).isoformat()}
    for path in ("/v1/drift/scores", "/v1/drift/metrics", "/v1/drift/timeseries"):
        answer = drift_api.get(path, params=q | naive)
        assert answer.status_code == 200, (path, answer.text)
        assert answer.json() == drift_api.get(path, params=q | aware).json()
    assert drift_api.get("/v1/drift/scores", params=q | naive).json()["count"] == 200


def test_bad_requests_get_clear_4xx(fleet: Fleet, wine: WineData, drift_api: TestClient) -> None:
    seed(fleet, wine)
    q = {"model": MODEL, "version": VERSION}
    unknown = drift_api.get("/v1/drift/scores", params={"model": "nope", "version": "1"})
    assert unknown.status_code == 404
    assert "nope" in unknown.json()["error"]["message"]
    no_ref = drift_api.get("/v1/drift/scores", params={"model": MODEL, "version": "9.9"})
    assert no_ref.status_code == 404
    assert "no reference profile" in no_ref.json()["error"]["message"]
    now = utcnow().isoformat()
    backwards = drift_api.get("/v1/drift/scores", params=q | {"since": now, "until": now})
    assert backwards.status_code == 422
    assert "must be before until" in backwards.json()["error"]["message"]
    assert drift_api.get("/v1/drift/scores", params={"model": MODEL}).status_code == 422
    assert drift_api.get("/v1/drift/timeseries", params=q | {"bucket_s": 0}).status_code == 422
    negative = drift_api.put(f"/v1/drift/thresholds/{MODEL}", json={"defaults": {"psi_alert": -1}})
    assert negative.status_code == 422
    assert (
        "invalid body.defaults.psi_alert: Input should be greater than or equal to 0"
        in (negative.json()["error"]["message"])
    )
    pvalue = drift_api.put(f"/v1/drift/thresholds/{MODEL}", json={"defaults": {"ks_pvalue": 2}})
    assert (
        "invalid body.defaults.ks_pvalue: Input should be less than or equal to 1"
        in (pvalue.json()["error"]["message"])
    )
    ghost = drift_api.put(
        f"/v1/drift/thresholds/{MODEL}", json={"features": {"colour": {"psi_alert": 0.1}}}
    )
    assert ghost.status_code == 422
    assert "colour" in ghost.json()["error"]["message"]
    assert drift_api.put("/v1/drift/thresholds/nope", json={}).status_code == 404
    assert drift_api.put(f"/v1/drift/thresholds/{MODEL}", json={"min_count": 0}).status_code == 422
    # Nothing was stored by the refused requests.
    assert drift_api.get(f"/v1/drift/thresholds/{MODEL}").json()["defaults"]["psi_alert"] == 0.25
    tampered = wine.profile.model_dump(mode="json") | {"rows": 1}
    bad_ref = drift_api.put(f"/v1/drift/reference/{MODEL}/2.0.0", json=tampered)
    assert bad_ref.status_code == 422
    assert "profile_id" in bad_ref.json()["error"]["message"]
    assert drift_api.post("/v1/webhooks", json={"url": "ftp://example.org/x"}).status_code == 422
    assert (
        drift_api.post("/v1/webhooks", json={"url": "https://x.org/", "kinds": ["?"]}).status_code
        == 422
    )
    anonymous = drift_api.get("/v1/alerts", headers={"Authorization": ""})
    assert anonymous.status_code == 401


def test_a_reference_profile_registered_over_http_is_used(
    fleet: Fleet, wine: WineData, drift_api: TestClient
) -> None:
    body = wine.profile.model_dump(mode="json")
    first = drift_api.put(f"/v1/drift/reference/{MODEL}/2.0.0", json=body)
    assert first.status_code == 201
    assert first.json()["profile_id"] == wine.profile.profile_id
    assert drift_api.put(f"/v1/drift/reference/{MODEL}/2.0.0", json=body).status_code == 200
    fleet.send([Window("hot", utcnow() - HOUR, wine.unlabelled(250, shift=1.0), version="2.0.0")])
    scores = drift_api.get("/v1/drift/scores", params={"model": MODEL, "version": "2.0.0"}).json()
    assert (scores["count"], scores["data_drift"]) == (250, True)
