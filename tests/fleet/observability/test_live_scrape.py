"""A running fleet's ``/metrics`` has real values, and the Grafana dashboard queries only
what it exports.

One real fleet (lab keys, a real Mosquitto, SQLite, the drift monitor on its own
half-second timer) runs a two-wave rollout on two protocol-level devices whose windows
after the update are shifted by one standard deviation, serves repository metadata
(one hit, one miss), and evaluates drift. Everything is read back from the live scrape
over HTTP, parsed with prometheus-client's parser, never from the registry object.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fleet.publisher import wait_until
from tests.fleet.rollout_service.conftest import (  # noqa: F401  (fixtures)
    FAST,
    StartDevices,
    drift_packages,
    publish_models,
    start_devices,
    wine_windows,
)
from tests.fleet.rollout_service.wine_windows import WineWindows
from tests.support.fleet_fixtures import DEVICE_TOKEN, MakeFleet, admin_client
from tests.support.promql import dashboard_queries, metric_names
from tests.support.rollouts import wait_status
from tests.support.scrape import Scrape, scrape

DASHBOARD = Path(__file__).parents[3] / "packaging/grafana/edgefleet-fleet.json"
SOAK_S = 1.0


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: what is exported does not depend on the database."""
    return f"sqlite:///{tmp_path / 'fleet.db'}"


def test_a_live_fleet_exports_real_values_and_every_metric_the_dashboard_queries(
    make_fleet: MakeFleet,
    start_devices: StartDevices,  # noqa: F811
    drift_packages: dict[str, Path],  # noqa: F811
    wine_windows: WineWindows,  # noqa: F811
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST, drift_interval_s=0.5)
    metrics_url = f"{fleet.base_url}/metrics"
    tag = f"t-{unique_id}"
    with admin_client(fleet) as api:
        publish_models(api, drift_packages, fleet.engine)
        devices = start_devices(
            fleet, api, 2, drift=wine_windows.source(version="1.1.0", shift=1.0)
        )
        created = api.post(
            "/v1/rollouts",
            json={
                "model": "wine",
                "version": "1.1.0",
                "selector": {"tags": [tag]},
                "waves": [{"count": 1}, {"fraction": 1.0}],
                "gate": {"soak_s": SOAK_S, "timeout_s": 30},
            },
        )
        assert created.status_code == 201, created.text

        # While it runs: both devices counted, by the states the orchestrator holds.
        during: list[Scrape] = []

        def running() -> bool:
            during.append(scrape(metrics_url))
            return during[-1].value("edgefleet_rollouts_active", status="running") == 1

        wait_until(running, what="the running rollout in the scrape")
        assert during[-1].total("edgefleet_rollout_devices") == 2
        assert during[-1].value("edgefleet_rollout_lease_held") == 1

        wait_status(api, created.json()["id"], {"completed"})
        device = {"Authorization": f"Bearer {DEVICE_TOKEN}"}
        timestamp = api.get("/v1/repository/metadata/timestamp.json", headers=device)
        assert timestamp.status_code == 200
        assert api.get("/v1/repository/metadata/nope.json", headers=device).status_code == 404

    ids = list(devices.devices)
    expected_psi, _ = wine_windows.expected_score(ids, "1.1.0")
    fleet_slice = {"model": "wine", "version": "1.1.0", "slice": "fleet", "score": "psi"}

    def judged() -> bool:
        # Both windows stored and evaluated together (an evaluation between the two
        # devices' windows scores one of them), and the alert counted.
        found = scrape(metrics_url)
        score = found.value("edgefleet_drift_score", **fleet_slice)
        return (
            score is not None
            and abs(score - expected_psi) <= 1e-6 * expected_psi
            and found.total("edgefleet_drift_alerts_total") >= 1
        )

    wait_until(judged, timeout_s=20, what=f"the drift monitor to score PSI {expected_psi}")
    found = scrape(metrics_url)
    assert found.content_type.startswith("text/plain")

    # Rollouts: two gates passed, each wave timed from its start, at least its soak.
    assert found.value("edgefleet_rollout_gate_decisions_total", result="passed") == 2
    assert found.value("edgefleet_rollout_gate_decisions_total", result="failed") == 0
    assert found.value("edgefleet_rollout_wave_duration_seconds_count", result="passed") == 2
    wave_s = found.value("edgefleet_rollout_wave_duration_seconds_sum", result="passed")
    assert wave_s is not None
    assert 2 * SOAK_S <= wave_s < 30
    # Completed, so no longer active: the gauges say so from the orchestrator's next tick.
    wait_until(
        lambda: scrape(metrics_url).total("edgefleet_rollouts_active") == 0,
        what="the completed rollout to leave the active gauges",
    )
    assert scrape(metrics_url).total("edgefleet_rollout_devices") == 0

    # Drift: the fleet slice's PSI is the one the merged windows give; the tag slice
    # (the same two devices) too; no device slice is a label; alerts were counted.
    assert found.value("edgefleet_drift_score", **fleet_slice) == pytest.approx(expected_psi)
    tag_slice = fleet_slice | {"slice": f"tag:{tag}"}
    assert found.value("edgefleet_drift_score", **tag_slice) == pytest.approx(expected_psi)
    assert expected_psi > 0.25  # a real shift, not a zero that would pass by accident
    slices = {labels["slice"] for labels in found.labels("edgefleet_drift_score")}
    assert not [s for s in slices if s.startswith("device:")], slices
    assert found.total("edgefleet_drift_alerts_total", kind="data_drift") >= 1
    assert (found.value("edgefleet_drift_evaluation_seconds_count") or 0) >= 1

    # Director: one desired state per device and wave at least, each batch timed.
    assert (found.value("edgefleet_director_desired_published_total", outcome="ok") or 0) >= 2
    assert found.value("edgefleet_director_desired_published_total", outcome="failed") == 0
    assert (found.value("edgefleet_director_publish_seconds_count") or 0) >= 1
    assert (found.value("edgefleet_director_publish_seconds_sum") or 0) > 0

    # Repository: the hit and the miss by status, and the bytes of the hit at least.
    metadata = {"kind": "metadata"}
    assert (found.value("edgefleet_repository_requests_total", **metadata, status="200") or 0) >= 1
    assert found.value("edgefleet_repository_requests_total", **metadata, status="404") == 1
    sent = found.value("edgefleet_repository_sent_bytes_total", **metadata) or 0
    assert sent >= len(timestamp.content)

    # Ingest lag: every stored device message observed (2 births, 12 events, 2 windows).
    assert found.total("edgefleet_ingest_lag_seconds_count") >= 16
    assert found.value("edgefleet_ingest_lag_seconds_count", channel="drift") == 2
    assert 0 <= found.total("edgefleet_ingest_lag_seconds_sum") < 60

    # Bounded labels: no device id anywhere in the scrape.
    offending = [s for s in found.samples for v in s.labels.values() if v in ids or "sim-" in v]
    assert not offending, offending

    # The dashboard: every metric name of every query is a sample name of this scrape.
    queries = list(dashboard_queries(DASHBOARD))
    assert len(queries) >= 15
    missing = {
        (title, name)
        for title, expr in queries
        for name in metric_names(expr)
        if name not in found.names
    }
    assert not missing, f"dashboard queries name metrics the fleet does not export: {missing}"
