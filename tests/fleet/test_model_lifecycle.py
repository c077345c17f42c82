"""Reviews, four eyes, retirement, aliases and lineage of model versions, over HTTP.

The admin uploads (it is the bootstrap admin of `make_fleet`); a second person, an
approver, reviews. Two tokens of one user are one person.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, col, select

from edgefleet.fleet.api.auth import BOOTSTRAP_USER_ID
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.store.governance_tables import AuditRow
from edgefleet.shared.manifest import Lineage
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.simulators.models import TrainedModel
from tests.support.fleet_fixtures import MakeFleet, admin_client, upload
from tests.support.people import add_token, add_user, user_token


def _client(fleet: FleetService, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=fleet.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20
    )


def _audit(fleet: FleetService, action: str) -> list[AuditRow]:
    with Session(fleet.engine) as session:
        return list(
            session.exec(
                select(AuditRow).where(col(AuditRow.action) == action).order_by(col(AuditRow.seq))
            ).all()
        )


def test_the_uploader_cannot_approve_and_another_person_can(
    fleet: FleetService, api: httpx.Client, wine_packages: dict[str, Path]
) -> None:
    assert api.get("/healthz").json()["approval"] == "four_eyes"
    assert upload(api, wine_packages["1.0.0"]).status_code == 201
    assert api.get("/v1/models/wine/1.0.0").json()["review"]["state"] == "uploaded"

    own = api.post("/v1/models/wine/1.0.0/approve", json={"remark": "mine"})
    assert own.status_code == 403
    assert own.json()["error"]["code"] == "four_eyes"
    assert "another person" in own.json()["error"]["message"]

    # Another token of the same person is still the uploader.
    second = add_token(fleet.engine, BOOTSTRAP_USER_ID, label="laptop")
    with _client(fleet, second) as same_person:
        again = same_person.post("/v1/models/wine/1.0.0/approve", json={})
    assert again.status_code == 403
    assert again.json()["error"]["code"] == "four_eyes"
    assert api.get("/v1/models/wine/1.0.0").json()["review"]["state"] == "uploaded"

    with _client(fleet, user_token(fleet.engine, "alice", "approver")) as alice:
        approved = alice.post("/v1/models/wine/1.0.0/approve", json={"remark": "metrics ok"})
        assert approved.status_code == 200, approved.text
        assert approved.json()["state"] == "approved"
        assert approved.json()["remark"] == "metrics ok"
        twice = alice.post("/v1/models/wine/1.0.0/approve", json={})
        assert twice.status_code == 409
    detail = api.get("/v1/models/wine/1.0.0").json()
    assert detail["review"]["state"] == "approved"
    assert detail["approved_by"] is not None
    entries = _audit(fleet, "model.approve")
    assert [e.actor_name for e in entries] == ["alice"]
    assert entries[0].before == {"state": "uploaded", "remark": None}
    assert entries[0].after == {"state": "approved", "remark": "metrics ok"}
    uploads = _audit(fleet, "model.upload")
    assert [(e.actor_name, e.object_id) for e in uploads] == [("admin", "wine/1.0.0")]


def test_a_viewer_or_operator_cannot_approve(
    fleet: FleetService, api: httpx.Client, wine_packages: dict[str, Path]
) -> None:
    upload(api, wine_packages["1.0.0"])
    for role in ("viewer", "operator"):
        with _client(fleet, user_token(fleet.engine, f"bob-{role}", role)) as bob:
            refused = bob.post("/v1/models/wine/1.0.0/approve", json={})
        assert refused.status_code == 403
        assert "model:approve" in refused.json()["error"]["message"]


def test_rejection_needs_a_remark_and_stops_publishing_and_assignment(
    fleet: FleetService, api: httpx.Client, wine_packages: dict[str, Path]
) -> None:
    upload(api, wine_packages["1.0.0"])
    with _client(fleet, user_token(fleet.engine, "carol", "approver")) as carol:
        assert carol.post("/v1/models/wine/1.0.0/reject", json={}).status_code == 422
        rejected = carol.post("/v1/models/wine/1.0.0/reject", json={"remark": "accuracy fell"})
    assert rejected.status_code == 200
    assert rejected.json()["state"] == "rejected"
    publish = api.post("/v1/models/wine/1.0.0/publish")
    assert publish.status_code == 409
    assert "rejected" in publish.json()["error"]["message"]


def test_retired_versions_take_no_assignment_and_retire_once(
    fleet: FleetService, api: httpx.Client, wine_packages: dict[str, Path]
) -> None:
    upload(api, wine_packages["1.0.0"])
    assert api.post("/v1/models/wine/1.0.0/publish").status_code == 200
    retired = api.post("/v1/models/wine/1.0.0/retire", json={"remark": "superseded"})
    assert retired.status_code == 200
    assert retired.json()["state"] == "retired"
    assert api.post("/v1/models/wine/1.0.0/retire", json={}).status_code == 409
    desired = api.put("/v1/devices/dev-retired/desired", json={"model": "wine", "version": "1.0.0"})
    assert desired.status_code == 409
    assert "retired" in desired.json()["error"]["message"]


def test_aliases_point_only_at_approved_versions_and_are_audited(
    fleet: FleetService, api: httpx.Client, wine_packages: dict[str, Path]
) -> None:
    for version in ("1.0.0", "1.1.0"):
        upload(api, wine_packages[version])
    unapproved = api.put("/v1/models/wine/aliases/production", json={"version": "1.0.0"})
    assert unapproved.status_code == 409
    with _client(fleet, user_token(fleet.engine, "dave", "approver")) as dave:
        for version in ("1.0.0", "1.1.0"):
            assert dave.post(f"/v1/models/wine/{version}/approve", json={}).status_code == 200
    assert (
        api.put("/v1/models/wine/aliases/production", json={"version": "1.0.0"}).status_code == 200
    )
    moved = api.put("/v1/models/wine/aliases/production", json={"version": "1.1.0"})
    assert moved.status_code == 200
    assert moved.json()["version"] == "1.1.0"
    assert [a["alias"] for a in api.get("/v1/models/wine/aliases").json()] == ["production"]
    assert api.get("/v1/models/wine/1.1.0").json()["aliases"] == ["production"]
    # An aliased version is not retired from under its alias.
    assert api.post("/v1/models/wine/1.1.0/retire", json={}).status_code == 409
    assert api.delete("/v1/models/wine/aliases/production").status_code == 204
    assert api.delete("/v1/models/wine/aliases/production").status_code == 404
    assert api.post("/v1/models/wine/1.1.0/retire", json={}).status_code == 200
    changes = [(e.before, e.after) for e in _audit(fleet, "model.alias.set")]
    assert changes == [(None, {"version": "1.0.0"}), ({"version": "1.0.0"}, {"version": "1.1.0"})]
    with _client(fleet, user_token(fleet.engine, "erin", "operator")) as erin:
        refused = erin.put("/v1/models/wine/aliases/canary", json={"version": "1.0.0"})
    assert refused.status_code == 403
    assert "model:approve" in refused.json()["error"]["message"]


def test_lineage_joins_manifest_upload_and_children(
    fleet: FleetService, api: httpx.Client, wine_packages: dict[str, Path]
) -> None:
    params = {"code_revision": "3f2a9c1", "run_uri": "runs:/abc123", "dataset_version": "d7"}
    first = api.post(
        "/v1/models",
        params=params,
        content=wine_packages["1.0.0"].read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert first.status_code == 201, first.text
    child = api.post(
        "/v1/models",
        params={"parent_version": "1.0.0"},
        content=wine_packages["1.1.0"].read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert child.status_code == 201, child.text
    lineage = api.get("/v1/models/wine/1.0.0/lineage").json()
    assert lineage["code_revision"] == "3f2a9c1"
    assert lineage["run_uri"] == "runs:/abc123"
    assert lineage["dataset_version"] == "d7"
    assert lineage["training_data_sha256"]  # from the manifest (--training-data)
    assert lineage["children"] == ["1.1.0"]
    assert lineage["review"]["state"] == "uploaded"
    assert api.get("/v1/models/wine/1.1.0/lineage").json()["parent_version"] == "1.0.0"
    assert api.get("/v1/models/wine/9.9.9/lineage").status_code == 404
    bad = api.post(
        "/v1/models",
        params={"parent_version": "not semver"},
        content=wine_packages["1.0.0"].read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert bad.status_code in (200, 422)  # same bytes: the stored version stands


def test_an_upload_outside_the_callers_model_scope_stores_nothing(
    fleet: FleetService, api: httpx.Client, wine_packages: dict[str, Path]
) -> None:
    scoped = add_user(
        fleet.engine, "frank", grants=[{"role": "operator", "model_names": ["other-model"]}]
    )
    with _client(fleet, add_token(fleet.engine, scoped)) as frank:
        refused = upload(frank, wine_packages["1.0.0"])
    assert refused.status_code == 403
    assert "model:upload" in refused.json()["error"]["message"]
    assert "wine" in refused.json()["error"]["message"]
    assert api.get("/v1/models").json() == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_one_person_lab_mode_lets_the_uploader_approve_and_says_so(
    make_fleet: MakeFleet, wine_packages: dict[str, Path]
) -> None:
    fleet = make_fleet(single_person_approval=True)
    with admin_client(fleet) as api:
        assert api.get("/healthz").json()["approval"] == "single_person"
        upload(api, wine_packages["1.0.0"])
        approved = api.post("/v1/models/wine/1.0.0/approve", json={})
    assert approved.status_code == 200
    assert approved.json()["state"] == "approved"


def test_upload_lineage_fills_the_manifest_but_never_contradicts_it(
    api: httpx.Client, wine_model: TrainedModel, tmp_path: Path
) -> None:
    package = build_package(
        wine_model.path,
        name="wine",
        version="2.0.0",
        out_dir=tmp_path,
        golden_count=4,
        lineage=Lineage(code_revision="abc1234", parent_version="1.0.0"),
    )
    contradicting = api.post(
        "/v1/models",
        params={"code_revision": "fff9999"},
        content=package.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert contradicting.status_code == 422
    assert "code_revision" in contradicting.json()["error"]["message"]
    filled = api.post(
        "/v1/models",
        params={"code_revision": "abc1234", "run_uri": "runs:/r1"},
        content=package.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert filled.status_code == 201, filled.text
    lineage = api.get("/v1/models/wine/2.0.0/lineage").json()
    assert (lineage["code_revision"], lineage["run_uri"], lineage["parent_version"]) == (
        "abc1234",
        "runs:/r1",
        "1.0.0",
    )
