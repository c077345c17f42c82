"""Attacks on the update path: each one is rejected with a clear reason, nothing installed.

Every case runs the real agent against the real TUF repository, director signatures and
MQTT; the attack is made by publishing, signing or serving something wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from edgefleet.agent.update.machine import AT_REST
from edgefleet.shared.signing import keys
from tests.e2e.updates.conftest import Packages
from tests.e2e.updates.support import Rig, event_docs
from tests.e2e.updates.test_updates import assert_serves, wait_event


@dataclass
class Attack:
    rig: Rig
    packages: Packages
    device: str
    publish_accepted: Callable[[int], None]


def _arbitrary_artifact(a: Attack) -> int:
    # The director names a file the release key never approved.
    a.rig.publish(a.device, a.rig.sign(a.device, a.packages.upgrade, 1, name="evil.efpkg"))
    return 1


def _flipped_bit(a: Attack) -> int:
    data = bytearray(a.packages.upgrade.data)
    data[len(data) // 2] ^= 0x01
    a.rig.server.faults.replace_body[a.packages.upgrade.url_path] = bytes(data)
    a.rig.publish(a.device, a.rig.sign(a.device, a.packages.upgrade, 1))
    return 1


def _unknown_key(a: Attack) -> int:
    stranger = keys.generate_signer()
    a.rig.publish(a.device, a.rig.sign(a.device, a.packages.upgrade, 1, signer=stranger))
    return 1


def _replayed(a: Attack) -> int:
    old = a.rig.sign(a.device, a.packages.factory, 1)
    a.rig.publish(a.device, old)
    a.publish_accepted(1)
    a.rig.publish(a.device, a.rig.sign(a.device, a.packages.factory, 2))
    a.publish_accepted(2)
    a.rig.publish(a.device, old)  # the exact bytes the director once sent
    return 1


def _lower_seq(a: Attack) -> int:
    a.rig.publish(a.device, a.rig.sign(a.device, a.packages.factory, 5))
    a.publish_accepted(5)
    a.rig.publish(a.device, a.rig.sign(a.device, a.packages.upgrade, 3))
    return 3


def _expired(a: Attack) -> int:
    a.rig.publish(a.device, a.rig.sign(a.device, a.packages.upgrade, 1, expires_in_s=-60))
    return 1


def _director_hash_differs_from_tuf(a: Attack) -> int:
    forged = a.packages.older.sha256  # a real artifact, but not the one TUF lists under this name
    a.rig.publish(a.device, a.rig.sign(a.device, a.packages.upgrade, 1, sha256=forged))
    return 1


def _director_length_differs_from_tuf(a: Attack) -> int:
    long = a.packages.upgrade.length + 4096
    a.rig.publish(a.device, a.rig.sign(a.device, a.packages.upgrade, 1, length=long))
    return 1


def _endless_download(a: Attack) -> int:
    a.rig.server.faults.endless.add(a.packages.upgrade.url_path)
    a.rig.publish(a.device, a.rig.sign(a.device, a.packages.upgrade, 1))
    return 1


def _oversized(a: Attack) -> int:
    a.rig.publish(a.device, a.rig.sign(a.device, a.packages.upgrade, 1))
    return 1


def _unsigned_downgrade(a: Attack) -> int:
    a.rig.publish(a.device, a.rig.sign(a.device, a.packages.older, 1, rollback=False))
    return 1


def _other_device(a: Attack) -> int:
    envelope = a.rig.sign(f"{a.device}-neighbour", a.packages.upgrade, 1)
    a.rig.publish(a.device, envelope)
    return 1


ATTACKS: dict[str, tuple[Callable[[Attack], int], str, dict[str, Any]]] = {
    "arbitrary_artifact": (
        _arbitrary_artifact,
        "is not in the image repository's signed targets",
        {},
    ),
    "flipped_bit": (_flipped_bit, "has sha256", {}),
    "unknown_key": (_unknown_key, "signed by unknown key", {}),
    "replayed": (_replayed, "seq 1 is not newer than the last accepted 2", {}),
    "lower_seq": (_lower_seq, "seq 3 is not newer than the last accepted 5", {}),
    "expired": (_expired, "expired at", {}),
    "hash_mismatch": (_director_hash_differs_from_tuf, "the signed targets say", {}),
    "length_mismatch": (_director_length_differs_from_tuf, "the signed targets say", {}),
    "endless_download": (_endless_download, "sent more than the expected", {}),
    "oversized": (_oversized, "this device downloads at most 4096", {"max_download_bytes": 4096}),
    "unsigned_downgrade": (_unsigned_downgrade, "is older than the active 1.0.0", {}),
    "other_device": (_other_device, "is for device", {}),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_is_rejected_with_a_reason_and_the_active_model_is_untouched(
    attack, tmp_path, rig: Rig, packages: Packages, start_agent, events_of, unique_id, wine_model
) -> None:
    make, reason, update = ATTACKS[attack]
    device = f"atk-{unique_id}"
    for pkg in (packages.factory, packages.upgrade, packages.older):
        rig.add(pkg)
    events = events_of(device)
    agent = start_agent(rig.config(tmp_path, device, packages.factory, **update))
    updates = agent.updates
    assert updates is not None

    def accepted(seq: int) -> None:
        wait_event(events, "info", seq)  # "already active": the factory model is desired
        assert updates.state.last_desired_seq == seq

    seq = make(Attack(rig, packages, device, accepted))
    rejected = wait_event(events, "rejected", seq)
    assert reason in rejected["reason"], rejected["reason"]
    assert not any(d["kind"] in ("activated", "committed") for d in event_docs(events.received))
    assert updates.state.phase in AT_REST
    assert_serves(agent, packages.factory.sha256, "1.0.0", wine_model)
    assert updates.store.models() == [packages.factory.sha256], "nothing else was installed"
