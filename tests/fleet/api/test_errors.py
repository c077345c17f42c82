"""Every 4xx and 5xx of the API has one body, `ErrorBody`, and the OpenAPI lists them."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.api.errors import ErrorBody
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import make_engine
from tests.support.fleet_fixtures import ADMIN_TOKEN, MakeFleet

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _error(response: httpx.Response) -> ErrorBody:
    assert response.headers["content-type"] == "application/json"
    return ErrorBody.model_validate(response.json())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_routing_and_validation_errors_share_the_format(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    with httpx.Client(base_url=fleet.base_url, headers=AUTH, timeout=10) as client:
        unknown = client.get("/v1/no-such-thing")
        assert unknown.status_code == 404
        assert _error(unknown).error.code == "not_found"

        wrong_method = client.delete("/v1/devices")
        assert wrong_method.status_code == 405
        assert _error(wrong_method).error.code == "method_not_allowed"

        huge_offset = client.get("/v1/devices", params={"offset": str(2**64)})
        assert huge_offset.status_code == 422
        body = _error(huge_offset).error
        assert body.code == "invalid_request"
        assert body.message.startswith("invalid query.offset:")
        assert body.details is not None
        assert body.details[0].loc == ["query", "offset"]

        not_json = client.post(
            "/v1/rollouts", content=b"\xff{", headers={"content-type": "application/json"}
        )
        assert not_json.status_code in (400, 422)
        assert _error(not_json).error.code in ("bad_request", "invalid_request")

        # Far beyond what a timedelta holds: refused on the way in, never stored.
        absurd = client.post(
            "/v1/rollouts", json={"model": "wine", "version": "1", "gate": {"timeout_s": 1e15}}
        )
        assert absurd.status_code == 422
        assert _error(absurd).error.details[0].loc == ["body", "gate", "timeout_s"]  # type: ignore[index]

        no_token = httpx.get(f"{fleet.base_url}/v1/devices", timeout=10)
        assert no_token.status_code == 401
        assert no_token.headers["www-authenticate"] == "Bearer"
        assert _error(no_token).error.code


def test_an_unexpected_exception_is_a_500_that_names_no_internals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(FleetSettings(), engine=make_engine("sqlite://"))

    def explode() -> None:
        raise RuntimeError("secret internal detail")

    app.add_api_route("/explode", explode)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/explode")
    assert response.status_code == 500
    body = _error(response).error
    assert body.code == "internal_error"
    assert "secret" not in response.text
    assert "secret internal detail" in caplog.text  # the log has it, for the operator


def test_the_openapi_document_lists_each_operations_errors() -> None:
    app = create_app(FleetSettings(), engine=make_engine("sqlite://"))
    document = app.openapi()
    error_ref = "#/components/schemas/ErrorBody"
    operations = {
        (method.upper(), path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
    }
    for (method, path), op in operations.items():
        responses = op["responses"]
        assert "500" in responses, f"{method} {path}"
        for status, response in responses.items():
            # A health probe's 503 is its Health body: load balancers read the status.
            if status.startswith(("4", "5")) and not (path == "/healthz" and status == "503"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": error_ref}, f"{method} {path} {status}"
    create = operations[("POST", "/v1/rollouts")]["responses"]
    assert {"401", "403", "404", "409", "413", "422", "500"} <= set(create)
    devices = operations[("GET", "/v1/devices")]["responses"]
    assert {"401", "403", "422"} <= set(devices)  # device:read
    health = operations[("GET", "/healthz")]["responses"]
    assert "401" not in health
    assert "403" not in health
