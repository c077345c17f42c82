"""Rollout governance over REST: approval (four eyes), deny, changes that need approval
again, device scopes, lifecycle gates, and the audit entries of each mutation and of the
orchestrator's decisions."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text
from sqlmodel import Session

from edgefleet.fleet.rollouts.selector import device_rank
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.store.tables import Device
from edgefleet.shared.messages import utcnow
from tests.fleet.publisher import wait_until
from tests.fleet.rollout_service.conftest import FAST, StartDevices, publish_models
from tests.support.fleet_fixtures import MakeFleet, admin_client, upload
from tests.support.people import add_token, add_user, user_token
from tests.support.rollouts import approve_version, history, wait_status

LONG_SOAK = {"soak_s": 600, "timeout_s": 600}
TWO_WAVES = [{"count": 1}, {"fraction": 1.0}]


def _client(fleet: FleetService, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=fleet.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20
    )


def _register(engine: Engine, tagged: dict[str, tuple[str, ...]]) -> None:
    """Register devices (id → tags) straight into the registry, online on wine 1.0.0."""
    now = utcnow()
    with Session(engine) as session:
        for device_id, tags in tagged.items():
            session.add(
                Device(
                    device_id=device_id,
                    online=True,
                    first_seen=now,
                    last_seen=now,
                    model_name="wine",
                    model_version="1.0.0",
                    tags=list(tags),
                    last_state_seq=1,
                )
            )
        session.commit()


def _create(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post(
        "/v1/rollouts", json={"model": "wine", "version": "1.1.0", "gate": LONG_SOAK} | body
    )


def _audit(engine: Engine, object_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT action, actor_kind, actor_name, outcome, before, after FROM audit_log"
                " WHERE object_kind = 'rollout' AND object_id = :id ORDER BY seq"
            ),
            {"id": object_id},
        ).mappings()
        # JSON columns read back as text on SQLite, as objects on PostgreSQL.
        return [
            {
                k: json.loads(v) if k in ("before", "after") and isinstance(v, str) else v
                for k, v in r.items()
            }
            for r in rows
        ]


def _actions(entries: Iterable[dict[str, Any]]) -> list[str]:
    return [e["action"] for e in entries]


def _approved_models(fleet: FleetService, api: httpx.Client, packages: dict[str, Path]) -> None:
    publish_models(api, packages, fleet.engine)


def test_a_rollout_waits_for_approval_by_someone_other_than_its_creator(
    make_fleet: MakeFleet, wine_packages: dict[str, Path], unique_id: str
) -> None:
    fleet = make_fleet(**FAST, rollout_approval_required=True)
    ids = {f"g-{unique_id}-{i}": ("site-a",) for i in range(3)}
    _register(fleet.engine, ids)
    alice_id = add_user(fleet.engine, "alice", role="approver")
    alice, alice_again = add_token(fleet.engine, alice_id), add_token(fleet.engine, alice_id)
    bob = user_token(fleet.engine, "bob", "approver")
    with (
        admin_client(fleet) as api,
        _client(fleet, alice) as creator,
        _client(fleet, alice_again) as creator_2,
        _client(fleet, bob) as approver,
    ):
        _approved_models(fleet, api, wine_packages)
        created = _create(creator, selector={"device_ids": sorted(ids)}, waves=TWO_WAVES)
        assert created.status_code == 201, created.text
        rollout = created.json()
        rid = rollout["id"]
        assert rollout["status"] == "waiting_for_approval"
        assert rollout["approval"]["reasons"] == ["the fleet requires approval of every rollout"]
        # The orchestrator assigns nothing while it waits (five ticks of 0.1 s pass).
        time.sleep(0.5)
        assert api.get(f"/v1/rollouts/{rid}").json()["counts"]["assigned"] == 0

        for token_of_alice in (creator, creator_2):
            refused = token_of_alice.post(f"/v1/rollouts/{rid}/approve", json={})
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["code"] == "four_eyes"
            assert "created this rollout" in refused.json()["error"]["message"]

        approved = approver.post(f"/v1/rollouts/{rid}/approve", json={"remark": "go"})
        assert approved.status_code == 200, approved.text
        record = approved.json()["approval"]
        assert (record["approved"], record["decided_by_name"], record["remark"]) == (
            True,
            "bob",
            "go",
        )
        assert record["decided_at"] is not None
        running = wait_status(api, rid, {"running", "soaking"})
        assert running["counts"]["pending"] == 2  # wave 0 (1 device) assigned
        lines = history(api, rid)
        assert [line["message"] for line in lines if line["kind"] == "approved"] == [
            "approved by bob: go"
        ]
        again = approver.post(f"/v1/rollouts/{rid}/approve")
        assert again.status_code == 409

        entries = _audit(fleet.engine, rid)
        create = entries[0]
        assert (create["action"], create["actor_name"]) == ("rollout.create", "alice")
        assert create["after"]["status"] == "waiting_for_approval"
        approve = next(e for e in entries if e["action"] == "rollout.approve")
        assert approve["actor_name"] == "bob"
        assert (approve["before"]["status"], approve["after"]["status"]) == (
            "waiting_for_approval",
            "created",
        )
        assert approve["after"]["remark"] == "go"
        system = [e for e in entries if e["actor_kind"] == "system"]
        assert "rollout.wave_started" in _actions(system)


def test_deny_needs_a_remark_ends_the_rollout_and_frees_its_devices(
    make_fleet: MakeFleet, wine_packages: dict[str, Path], unique_id: str
) -> None:
    fleet = make_fleet(**FAST, rollout_approval_tags=("prod",))
    ids = {f"d-{unique_id}-{i}": ("prod",) for i in range(2)}
    _register(fleet.engine, ids)
    bob = user_token(fleet.engine, "bob", "approver")
    with admin_client(fleet) as api, _client(fleet, bob) as approver:
        _approved_models(fleet, api, wine_packages)
        created = _create(api, selector={"device_ids": sorted(ids)})
        rid = created.json()["id"]
        assert created.json()["status"] == "waiting_for_approval"
        assert "tagged 'prod'" in created.json()["status_reason"]

        assert approver.post(f"/v1/rollouts/{rid}/deny", json={}).status_code == 422
        assert approver.post(f"/v1/rollouts/{rid}/deny", json={"remark": " "}).status_code == 422
        denied = approver.post(f"/v1/rollouts/{rid}/deny", json={"remark": "freeze week"})
        assert denied.status_code == 200, denied.text
        body = denied.json()
        assert body["status"] == "approval_denied"
        assert body["approval"]["approved"] is False
        assert body["approval"]["remark"] == "freeze week"
        assert "approval denied by bob: freeze week" in body["status_reason"]
        assert [line["kind"] for line in history(api, rid)][-1] == "approval_denied"

        # Final: nothing applies to it but a rollback; its devices are free again.
        assert api.post(f"/v1/rollouts/{rid}/resume").status_code == 409
        assert api.patch(f"/v1/rollouts/{rid}", json={"gate": {"soak_s": 1}}).status_code == 409
        assert _create(api, selector={"device_ids": sorted(ids)}).status_code == 201
        assert "rollout.deny" in _actions(_audit(fleet.engine, rid))


def test_changing_an_approved_rollout_sends_it_back_for_approval(
    make_fleet: MakeFleet, wine_packages: dict[str, Path], unique_id: str
) -> None:
    fleet = make_fleet(**FAST, rollout_approval_min_devices=2)
    ids = {f"c-{unique_id}-{i}": ("site-a",) for i in range(4)}
    _register(fleet.engine, ids)
    bob = user_token(fleet.engine, "bob", "approver")
    with admin_client(fleet) as api, _client(fleet, bob) as approver:
        _approved_models(fleet, api, wine_packages)
        # The wave order is a hash of seed and id. The two first-ranked devices stay first
        # when the others join, so the device the first wave may already have been given
        # is still in the first wave after the change (else the change is refused, 409).
        ranked = sorted(ids, key=lambda device_id: device_rank("grow", device_id))
        small = ranked[:2]
        created = _create(api, selector={"device_ids": small}, waves=TWO_WAVES, seed="grow")
        rid = created.json()["id"]
        assert created.json()["status"] == "created"  # 2 devices: no approval needed

        grown = api.patch(f"/v1/rollouts/{rid}", json={"selector": {"device_ids": sorted(ids)}})
        assert grown.status_code == 200, grown.text
        assert grown.json()["status"] == "waiting_for_approval"
        assert grown.json()["targets"] == 4
        assert "more than the 2" in grown.json()["status_reason"]
        assert approver.post(f"/v1/rollouts/{rid}/approve").status_code == 200
        wait_status(api, rid, {"running", "soaking"})

        gated = api.patch(f"/v1/rollouts/{rid}", json={"gate": {"soak_s": 900, "timeout_s": 600}})
        assert gated.status_code == 200, gated.text
        assert gated.json()["status"] == "waiting_for_approval"
        assert gated.json()["approval"]["approved"] is None
        assert gated.json()["spec"]["gate"]["soak_s"] == 900
        kinds = [line["kind"] for line in history(api, rid)]
        assert kinds.count("changed") == 2
        assert kinds.count("approval_requested") == 2

        bad = api.patch(f"/v1/rollouts/{rid}", json={"waves": [{"fraction": 0.5}]})
        assert bad.status_code == 422
        actions = _actions(_audit(fleet.engine, rid))
        assert actions.count("rollout.patch") == 2
        patch = [e for e in _audit(fleet.engine, rid) if e["action"] == "rollout.patch"][1]
        assert patch["after"]["change"] == {"gate": {"soak_s": 900.0, "timeout_s": 600.0}}


def test_an_operator_scoped_to_site_a_cannot_roll_out_to_or_command_site_b(
    make_fleet: MakeFleet, wine_packages: dict[str, Path], unique_id: str
) -> None:
    fleet = make_fleet(**FAST)
    a = {f"a-{unique_id}-{i}": ("site-a",) for i in range(2)}
    b = {f"b-{unique_id}-{i}": ("site-b",) for i in range(2)}
    _register(fleet.engine, a | b)
    scoped = add_token(
        fleet.engine,
        add_user(
            fleet.engine, "site-a-op", grants=[{"role": "operator", "device_tags": ["site-a"]}]
        ),
    )
    other_model = add_token(
        fleet.engine,
        add_user(fleet.engine, "yolo-op", grants=[{"role": "operator", "model_names": ["yolo"]}]),
    )
    with (
        admin_client(fleet) as api,
        _client(fleet, scoped) as operator,
        _client(fleet, other_model) as yolo,
    ):
        _approved_models(fleet, api, wine_packages)
        refused = _create(operator, selector={"device_ids": sorted(a | b)})
        assert refused.status_code == 403, refused.text
        assert "site-a-op" in refused.json()["error"]["message"]
        assert any(f"device {d!r}" in refused.json()["error"]["message"] for d in b)
        assert _create(yolo, selector={"device_ids": sorted(a)}).status_code == 403
        assert api.get("/v1/rollouts").json()["total"] == 0  # nothing half applied

        mine = _create(operator, selector={"tags": ["site-a"]})
        assert mine.status_code == 201, mine.text
        mine_id = mine.json()["id"]
        assert (
            operator.patch(
                f"/v1/rollouts/{mine_id}",
                json={"selector": {"device_ids": sorted(a | b)}, "waves": [{"fraction": 1.0}]},
            ).status_code
            == 403
        )
        assert operator.post(f"/v1/rollouts/{mine_id}/pause").status_code == 200
        assert operator.post(f"/v1/rollouts/{mine_id}/abort").status_code == 200

        theirs = _create(api, selector={"tags": ["site-b"]})
        theirs_id = theirs.json()["id"]
        for command in ("pause", "abort", "rollback"):
            denied = operator.post(f"/v1/rollouts/{theirs_id}/{command}")
            assert denied.status_code == 403, (command, denied.text)
        assert api.get(f"/v1/rollouts/{theirs_id}").json()["status"] in {"created", "running"}
        mine_audit = _actions(
            e for e in _audit(fleet.engine, mine_id) if e["actor_kind"] != "system"
        )
        assert mine_audit[:3] == ["rollout.create", "rollout.pause", "rollout.abort"]
        assert "rollout.pause" not in _actions(_audit(fleet.engine, theirs_id))


def test_rejected_and_retired_versions_start_no_rollout(
    make_fleet: MakeFleet, wine_packages: dict[str, Path], unique_id: str
) -> None:
    fleet = make_fleet(**FAST)
    ids = {f"r-{unique_id}-{i}": () for i in range(2)}
    _register(fleet.engine, ids)
    bob = user_token(fleet.engine, "bob", "approver")
    with admin_client(fleet) as api, _client(fleet, bob) as approver:
        _approved_models(fleet, api, {"1.0.0": wine_packages["1.0.0"]})
        assert upload(api, wine_packages["1.1.0"]).status_code == 201
        assert api.post("/v1/models/wine/1.1.0/publish").status_code == 200
        rejected = approver.post("/v1/models/wine/1.1.0/reject", json={"remark": "bad"})
        assert rejected.status_code == 200, rejected.text
        refused = _create(api, selector={"device_ids": sorted(ids)})
        assert refused.status_code == 409
        assert "wine 1.1.0 is rejected" in refused.json()["error"]["message"]

        assert approver.post("/v1/models/wine/1.0.0/retire").status_code == 200
        retired = _create(api, version="1.0.0", selector={"device_ids": sorted(ids)})
        assert retired.status_code == 409
        assert "retired" in retired.json()["error"]["message"]


def test_a_rollout_of_an_unapproved_version_is_held_after_its_canary(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST)
    with admin_client(fleet) as api:
        for version, package in wine_packages.items():
            assert upload(api, package).status_code == 201
            assert api.post(f"/v1/models/wine/{version}/publish").status_code == 200
        approve_version(api, fleet.engine, "wine", "1.0.0")  # the rollback target only
        start_devices(fleet, api, 3)
        created = _create(
            api, selector={"tags": [f"t-{unique_id}"]}, waves=TWO_WAVES, gate={"timeout_s": 30}
        )
        rid = created.json()["id"]

        def held() -> bool:
            return api.get(f"/v1/rollouts/{rid}").json()["held"] is not None

        wait_until(held, what="the rollout to be held after its canary")
        detail = api.get(f"/v1/rollouts/{rid}").json()
        assert detail["held"] == "waiting for model approval of wine 1.1.0"
        assert (detail["status"], detail["current_wave"]) == ("running", 0)
        assert detail["counts"]["healthy"] == 1
        assert detail["counts"]["pending"] == 2

        paused = api.post(f"/v1/rollouts/{rid}/pause")
        assert paused.status_code == 200
        resumed = api.post(f"/v1/rollouts/{rid}/resume")  # within the canary: allowed
        assert resumed.status_code == 200, resumed.text
        assert [line["kind"] for line in history(api, rid)].count("held") == 1

        approve_version(api, fleet.engine, "wine", "1.1.0")
        done = wait_status(api, rid, {"completed"})
        assert done["counts"]["healthy"] == 3

        system = _actions(e for e in _audit(fleet.engine, rid) if e["actor_kind"] == "system")
        assert system.count("rollout.held") == 1
        for action in ("wave_started", "gate_passed", "completed"):
            assert f"rollout.{action}" in system, system
        # One entry per rollout-level decision, none per device step.
        assert not any("device" in a for a in system)
        decisions = {"wave_started", "gate_passed", "held", "completed"}
        lines = history(api, rid)
        assert len(system) == sum(
            1 for line in lines if line["device_id"] is None and line["kind"] in decisions
        )


def test_retiring_a_version_mid_rollout_pauses_it_and_resume_is_refused(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST)
    bob = user_token(fleet.engine, "bob", "approver")
    with admin_client(fleet) as api, _client(fleet, bob) as approver:
        _approved_models(fleet, api, wine_packages)
        start_devices(fleet, api, 3)
        created = _create(api, selector={"tags": [f"t-{unique_id}"]}, waves=TWO_WAVES)
        rid = created.json()["id"]
        wait_status(api, rid, {"soaking"})

        assert approver.post("/v1/models/wine/1.1.0/retire").status_code == 200
        paused = wait_status(api, rid, {"paused"})
        assert paused["status_reason"] == "model wine 1.1.0 became retired"
        refused = api.post(f"/v1/rollouts/{rid}/resume")
        assert refused.status_code == 409
        assert "wine 1.1.0 is retired" in refused.json()["error"]["message"]
        assert api.post(f"/v1/rollouts/{rid}/rollback").status_code == 200

        entries = _audit(fleet.engine, rid)
        pause = next(e for e in entries if e["action"] == "rollout.paused")
        assert pause["actor_kind"] == "system"
        assert pause["after"]["status"] == "paused"
        assert "rollout.rollback" in _actions(entries)
        assert "rollout.resume" not in _actions(entries)  # refused: nothing written
