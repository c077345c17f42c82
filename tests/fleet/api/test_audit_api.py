"""``/v1/audit``: filters, paging, both exports, and who may read it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.audit.checkpoint import load_or_create_key
from edgefleet.fleet.audit.checkpointer import AuditCheckpointer
from edgefleet.fleet.audit.entry import AuditOutcome
from edgefleet.fleet.audit.log import append
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import create_all
from tests.fleet.audit.conftest import BOB, T0, record
from tests.support.people import user_token


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    create_all(engine)
    items = [
        record(1),
        record(2),
        record(2, actor=BOB, action="rollout.abort"),
        record(4, action="model.approve").model_copy(update={"outcome": AuditOutcome.DENIED}),
    ]
    for n, rec in enumerate(items, 1):
        with Session(engine) as session:
            append(session, rec, now=T0 + timedelta(minutes=n))
            session.commit()
    yield engine
    engine.dispose()


@pytest.fixture
def settings(engine: Engine, tmp_path: Path) -> FleetSettings:
    return FleetSettings(
        data_dir=tmp_path / "data",
        database_url=str(engine.url.render_as_string(hide_password=False)),
    )


@pytest.fixture
def client(engine: Engine, settings: FleetSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, engine=engine)) as client:
        client.headers["Authorization"] = "Bearer " + user_token(engine, "auditor", "approver")
        yield client


def seqs(client: TestClient, **params: str) -> list[int]:
    response = client.get("/v1/audit", params=params)
    assert response.status_code == 200, response.text
    return [item["seq"] for item in response.json()["items"]]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [1, 2, 3, 4]),
        ({"actor": "bob"}, [3]),
        ({"action": "rollout."}, [1, 2, 3]),
        ({"action": "model.approve"}, [4]),
        ({"object_kind": "rollout", "object_id": "r-2"}, [2, 3]),
        ({"outcome": "denied"}, [4]),
        ({"since": "2026-05-01T12:02:00Z", "until": "2026-05-01T14:03:00+02:00"}, [2]),
    ],
)
def test_filters(client: TestClient, params: dict[str, str], expected: list[int]) -> None:
    assert seqs(client, **params) == expected


def test_an_entry_is_served_whole(client: TestClient) -> None:
    item = client.get("/v1/audit", params={"actor": "bob"}).json()["items"][0]
    assert item["actor"] == {"kind": "user", "id": "u-bob", "name": "bob", "token_prefix": None}
    assert item["object"] == {"kind": "rollout", "id": "r-2"}
    assert len(item["hash"]) == len(item["prev_hash"]) == 64


def test_pages_follow_by_after_seq(client: TestClient) -> None:
    first = client.get("/v1/audit", params={"limit": 3}).json()
    assert [i["seq"] for i in first["items"]] == [1, 2, 3]
    assert first["next_after_seq"] == 3
    rest = client.get("/v1/audit", params={"limit": 3, "after_seq": 3}).json()
    assert [i["seq"] for i in rest["items"]] == [4]
    assert rest["next_after_seq"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"since": "2026-05-01T12:00:00"},  # no offset
        {"until": "2026-05-01"},
        {"limit": "0"},
        {"limit": "1001"},
        {"after_seq": "-1"},
        {"outcome": "maybe"},
        {"action": "x" * 65},
    ],
)
def test_bad_parameters_are_refused_with_422(client: TestClient, params: dict[str, str]) -> None:
    assert client.get("/v1/audit", params=params).status_code == 422
    if not {"limit", "after_seq"} & set(params):  # the page's alone
        export = client.get("/v1/audit/export", params=params | {"format": "csv"})
        assert export.status_code == 422


def test_a_time_without_an_offset_is_refused_by_the_export_too(client: TestClient) -> None:
    response = client.get("/v1/audit/export", params={"since": "2026-05-01T12:00:00"})
    assert response.status_code == 422


def test_jsonl_export(client: TestClient) -> None:
    response = client.get("/v1/audit/export", params={"format": "jsonl", "action": "rollout."})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert lines == client.get("/v1/audit", params={"action": "rollout."}).json()["items"]


def test_csv_export(client: TestClient) -> None:
    response = client.get("/v1/audit/export", params={"format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "audit.csv" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["seq"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[2]["actor_name"] == "bob"


def test_an_unknown_export_format_is_refused(client: TestClient) -> None:
    assert client.get("/v1/audit/export", params={"format": "xml"}).status_code == 422


@pytest.mark.parametrize("path", ["/v1/audit", "/v1/audit/export", "/v1/audit/checkpoints/latest"])
def test_a_caller_without_audit_read_is_refused_and_the_refusal_audited(
    client: TestClient, engine: Engine, path: str
) -> None:
    viewer = {"Authorization": "Bearer " + user_token(engine, "viewer-1", "viewer")}
    response = client.get(path, headers=viewer)
    assert response.status_code == 403
    assert "audit:read" in response.text
    denied = client.get("/v1/audit", params={"action": "permission.denied"}).json()["items"]
    assert [d["actor"]["name"] for d in denied] == ["viewer-1"]
    assert denied[0]["object"]["id"] == f"GET {path}"


def test_no_token_is_refused_with_401(client: TestClient) -> None:
    assert client.get("/v1/audit", headers={"Authorization": ""}).status_code == 401


def test_the_latest_checkpoint_is_served(
    client: TestClient, engine: Engine, settings: FleetSettings
) -> None:
    assert client.get("/v1/audit/checkpoints/latest").status_code == 404
    checkpointer = AuditCheckpointer(
        engine,
        load_or_create_key(settings.resolved_audit_key_dir, None),
        path=settings.resolved_audit_checkpoint_file,
        fleet_id=settings.audit_fleet_id,
        interval_s=60,
    )
    written = checkpointer.checkpoint_now()
    assert written is not None
    response = client.get("/v1/audit/checkpoints/latest")
    assert response.status_code == 200
    assert response.json() == json.loads(written.line())
    assert response.json()["count"] == 4
