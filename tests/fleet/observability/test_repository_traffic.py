"""`RepositoryTraffic`: every ``/v1/repository`` answer is counted, whoever made it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.observability.metrics import FleetMetrics
from edgefleet.fleet.observability.repository_traffic import kind_of
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import create_all


def test_paths_map_to_a_bounded_kind() -> None:
    assert kind_of("/v1/repository/metadata/1.root.json") == "metadata"
    assert kind_of("/v1/repository/targets/abc.wine.onnx") == "target"
    assert kind_of("/v1/repository/targets-metadata") == "other"
    assert kind_of("/v1/repository/anything/else") == "other"
    assert kind_of("/v1/devices") is None
    assert kind_of("/v1/repositoryx") is None


def test_refusals_are_counted_with_their_status_and_body_bytes() -> None:
    engine = make_engine("sqlite://")
    create_all(engine)
    app = create_app(FleetSettings(), engine=engine)
    metrics: FleetMetrics = app.state.metrics
    with TestClient(app) as client:
        refused = client.get("/v1/repository/metadata/timestamp.json")  # no credential
        assert refused.status_code == 401
        client.get("/v1/repository/targets/abc.wine.onnx")
        client.get("/v1/devices")  # not the repository: not counted
    value = metrics.registry.get_sample_value
    assert value("edgefleet_repository_requests_total", {"kind": "metadata", "status": "401"}) == 1
    assert value("edgefleet_repository_requests_total", {"kind": "target", "status": "401"}) == 1
    assert value("edgefleet_repository_sent_bytes_total", {"kind": "metadata"}) == len(
        refused.content
    )
    assert value("edgefleet_repository_sent_bytes_total", {"kind": "other"}) == 0
    engine.dispose()
